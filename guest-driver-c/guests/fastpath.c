/* Exit-free fast path guest. The run argument is (mode | param << 8):
 *   1 pairs     param thousand alloc/free pairs of single pages after a warm-up; each page
 *               is written and read back. Checkpoints 1 and 2 around the measured pairs.
 *   2 touch     param rounds of: allocate 256 pages, write every word of each, free them all.
 *               Checkpoints 1 and 2 around the rounds.
 *   3 scribble  a hostile guest: allocates through the fast path while writing garbage over
 *               its shared state, then takes every page the host still grants through the
 *               doorbell; prints how many.
 *   4 churn     until the host says finish: keeps 64 pages with a pattern and churns others
 *               through alloc/free, checking the 64 on every pass (the host reclaims and
 *               resizes meanwhile).
 *   5 fill      takes single pages through the fast path, writing each, until the host
 *               refuses; checks every page kept its write; prints how many it got. */
#include "common.h"

#define KEEP 64

static uint64_t region_lo, region_hi;

static void init(void)
{
    int r = memout_init();
    CHECK(r == 0, 10, "memout_init: %s\n", memout_status_name(r));
    CHECK(memout_fastpath_on(), 11, "the host offers no fast path\n");
    region_lo = memout_region_base();
    region_hi = region_lo + memout_region_size();
}

static uint64_t get_page(void)
{
    uint64_t gpa = 0;
    int r = memout_alloc_page(&gpa);
    CHECK(r == 0, 12, "alloc_page: %s\n", memout_status_name(r));
    CHECK(gpa >= region_lo && gpa < region_hi && gpa % MEMOUT_PAGE_SIZE == 0, 13,
          "alloc_page gave %lx, outside the region\n", gpa);
    return gpa;
}

static void put_page(uint64_t gpa)
{
    int r = memout_free_page(gpa);
    CHECK(r == 0, 14, "free_page %lx: %s\n", gpa, memout_status_name(r));
}

static void report(void)
{
    struct memout_fast_stats s;
    memout_fast_stats(&s);
    rt_printf("fast allocs %lu slow allocs %lu fast frees %lu slow frees %lu\n",
              s.fast_allocs, s.slow_allocs, s.fast_frees, s.slow_frees);
}

static void pairs(uint64_t n)
{
    /* Warm-up: the first allocation asks the host to fill the magazine; go on until it has
     * (on a loaded host its worker may take longer than 1000 pairs; bounded, seconds). */
    for (uint64_t i = 0; i < 1000 || (!memout_fastpath_cached() && i < (1ull << 28)); i++)
        put_page(get_page());
    rt_checkpoint(1);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t gpa = get_page();
        volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)gpa;
        *w = i;
        CHECK(*w == i, 15, "page %lx did not keep a write\n", gpa);
        put_page(gpa);
    }
    rt_checkpoint(2);
    report();
}

static void touch_rounds(uint64_t rounds)
{
    static uint64_t held[256];
    rt_checkpoint(1);
    for (uint64_t r = 0; r < rounds; r++) {
        for (int i = 0; i < 256; i++) {
            held[i] = get_page();
            volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)held[i];
            for (int k = 0; k < 512; k++)
                w[k] = r + k;
        }
        for (int i = 0; i < 256; i++)
            put_page(held[i]);
    }
    rt_checkpoint(2);
    report();
}

