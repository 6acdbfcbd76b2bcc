// SPDX-License-Identifier: GPL-2.0
/*
 * The balloon: the host's messages in the ring header (quota_pages, release_pages, bumped
 * host_msg_prod, then an interrupt). Asked to release pages, the module takes them from the
 * guest's allocator and FREEs them: they become the host's. When the quota rises above what
 * the guest holds, it ALLOCs them back and returns them to the allocator. Pages held are
 * tracked by pfn, so a grant of a frame the module does not hold is refused, not freed.
 * /dev/memout (memout_chardev.c) draws its frames from here: granted by the host.
 */
#include <linux/delay.h>
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

/* Gives @n pages (@n <= MEMOUT_BALLOON_BATCH) to the host; the balloon then holds them. */
static int give(struct memout_dev *md, struct page **pages, unsigned int n)
{
	struct memout_extent *ext = md->balloon_ext;
	unsigned int i, k;
	u64 freed;

	for (i = 0, k = 0; i < n; i++) {
		u64 gpa = page_to_phys(pages[i]);

		if (k && ext[k - 1].gpa + (ext[k - 1].pages << PAGE_SHIFT) == gpa) {
			ext[k - 1].pages++;
			continue;
		}
		ext[k].gpa = gpa;
		ext[k].pages = 1;
		k++;
	}
	if (memout_free_frames(md, ext, k, &freed) || freed != n)
		return -EIO;
	for (i = 0; i < n; i++)
		xa_store(&md->balloon, page_to_pfn(pages[i]), pages[i], GFP_KERNEL);
	md->balloon_pages += n;
	return 0;
}

/*
 * Asks the host for up to @want (<= MEMOUT_BALLOON_BATCH) of the frames it holds; those the
 * balloon holds move to @out. Returns how many.
 */
static unsigned int take(struct memout_dev *md, unsigned int want, u32 flags, struct page **out)
{
	struct memout_extent *ext = md->balloon_ext;
	unsigned int n, i, got = 0;
	u64 granted, p;

	if (memout_alloc_frames(md, want, flags, ext, MEMOUT_BALLOON_BATCH, &n, &granted))
		return 0;
	for (i = 0; i < n; i++) {
		for (p = 0; p < ext[i].pages; p++) {
			unsigned long pfn = (ext[i].gpa >> PAGE_SHIFT) + p;
			struct page *page = got < want ? xa_erase(&md->balloon, pfn) : NULL;

			if (!page) {
				dev_err_ratelimited(md->dev, "host granted pfn %#lx, which the balloon does not hold or was not asked for\n",
						    pfn);
				md->bad_grants++;
				continue;
			}
			out[got++] = page;
			md->balloon_pages--;
		}
	}
	return got;
}

/* Takes up to @want pages from the allocator and gives them to the host; returns how many. */
static u64 inflate(struct memout_dev *md, u64 want)
{
	struct page **batch = md->balloon_batch;
	u64 done = 0;
	unsigned int n, i;

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
		if (give(md, batch, n)) {
			for (i = 0; i < n; i++)
				__free_page(batch[i]);
			break;
		}
		done += n;
	}
	return done;
}

/* Asks the host for up to @want of the pages it holds back and frees them; returns how many. */
static u64 deflate(struct memout_dev *md, u64 want)
{
	struct page **batch = md->balloon_batch;
	u64 done = 0;
	unsigned int n, i;

	while (done < want) {
		n = take(md, min_t(u64, want - done, MEMOUT_BALLOON_BATCH), 0, batch);
		if (!n)
			break;
		for (i = 0; i < n; i++)
			__free_page(batch[i]);
		done += n;
	}
	return done;
}

/* Pages the host counts as the guest's: outside the balloon, or cached in the fast path. */
static u64 held_pages(struct memout_dev *md)
{
	return ram_pages(md) - md->balloon_pages + memout_fast_cached(md);
}

/*
 * Brings the balloon to what the host asks now (release_pages, quota_pages in the ring header,
 * which the host refreshes on every doorbell), leaving the fast path its frames and room.
 * Called with balloon_lock held.
 */
static void rebalance(struct memout_dev *md)
{
	u64 quota = READ_ONCE(md->ring->quota_pages);
	u64 release = READ_ONCE(md->ring->release_pages);
	u64 held = held_pages(md), got;
	/* Room paid ahead for the fast path's next refill stays the fast path's. */
	u64 ahead = md->fast.used ? MEMOUT_FAST_AHEAD : 0;

	if (release) {
		got = inflate(md, release);
		if (got < release)
			dev_warn_ratelimited(md->dev, "host asked for %llu pages, the guest gave %llu\n",
					     release, got);
	} else if (quota > held + ahead && md->balloon_pages) {
		deflate(md, min(quota - held - ahead, md->balloon_pages));
	}
}

/*
 * Frames for /dev/memout: up to @want pages the host grants (ALLOC), out of those the
 * balloon holds. Beyond the quota the guest first gives the host as many of its free pages
 * (the host decides which frames come back). With the fast path, the request says it ran
 * dry and the guest pays MEMOUT_FAST_AHEAD pages more, so the host refills the magazines
 * from that room. Returns how many are in @out.
 */
