// SPDX-License-Identifier: GPL-2.0
/*
 * The exit-free fast path (MEMOUT_FEATURE_FASTPATH, memout_abi.h): per CPU, a magazine of
 * frames the host granted ahead (zero-filled) and a free stack of frames the guest gave up,
 * each changed only by compare-and-swap of one 64-bit state word shared with the host, so
 * neither side ever waits for the other. /dev/memout takes its frames here first and gives
 * them back here first; the balloon's ring requests are the fallback.
 *
 * Every frame here is one the balloon accounts for: a frame on a free stack is in the balloon
 * (the host takes it when it likes), a frame popped from a magazine leaves it. All of it runs
 * under balloon_lock; the swaps themselves run with preemption off, on this CPU's own
 * magazine and stack.
 */
#include <linux/device.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/xarray.h>

#include "memout_dev.h"

/* Swaps lost to the host before a step gives up (the caller takes the ring instead). */
#define MEMOUT_FAST_TRIES 8

static struct memout_magazine *mag_of(struct memout_fast *f, unsigned int cpu)
{
	return f->mags + cpu * (sizeof(struct memout_magazine) + 8 * f->mag_slots);
}

static struct memout_free_stack *stack_of(struct memout_fast *f, unsigned int cpu)
{
	return f->stacks + cpu * (sizeof(struct memout_free_stack) + 8 * f->stack_slots);
}

static u64 *entries(void *header_end)
{
	return header_end;
}

int memout_fast_init(struct memout_dev *md)
{
	struct memout_fast *f = &md->fast;
	struct memout_fastpath *fp;
	u64 mag_len, stack_len;

	if (!(md->info.features & MEMOUT_FEATURE_FASTPATH))
		return 0;
	fp = memout_chan_ptr(md, md->info.fastpath_gpa, sizeof(*fp));
	if (!fp || fp->magic != MEMOUT_FASTPATH_MAGIC || fp->version != MEMOUT_FASTPATH_VERSION ||
	    !fp->nr_cpus || fp->nr_cpus > 64 || fp->mag_slots != MEMOUT_MAG_SLOTS ||
	    fp->stack_slots != MEMOUT_STACK_SLOTS) {
		dev_warn(md->dev, "the host's fast-path area is not one this module knows; not using it\n");
		return 0;
	}
	f->nr_cpus = fp->nr_cpus;
	f->mag_slots = fp->mag_slots;
	f->stack_slots = fp->stack_slots;
	mag_len = (u64)f->nr_cpus * (sizeof(struct memout_magazine) + 8 * f->mag_slots);
	stack_len = (u64)f->nr_cpus * (sizeof(struct memout_free_stack) + 8 * f->stack_slots);
	f->mags = memout_chan_ptr(md, fp->mags_gpa, mag_len);
	f->stacks = memout_chan_ptr(md, fp->stacks_gpa, stack_len);
	if (!f->mags || !f->stacks || !IS_ALIGNED((unsigned long)f->mags, 8) ||
	    !IS_ALIGNED((unsigned long)f->stacks, 8)) {
		dev_warn(md->dev, "the host's fast-path area is outside the channel; not using it\n");
		return 0;
	}
	f->on = true;
	dev_info(md->dev, "fast path: %u magazines of %u frames\n", f->nr_cpus, f->mag_slots);
	return 0;
}

/* A frame the guest freed here earlier (its old content is still in it). */
static bool stack_pop(struct memout_fast *f, unsigned int cpu, u64 *gpa)
{
	struct memout_free_stack *st = stack_of(f, cpu);
	/* Pairs with the swap that published the entry below top. */
	u64 s = smp_load_acquire(&st->state);
	int i;

	for (i = 0; i < MEMOUT_FAST_TRIES; i++) {
		u32 top = (u32)s, taken = (u32)(s >> 32);
		u32 below = (top - 1) & MEMOUT_STACK_INDEX_MASK;
		u64 e;

		if ((taken & MEMOUT_STACK_BUSY) || top == taken)
			return false;
		e = READ_ONCE(entries(st + 1)[below & (f->stack_slots - 1)]);
		if (try_cmpxchg64(&st->state, &s, ((u64)taken << 32) | below)) {
			*gpa = e;
			return true;
		}
	}
	return false;
}

/* A frame the host granted ahead. */
static bool mag_pop(struct memout_fast *f, unsigned int cpu, u64 *gpa)
{
	struct memout_magazine *m = mag_of(f, cpu);
	/* Pairs with the host's swap that published the entries it pushed. */
	u64 s = smp_load_acquire(&m->state);
	int i;

	for (i = 0; i < MEMOUT_FAST_TRIES; i++) {
		u32 head = (u32)s, tail = (u32)(s >> 32);
		u64 e;

		if (head == tail)
			return false;
		e = READ_ONCE(entries(m + 1)[head & (f->mag_slots - 1)]);
		if (try_cmpxchg64(&m->state, &s, ((u64)tail << 32) | (u32)(head + 1))) {
			*gpa = e;
			return true;
		}
	}
	return false;
}

