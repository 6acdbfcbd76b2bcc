// SPDX-License-Identifier: GPL-2.0
/*
 * The request ring: checks the host's info page once, then submits one request at a time
 * and waits for the host's answer (woken by the transport's interrupt, re-checked every
 * 10 ms in case an interrupt is lost).
 */
#include <linux/device.h>
#include <linux/jiffies.h>
#include <linux/sched.h>
#include <linux/string.h>

#include "memout_dev.h"

#define MEMOUT_ANSWER_TIMEOUT_MS 2000
#define MEMOUT_MAX_EXTENTS 4096

static const char *status_name(u32 s)
{
	static const char * const names[] = {
		"ok", "bad-opcode", "invalid", "bad-pointer", "quota", "no-memory",
		"not-owned", "version", "ring-index", "no-hello", "host-error",
	};

	return s < ARRAY_SIZE(names) ? names[s] : "unknown";
}

static int status_errno(u32 s)
{
	switch (s) {
	case MEMOUT_OK:
		return 0;
	case MEMOUT_E_QUOTA:
		return -EDQUOT;
	case MEMOUT_E_NO_MEMORY:
		return -ENOMEM;
	case MEMOUT_E_NOT_OWNED:
		return -EPERM;
	case MEMOUT_E_BAD_POINTER:
		return -EFAULT;
	case MEMOUT_E_VERSION:
		return -EPROTO;
	case MEMOUT_E_INVALID:
	case MEMOUT_E_BAD_OPCODE:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* The guest's mapping of [gpa, gpa + len) in the host's view of the channel, or NULL. */
void *memout_chan_ptr(struct memout_dev *md, u64 gpa, u64 len)
{
	u64 off;

	if (gpa < md->info.info_gpa)
		return NULL;
	off = gpa - md->info.info_gpa;
	if (off > md->chan_size || len > md->chan_size - off)
		return NULL;
	return md->chan + off;
}

int memout_chan_init(struct memout_dev *md, void *chan, size_t size)
{
	struct memout_ring_header *rh;
	u64 ring_len;
	u32 slots;

	if (size < sizeof(md->info)) {
		dev_err(md->dev, "channel of %zu bytes is too small for an info page\n", size);
		return -EINVAL;
	}
	memcpy(&md->info, chan, sizeof(md->info));
	if (md->info.magic != MEMOUT_INFO_MAGIC) {
		dev_err(md->dev, "no memout info page in the channel (magic %#llx): is memout serving this device?\n",
			md->info.magic);
		return -ENODEV;
	}
	if (md->info.abi_version != MEMOUT_ABI_VERSION) {
		dev_err(md->dev, "host speaks ABI %u, this module %u\n",
			md->info.abi_version, MEMOUT_ABI_VERSION);
		return -EPROTO;
	}
	md->chan = chan;
	md->chan_size = size;
	slots = md->info.ring_slots;
	if (!slots || (slots & (slots - 1)) || slots > 0xffff) {
		dev_err(md->dev, "ring of %u slots is not a power of two up to 65536\n", slots);
		return -EINVAL;
	}
	ring_len = sizeof(*rh) + (u64)slots * sizeof(struct memout_desc);
	rh = memout_chan_ptr(md, md->info.ring_gpa, ring_len);
	if (!rh || READ_ONCE(rh->magic) != MEMOUT_RING_MAGIC) {
		dev_err(md->dev, "ring at %#llx is outside the channel or has no magic\n",
			md->info.ring_gpa);
		return -EINVAL;
	}
	md->scratch = memout_chan_ptr(md, md->info.scratch_gpa, md->info.scratch_size);
	if (!md->info.scratch_gpa || !md->scratch ||
	    md->info.scratch_size < sizeof(struct memout_stats)) {
		dev_err(md->dev, "the channel has no scratch area for extent lists\n");
		return -EINVAL;
	}
	md->ring = rh;
	md->desc = (struct memout_desc *)(rh + 1);
	/* The producer index lives on in shared memory across module reloads. */
	md->req_prod = READ_ONCE(rh->req_prod);
	return 0;
}

void memout_interrupt(struct memout_dev *md)
{
	wake_up(&md->wq);
	memout_balloon_interrupt(md);
}

static bool answered(struct memout_dev *md, u32 want)
{
	return (s32)(READ_ONCE(md->ring->rsp_prod) - want) >= 0;
}

/* Posts @d, rings the doorbell and waits for the answer, which is copied back into @d. */
static int submit(struct memout_dev *md, struct memout_desc *d)
{
	unsigned long end = jiffies + msecs_to_jiffies(MEMOUT_ANSWER_TIMEOUT_MS);
	struct memout_desc *slot;
	u32 ring_status;

	lockdep_assert_held(&md->lock);
	if (md->broken)
		return -EIO;
	slot = &md->desc[md->req_prod & (md->info.ring_slots - 1)];
	memcpy(slot, d, sizeof(*d));
	md->req_prod++;
	/* The descriptor is visible to the host before the index that publishes it. */
	wmb();
	WRITE_ONCE(md->ring->req_prod, md->req_prod);
	md->tr->kick(md);
	while (!answered(md, md->req_prod)) {
		if (time_after(jiffies, end)) {
			md->broken = true;
			dev_err(md->dev, "host did not answer request %u within %d ms; the channel is no longer used\n",
				md->req_prod, MEMOUT_ANSWER_TIMEOUT_MS);
			return -ETIMEDOUT;
		}
		wait_event_timeout(md->wq, answered(md, md->req_prod),
				   msecs_to_jiffies(10));
	}
	/* Read the answer only after seeing the index that published it. */
	rmb();
	ring_status = READ_ONCE(md->ring->ring_status);
	if (ring_status != MEMOUT_OK) {
		md->broken = true;
		dev_err(md->dev, "host reports ring error %s; the channel is no longer used\n",
			status_name(ring_status));
		return -EIO;
	}
	memcpy(d, slot, sizeof(*d));
	if (d->status != MEMOUT_OK)
		dev_err_ratelimited(md->dev, "host refused opcode %u: %s\n", d->opcode,
				    status_name(d->status));
	return status_errno(d->status);
}

int memout_hello(struct memout_dev *md)
{
	struct memout_desc d = {
		.opcode = MEMOUT_OP_HELLO,
		.arg0 = MEMOUT_ABI_VERSION,
	};
	int err;

	mutex_lock(&md->lock);
	err = submit(md, &d);
	mutex_unlock(&md->lock);
	if (!err)
		md->hello_done = true;
	return err;
}

static int free_list(struct memout_dev *md, const struct memout_extent *ext, unsigned int n,
		     u16 flags, u64 *freed)
{
	struct memout_desc d = {
		.opcode = MEMOUT_OP_FREE,
		.flags = flags,
		.nr_extents = n,
		.extents_gpa = md->info.scratch_gpa,
	};
	int err;

	if (!n || n > MEMOUT_MAX_EXTENTS ||
	    (u64)n * sizeof(*ext) > md->info.scratch_size)
		return -EINVAL;
	mutex_lock(&md->lock);
	memcpy(md->scratch, ext, n * sizeof(*ext));
	err = submit(md, &d);
	mutex_unlock(&md->lock);
	*freed = err ? 0 : d.pages;
	return err;
}

int memout_free_reported(struct memout_dev *md, const struct memout_extent *ext,
			 unsigned int n, u64 *freed)
{
	return free_list(md, ext, n, MEMOUT_FREE_REPORTED, freed);
}

int memout_free_frames(struct memout_dev *md, const struct memout_extent *ext,
		       unsigned int n, u64 *freed)
{
	return free_list(md, ext, n, 0, freed);
}

int memout_alloc_frames(struct memout_dev *md, u64 pages, u32 flags, struct memout_extent *out,
			unsigned int cap, unsigned int *n, u64 *granted)
{
	struct memout_desc d = {
		.opcode = MEMOUT_OP_ALLOC,
		.flags = MEMOUT_ALLOC_PARTIAL | flags,
		.nr_extents = cap,
		.pages = pages,
		.extents_gpa = md->info.scratch_gpa,
	};
	int err;

	*n = 0;
	*granted = 0;
	if (!cap || cap > MEMOUT_MAX_EXTENTS ||
	    (u64)cap * sizeof(*out) > md->info.scratch_size)
		return -EINVAL;
	mutex_lock(&md->lock);
	err = submit(md, &d);
	/* The host's counts are checked, not trusted: never more extents than asked room for. */
	if (!err && d.nr_extents <= cap) {
		memcpy(out, md->scratch, d.nr_extents * sizeof(*out));
		*n = d.nr_extents;
		*granted = d.pages;
	} else if (!err) {
		err = -EPROTO;
	}
	mutex_unlock(&md->lock);
	return err;
}

int memout_stats(struct memout_dev *md, struct memout_stats *out)
{
	struct memout_desc d = {
		.opcode = MEMOUT_OP_STATS,
		.arg0 = md->info.scratch_gpa,
	};
	int err;

	mutex_lock(&md->lock);
	err = submit(md, &d);
	if (!err)
		memcpy(out, md->scratch, sizeof(*out));
	mutex_unlock(&md->lock);
	return err;
}
