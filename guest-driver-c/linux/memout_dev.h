/* SPDX-License-Identifier: GPL-2.0 */
/*
 * memout.ko: forwards a Linux guest's page allocator traffic to the memout host server.
 *
 * The module speaks the ring ABI of memout_abi.h (shared with memout's own guests, no copy)
 * over a transport that gives it the channel (info page, ring, scratch area) and a doorbell:
 * memout_ivshmem.c for QEMU's ivshmem-doorbell device. The ring code never touches the
 * transport directly.
 */
#ifndef MEMOUT_DEV_H
#define MEMOUT_DEV_H

#include <linux/atomic.h>
#include <linux/mutex.h>
#include <linux/page_reporting.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "../include/memout_abi.h"

struct memout_dev;

/* Room paid ahead for the fast path's next refill, in pages (memout_fast.c). */
#define MEMOUT_FAST_AHEAD 512

/* The exit-free fast path (memout_fast.c), if the host offers it. */
struct memout_fast {
	bool on;
	bool used;			/* /dev/memout took frames through it */
	u32 nr_cpus;
	u32 mag_slots;
	u32 stack_slots;
	void *mags;
	void *stacks;
	u64 allocs;			/* frames popped */
	u64 frees;			/* frames pushed */
	u64 bad;			/* popped frames the balloon did not hold */
};

/* What a transport provides to the ring code. */
struct memout_transport {
	const char *name;
	/* Tell the host that requests are waiting (must not sleep). */
	void (*kick)(struct memout_dev *md);
};

struct memout_dev {
	struct device *dev;
	const struct memout_transport *tr;
	/* The channel as the guest maps it; the host's view starts at info->info_gpa. */
	void *chan;
	size_t chan_size;
	struct memout_info info;	/* validated copy */
	struct memout_ring_header *ring;
	struct memout_desc *desc;
	void *scratch;
	u32 req_prod;			/* guest-owned producer index */
	struct mutex lock;		/* one request in flight */
	wait_queue_head_t wq;		/* woken by the transport's interrupt */
	bool hello_done;
	bool broken;			/* the host stopped answering */

	/* Free page reporting. */
	struct page_reporting_dev_info prdev;
	bool reporting;
	struct delayed_work expedite;
	struct workqueue_struct *wq_expedite;
	u64 reported_pages;
	u64 report_errors;

	/* The balloon (memout_balloon.c): pages given to the host, by pfn. */
	struct mutex balloon_lock;	/* the balloon, its buffers, and grants */
	struct xarray balloon;
	u64 balloon_pages;
	u64 bad_grants;			/* frames the host granted that were not its to grant */
	struct memout_extent *balloon_ext;	/* extents of one request */
	struct page **balloon_batch;		/* pages of one request */
	struct work_struct msg_work;
	u32 msg_seen;			/* host_msg_prod the message work last took in */
	bool balloon_on;

	/* Sweeps of the per-CPU free lists (memout_sweep.c). */
	long *sweep_last;		/* per CPU: its list length after the last sweep */
	unsigned long sweep_next;	/* jiffies: no sweep before */
	u64 swept_pages;

	/* /dev/memout (memout_chardev.c): pages mapped by processes. */
	atomic64_t dev_pages;

	/* Under balloon_lock. */
	struct memout_fast fast;
};

int memout_chan_init(struct memout_dev *md, void *chan, size_t size);
void *memout_chan_ptr(struct memout_dev *md, u64 gpa, u64 len);
int memout_hello(struct memout_dev *md);
int memout_free_reported(struct memout_dev *md, const struct memout_extent *ext,
			 unsigned int n, u64 *freed);
int memout_free_frames(struct memout_dev *md, const struct memout_extent *ext,
		       unsigned int n, u64 *freed);
int memout_alloc_frames(struct memout_dev *md, u64 pages, u32 flags, struct memout_extent *out,
			unsigned int cap, unsigned int *n, u64 *granted);
int memout_stats(struct memout_dev *md, struct memout_stats *out);
void memout_interrupt(struct memout_dev *md);

int memout_balloon_init(struct memout_dev *md);
void memout_balloon_interrupt(struct memout_dev *md);
void memout_balloon_exit(struct memout_dev *md);
unsigned long memout_balloon_grant(struct memout_dev *md, unsigned long want,
				   struct page **out);
void memout_balloon_return(struct memout_dev *md, struct page **pages, unsigned long n);

int memout_fast_init(struct memout_dev *md);
unsigned long __memout_fast_grant(struct memout_dev *md, unsigned long want, struct page **out);
unsigned long memout_fast_grant(struct memout_dev *md, unsigned long want, struct page **out);
unsigned long memout_fast_give(struct memout_dev *md, struct page **pages, unsigned long n);
u64 memout_fast_cached(struct memout_dev *md);
void memout_fast_drain(struct memout_dev *md);

int memout_chardev_attach(struct memout_dev *md);
void memout_chardev_detach(struct memout_dev *md);

int memout_sweep_init(struct memout_dev *md);
void memout_sweep_tick(struct memout_dev *md);
void memout_sweep_exit(struct memout_dev *md);

int memout_reporting_start(struct memout_dev *md);
void memout_reporting_stop(struct memout_dev *md);

void memout_dev_init(struct memout_dev *md, struct device *dev,
		     const struct memout_transport *tr);
int memout_attach(struct memout_dev *md, void *chan, size_t size);
void memout_detach(struct memout_dev *md);

#endif /* MEMOUT_DEV_H */
