// SPDX-License-Identifier: GPL-2.0
/*
 * Free page reporting: the kernel hands the module blocks of free pages (2 MiB and up by
 * default), which it FREEs through the ring with MEMOUT_FREE_REPORTED: the host drops their
 * memory at once, and a block the guest allocates again reads as zeroes.
 *
 * The kernel waits 2 s after the first free before it reports. With expedite_ms set, the
 * module checks every expedite_ms whether a report is pending and runs the kernel's own
 * reporting work now instead of after that delay (the work item belongs to the module's
 * page_reporting_dev_info, so this only changes when it runs).
 */
#include <linux/device.h>
#include <linux/module.h>
#include <linux/scatterlist.h>

#include "memout_dev.h"

static unsigned int expedite_ms = 50;
module_param(expedite_ms, uint, 0444);
MODULE_PARM_DESC(expedite_ms,
		 "Run pending free page reports after this many ms instead of the kernel's 2 s (0: kernel's delay)");

static unsigned int report_order;
module_param(report_order, uint, 0444);
MODULE_PARM_DESC(report_order,
		 "Smallest block reported, as a page order (0: the kernel's default, pageblock order)");

/* mm/page_reporting.c: the state in which reporting work is queued and waiting. */
#define MEMOUT_PAGE_REPORTING_REQUESTED 1

static int memout_report(struct page_reporting_dev_info *prdev,
			 struct scatterlist *sgl, unsigned int nents)
{
	struct memout_dev *md = container_of(prdev, struct memout_dev, prdev);
	struct memout_extent ext[PAGE_REPORTING_CAPACITY];
	struct scatterlist *sg;
	unsigned int i;
	u64 freed;
	int err;

	if (nents > ARRAY_SIZE(ext))
		return -EINVAL;
	for_each_sg(sgl, sg, nents, i) {
		ext[i].gpa = page_to_phys(sg_page(sg));
		ext[i].pages = sg->length >> PAGE_SHIFT;
	}
	err = memout_free_reported(md, ext, nents, &freed);
	if (err) {
		md->report_errors++;
		dev_err_ratelimited(md->dev, "reporting %u free blocks failed: %d\n", nents, err);
		return err;
	}
	md->reported_pages += freed;
	return 0;
}

static void memout_expedite(struct work_struct *work)
{
	struct memout_dev *md = container_of(to_delayed_work(work), struct memout_dev, expedite);

	if (atomic_read(&md->prdev.state) == MEMOUT_PAGE_REPORTING_REQUESTED)
		mod_delayed_work(system_wq, &md->prdev.work, 0);
	memout_sweep_tick(md);
	/* Host messages, in case an interrupt was lost. */
	memout_balloon_interrupt(md);
	queue_delayed_work(md->wq_expedite, &md->expedite, msecs_to_jiffies(expedite_ms));
}

int memout_reporting_start(struct memout_dev *md)
{
	int err;

	md->prdev.report = memout_report;
	md->prdev.order = report_order;
	err = page_reporting_register(&md->prdev);
	if (err) {
		dev_err(md->dev, "cannot register for free page reporting (%d): is virtio-balloon reporting already?\n",
			err);
		return err;
	}
	md->reporting = true;
	INIT_DELAYED_WORK(&md->expedite, memout_expedite);
	if (!expedite_ms)
		return 0;
	/* Its own queue: a sweep waits for work on every CPU's system queue. */
	md->wq_expedite = alloc_workqueue("memout", WQ_UNBOUND, 1);
	if (!md->wq_expedite || memout_sweep_init(md)) {
		dev_err(md->dev, "no memory for the expedite worker; reports keep the kernel's delay\n");
		if (md->wq_expedite)
			destroy_workqueue(md->wq_expedite);
		md->wq_expedite = NULL;
		return 0;
	}
	queue_delayed_work(md->wq_expedite, &md->expedite, msecs_to_jiffies(expedite_ms));
	return 0;
}

void memout_reporting_stop(struct memout_dev *md)
{
	if (!md->reporting)
		return;
	/* Stop touching the reporting work before the kernel tears it down. */
	if (md->wq_expedite) {
		cancel_delayed_work_sync(&md->expedite);
		destroy_workqueue(md->wq_expedite);
		md->wq_expedite = NULL;
		memout_sweep_exit(md);
	}
	page_reporting_unregister(&md->prdev);
	md->reporting = false;
}
