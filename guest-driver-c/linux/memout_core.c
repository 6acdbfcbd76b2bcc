// SPDX-License-Identifier: GPL-2.0
/*
 * Attaching to a memout channel: check it, say HELLO, start forwarding frees and serving
 * /dev/memout; detaching stops both and says what was forwarded. Also the device's sysfs
 * statistics.
 */
#include <linux/device.h>
#include <linux/sysfs.h>

#include "memout_dev.h"

static ssize_t reported_bytes_show(struct device *dev, struct device_attribute *attr,
				   char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", md->reported_pages << PAGE_SHIFT);
}
static DEVICE_ATTR_RO(reported_bytes);

static ssize_t report_errors_show(struct device *dev, struct device_attribute *attr,
				  char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", md->report_errors);
}
static DEVICE_ATTR_RO(report_errors);

static ssize_t swept_bytes_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", md->swept_pages << PAGE_SHIFT);
}
static DEVICE_ATTR_RO(swept_bytes);

static ssize_t balloon_bytes_show(struct device *dev, struct device_attribute *attr,
				  char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", md->balloon_pages << PAGE_SHIFT);
}
static DEVICE_ATTR_RO(balloon_bytes);

static ssize_t dev_bytes_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lld\n", atomic64_read(&md->dev_pages) << PAGE_SHIFT);
}
static DEVICE_ATTR_RO(dev_bytes);

static ssize_t bad_grants_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", md->bad_grants);
}
static DEVICE_ATTR_RO(bad_grants);

static ssize_t fast_stats_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);
	struct memout_fast f;

	mutex_lock(&md->balloon_lock);
	f = md->fast;
	mutex_unlock(&md->balloon_lock);
	return sysfs_emit(buf, "on %d\nallocs %llu\nfrees %llu\nbad %llu\n", f.on, f.allocs,
			  f.frees, f.bad);
}
static DEVICE_ATTR_RO(fast_stats);

static ssize_t host_stats_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct memout_dev *md = dev_get_drvdata(dev);
	struct memout_stats s;
	int err = memout_stats(md, &s);

	if (err)
		return err;
	return sysfs_emit(buf,
			  "quota_pages %llu\nallocated_pages %llu\nresident_pages %llu\nfreed_pages %llu\n",
			  s.quota_pages, s.allocated_pages, s.resident_pages, s.freed_pages);
}
static DEVICE_ATTR_RO(host_stats);

static struct attribute *memout_attrs[] = {
	&dev_attr_reported_bytes.attr,
	&dev_attr_report_errors.attr,
	&dev_attr_swept_bytes.attr,
	&dev_attr_balloon_bytes.attr,
	&dev_attr_dev_bytes.attr,
	&dev_attr_bad_grants.attr,
	&dev_attr_host_stats.attr,
	&dev_attr_fast_stats.attr,
	NULL,
};

static const struct attribute_group memout_group = {
	.name = "memout",
	.attrs = memout_attrs,
};

void memout_dev_init(struct memout_dev *md, struct device *dev,
		     const struct memout_transport *tr)
{
	md->dev = dev;
	md->tr = tr;
	mutex_init(&md->lock);
	init_waitqueue_head(&md->wq);
	dev_set_drvdata(dev, md);
}

int memout_attach(struct memout_dev *md, void *chan, size_t size)
{
	int err;

	err = memout_chan_init(md, chan, size);
	if (err)
		return err;
	err = memout_hello(md);
	if (err) {
		dev_err(md->dev, "HELLO to the memout host failed: %d\n", err);
		return err;
	}
	err = memout_fast_init(md);
	if (err)
		return err;
	err = memout_balloon_init(md);
	if (err)
		return err;
	err = memout_reporting_start(md);
	if (err)
		goto balloon;
	err = memout_chardev_attach(md);
	if (err)
		goto reporting;
	err = sysfs_create_group(&md->dev->kobj, &memout_group);
	if (err)
		goto chardev;
	dev_info(md->dev, "memout: attached over %s, ring of %u slots, region %llu MiB\n",
		 md->tr->name, md->info.ring_slots, md->info.region_size >> 20);
	return 0;

chardev:
	memout_chardev_detach(md);
reporting:
	memout_reporting_stop(md);
balloon:
	memout_balloon_exit(md);
	return err;
}

void memout_detach(struct memout_dev *md)
{
	sysfs_remove_group(&md->dev->kobj, &memout_group);
	memout_chardev_detach(md);
	memout_reporting_stop(md);
	memout_balloon_exit(md);
	dev_info(md->dev, "memout: detached; %llu MiB reported free, %llu report errors\n",
		 md->reported_pages >> (20 - PAGE_SHIFT), md->report_errors);
}
