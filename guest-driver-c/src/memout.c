/* memout guest driver. Runs at CPL3 with IOPL=3: the doorbell is an `out` to a port, which
 * makes the vCPU exit to the VMM, and the host processes the ring before the `out` returns. */
#include "memout.h"
#include "../runtime/runtime.h"

static volatile struct memout_info *info;
static volatile struct memout_ring_header *ring;
static volatile struct memout_desc *slots;
static uint32_t nslots;
static uint32_t prod;

/* The exit-free fast path (one vCPU: magazine 0 and free stack 0), if the host offers it. */
static volatile struct memout_magazine *mag;
static volatile uint64_t *mag_frames;
static uint32_t mag_mask;
static volatile struct memout_free_stack *fstack;
static volatile uint64_t *fstack_frames;
static uint32_t fstack_slots;
static struct memout_fast_stats fast_stats;

static int alloc(uint64_t pages, struct memout_extent_list *out, uint16_t flags, uint64_t *granted);

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
    int r = call(&d);
    if (r == 0 && (info->features & MEMOUT_FEATURE_FASTPATH) && info->fastpath_gpa) {
        volatile struct memout_fastpath *fp =
            (volatile struct memout_fastpath *)(uintptr_t)info->fastpath_gpa;
        uint32_t ms = fp->mag_slots, ss = fp->stack_slots;
        if (fp->magic == MEMOUT_FASTPATH_MAGIC && fp->version == MEMOUT_FASTPATH_VERSION &&
            fp->nr_cpus >= 1 && ms && !(ms & (ms - 1)) && ss && !(ss & (ss - 1))) {
            mag = (volatile struct memout_magazine *)(uintptr_t)fp->mags_gpa;
            mag_frames = (volatile uint64_t *)(mag + 1);
            mag_mask = ms - 1;
            fstack = (volatile struct memout_free_stack *)(uintptr_t)fp->stacks_gpa;
            fstack_frames = (volatile uint64_t *)(fstack + 1);
            fstack_slots = ss;
        }
    }
    return r;
}

/* ---- The exit-free fast path ----
 * Every step is one compare-and-swap of a 64-bit state word (see memout_abi.h). A lost swap
 * means the host acted meanwhile: read again, a few times, then take the doorbell path. */

#define FAST_TRIES 8

static uint64_t *word(volatile uint64_t *w) { return (uint64_t *)(uintptr_t)w; }

