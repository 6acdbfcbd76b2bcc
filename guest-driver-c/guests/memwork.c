/* A configurable memory workload for swap-pressure experiments. Its parameters come from the
 * VMM through the harness's parameter port (MEMWORK_P_* in memout_harness.h; `memout run
 * memwork --param ...`, RunConfig::params): working set, access pattern (sequential, uniform
 * random, hot-cold), read/write mix, page content (random, compressible, a share of zero
 * pages), number of accesses and seed.
 *
 * It fills the working set (checkpoint 1), makes the accesses (checkpoint 2; the host times
 * the accesses between the two), then checks every page (checkpoint 3). Each access takes a
 * whole page: a read checks all its words, a write rewrites it with the page's next version.
 * It prints "MEMWORK: ops N reads R writes W bad B" and exits 0 only if no word was wrong.
 * With MEMWORK_P_PLAIN it uses the region as a static VM would (no memout calls), for
 * baselines on a plain memslot. */
#include "common.h"

#define MAX_PIECES 4095
#define PIECE_PAGES ((uint64_t)256)
#define MAX_PAGES (MAX_PIECES * PIECE_PAGES)

static struct memout_extent piece[MAX_PIECES];
static uint8_t version[MAX_PAGES];
static uint32_t p_zero_pct, p_content;
static uint64_t p_seed;

static uint32_t param(uint32_t i)
{
    rt_out32(MEMOUT_HARNESS_PORT_PARAM, i);
    return rt_in32(MEMOUT_HARNESS_PORT_PARAM);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    return x ^ (x >> 33);
}

static volatile uint64_t *page_at(uint64_t p)
{
    const struct memout_extent *e = &piece[p / PIECE_PAGES];
    return (volatile uint64_t *)(uintptr_t)(e->gpa + (p % PIECE_PAGES) * MEMOUT_PAGE_SIZE);
}

static int is_zero_page(uint64_t p)
{
    return mix(p ^ p_seed ^ 0x2e50) % 100 < p_zero_pct;
}

/* Writes (check = 0) or checks (check = 1) page @p at its current version; returns 1 if a
 * word was wrong. */
static int page_pass(uint64_t p, int check)
{
    volatile uint64_t *w = page_at(p);
    int zero = is_zero_page(p);
    uint64_t x = mix(p_seed ^ (p << 20) ^ ((uint64_t)version[p] << 52)) | 1;
    for (int i = 0; i < 512; i++) {
        uint64_t v = 0;
        if (!zero) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v = p_content == 1 && (i & 7) ? 0 : x;
        }
        if (!check)
            w[i] = v;
        else if (w[i] != v)
            return 1;
    }
    return 0;
}

int guest_main(void)
{
    uint32_t mib = param(MEMWORK_P_MIB), pattern = param(MEMWORK_P_PATTERN);
    uint32_t write_pct = param(MEMWORK_P_WRITE_PCT), plain = param(MEMWORK_P_PLAIN);
    uint64_t ops = (uint64_t)param(MEMWORK_P_KOPS) * 1000;
    uint32_t hot_pct = param(MEMWORK_P_HOT_PCT), hot_hits = param(MEMWORK_P_HOT_HITS_PCT);
    p_zero_pct = param(MEMWORK_P_ZERO_PCT);
    p_content = param(MEMWORK_P_CONTENT);
    p_seed = mix(param(MEMWORK_P_SEED) + 1);
    hot_pct = hot_pct ? hot_pct : 10;
    hot_hits = hot_hits ? hot_hits : 90;
    CHECK(mib > 0 && mib <= MAX_PIECES, 11, "working set %u MiB out of range\n", mib);
    CHECK(pattern <= 2 && write_pct <= 100 && p_zero_pct <= 100 && p_content <= 1 &&
              hot_pct <= 100 && hot_hits <= 100,
          11, "bad parameters\n");
    uint64_t pages = (uint64_t)mib * PIECE_PAGES;
    if (plain) {
        for (uint32_t i = 0; i < mib; i++) {
            piece[i].gpa = MEMOUT_HARNESS_REGION_GPA + (uint64_t)i * PIECE_PAGES * MEMOUT_PAGE_SIZE;
            piece[i].pages = PIECE_PAGES;
        }
    } else {
        int r = memout_init();
        CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
        for (uint32_t i = 0; i < mib; i++) {
            struct memout_extent_list l = {.capacity = 1, .ext = &piece[i]};
            r = memout_alloc(PIECE_PAGES, &l);
            CHECK(r == 0, 12, "alloc piece %u: %s\n", i, memout_status_name(r));
        }
    }
    for (uint64_t p = 0; p < pages; p++)
        page_pass(p, 0);
    rt_checkpoint(1);

    uint64_t rng = p_seed | 1, reads = 0, writes = 0, bad = 0, next = 0;
    uint64_t hot = pages * hot_pct / 100;
    hot = hot ? hot : 1;
    for (uint64_t n = 0; n < ops; n++) {
        uint64_t p;
        if (pattern == 0) {
            p = next;
            next = next + 1 == pages ? 0 : next + 1;
        } else if (pattern == 1 || hot >= pages) {
            p = rt_rand(&rng) % pages;
        } else if (rt_rand(&rng) % 100 < hot_hits) {
            p = rt_rand(&rng) % hot;
        } else {
            p = hot + rt_rand(&rng) % (pages - hot);
        }
        if (rt_rand(&rng) % 100 < write_pct) {
            version[p]++;
            page_pass(p, 0);
            writes++;
        } else {
            bad += page_pass(p, 1);
            reads++;
        }
    }
    rt_checkpoint(2);
    for (uint64_t p = 0; p < pages; p++)
        bad += page_pass(p, 1);
    rt_checkpoint(3);
    rt_printf("MEMWORK: ops %lu reads %lu writes %lu bad %lu\n", ops, reads, writes, bad);
    return bad ? 13 : 0;
}