static void scribble(void)
{
    volatile struct memout_info *info = (volatile struct memout_info *)MEMOUT_INFO_PAGE_GPA;
    volatile struct memout_fastpath *fp =
        (volatile struct memout_fastpath *)(uintptr_t)info->fastpath_gpa;
    volatile struct memout_magazine *mag = (volatile struct memout_magazine *)(uintptr_t)fp->mags_gpa;
    volatile struct memout_free_stack *st =
        (volatile struct memout_free_stack *)(uintptr_t)fp->stacks_gpa;
    volatile uint64_t *mag_e = (volatile uint64_t *)(mag + 1);
    volatile uint64_t *st_e = (volatile uint64_t *)(st + 1);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 2000; round++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        switch (round % 5) {
        case 0: st_e[x % MEMOUT_STACK_SLOTS] = x; break;          /* junk frees */
        case 1: st_e[x % MEMOUT_STACK_SLOTS] = region_lo + (x % 64) * 4096; break;
        case 2: mag_e[x % MEMOUT_MAG_SLOTS] = region_lo; break;    /* frames not granted */
        case 3: st->state += (x & 3) + 1; break;                   /* claim frees it never made */
        case 4: if (round > 1500) mag->state = x; break;           /* finally: wreck it */
        }
        uint64_t gpa;
        if (memout_alloc_page(&gpa) == 0 && (round & 1))
            memout_free_page(gpa);
    }
    /* Then take all the host will grant, through the doorbell: it must stop at the quota.
     * (What the wrecked magazine "pops" is only the guest reading its own memory.) */
    uint64_t got = 0;
    struct memout_extent e;
    struct memout_extent_list l = {.count = 0, .capacity = 1, .ext = &e};
    while (memout_alloc(1, &l) == 0 && got < (1ull << 22))
        got++;
    rt_printf("scribbler got %lu more pages\n", got);
    report();
}

static void fill(void)
{
    static uint64_t got[1 << 16];
    uint64_t n = 0, bad = 0;
    int r;
    while (n < (1u << 16) && (r = memout_alloc_page(&got[n])) == 0) {
        *(volatile uint64_t *)(uintptr_t)got[n] = got[n];
        n++;
    }
    CHECK(n < (1u << 16), 17, "the host never said no\n");
    for (uint64_t i = 0; i < n; i++)
        bad += *(volatile uint64_t *)(uintptr_t)got[i] != got[i];
    CHECK(bad == 0, 18, "%lu pages lost their write\n", bad);
    rt_printf("fill got %lu pages, then: %s\n", n, memout_status_name(r));
    report();
}

static void churn(void)
{
    static uint64_t keep[KEEP];
    for (int i = 0; i < KEEP; i++) {
        int r;
        /* The host may be shrinking it right now: a quota refusal is waited out. */
        while ((r = memout_alloc_page(&keep[i])) == -MEMOUT_E_QUOTA)
            memout_poll();
        CHECK(r == 0, 12, "alloc_page: %s\n", memout_status_name(r));
        struct memout_extent e = {.gpa = keep[i], .pages = 1};
        fill_extent(&e, 0xfeed);
    }
    uint64_t passes = 0;
    while (!rt_in32(RT_PORT_FINISH)) {
        for (int i = 0; i < 256; i++) {
            uint64_t gpa = 0;
            int r = memout_alloc_page(&gpa);
            if (r == -MEMOUT_E_QUOTA)
                break; /* shrunk below what it holds for a moment: try again next pass */
            CHECK(r == 0, 12, "alloc_page: %s\n", memout_status_name(r));
            *(volatile uint64_t *)(uintptr_t)gpa = gpa;
            CHECK(*(volatile uint64_t *)(uintptr_t)gpa == gpa, 15, "page %lx lost a write\n", gpa);
            put_page(gpa);
        }
        for (int i = 0; i < KEEP; i++) {
            struct memout_extent e = {.gpa = keep[i], .pages = 1};
            CHECK(check_extent(&e, 0xfeed) == 0, 16, "kept page %lx lost its data\n", keep[i]);
        }
        memout_poll();
        passes++;
    }
    rt_printf("churn passes %lu\n", passes);
    report();
}

int guest_main(void)
{
    uint32_t arg = rt_arg();
    init();
    switch (arg & 0xff) {
    case 1: pairs((uint64_t)(arg >> 8) * 1000); break;
    case 2: touch_rounds(arg >> 8); break;
    case 3: scribble(); break;
    case 4: churn(); break;
    case 5: fill(); break;
    default: CHECK(0, 2, "unknown mode %u\n", arg & 0xff);
    }
    return 0;
}