static int cas(volatile uint64_t *w, uint64_t *expect, uint64_t next)
{
    return __atomic_compare_exchange_n(word(w), expect, next, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* A frame the guest freed earlier (its old content stays). */
static int stack_pop(uint64_t *gpa)
{
    uint64_t s = __atomic_load_n(word(&fstack->state), __ATOMIC_ACQUIRE);
    for (int i = 0; i < FAST_TRIES; i++) {
        uint32_t top = (uint32_t)s, taken = (uint32_t)(s >> 32);
        if ((taken & MEMOUT_STACK_BUSY) || top == taken)
            return 0;
        uint32_t below = (top - 1) & MEMOUT_STACK_INDEX_MASK;
        uint64_t f = fstack_frames[below & (fstack_slots - 1)];
        if (cas(&fstack->state, &s, ((uint64_t)taken << 32) | below)) {
            *gpa = f;
            return 1;
        }
    }
    return 0;
}

/* A zero-filled frame the host granted ahead. */
static int mag_pop(uint64_t *gpa)
{
    uint64_t s = __atomic_load_n(word(&mag->state), __ATOMIC_ACQUIRE);
    for (int i = 0; i < FAST_TRIES; i++) {
        uint32_t head = (uint32_t)s, tail = (uint32_t)(s >> 32);
        if (head == tail)
            return 0;
        uint64_t f = mag_frames[head & mag_mask];
        if (cas(&mag->state, &s, ((uint64_t)tail << 32) | (uint32_t)(head + 1))) {
            *gpa = f;
            return 1;
        }
    }
    return 0;
}

/* Pauses a push waits for the host to finish taking the stack (two swaps and a read of the
 * entries) before it frees through the doorbell instead: about as long as a VM exit. */
#define BUSY_SPINS 512

static int stack_push(uint64_t gpa)
{
    uint64_t s = __atomic_load_n(word(&fstack->state), __ATOMIC_ACQUIRE);
    for (int i = 0, spins = 0; i < FAST_TRIES;) {
        uint32_t top = (uint32_t)s, taken = (uint32_t)(s >> 32);
        if (taken & MEMOUT_STACK_BUSY) {
            if (spins++ == BUSY_SPINS)
                return 0;
            __builtin_ia32_pause();
            s = __atomic_load_n(word(&fstack->state), __ATOMIC_ACQUIRE);
            continue;
        }
        i++;
        if (((top - taken) & MEMOUT_STACK_INDEX_MASK) >= fstack_slots)
            return 0;
        fstack_frames[top & (fstack_slots - 1)] = gpa;
        uint32_t above = (top + 1) & MEMOUT_STACK_INDEX_MASK;
        if (cas(&fstack->state, &s, ((uint64_t)taken << 32) | above))
            return 1;
    }
    return 0;
}

int memout_fastpath_on(void) { return mag != 0; }

uint32_t memout_fastpath_cached(void)
{
    if (!mag)
        return 0;
    uint64_t s = __atomic_load_n(word(&mag->state), __ATOMIC_ACQUIRE);
    return (uint32_t)(s >> 32) - (uint32_t)s;
}

void memout_fast_stats(struct memout_fast_stats *out) { *out = fast_stats; }

int memout_alloc_page(uint64_t *gpa)
{
    if (mag && (stack_pop(gpa) || mag_pop(gpa))) {
        fast_stats.fast_allocs++;
        return 0;
    }
    struct memout_extent e;
    struct memout_extent_list l = {.count = 0, .capacity = 1, .ext = &e};
    fast_stats.slow_allocs++;
    int r = alloc(1, &l, mag ? MEMOUT_ALLOC_FASTPATH_EMPTY : 0, 0);
    if (r == 0)
        *gpa = e.gpa;
    /* Refused at the quota while the host says frames are on their way into the magazine
     * (granted already, so they count against the quota): wait for the push. Once it says
     * none are coming, look once more, then ask through the doorbell a last time (frames it
     * could not push went back to the host). */
    for (uint32_t i = 0; r == -MEMOUT_E_QUOTA && mag && i < (1u << 24); i++) {
        if (stack_pop(gpa) || mag_pop(gpa)) {
            fast_stats.fast_allocs++;
            return 0;
        }
        if (__atomic_load_n(word(&mag->granting), __ATOMIC_ACQUIRE) == 0) {
            if (stack_pop(gpa) || mag_pop(gpa)) {
                fast_stats.fast_allocs++;
                return 0;
            }
            r = alloc(1, &l, MEMOUT_ALLOC_FASTPATH_EMPTY, 0);
            if (r == 0)
                *gpa = e.gpa;
            break;
        }
        __builtin_ia32_pause();
    }
    return r;
}

int memout_free_page(uint64_t gpa)
{
    if (mag && stack_push(gpa)) {
        fast_stats.fast_frees++;
        return 0;
    }
    struct memout_extent e = {.gpa = gpa, .pages = 1};
    struct memout_extent_list l = {.count = 1, .capacity = 1, .ext = &e};
    fast_stats.slow_frees++;
    return memout_free(&l);
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

/* ---- Shared segments ---- */

int memout_map_segment(const char *name, uint64_t gpa, uint64_t *bytes)
{
    static char buf[64];
    uint32_t n = 0;
    while (name[n] && n < sizeof(buf))
        n++;
    if (n == 0 || n >= sizeof(buf))
        return -MEMOUT_E_INVALID;
    memcpy(buf, name, n);
    struct memout_desc d = {.opcode = MEMOUT_OP_MAP_SEGMENT,
                            .nr_extents = n,
                            .extents_gpa = (uint64_t)(uintptr_t)buf,
                            .arg0 = gpa};
    int r = call(&d);
    if (r == 0 && bytes)
        *bytes = d.arg1;
    return r;
}

int memout_unmap_segment(uint64_t gpa)
{
    struct memout_desc d = {.opcode = MEMOUT_OP_UNMAP_SEGMENT, .arg0 = gpa};
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
                                  "no-hello", "host-error", "no-segment", "denied",
                                  "in-use"};
    if (s < 0)
        s = -s;
    return s < (int)(sizeof(names) / sizeof(names[0])) ? names[s] : "unknown";
}