static bool stack_push(struct memout_fast *f, unsigned int cpu, u64 gpa)
{
	struct memout_free_stack *st = stack_of(f, cpu);
	/* Pairs with the host's release of the stack after its take. */
	u64 s = smp_load_acquire(&st->state);
	int i;

	for (i = 0; i < MEMOUT_FAST_TRIES; i++) {
		u32 top = (u32)s, taken = (u32)(s >> 32);

		if ((taken & MEMOUT_STACK_BUSY) ||
		    ((top - taken) & MEMOUT_STACK_INDEX_MASK) >= f->stack_slots)
			return false;
		WRITE_ONCE(entries(st + 1)[top & (f->stack_slots - 1)], gpa);
		if (try_cmpxchg64(&st->state, &s,
				  ((u64)taken << 32) | ((top + 1) & MEMOUT_STACK_INDEX_MASK)))
			return true;
	}
	return false;
}

/* Pops a frame on @cpu: its free stack first (@dirty: old content), then its magazine. */
static bool pop(struct memout_fast *f, unsigned int cpu, u64 *gpa, bool *dirty)
{
	*dirty = stack_pop(f, cpu, gpa);
	return *dirty || mag_pop(f, cpu, gpa);
}

/* Takes the balloon's page for a popped frame; NULL (counted) if the balloon has none there. */
static struct page *claim(struct memout_dev *md, u64 gpa)
{
	struct page *page = NULL;

	if (IS_ALIGNED(gpa, PAGE_SIZE) && gpa < md->info.region_size)
		page = xa_erase(&md->balloon, gpa >> PAGE_SHIFT);
	if (!page) {
		md->fast.bad++;
		dev_err_ratelimited(md->dev, "fast path: frame %#llx is not one the balloon holds; skipped\n",
				    gpa);
		return NULL;
	}
	md->balloon_pages--;
	return page;
}

/*
 * Up to @want frames from this CPU's free stack and magazine, zero-filled, into @out; returns
 * how many (fewer when the fast path runs dry: take the rest through the ring). Called with
 * balloon_lock held.
 */
unsigned long __memout_fast_grant(struct memout_dev *md, unsigned long want, struct page **out)
{
	struct memout_fast *f = &md->fast;
	unsigned long got = 0;
	struct page *page;
	unsigned int cpu;
	bool ok, dirty;
	u64 gpa;

	if (!f->on)
		return 0;
	while (got < want) {
		cpu = get_cpu();
		ok = cpu < f->nr_cpus && pop(f, cpu, &gpa, &dirty);
		put_cpu();
		if (!ok)
			break;
		page = claim(md, gpa);
		if (!page)
			continue;
		if (dirty)
			clear_highpage(page);
		out[got++] = page;
	}
	f->allocs += got;
	return got;
}

unsigned long memout_fast_grant(struct memout_dev *md, unsigned long want, struct page **out)
{
	unsigned long got;

	mutex_lock(&md->balloon_lock);
	got = __memout_fast_grant(md, want, out);
	mutex_unlock(&md->balloon_lock);
	return got;
}

/*
 * Pushes up to @n pages onto this CPU's free stack, into the balloon (the host takes them in a
 * batch); returns how many. Called with balloon_lock held.
 */
unsigned long memout_fast_give(struct memout_dev *md, struct page **pages, unsigned long n)
{
	struct memout_fast *f = &md->fast;
	unsigned long i, pfn;
	unsigned int cpu;
	bool ok;

	if (!f->on)
		return 0;
	for (i = 0; i < n; i++) {
		pfn = page_to_pfn(pages[i]);
		if (xa_err(xa_store(&md->balloon, pfn, pages[i], GFP_KERNEL)))
			break;
		cpu = get_cpu();
		ok = cpu < f->nr_cpus && stack_push(f, cpu, PFN_PHYS(pfn));
		put_cpu();
		if (!ok) {
			xa_erase(&md->balloon, pfn);
			break;
		}
		md->balloon_pages++;
	}
	f->frees += i;
	return i;
}

/*
 * Frames in the balloon that the host counts as the guest's: cached in magazines or on their
 * way there, and waiting on free stacks. Called with balloon_lock held.
 */
u64 memout_fast_cached(struct memout_dev *md)
{
	struct memout_fast *f = &md->fast;
	u64 sum = 0, s;
	unsigned int cpu;

	if (!f->on)
		return 0;
	for (cpu = 0; cpu < f->nr_cpus; cpu++) {
		/*
		 * Frames on their way in first: the host clears granting after its push, so what
		 * it pushed is either still counted there or already in the state read after.
		 */
		sum += min_t(u64, READ_ONCE(mag_of(f, cpu)->granting), f->mag_slots);
		/* granting before state: see above. */
		smp_rmb();
		s = READ_ONCE(mag_of(f, cpu)->state);
		sum += min_t(u32, (u32)(s >> 32) - (u32)s, f->mag_slots);
		s = READ_ONCE(stack_of(f, cpu)->state);
		sum += min_t(u32, ((u32)s - (u32)(s >> 32)) & MEMOUT_STACK_INDEX_MASK,
			     f->stack_slots);
	}
	return sum;
}

/*
 * Unload: every frame in the magazines and free stacks goes to the guest's allocator (no one
 * else pops now, so any CPU may empty any stack). Called with balloon_lock held.
 */
void memout_fast_drain(struct memout_dev *md)
{
	struct memout_fast *f = &md->fast;
	struct page *page;
	unsigned int cpu;
	bool dirty;
	u64 gpa;

	if (!f->on)
		return;
	for (cpu = 0; cpu < f->nr_cpus; cpu++) {
		while (pop(f, cpu, &gpa, &dirty)) {
			page = claim(md, gpa);
			if (page)
				__free_page(page);
		}
	}
}
