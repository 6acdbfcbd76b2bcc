/* Benchmark guest. The run argument is (mode | param << 8); the VMM times the stretch between
 * checkpoint 1 and checkpoint 2 (host clock, one exit each, ~30 us, included against memout).
 *   1 populate-memout  param MiB: ALLOC param MiB, first-touch every page
 *   2 populate-plain   param MiB: first-touch param MiB of a plain memslot (no memout)
 *   3 rpc-pipelined    param iterations: each doorbell carries FREE(previous page) + ALLOC(1)
 *   4 rpc-unpipelined  param iterations: ALLOC(1) and FREE(1) with a doorbell each
 *   5 rpc-batch        param rounds: each doorbell carries FREE(512 single-page extents) +
 *                      ALLOC(512 pages, up to 512 extents)
 *   6 doorbell-bare    param iterations: ring the doorbell with nothing posted
 *   7 shrink-memout    param MiB: ALLOC and touch param MiB, then time one FREE of all of it
 *   8 swap             param: MiB (bits 0-16) and zero-page percentage (bits 17-23): ALLOC
 *                      and fill; the host evicts it all (timed by the host); then read one
 *                      word of every page back (checkpoints 2..3), then verify every word
 *   9 fast-pairs       param thousand single-page alloc/free pairs through the exit-free
 *                      fast path (after a warm-up), each page written once
 *  10 fast-touch       param rounds: take 256 pages through the fast path, write every word
 *                      of each, give them back
 *  11 plain-touch      the same rounds on a plain memslot with the guest's own free list (a
 *                      static VM's allocator recycling its pages): the baseline of 10 */
#include "common.h"

#define REGION_GPA MEMOUT_HARNESS_REGION_GPA /* the plain memslot sits there too */
#define BATCH 512

static struct memout_extent ext[64];
static struct memout_extent batch_a[BATCH], batch_f[BATCH];

static void touch(uint64_t gpa, uint64_t pages)
{
    for (uint64_t p = 0; p < pages; p++)
        *(volatile uint64_t *)(uintptr_t)(gpa + p * MEMOUT_PAGE_SIZE) = p;
}

/* Whether page `page` is one of the `pct` % zero pages (spread evenly by a hash). */
static int is_zero_page(uint64_t page, uint64_t pct)
{
    return (page * 2654435761ull >> 7) % 100 < pct;
}

/* The content of page number `page` of the swap bench: zero, or pseudo-random words seeded by
 * its number. With `fill`, writes it at `gpa`; otherwise returns 1 if `gpa` differs from it. */
static uint64_t swap_page(uint64_t gpa, uint64_t page, uint64_t zero_pct, int fill)
{
    volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)gpa;
    int zero = is_zero_page(page, zero_pct);
    uint64_t x = page * 0x9e3779b97f4a7c15ull + 1;
    for (int k = 0; k < 512; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t want = zero ? 0 : x;
        if (fill)
            w[k] = want;
        else if (w[k] != want)
            return 1;
    }
    return 0;
}

static void init(void)
{
    int r = memout_init();
    CHECK(r == 0, 10, "memout_init: %s\n", memout_status_name(r));
}

static struct memout_desc alloc_desc(uint64_t pages, struct memout_extent *e, uint32_t cap)
{
    struct memout_desc d = {.opcode = MEMOUT_OP_ALLOC, .pages = pages, .nr_extents = cap,
                            .extents_gpa = (uint64_t)(uintptr_t)e};
    return d;
}

static struct memout_desc free_desc(struct memout_extent *e, uint32_t n)
{
    struct memout_desc d = {.opcode = MEMOUT_OP_FREE, .nr_extents = n,
                            .extents_gpa = (uint64_t)(uintptr_t)e};
    return d;
}

static void ok2(struct memout_desc *d, int r)
{
    CHECK(r == 0 && d[0].status == 0 && d[1].status == 0, 11, "batch failed: %d %u %u\n", r,
          d[0].status, d[1].status);
}

