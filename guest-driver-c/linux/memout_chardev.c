// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/memout: explicit allocation for guest processes. mmap() of N bytes (MAP_SHARED,
 * offset 0) takes N bytes of frames the host granted: from the fast path's magazine without
 * an exit while it has them (memout_fast.c), else by ALLOC (through the balloon: within the quota
 * the host grants frames it holds; beyond it the guest first gives the host as many of its
 * free pages) and maps them, zero-filled as the ABI promises. munmap(), or the process's
 * exit, FREEs them: the host drops their memory at once, and the balloon then gives the
 * guest back what its quota allows. The mapping cannot be split, moved, grown or inherited.
 */
#include <linux/device.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>

#include "memout_dev.h"

/* Largest single mapping, in pages (1 GiB). */
#define MEMOUT_MAP_MAX_PAGES (1UL << (30 - PAGE_SHIFT))

/* The attached device, if any; mappings reach it only through this, under the lock. */
static struct memout_dev *chardev_md;
static DEFINE_MUTEX(chardev_lock);

struct memout_map {
	unsigned long n;
	struct page *pages[];
};

/*
 * Gives a mapping's pages back to the host. A page someone still holds a reference to (a
 * pinned page of an I/O in flight) goes to the guest's allocator instead, when that ends.
 */
static void map_release(struct memout_map *m)
{
	unsigned long i, k = 0;

	for (i = 0; i < m->n; i++) {
		if (page_count(m->pages[i]) == 1)
			m->pages[k++] = m->pages[i];
		else
			put_page(m->pages[i]);
	}
	mutex_lock(&chardev_lock);
	if (chardev_md) {
		atomic64_sub(m->n, &chardev_md->dev_pages);
		if (!chardev_md->broken) {
			memout_balloon_return(chardev_md, m->pages, k);
			k = 0;
		}
	}
	mutex_unlock(&chardev_lock);
	/* No host to give them to: the guest keeps them. */
	for (i = 0; i < k; i++)
		__free_page(m->pages[i]);
	kvfree(m);
}

static void memout_vm_close(struct vm_area_struct *vma)
{
	map_release(vma->vm_private_data);
}

static int memout_vm_may_split(struct vm_area_struct *vma, unsigned long addr)
{
	return -EINVAL;
}

static int memout_vm_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

static const struct vm_operations_struct memout_vm_ops = {
	.close = memout_vm_close,
	.may_split = memout_vm_may_split,
	.mremap = memout_vm_mremap,
};

static int memout_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long n = vma_pages(vma), got, left;
	struct memout_map *m;
	struct device *dev;
	int err;

	if (vma->vm_pgoff || !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (n > MEMOUT_MAP_MAX_PAGES)
		return -E2BIG;
	m = kvzalloc(struct_size(m, pages, n), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	mutex_lock(&chardev_lock);
	if (!chardev_md || chardev_md->broken) {
		mutex_unlock(&chardev_lock);
		kvfree(m);
		pr_err_ratelimited("memout: /dev/memout has no host to allocate from\n");
		return -ENODEV;
	}
	dev = chardev_md->dev;
	/* The fast path first (no exit); the ring for what it lacks. */
	got = memout_fast_grant(chardev_md, n, m->pages);
	if (got < n)
		got += memout_balloon_grant(chardev_md, n - got, m->pages + got);
	if (got < n) {
		memout_balloon_return(chardev_md, m->pages, got);
		mutex_unlock(&chardev_lock);
		kvfree(m);
		dev_err_ratelimited(dev, "/dev/memout: host granted %lu of %lu pages; mmap refused\n",
				    got, n);
		return -ENOMEM;
	}
	atomic64_add(n, &chardev_md->dev_pages);
	mutex_unlock(&chardev_lock);

	m->n = n;
	vma->vm_flags |= VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP;
	left = n;
	err = vm_insert_pages(vma, vma->vm_start, m->pages, &left);
	if (err) {
		/* mmap fails, and the caller unmaps what was inserted; the pages go back. */
		map_release(m);
		return err;
	}
	vma->vm_private_data = m;
	vma->vm_ops = &memout_vm_ops;
	return 0;
}

static const struct file_operations memout_fops = {
	.owner = THIS_MODULE,
	.mmap = memout_mmap,
};

static struct miscdevice memout_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "memout",
	.fops = &memout_fops,
	.mode = 0600,
};

int memout_chardev_attach(struct memout_dev *md)
{
	int err;

	mutex_lock(&chardev_lock);
	chardev_md = md;
	mutex_unlock(&chardev_lock);
	err = misc_register(&memout_misc);
	if (err) {
		dev_err(md->dev, "cannot register /dev/memout: %d\n", err);
		mutex_lock(&chardev_lock);
		chardev_md = NULL;
		mutex_unlock(&chardev_lock);
	}
	return err;
}

void memout_chardev_detach(struct memout_dev *md)
{
	misc_deregister(&memout_misc);
	/* Mappings that outlive the device give their pages to the guest when they end. */
	mutex_lock(&chardev_lock);
	chardev_md = NULL;
	mutex_unlock(&chardev_lock);
	if (atomic64_read(&md->dev_pages))
		dev_warn(md->dev, "/dev/memout: %lld pages still mapped stay with the guest\n",
			 atomic64_read(&md->dev_pages));
}