unsigned long memout_balloon_grant(struct memout_dev *md, unsigned long want,
				   struct page **out)
{
	unsigned long got = 0;
	unsigned int ask, n, ahead = 0;
	u32 flags = 0;
	u64 quota;

	mutex_lock(&md->balloon_lock);
	if (md->fast.on) {
		md->fast.used = true;
		flags = MEMOUT_ALLOC_FASTPATH_EMPTY;
		ahead = MEMOUT_FAST_AHEAD;
	}
	while (got < want) {
		ask = min_t(unsigned long, want - got, MEMOUT_BALLOON_BATCH);
		/* Within the quota the host grants what it holds; beyond, the guest pays first. */
		quota = READ_ONCE(md->ring->quota_pages);
		if (quota < held_pages(md) + ask && inflate(md, ask + ahead) < ask)
			break;
		ahead = 0;
		n = take(md, ask, flags, out + got);
		/* What the host put in the magazines meanwhile is as good. */
		if (n < ask && flags)
			n += __memout_fast_grant(md, ask - n, out + got + n);
		got += n;
		if (n < ask)
			break;
	}
	mutex_unlock(&md->balloon_lock);
	return got;
}

/*
 * /dev/memout's pages back to the host (FREE); then the balloon gives the guest's allocator
 * what the quota allows, before this returns.
 */
void memout_balloon_return(struct memout_dev *md, struct page **pages, unsigned long n)
{
	unsigned long i, done;
	unsigned int k;

	mutex_lock(&md->balloon_lock);
	/* This CPU's free stack first: no exit; the host takes them in a batch. */
	for (done = memout_fast_give(md, pages, n); done < n; done += k) {
		k = min_t(unsigned long, n - done, MEMOUT_BALLOON_BATCH);
		if (give(md, pages + done, k)) {
			/* The host did not take them: the guest keeps them. */
			for (i = 0; i < k; i++)
				__free_page(pages[done + i]);
		}
	}
	/* Back to the quota: the guest gets again what it may hold. */
	rebalance(md);
	mutex_unlock(&md->balloon_lock);
}

static void memout_messages(struct work_struct *work)
{
	struct memout_dev *md = container_of(work, struct memout_dev, msg_work);
	u32 prod = READ_ONCE(md->ring->host_msg_prod);

	/* Interrupts from now on re-run this work only for a newer message. */
	WRITE_ONCE(md->msg_seen, prod);

	/* The fields are state, read after the count that published them. */
	rmb();
	mutex_lock(&md->balloon_lock);
	rebalance(md);
	mutex_unlock(&md->balloon_lock);
	WRITE_ONCE(md->ring->host_msg_cons, prod);
}

/*
 * Every answer to the module's own requests interrupts too: only a message newer than the one
 * the work last took in queues it again, so a request the host refuses is not retried in a
 * loop.
 */
void memout_balloon_interrupt(struct memout_dev *md)
{
	if (READ_ONCE(md->balloon_on) &&
	    READ_ONCE(md->ring->host_msg_prod) != READ_ONCE(md->msg_seen))
		queue_work(system_unbound_wq, &md->msg_work);
}

int memout_balloon_init(struct memout_dev *md)
{
	xa_init(&md->balloon);
	mutex_init(&md->balloon_lock);
	INIT_WORK(&md->msg_work, memout_messages);
	md->balloon_ext = kcalloc(MEMOUT_BALLOON_BATCH, sizeof(*md->balloon_ext), GFP_KERNEL);
	md->balloon_batch = kcalloc(MEMOUT_BALLOON_BATCH, sizeof(*md->balloon_batch), GFP_KERNEL);
	if (!md->balloon_ext || !md->balloon_batch) {
		kfree(md->balloon_ext);
		kfree(md->balloon_batch);
		md->balloon_ext = NULL;
		return -ENOMEM;
	}
	md->msg_seen = READ_ONCE(md->ring->host_msg_cons);
	WRITE_ONCE(md->balloon_on, true);
	/* Messages posted before the module came. */
	memout_balloon_interrupt(md);
	return 0;
}

void memout_balloon_exit(struct memout_dev *md)
{
	unsigned long pfn;
	struct page *page;
	int round;

	if (!md->balloon_ext)
		return;
	WRITE_ONCE(md->balloon_on, false);
	cancel_work_sync(&md->msg_work);
	/*
	 * Take back what the host holds, so no page leaves with the module: the fast path's
	 * frames first, then the rest. A refill the host started meanwhile takes room that the
	 * next round finds in the magazines.
	 */
	mutex_lock(&md->balloon_lock);
	for (round = 0; round < 10 && md->balloon_pages; round++) {
		memout_fast_drain(md);
		deflate(md, md->balloon_pages);
		if (!md->fast.on)
			break;
		if (md->balloon_pages)
			msleep(20);
	}
	mutex_unlock(&md->balloon_lock);
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
