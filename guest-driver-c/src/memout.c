/* memout guest driver. Runs at CPL3 with IOPL=3: the doorbell is an `out` to a port, which
 * makes the vCPU exit to the VMM, and the host processes the ring before the `out` returns. */
#include "memout.h"
#include "../runtime/runtime.h"

static volatile struct memout_info *info;
static volatile struct memout_ring_header *ring;
static volatile struct memout_desc *slots;
static uint32_t nslots;
static uint32_t prod;

volatile struct memout_ring_header *memout_ring(void) { return ring; }
uint64_t memout_region_base(void) { return info->region_gpa; }
uint64_t memout_region_size(void) { return info->region_size; }

static void doorbell(void)
{
    rt_out32(MEMOUT_PORT_DOORBELL, prod);
}

int memout_submit(struct memout_desc *descs, uint32_t n)
{
    uint32_t i, done = 0;
    while (done < n) {
        uint32_t batch = n - done < nslots ? n - done : nslots;
        uint32_t first = prod;
        for (i = 0; i < batch; i++)
            slots[(first + i) % nslots] = descs[done + i];
        prod = first + batch;
        ring->req_prod = prod;
        doorbell();
        if (ring->ring_status != MEMOUT_OK)
            return -(int)ring->ring_status;
        for (i = 0; i < batch; i++)
            descs[done + i] = slots[(first + i) % nslots];
        done += batch;
    }
    return 0;
}

static int call(struct memout_desc *d)
{
    int r = memout_submit(d, 1);
    return r ? r : -(int)d->status;
}

int memout_init(void)
{
    info = (volatile struct memout_info *)(uintptr_t)MEMOUT_INFO_PAGE_GPA;
    if (info->magic != MEMOUT_INFO_MAGIC)
        return -MEMOUT_E_INVALID;
    if (info->abi_version != MEMOUT_ABI_VERSION)
        return -MEMOUT_E_VERSION;
    ring = (volatile struct memout_ring_header *)(uintptr_t)info->ring_gpa;
    slots = (volatile struct memout_desc *)(ring + 1);
    nslots = info->ring_slots;
    prod = ring->req_prod;
    struct memout_desc d = {.opcode = MEMOUT_OP_HELLO, .arg0 = MEMOUT_ABI_VERSION};
    return call(&d);
}

static int alloc(uint64_t pages, struct memout_extent_list *out, uint16_t flags, uint64_t *granted)
{
    struct memout_desc d = {
        .opcode = MEMOUT_OP_ALLOC,
        .flags = flags,
        .pages = pages,
        .nr_extents = out->capacity,
        .extents_gpa = (uint64_t)(uintptr_t)out->ext,
    };
    int r = call(&d);
    out->count = r ? 0 : d.nr_extents;
    if (granted)
        *granted = r ? 0 : d.pages;
    return r;
}

int memout_alloc(uint64_t pages, struct memout_extent_list *out)
{
    return alloc(pages, out, 0, 0);
}

int memout_alloc_partial(uint64_t pages, struct memout_extent_list *out, uint64_t *granted)
{
    return alloc(pages, out, MEMOUT_ALLOC_PARTIAL, granted);
}

int memout_free(const struct memout_extent_list *list)
{
    struct memout_desc d = {
        .opcode = MEMOUT_OP_FREE,
        .nr_extents = list->count,
        .extents_gpa = (uint64_t)(uintptr_t)list->ext,
    };
    return call(&d);
}

int memout_stats(struct memout_stats *out)
{
    struct memout_desc d = {.opcode = MEMOUT_OP_STATS, .arg0 = (uint64_t)(uintptr_t)out};
    return call(&d);
}

const char *memout_status_name(int s)
{
    static const char *names[] = {"ok", "bad-opcode", "invalid", "bad-pointer", "quota",
                                  "no-memory", "not-owned", "version", "ring-index",
                                  "no-hello", "host-error"};
    if (s < 0)
        s = -s;
    return s < (int)(sizeof(names) / sizeof(names[0])) ? names[s] : "unknown";
}
