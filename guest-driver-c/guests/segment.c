/* A guest that maps the host's shared segment "lib" at the start of its segment window,
 * checks every word of it against the pattern the host filled it with, tries to write it
 * (the write must not land), and, with bit 16 of its argument, checks that bad requests are
 * refused: an unknown name, a segment it may not see ("secret"), the same address again, an
 * unaligned address, an address outside the window. It holds the mapping until the host asks
 * it to finish (harness port 0x524), checks again, unmaps, and exits 0 only if all held.
 *
 * Run argument: bits 0-15 the segment's size in MiB; bit 16 the refusal checks; bit 17 wait
 * for the segment: ask again while it does not exist yet. */
#include "common.h"

#define SEG_GPA 0x80000000ull /* layout::SEGMENT_GPA */
#define PATTERN_XOR 0x5e6d000000000000ull

static uint64_t check(uint64_t words)
{
    volatile const uint64_t *w = (volatile const uint64_t *)(uintptr_t)SEG_GPA;
    uint64_t bad = 0;
    for (uint64_t i = 0; i < words; i++)
        bad += w[i] != ((i * 0x9e3779b97f4a7c15ull) ^ PATTERN_XOR);
    return bad;
}

static void expect(const char *name, uint64_t gpa, int want)
{
    uint64_t bytes = 0;
    int r = memout_map_segment(name, gpa, &bytes);
    CHECK(r == -want, 20, "map %s at 0x%lx: %s (%d), wanted %s\n", name, gpa, memout_status_name(r), r,
          memout_status_name(want));
}

int guest_main(void)
{
    uint32_t arg = rt_arg();
    uint64_t mib = arg & 0xffff, bytes = 0;
    int r = memout_init();
    CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
    do
        r = memout_map_segment("lib", SEG_GPA, &bytes);
    while ((arg & (1u << 17)) && r == -MEMOUT_E_NO_SEGMENT && !rt_in32(RT_PORT_FINISH));
    CHECK(r == 0, 11, "map lib: %s\n", memout_status_name(r));
    CHECK(bytes == mib << 20, 12, "lib holds %lu bytes, expected %lu MiB\n", bytes, mib);
    uint64_t bad = check(bytes / 8);
    CHECK(bad == 0, 13, "%lu words of lib differ\n", bad);
    /* Read-only: the write is refused, the word keeps its value. */
    volatile uint64_t *first = (volatile uint64_t *)(uintptr_t)SEG_GPA;
    *first = 0xdeadbeef;
    CHECK(*first == PATTERN_XOR, 14, "a write to lib landed: %#lx\n", *first);
    if (arg & (1u << 16)) {
        expect("nope", SEG_GPA + (64ull << 20), MEMOUT_E_NO_SEGMENT);
        expect("secret", SEG_GPA + (64ull << 20), MEMOUT_E_DENIED);
        expect("lib", SEG_GPA, MEMOUT_E_IN_USE);
        expect("lib", SEG_GPA + 4096, MEMOUT_E_INVALID);
        expect("lib", 0x10000000ull, MEMOUT_E_INVALID);
        CHECK(memout_unmap_segment(SEG_GPA + (64ull << 20)) == -MEMOUT_E_IN_USE, 21,
              "unmap of nothing was not refused\n");
    }
    rt_checkpoint(1);
    while (!rt_in32(RT_PORT_FINISH))
        ;
    bad = check(bytes / 8);
    CHECK(bad == 0, 15, "%lu words of lib differ at the end\n", bad);
    r = memout_unmap_segment(SEG_GPA);
    CHECK(r == 0, 16, "unmap lib: %s\n", memout_status_name(r));
    rt_printf("segment: lib verified (%lu bytes), write refused\n", bytes);
    rt_exit(0);
}
