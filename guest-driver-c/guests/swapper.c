/* A guest whose working set is larger than its host budget. The run argument is the working
 * set in MiB (low 16 bits) plus flags (bit 16: ask the host to evict everything after the first
 * fill). It fills every page with a pattern, then makes three passes, each verifying every page
 * against the previous pattern and rewriting it with a new one. Any page that comes back wrong
 * (lost write, zeroes instead of data, stale content) fails the run. */
#include "common.h"

#define MAX_PIECES 4096
#define PASSES 3

static struct memout_extent piece[MAX_PIECES];

int guest_main(void)
{
    uint32_t arg = rt_arg(), mib = arg & 0xffff, evict_now = (arg >> 16) & 1;
    CHECK(mib > 0 && mib <= MAX_PIECES, 11, "working set %u MiB out of range\n", mib);
    int r = memout_init();
    CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
    for (uint32_t i = 0; i < mib; i++) {
        struct memout_extent_list l = {.capacity = 1, .ext = &piece[i]};
        r = memout_alloc(256, &l);
        CHECK(r == 0, 12, "alloc piece %u: %s\n", i, memout_status_name(r));
        fill_extent(&piece[i], 0x1000 + i);
    }
    rt_checkpoint(1);
    if (evict_now)
        rt_out32(RT_PORT_EVICT_ALL, 0);
    rt_checkpoint(2);
    for (uint64_t pass = 1; pass <= PASSES; pass++) {
        uint64_t bad = 0;
        for (uint32_t i = 0; i < mib; i++) {
            bad += check_extent(&piece[i], (pass - 1) * 0x1000000 + 0x1000 + i);
            fill_extent(&piece[i], pass * 0x1000000 + 0x1000 + i);
        }
        CHECK(bad == 0, 13, "pass %lu: %lu pages came back wrong\n", pass, bad);
    }
    uint64_t bad = 0;
    for (uint32_t i = 0; i < mib; i++)
        bad += check_extent(&piece[i], PASSES * 0x1000000ull + 0x1000 + i);
    CHECK(bad == 0, 14, "final check: %lu pages wrong\n", bad);
    rt_checkpoint(3);
    /* Then a pause that touches no memory (20000 port reads, each a VM exit of some tens of
     * µs: 0.3 s or more), so a host budget enforced on a clock catches up: checkpoint 4. */
    for (int i = 0; i < 20000; i++)
        (void)rt_in32(RT_PORT_FINISH);
    rt_checkpoint(4);
    struct memout_stats st;
    memout_stats(&st);
    rt_printf("swapper: %u MiB verified over %d passes; host: %lu resident pages\n", mib, PASSES,
              st.resident_pages);
    return 0;
}
