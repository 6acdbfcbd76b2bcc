// SPDX-License-Identifier: GPL-2.0
/*
 * Sweeping the per-CPU free lists. Pages a task frees go first to its CPU's per-CPU lists
 * (up to their "high" mark: tens of MiB on a 1 GiB guest) and reach the buddy lists, where
 * free page reporting looks, only when those overflow. So after a large free, that much free
 * memory is never reported. A sweep takes the pages waiting on one CPU's lists (allocating
 * order-0 pages of a migrate type without reclaim takes them from that type's list first),
 * reports them to the host as FREE_REPORTED, and frees them again: they stay on the lists,
 * now without host memory.
 *
 * A CPU is swept when its lists hold at least sweep_min_pages and changed by half that since
 * its last sweep, at most every sweep_interval_ms.
 */
#include <linux/cpu.h>
#include <linux/gfp.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/workqueue.h>

#include "memout_dev.h"

static unsigned int sweep_min_pages = 1024;
module_param(sweep_min_pages, uint, 0444);
MODULE_PARM_DESC(sweep_min_pages,
		 "Sweep a CPU's free lists when they hold this many pages (0: never sweep)");

static unsigned int sweep_interval_ms = 200;
module_param(sweep_interval_ms, uint, 0444);
MODULE_PARM_DESC(sweep_interval_ms, "Sweep a CPU at most this often");

/* Extents per FREE request (the channel's scratch area holds 4096). */
#define MEMOUT_SWEEP_EXTENTS 2048

/* Pages on this CPU's per-CPU free lists, all zones of all nodes (a racy snapshot). */
static unsigned int pcp_pages(void)
{
	unsigned int n = 0;
	int nid, z;

	for_each_online_node(nid) {
		pg_data_t *pgdat = NODE_DATA(nid);

		for (z = 0; z < MAX_NR_ZONES; z++) {
			struct zone *zone = &pgdat->node_zones[z];

			if (populated_zone(zone))
				n += READ_ONCE(this_cpu_ptr(zone->per_cpu_pageset)->count);
		}
	}
	return n;
}

static int cmp_pfn(const void *a, const void *b)
{
	unsigned long x = page_to_pfn(*(struct page * const *)a);
	unsigned long y = page_to_pfn(*(struct page * const *)b);

	return x < y ? -1 : x > y;
}

/* Reports @pages (sorted by pfn), coalesced into runs. */
static void report_pages(struct memout_dev *md, struct page **pages, unsigned int n)
{
	struct memout_extent *ext = kmalloc_array(MEMOUT_SWEEP_EXTENTS, sizeof(*ext), GFP_KERNEL);
	unsigned int i, k = 0;
	u64 freed;

	if (!ext)
		return;
	for (i = 0; i < n; i++) {
		u64 gpa = page_to_phys(pages[i]);

		if (k && ext[k - 1].gpa + (ext[k - 1].pages << PAGE_SHIFT) == gpa) {
			ext[k - 1].pages++;
			continue;
		}
		if (k == MEMOUT_SWEEP_EXTENTS) {
			if (!memout_free_reported(md, ext, k, &freed))
				md->swept_pages += freed;
			k = 0;
		}
		ext[k].gpa = gpa;
		ext[k].pages = 1;
		k++;
	}
	if (k && !memout_free_reported(md, ext, k, &freed))
		md->swept_pages += freed;
	kfree(ext);
}

/*
 * Takes up to what this CPU's lists hold with @gfp added (a migrate type: each list is taken
 * by allocations of its type) into @pages from @n, at most @max; returns the new count.
 * Without reclaim or warnings: under pressure the sweep just ends early.
 */
static unsigned int take(struct page **pages, unsigned int n, unsigned int max, gfp_t gfp)
{
	unsigned int want = min(max, n + pcp_pages());

	while (n < want) {
		struct page *p = alloc_page(GFP_NOWAIT | __GFP_NOWARN | __GFP_NOMEMALLOC | gfp);

		if (!p)
			break;
		pages[n++] = p;
	}
	return n;
}

/* Runs on the CPU it sweeps (work_on_cpu). Returns the pages swept. */
static long sweep_this_cpu(void *arg)
{
	struct memout_dev *md = arg;
	/* Room for every list at its high mark, and a refill batch or two more. */
	unsigned int max = 2 * pcp_pages() + 256, n, i;
	struct page **pages;

	pages = kvmalloc_array(max, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return 0;
	/* What tasks free (anonymous and file pages) waits on the movable list: first. */
	n = take(pages, 0, max, __GFP_MOVABLE);
	n = take(pages, n, max, __GFP_RECLAIMABLE);
	n = take(pages, n, max, 0);
	sort(pages, n, sizeof(*pages), cmp_pfn, NULL);
	report_pages(md, pages, n);
	for (i = 0; i < n; i++)
		__free_page(pages[i]);
	kvfree(pages);
	return n;
}

static long pcp_pages_on(void *unused)
{
	return pcp_pages();
}

void memout_sweep_tick(struct memout_dev *md)
{
	unsigned int cpu;

	if (!sweep_min_pages || !md->sweep_last ||
	    time_before(jiffies, md->sweep_next))
		return;
	md->sweep_next = jiffies + msecs_to_jiffies(sweep_interval_ms);
	cpus_read_lock();
	for_each_online_cpu(cpu) {
		long now = work_on_cpu(cpu, pcp_pages_on, NULL);
		long last = md->sweep_last[cpu];

		if (now < sweep_min_pages || abs(now - last) < sweep_min_pages / 2)
			continue;
		work_on_cpu(cpu, sweep_this_cpu, md);
		md->sweep_last[cpu] = work_on_cpu(cpu, pcp_pages_on, NULL);
	}
	cpus_read_unlock();
}

int memout_sweep_init(struct memout_dev *md)
{
	md->sweep_last = kcalloc(nr_cpu_ids, sizeof(*md->sweep_last), GFP_KERNEL);
	return md->sweep_last ? 0 : -ENOMEM;
}

void memout_sweep_exit(struct memout_dev *md)
{
	kfree(md->sweep_last);
	md->sweep_last = NULL;
}