int guest_main(void)
{
    uint32_t arg = rt_arg(), mode = arg & 0xff, param = arg >> 8;
    uint64_t pages = (uint64_t)param * 256;
    switch (mode) {
    case 1: {
        init();
        struct memout_extent_list l = {.capacity = 64, .ext = ext};
        rt_checkpoint(1);
        int r = memout_alloc(pages, &l);
        CHECK(r == 0, 12, "alloc: %s\n", memout_status_name(r));
        for (uint32_t i = 0; i < l.count; i++)
            touch(ext[i].gpa, ext[i].pages);
        rt_checkpoint(2);
        break;
    }
    case 2:
        rt_checkpoint(1);
        touch(REGION_GPA, pages);
        rt_checkpoint(2);
        break;
    case 3: {
        init();
        struct memout_extent_list l = {.capacity = 1, .ext = &ext[0]};
        CHECK(memout_alloc(1, &l) == 0, 13, "first alloc\n");
        rt_checkpoint(1);
        for (uint32_t i = 0; i < param; i++) {
            ext[1] = ext[0]; /* free the page we hold, allocate the next in one doorbell */
            struct memout_desc d[2] = {free_desc(&ext[1], 1), alloc_desc(1, &ext[0], 1)};
            ok2(d, memout_submit(d, 2));
        }
        rt_checkpoint(2);
        break;
    }
    case 4: {
        init();
        struct memout_extent_list l = {.capacity = 1, .ext = ext};
        rt_checkpoint(1);
        for (uint32_t i = 0; i < param; i++) {
            CHECK(memout_alloc(1, &l) == 0, 14, "alloc\n");
            CHECK(memout_free(&l) == 0, 15, "free\n");
        }
        rt_checkpoint(2);
        break;
    }
    case 5: {
        init();
        struct memout_desc a = alloc_desc(BATCH, batch_a, BATCH);
        CHECK(memout_submit(&a, 1) == 0 && a.status == 0, 16, "first batch\n");
        rt_checkpoint(1);
        for (uint32_t i = 0; i < param; i++) {
            uint32_t n = 0; /* free what we hold one page per extent, as scattered frees are */
            for (uint32_t e = 0; e < a.nr_extents; e++)
                for (uint64_t p = 0; p < batch_a[e].pages && n < BATCH; p++) {
                    batch_f[n].gpa = batch_a[e].gpa + p * MEMOUT_PAGE_SIZE;
                    batch_f[n++].pages = 1;
                }
            struct memout_desc d[2] = {free_desc(batch_f, n), alloc_desc(BATCH, batch_a, BATCH)};
            ok2(d, memout_submit(d, 2));
            a = d[1];
        }
        rt_checkpoint(2);
        break;
    }
    case 6:
        init();
        rt_checkpoint(1);
        for (uint32_t i = 0; i < param; i++)
            rt_out32(MEMOUT_PORT_DOORBELL, 0);
        rt_checkpoint(2);
        break;
    case 7: {
        init();
        struct memout_extent_list l = {.capacity = 64, .ext = ext};
        CHECK(memout_alloc(pages, &l) == 0, 17, "alloc\n");
        for (uint32_t i = 0; i < l.count; i++)
            touch(ext[i].gpa, ext[i].pages);
        rt_checkpoint(1);
        int r = memout_free(&l);
        rt_checkpoint(2);
        CHECK(r == 0, 18, "free: %s\n", memout_status_name(r));
        break;
    }
    case 8: {
        /* param: MiB in bits 0-16, percentage of zero pages in bits 17-23. Every other page is
         * full of pseudo-random words (realistic content: the store's zero scan reads it all
         * only for zero pages, and every data page is written in full). */
        uint64_t mib = param & 0x1ffff, zero_pct = param >> 17;
        uint64_t n = mib * 256;
        init();
        struct memout_extent_list l = {.capacity = 64, .ext = ext};
        CHECK(memout_alloc(n, &l) == 0, 19, "alloc\n");
        uint64_t page = 0, zeros = 0;
        for (uint32_t i = 0; i < l.count; i++)
            for (uint64_t p = 0; p < ext[i].pages; p++, page++) {
                zeros += is_zero_page(page, zero_pct);
                swap_page(ext[i].gpa + p * MEMOUT_PAGE_SIZE, page, zero_pct, 1);
            }
        rt_checkpoint(1);
        rt_out32(RT_PORT_EVICT_ALL, 0); /* evict everything */
        rt_checkpoint(2);
        uint64_t sum = 0;
        for (uint32_t i = 0; i < l.count; i++)
            for (uint64_t p = 0; p < ext[i].pages; p++)
                sum += *(volatile uint64_t *)(uintptr_t)(ext[i].gpa + p * MEMOUT_PAGE_SIZE);
        rt_checkpoint(3);
        (void)sum;
        /* Untimed: every word of every page must be back. */
        uint64_t bad = 0;
        page = 0;
        for (uint32_t i = 0; i < l.count; i++)
            for (uint64_t p = 0; p < ext[i].pages; p++, page++) {
                bad += swap_page(ext[i].gpa + p * MEMOUT_PAGE_SIZE, page, zero_pct, 0);
            }
        CHECK(bad == 0, 20, "%lu pages came back wrong\n", bad);
        rt_printf("bench: swap %lu MiB, %lu zero pages (%lu%%)\n", mib, zeros, zero_pct);
        break;
    }
    case 9: {
        init();
        uint64_t gpa;
        for (int i = 0; i < 1000; i++) { /* warm-up: the first asks the host for a magazine */
            CHECK(memout_alloc_page(&gpa) == 0, 21, "alloc_page\n");
            CHECK(memout_free_page(gpa) == 0, 22, "free_page\n");
        }
        rt_checkpoint(1);
        for (uint64_t i = 0; i < (uint64_t)param * 1000; i++) {
            CHECK(memout_alloc_page(&gpa) == 0, 21, "alloc_page\n");
            *(volatile uint64_t *)(uintptr_t)gpa = i;
            CHECK(memout_free_page(gpa) == 0, 22, "free_page\n");
        }
        rt_checkpoint(2);
        break;
    }
    case 10:
    case 11: {
        static uint64_t held[256], freelist[256];
        uint32_t nfree = 0;
        if (mode == 10)
            init();
        for (int i = 0; mode == 11 && i < 256; i++) /* the static VM's pages */
            freelist[nfree++] = REGION_GPA + (uint64_t)i * MEMOUT_PAGE_SIZE;
        rt_checkpoint(1);
        for (uint32_t r = 0; r < param; r++) {
            for (int i = 0; i < 256; i++) {
                if (mode == 10)
                    CHECK(memout_alloc_page(&held[i]) == 0, 23, "alloc_page\n");
                else
                    held[i] = freelist[--nfree];
                touch(held[i], 1);
                volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)held[i];
                for (int k = 1; k < 512; k++)
                    w[k] = r + k;
            }
            for (int i = 0; i < 256; i++) {
                if (mode == 10)
                    CHECK(memout_free_page(held[i]) == 0, 24, "free_page\n");
                else
                    freelist[nfree++] = held[i];
            }
        }
        rt_checkpoint(2);
        break;
    }
    default:
        rt_printf("bench: unknown mode %u\n", mode);
        return 2;
    }
    return 0;
}
