// SPDX-License-Identifier: GPL-2.0
/*
 * Sweeping the per-CPU free lists. Pages a task frees go first to its CPU's per-CPU lists
 * (up to their "high" mark: tens of MiB on a 1 GiB guest) and reach the buddy lists, where
 * free page reporting looks, only when those overflow. So after a large free, that much free
 * memory is never reported. The lists are kept per order (0 to 3, and pageblock order for
 * THP) and migrate type. A sweep counts the blocks on each of one CPU's lists (under the
 * list's lock), takes that many by allocating blocks of that order and type without reclaim
 * (which takes them from that list first), reports them to the host as FREE_REPORTED, and
 * frees them again: they stay on the lists, now without host memory.
 * On a guest whose RAM spans several zones, an allocation may be served from a higher zone
 * than the list counted; such pages are reported too, and the sweep simply covers less.
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

/* Sums @count(zone, arg) over every populated zone of every online node. */
static unsigned int sum_zones(unsigned int (*count)(struct zone *zone, unsigned int arg),
			      unsigned int arg)
{
	unsigned int n = 0;
	int nid, z;

	for_each_online_node(nid) {
		pg_data_t *pgdat = NODE_DATA(nid);

		for (z = 0; z < MAX_NR_ZONES; z++)
			if (populated_zone(&pgdat->node_zones[z]))
				n += count(&pgdat->node_zones[z], arg);
	}
	return n;
}

static unsigned int zone_pcp_pages(struct zone *zone, unsigned int unused)
{
	return READ_ONCE(this_cpu_ptr(zone->per_cpu_pageset)->count);
}

/* Pages on this CPU's per-CPU free lists, all zones of all nodes (a racy snapshot). */
static unsigned int pcp_pages(void)
{
	return sum_zones(zone_pcp_pages, 0);
}

/* A page the sweep holds, and its order. */
struct swept {
	struct page *page;
	unsigned int order;
};

static int cmp_pfn(const void *a, const void *b)
{
	unsigned long x = page_to_pfn(((const struct swept *)a)->page);
	unsigned long y = page_to_pfn(((const struct swept *)b)->page);

	return x < y ? -1 : x > y;
}

/* Reports @held (sorted by pfn), coalesced into runs. */
static void report_pages(struct memout_dev *md, struct swept *held, unsigned int n)
{
	struct memout_extent *ext = kmalloc_array(MEMOUT_SWEEP_EXTENTS, sizeof(*ext), GFP_KERNEL);
	unsigned int i, k = 0;
	u64 freed;

	if (!ext)
		return;
	for (i = 0; i < n; i++) {
		u64 gpa = page_to_phys(held[i].page);
		u64 pages = 1ull << held[i].order;

		if (k && ext[k - 1].gpa + (ext[k - 1].pages << PAGE_SHIFT) == gpa) {
			ext[k - 1].pages += pages;
			continue;
		}
		if (k == MEMOUT_SWEEP_EXTENTS) {
			if (!memout_free_reported(md, ext, k, &freed))
				md->swept_pages += freed;
			k = 0;
		}
		ext[k].gpa = gpa;
		ext[k].pages = pages;
		k++;
	}
	if (k && !memout_free_reported(md, ext, k, &freed))
		md->swept_pages += freed;
	kfree(ext);
}

/*
 * The per-CPU list an allocation of @order and migrate type @mt takes from first: as
 * mm/page_alloc.c's order_to_pindex() in 6.1 (one list per type for orders up to
 * PAGE_ALLOC_COSTLY_ORDER; with THP, two for pageblock order, movable or not).
 */
static unsigned int pindex(unsigned int order, int mt)
{
#ifdef CONFIG_TRANSPARENT_HUGEPAGE
	if (order > PAGE_ALLOC_COSTLY_ORDER)
		return NR_LOWORDER_PCP_LISTS + (mt == MIGRATE_MOVABLE);
#endif
	return MIGRATE_PCPTYPES * order + mt;
}

static unsigned int zone_list_len(struct zone *zone, unsigned int idx)
{
	struct per_cpu_pages *pcp = this_cpu_ptr(zone->per_cpu_pageset);
	struct list_head *pos;
	unsigned long flags;
	unsigned int n = 0;

	spin_lock_irqsave(&pcp->lock, flags);
	list_for_each(pos, &pcp->lists[idx])
		n++;
	spin_unlock_irqrestore(&pcp->lock, flags);
	return n;
}

/* Blocks on this CPU's list @idx, all zones (counted under each list's lock). */
static unsigned int pcp_list_len(unsigned int idx)
{
	return sum_zones(zone_list_len, idx);
}

/*
 * Takes the blocks on this CPU's list for (@order, @mt) by allocating that many of that
 * order and type, into @held from @n, at most @max; returns the new count. Without reclaim
 * or warnings: under pressure the sweep just ends early.
 */
static unsigned int take(struct swept *held, unsigned int n, unsigned int max,
			 unsigned int order, int mt)
{
	static const gfp_t type_gfp[MIGRATE_PCPTYPES] = {
		[MIGRATE_UNMOVABLE] = 0,
		[MIGRATE_MOVABLE] = __GFP_MOVABLE,
		[MIGRATE_RECLAIMABLE] = __GFP_RECLAIMABLE,
	};
	unsigned int want = min(max, n + pcp_list_len(pindex(order, mt)));

	while (n < want) {
		struct page *p = alloc_pages(GFP_NOWAIT | __GFP_NOWARN | __GFP_NOMEMALLOC |
					     type_gfp[mt], order);

		if (!p)
			break;
		held[n].page = p;
		held[n].order = order;
		n++;
	}
	return n;
}

/* Runs on the CPU it sweeps (work_on_cpu). Returns the pages swept. */
static long sweep_this_cpu(void *arg)
{
	struct memout_dev *md = arg;
	unsigned int max = pcp_pages(), n = 0, i, order;
	struct swept *held;
	long pages = 0;
	int mt;

	held = kvmalloc_array(max, sizeof(*held), GFP_KERNEL);
	if (!held)
		return 0;
	for (order = 0; order <= PAGE_ALLOC_COSTLY_ORDER; order++)
		for (mt = 0; mt < MIGRATE_PCPTYPES; mt++)
			n = take(held, n, max, order, mt);
#ifdef CONFIG_TRANSPARENT_HUGEPAGE
	n = take(held, n, max, pageblock_order, MIGRATE_MOVABLE);
	n = take(held, n, max, pageblock_order, MIGRATE_UNMOVABLE);
#endif
	sort(held, n, sizeof(*held), cmp_pfn, NULL);
	report_pages(md, held, n);
	for (i = 0; i < n; i++) {
		pages += 1l << held[i].order;
		__free_pages(held[i].page, held[i].order);
	}
	kvfree(held);
	return pages;
}

static long pcp_pages_on(void *unused)
{
	return pcp_pages();
}

void memout_sweep_tick(struct memout_dev *md)
{
	unsigned int cpu;

	/* A host that stopped answering gets nothing more. */
	if (!sweep_min_pages || !md->sweep_last || md->broken ||
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
