// SPDX-License-Identifier: GPL-2.0
/*
 * The balloon: the host's messages in the ring header (quota_pages, release_pages, bumped
 * host_msg_prod, then an interrupt). Asked to release pages, the module takes them from the
 * guest's allocator and FREEs them: they become the host's. When the quota rises above what
 * the guest holds, it ALLOCs them back and returns them to the allocator. Pages held are
 * tracked by pfn, so a grant of a frame the module does not hold is refused, not freed.
 */
#include <linux/device.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/xarray.h>

#include "memout_dev.h"

/*
 * The balloon never takes the guest below this much available memory (MemAvailable): a
 * release the guest cannot give without starving itself ends short, and says so.
 */
static unsigned int reserve_mib = 32;
module_param(reserve_mib, uint, 0444);
MODULE_PARM_DESC(reserve_mib, "Memory the balloon always leaves the guest, in MiB");

/* Pages per FREE or ALLOC (extents coalesce runs, so one request is at most this). */
#define MEMOUT_BALLOON_BATCH 4096

static u64 ram_pages(struct memout_dev *md)
{
	return md->info.region_size >> PAGE_SHIFT;
}

/* Takes up to @want pages from the allocator and gives them to the host; returns how many. */
static u64 inflate(struct memout_dev *md, u64 want)
{
	struct memout_extent *ext = md->balloon_ext;
	struct page **batch = md->balloon_batch;
	u64 done = 0, freed;
	unsigned int n, k, i;

	while (done < want) {
		long spare = si_mem_available() - ((long)reserve_mib << (20 - PAGE_SHIFT));

		if (spare <= 0)
			break;
		n = min_t(u64, min_t(u64, want - done, spare), MEMOUT_BALLOON_BATCH);
		for (i = 0; i < n;) {
			const gfp_t gfp = GFP_HIGHUSER | __GFP_NOMEMALLOC | __GFP_NORETRY |
					  __GFP_NOWARN;
			struct page *p = NULL;
			unsigned int j;

			/* 2 MiB at a time while it lasts: far fewer trips to the allocator. */
			if (n - i >= 1u << HUGETLB_PAGE_ORDER)
				p = alloc_pages(gfp, HUGETLB_PAGE_ORDER);
			if (p) {
				split_page(p, HUGETLB_PAGE_ORDER);
				for (j = 0; j < 1u << HUGETLB_PAGE_ORDER; j++)
					batch[i++] = p + j;
				continue;
			}
			p = alloc_page(gfp);
			if (!p)
				break;
			batch[i++] = p;
		}
		n = i;
		if (!n)
			break;
		for (i = 0, k = 0; i < n; i++) {
			u64 gpa = page_to_phys(batch[i]);

			if (k && ext[k - 1].gpa + (ext[k - 1].pages << PAGE_SHIFT) == gpa) {
				ext[k - 1].pages++;
				continue;
			}
			ext[k].gpa = gpa;
			ext[k].pages = 1;
			k++;
		}
		if (memout_free_frames(md, ext, k, &freed) || freed != n) {
			for (i = 0; i < n; i++)
				__free_page(batch[i]);
			break;
		}
		for (i = 0; i < n; i++)
			xa_store(&md->balloon, page_to_pfn(batch[i]), batch[i], GFP_KERNEL);
		md->balloon_pages += n;
		done += n;
	}
	return done;
}

/* Asks the host for up to @want of the pages it holds back and frees them; returns how many. */
static u64 deflate(struct memout_dev *md, u64 want)
{
	struct memout_extent *ext = md->balloon_ext;
	u64 done = 0, granted, p;
	unsigned int n, i;

	while (done < want) {
		u64 ask = min_t(u64, want - done, MEMOUT_BALLOON_BATCH);

		if (memout_alloc_frames(md, ask, ext, MEMOUT_BALLOON_BATCH, &n, &granted) ||
		    !granted)
			break;
		for (i = 0; i < n; i++) {
			for (p = 0; p < ext[i].pages; p++) {
				unsigned long pfn = (ext[i].gpa >> PAGE_SHIFT) + p;
				struct page *page = xa_erase(&md->balloon, pfn);

				if (!page) {
					dev_err_ratelimited(md->dev, "host granted pfn %#lx, which the balloon does not hold\n",
							    pfn);
					continue;
				}
				__free_page(page);
				md->balloon_pages--;
				done++;
			}
		}
	}
	return done;
}

static void memout_messages(struct work_struct *work)
{
	struct memout_dev *md = container_of(work, struct memout_dev, msg_work);
	u32 prod = READ_ONCE(md->ring->host_msg_prod);
	u64 quota, release, held, got;

	/* The fields are state, read after the count that published them. */
	rmb();
	quota = READ_ONCE(md->ring->quota_pages);
	release = READ_ONCE(md->ring->release_pages);
	held = ram_pages(md) - md->balloon_pages;
	if (release) {
		got = inflate(md, release);
		if (got < release)
			dev_warn_ratelimited(md->dev, "host asked for %llu pages, the guest gave %llu\n",
					     release, got);
	} else if (quota > held && md->balloon_pages) {
		deflate(md, min(quota - held, md->balloon_pages));
	}
	WRITE_ONCE(md->ring->host_msg_cons, prod);
}

void memout_balloon_interrupt(struct memout_dev *md)
{
	if (READ_ONCE(md->balloon_on) &&
	    READ_ONCE(md->ring->host_msg_prod) != READ_ONCE(md->ring->host_msg_cons))
		queue_work(system_unbound_wq, &md->msg_work);
}

int memout_balloon_init(struct memout_dev *md)
{
	xa_init(&md->balloon);
	INIT_WORK(&md->msg_work, memout_messages);
	md->balloon_ext = kcalloc(MEMOUT_BALLOON_BATCH, sizeof(*md->balloon_ext), GFP_KERNEL);
	md->balloon_batch = kcalloc(MEMOUT_BALLOON_BATCH, sizeof(*md->balloon_batch), GFP_KERNEL);
	if (!md->balloon_ext || !md->balloon_batch) {
		kfree(md->balloon_ext);
		kfree(md->balloon_batch);
		md->balloon_ext = NULL;
		return -ENOMEM;
	}
	WRITE_ONCE(md->balloon_on, true);
	/* Messages posted before the module came. */
	memout_balloon_interrupt(md);
	return 0;
}

void memout_balloon_exit(struct memout_dev *md)
{
	unsigned long pfn;
	struct page *page;

	if (!md->balloon_ext)
		return;
	WRITE_ONCE(md->balloon_on, false);
	cancel_work_sync(&md->msg_work);
	/* Take back what the host holds, so no page leaves with the module. */
	if (md->balloon_pages)
		deflate(md, md->balloon_pages);
	if (md->balloon_pages) {
		dev_err(md->dev, "host kept %llu balloon pages; they stay out of the guest's allocator\n",
			md->balloon_pages);
		xa_for_each(&md->balloon, pfn, page)
			xa_erase(&md->balloon, pfn);
	}
	xa_destroy(&md->balloon);
	kfree(md->balloon_ext);
	kfree(md->balloon_batch);
	md->balloon_ext = NULL;
}
