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

/* ---- Host→guest messages and the pool ---- */

#define POOL_MAX 1024
static struct memout_extent pool[POOL_MAX];
static uint32_t pool_n;
static uint64_t pool_total;
static memout_release_fn release_fn;
static void *release_ctx;

void memout_on_release(memout_release_fn fn, void *ctx)
{
    release_fn = fn;
    release_ctx = ctx;
}

uint64_t memout_limit_pages(void) { return ring ? ring->quota_pages : 0; }
uint64_t memout_release_wanted(void) { return ring ? ring->release_pages : 0; }
uint64_t memout_pool_pages(void) { return pool_total; }

static int free_one(struct memout_extent e)
{
    struct memout_extent_list l = {.count = 1, .capacity = 1, .ext = &e};
    return memout_free(&l);
}

int memout_pool_put(const struct memout_extent *e)
{
    if (pool_n == POOL_MAX)
        return free_one(*e);
    pool[pool_n++] = *e;
    pool_total += e->pages;
    return 0;
}

uint64_t memout_pool_take(uint64_t pages, struct memout_extent *out)
{
    if (pool_n == 0 || pages == 0)
        return 0;
    struct memout_extent *last = &pool[pool_n - 1];
    uint64_t n = last->pages < pages ? last->pages : pages;
    out->gpa = last->gpa + (last->pages - n) * MEMOUT_PAGE_SIZE;
    out->pages = n;
    last->pages -= n;
    if (last->pages == 0)
        pool_n--;
    pool_total -= n;
    return n;
}

/* Frees up to `want` pool frames to the host in one doorbell; returns the pages freed. */
static uint64_t pool_release(uint64_t want)
{
    struct memout_extent batch[64];
    uint32_t n = 0;
    uint64_t got = 0;
    while (got < want && n < 64) {
        uint64_t t = memout_pool_take(want - got, &batch[n]);
        if (t == 0)
            break;
        got += t;
        n++;
    }
    if (n == 0)
        return 0;
    struct memout_extent_list l = {.count = n, .capacity = n, .ext = batch};
    if (memout_free(&l) != 0) {
        for (uint32_t i = 0; i < n; i++) /* keep them: nothing is lost */
            memout_pool_put(&batch[i]);
        return 0;
    }
    return got;
}

int memout_poll(void)
{
    if (!ring || !(info->features & MEMOUT_FEATURE_HOST_MESSAGES))
        return 0;
    uint32_t p = ring->host_msg_prod;
    if (p == ring->host_msg_cons)
        return 0;
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* fields written before host_msg_prod */
    uint64_t want;
    /* Every FREE is a doorbell, after which the host has rewritten release_pages. */
    while ((want = ring->release_pages) > 0) {
        uint64_t got = pool_release(want);
        if (got == 0 && release_fn)
            got = release_fn(want, release_ctx);
        if (got == 0)
            break;
    }
    ring->host_msg_cons = p;
    return 1;
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
