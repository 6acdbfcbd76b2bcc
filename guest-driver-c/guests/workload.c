/* A guest that uses memory the way a program does: the run argument is the working set in
 * MiB. It allocates it in 1 MiB pieces, fills every page with a pattern unique to this guest,
 * frees every other piece, allocates them again, and verifies everything it holds after each
 * step; then checks that asking beyond its quota is refused. Exit 0 only if all held. */
#include "common.h"

#define MAX_PIECES 2048
#define PIECE_PAGES ((uint64_t)256)

static struct memout_extent piece[MAX_PIECES];

static int alloc_piece(uint32_t i)
{
    struct memout_extent_list l = {.capacity = 1, .ext = &piece[i]};
    return memout_alloc(PIECE_PAGES, &l);
}

static uint64_t verify(uint32_t n, uint64_t seed)
{
    uint64_t bad = 0;
    for (uint32_t i = 0; i < n; i++)
        bad += check_extent(&piece[i], seed + i);
    return bad;
}

int guest_main(void)
{
    uint32_t mib = rt_arg();
    uint64_t seed = 0x9e3779b97f4a7c15ull * (mib + 1);
    int r = memout_init();
    CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
    CHECK(mib > 0 && mib <= MAX_PIECES, 11, "working set %u MiB out of range\n", mib);

    for (uint32_t i = 0; i < mib; i++) {
        r = alloc_piece(i);
        CHECK(r == 0, 12, "alloc piece %u: %s\n", i, memout_status_name(r));
        fill_extent(&piece[i], seed + i);
    }
    uint64_t bad = verify(mib, seed);
    CHECK(bad == 0, 13, "%lu pages corrupted after fill\n", bad);

    for (uint32_t i = 0; i < mib; i += 2) {
        struct memout_extent_list l = {.count = 1, .capacity = 1, .ext = &piece[i]};
        r = memout_free(&l);
        CHECK(r == 0, 14, "free piece %u: %s\n", i, memout_status_name(r));
    }
    for (uint32_t i = 1; i < mib; i += 2)
        bad += check_extent(&piece[i], seed + i);
    CHECK(bad == 0, 15, "%lu pages corrupted after freeing half\n", bad);

    for (uint32_t i = 0; i < mib; i += 2) {
        r = alloc_piece(i);
        CHECK(r == 0, 16, "re-alloc piece %u: %s\n", i, memout_status_name(r));
        fill_extent(&piece[i], seed + i);
    }
    bad = verify(mib, seed);
    CHECK(bad == 0, 17, "%lu pages corrupted after re-allocating\n", bad);

    struct memout_stats st;
    CHECK(memout_stats(&st) == 0, 18, "stats\n");
    CHECK(st.allocated_pages == mib * PIECE_PAGES, 19, "host says %lu allocated, expected %lu\n",
          st.allocated_pages, mib * PIECE_PAGES);
    struct memout_extent over[4];
    struct memout_extent_list l = {.capacity = 4, .ext = over};
    r = memout_alloc(st.quota_pages - st.allocated_pages + 1, &l);
    CHECK(r == -MEMOUT_E_QUOTA, 20, "over-quota alloc gave %s\n", memout_status_name(r));
    rt_printf("workload: %u MiB verified, quota %lu MiB\n", mib, st.quota_pages >> 8);
    return 0;
}
