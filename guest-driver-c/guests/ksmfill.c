/* A guest for KSM experiments: allocates a working set in 1 MiB pieces and fills it, then
 * holds it (verifying it now and then) until the host asks it to finish (harness port 0x524).
 *
 * Run argument: bits 0-15 the MiB to hold; bits 16-17 the content: 0 identical in every guest
 * (each page different, the same pages in every guest run with this argument), 1 random (a
 * seed from the TSC), 2 left zero (never written); bit 18: a CPU-bound prime search runs
 * between verifications (seed 000's second focus), its count printed at the end.
 * Exit 0 only if every page still holds what was written. */
#include "common.h"

#define MAX_PIECES 2048
#define PIECE_PAGES ((uint64_t)256)
#define IDENTICAL_SEED 0x5eed0000d00dfeedull

static struct memout_extent piece[MAX_PIECES];

/* The word at (page, i) of the content: identical content ignores where the page lies. */
static uint64_t word_at(uint64_t page, int i, uint64_t seed, uint64_t *rng, int random)
{
    if (random)
        return rt_rand(rng);
    return (page * 0x9e3779b97f4a7c15ull + (uint64_t)i) ^ seed;
}

/* Fills (check = 0) or counts pages that differ (check = 1). */
static uint64_t pass(uint32_t n, uint64_t seed, int random, int check)
{
    uint64_t rng = seed | 1, bad = 0, page = 0;
    for (uint32_t k = 0; k < n; k++) {
        for (uint64_t p = 0; p < piece[k].pages; p++, page++) {
            volatile uint64_t *w =
                (volatile uint64_t *)(uintptr_t)(piece[k].gpa + p * MEMOUT_PAGE_SIZE);
            int wrong = 0;
            for (int i = 0; i < 512; i++) {
                uint64_t v = word_at(page, i, seed, &rng, random);
                if (!check)
                    w[i] = v;
                else
                    wrong |= w[i] != v;
            }
            bad += wrong;
        }
    }
    return bad;
}

/* Counts primes below `limit` by trial division: work for the CPU, no memory traffic. */
static uint64_t primes_below(uint64_t limit)
{
    uint64_t count = 0;
    for (uint64_t n = 2; n < limit; n++) {
        int prime = 1;
        for (uint64_t d = 2; d * d <= n; d++)
            if (n % d == 0) {
                prime = 0;
                break;
            }
        count += prime;
    }
    return count;
}

int guest_main(void)
{
    uint32_t arg = rt_arg();
    uint32_t mib = arg & 0xffff, content = (arg >> 16) & 3, primes = (arg >> 18) & 1;
    int random = content == 1, zero = content == 2;
    uint64_t seed = random ? rt_rdtsc() : IDENTICAL_SEED;
    int r = memout_init();
    CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
    CHECK(mib > 0 && mib <= MAX_PIECES && content < 3, 11, "bad argument %#x\n", arg);
    for (uint32_t i = 0; i < mib; i++) {
        struct memout_extent_list l = {.capacity = 1, .ext = &piece[i]};
        r = memout_alloc(PIECE_PAGES, &l);
        CHECK(r == 0, 12, "alloc piece %u: %s\n", i, memout_status_name(r));
    }
    if (!zero)
        pass(mib, seed, random, 0);
    rt_checkpoint(1);
    uint64_t rounds = 0, found = 0, bad = 0;
    while (!rt_in32(RT_PORT_FINISH)) {
        if (primes)
            found += primes_below(20000);
        /* Verifying reads every page: KSM's merged copies must read the same. */
        if (!zero && (++rounds & 0xf) == 0)
            bad += pass(mib, seed, random, 1);
        CHECK(bad == 0, 13, "%lu pages changed while held\n", bad);
    }
    if (!zero)
        bad = pass(mib, seed, random, 1);
    CHECK(bad == 0, 14, "%lu pages changed while held\n", bad);
    rt_printf("ksmfill: %u MiB %s held intact, %lu primes found\n", mib,
              zero ? "zero" : random ? "random" : "identical", found);
    rt_exit(0);
}
