// SPDX-License-Identifier: GPL-2.0
/*
 * Transport for QEMU: the ivshmem-doorbell PCI device. BAR2 is the channel (shared memory
 * that memout's ivshmem server hands QEMU), the BAR0 doorbell register signals memout's
 * peer, and memout answers with an MSI-X interrupt. Also the module's entry points.
 */
#include <linux/atomic.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>

#include "memout_dev.h"

#define IVSHMEM_VENDOR_ID 0x1af4
#define IVSHMEM_DEVICE_ID 0x1110
#define IVSHMEM_REG_DOORBELL 0x0c
#define IVSHMEM_BAR_REGS 0
#define IVSHMEM_BAR_SHM 2

struct memout_ivshmem {
	struct memout_dev md;
	void __iomem *regs;
	bool irq;
};

/* Free page reporting takes one device; so does this module. */
static atomic_t memout_bound = ATOMIC_INIT(0);

static void ivshmem_kick(struct memout_dev *md)
{
	struct memout_ivshmem *iv = container_of(md, struct memout_ivshmem, md);

	iowrite32(MEMOUT_IVSHMEM_HOST_PEER << 16 | MEMOUT_IVSHMEM_VECTOR,
		  iv->regs + IVSHMEM_REG_DOORBELL);
}

static const struct memout_transport ivshmem_transport = {
	.name = "ivshmem",
	.kick = ivshmem_kick,
};

static irqreturn_t ivshmem_irq(int irq, void *data)
{
	memout_interrupt(data);
	return IRQ_HANDLED;
}

static int memout_ivshmem_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct memout_ivshmem *iv;
	resource_size_t start, len;
	void *chan;
	int err;

	if (atomic_cmpxchg(&memout_bound, 0, 1)) {
		dev_err(&pdev->dev, "memout already serves another device; ignoring this one\n");
		return -EBUSY;
	}
	iv = devm_kzalloc(&pdev->dev, sizeof(*iv), GFP_KERNEL);
	err = iv ? pcim_enable_device(pdev) : -ENOMEM;
	if (err)
		goto out;
	err = pcim_iomap_regions(pdev, BIT(IVSHMEM_BAR_REGS), "memout");
	if (err) {
		dev_err(&pdev->dev, "cannot map the ivshmem registers: %d\n", err);
		goto out;
	}
	iv->regs = pcim_iomap_table(pdev)[IVSHMEM_BAR_REGS];
	start = pci_resource_start(pdev, IVSHMEM_BAR_SHM);
	len = pci_resource_len(pdev, IVSHMEM_BAR_SHM);
	if (!len) {
		dev_err(&pdev->dev, "ivshmem device has no shared memory BAR\n");
		err = -ENODEV;
		goto out;
	}
	chan = devm_memremap(&pdev->dev, start, len, MEMREMAP_WB);
	if (IS_ERR(chan)) {
		err = PTR_ERR(chan);
		goto out;
	}
	memout_dev_init(&iv->md, &pdev->dev, &ivshmem_transport);
	err = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (err < 0) {
		dev_warn(&pdev->dev, "no MSI-X vector (%d); waiting for the host by polling\n",
			 err);
	} else {
		err = devm_request_irq(&pdev->dev, pci_irq_vector(pdev, 0), ivshmem_irq, 0,
				       "memout", &iv->md);
		if (err) {
			pci_free_irq_vectors(pdev);
			goto out;
		}
		iv->irq = true;
	}
	err = memout_attach(&iv->md, chan, len);
	if (err) {
		if (iv->irq)
			devm_free_irq(&pdev->dev, pci_irq_vector(pdev, 0), &iv->md);
		pci_free_irq_vectors(pdev);
		goto out;
	}
	return 0;
out:
	atomic_set(&memout_bound, 0);
	return err;
}

static void memout_ivshmem_remove(struct pci_dev *pdev)
{
	struct memout_ivshmem *iv = pci_get_drvdata(pdev);

	memout_detach(&iv->md);
	if (iv->irq)
		devm_free_irq(&pdev->dev, pci_irq_vector(pdev, 0), &iv->md);
	pci_free_irq_vectors(pdev);
	atomic_set(&memout_bound, 0);
}

static const struct pci_device_id memout_ivshmem_ids[] = {
	{ PCI_DEVICE(IVSHMEM_VENDOR_ID, IVSHMEM_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, memout_ivshmem_ids);

static struct pci_driver memout_ivshmem_driver = {
	.name = "memout",
	.id_table = memout_ivshmem_ids,
	.probe = memout_ivshmem_probe,
	.remove = memout_ivshmem_remove,
};

static int __init memout_init(void)
{
	int err = pci_register_driver(&memout_ivshmem_driver);

	if (!err && !atomic_read(&memout_bound))
		pr_info("memout: no ivshmem device served by memout yet; waiting for one\n");
	return err;
}

static void __exit memout_exit(void)
{
	pci_unregister_driver(&memout_ivshmem_driver);
}

module_init(memout_init);
module_exit(memout_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("memout: forwards a guest's free memory to the memout host server");
