/* The demo: allocate 64 MiB from the host, write and verify every page, free half (the host
 * drops that memory at once), allocate again, verify everything still held. Checkpoints let
 * the VMM record host RSS at each step. Exit code 0 only if every check passed. */
#include "common.h"

#define MIB_PAGES(m) ((uint64_t)(m) * 256)

static struct memout_extent ext_a[64], ext_b[64], ext_free[64];

static uint64_t fill_all(struct memout_extent_list *l, uint64_t seed)
{
    uint64_t pages = 0;
    for (uint32_t i = 0; i < l->count; i++) {
        fill_extent(&l->ext[i], seed);
        pages += l->ext[i].pages;
    }
    return pages;
}

static uint64_t check_all(struct memout_extent_list *l, uint64_t seed)
{
    uint64_t bad = 0;
    for (uint32_t i = 0; i < l->count; i++)
        bad += check_extent(&l->ext[i], seed);
    return bad;
}

int guest_main(void)
{
    struct memout_stats st;
    int r = memout_init();
    CHECK(r == 0, 10, "memout_init: %s\n", memout_status_name(r));
    rt_printf("demo: region %lx + %lu MiB, limit %lu MiB\n", memout_region_base(),
              memout_region_size() >> 20, memout_limit_pages() >> 8);
    /* No release callback: a resize during the demo is met from the driver's pool (empty
     * here) and otherwise by eviction; memout_poll() at each step reads the host's messages. */
    memout_poll();
    rt_checkpoint(0);

    struct memout_extent_list a = {.capacity = 64, .ext = ext_a};
    r = memout_alloc(MIB_PAGES(64), &a);
    CHECK(r == 0, 11, "alloc 64 MiB: %s\n", memout_status_name(r));
    rt_printf("demo: got 64 MiB in %u extent(s), first at %lx\n", a.count, a.ext[0].gpa);
    uint64_t pages = fill_all(&a, 0xabcdef);
    uint64_t bad = check_all(&a, 0xabcdef);
    CHECK(bad == 0, 12, "%lu of %lu pages corrupted after first fill\n", bad, pages);
    memout_stats(&st);
    rt_printf("demo: wrote and verified %lu pages; host says %lu resident\n", pages,
              st.resident_pages);
    rt_checkpoint(1);

    /* Free the first half of the pages, splitting extents where needed. */
    struct memout_extent_list f = {.capacity = 64, .ext = ext_free};
    uint64_t left = pages / 2;
    for (uint32_t i = 0; i < a.count && left; i++) {
        uint64_t n = a.ext[i].pages < left ? a.ext[i].pages : left;
        f.ext[f.count].gpa = a.ext[i].gpa;
        f.ext[f.count++].pages = n;
        a.ext[i].gpa += n * MEMOUT_PAGE_SIZE;
        a.ext[i].pages -= n;
        left -= n;
    }
    r = memout_free(&f);
    CHECK(r == 0, 13, "free half: %s\n", memout_status_name(r));
    memout_stats(&st);
    rt_printf("demo: freed %lu pages; host says %lu resident\n", pages / 2, st.resident_pages);
    rt_checkpoint(2);
    memout_poll();

    /* Freeing the same frames again must be refused. */
    r = memout_free(&f);
    CHECK(r == -MEMOUT_E_NOT_OWNED, 14, "double free gave %s\n", memout_status_name(r));

    struct memout_extent_list b = {.capacity = 64, .ext = ext_b};
    r = memout_alloc(MIB_PAGES(32), &b);
    CHECK(r == 0, 15, "alloc 32 MiB again: %s\n", memout_status_name(r));
    /* Frames that come back after a free must read as zeroes, never old contents. */
    for (uint32_t i = 0; i < b.count; i++)
        for (uint64_t p = 0; p < b.ext[i].pages; p += 97) {
            volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(b.ext[i].gpa + p * 4096);
            CHECK(w[0] == 0 && w[511] == 0, 16, "reused frame %lx is not zeroed\n",
                  b.ext[i].gpa + p * 4096);
        }
    fill_all(&b, 0x5eed);
    bad = check_all(&b, 0x5eed) + check_all(&a, 0xabcdef);
    CHECK(bad == 0, 17, "%lu pages corrupted after second allocation\n", bad);
    memout_stats(&st);
    rt_printf("demo: verified all %lu held pages; host says %lu allocated, %lu resident\n",
              st.allocated_pages, st.allocated_pages, st.resident_pages);
    rt_checkpoint(3);
    /* Single pages through the exit-free fast path: the first one asks the host to fill a
     * magazine (one doorbell); after that, alloc/free pairs are plain memory operations. */
    if (memout_fastpath_on()) {
        for (int i = 0; i < 100000; i++) {
            uint64_t gpa;
            r = memout_alloc_page(&gpa);
            CHECK(r == 0, 18, "alloc_page: %s\n", memout_status_name(r));
            *(volatile uint64_t *)(uintptr_t)gpa = (uint64_t)i;
            r = memout_free_page(gpa);
            CHECK(r == 0, 19, "free_page: %s\n", memout_status_name(r));
        }
        struct memout_fast_stats fs;
        memout_fast_stats(&fs);
        rt_printf("demo: 100000 single-page alloc/free pairs, %lu through the doorbell, %lu "
                  "without a VM exit\n", fs.slow_allocs + fs.slow_frees,
                  fs.fast_allocs + fs.fast_frees);
    }
    rt_puts("demo: PASS\n");
    return 0;
}
