/* A guest that is resized while it runs. It holds data in 2 MiB chunks, and until the host
 * asks it to finish (harness port 0x524) it loops: handle host messages (memout_poll), grow to
 * its new limit if asked to, verify every chunk it holds and rewrite one. Any chunk that comes
 * back wrong fails the run.
 *
 * Run argument: bits 0-15 the MiB to hold at start; bit 16 ignore release requests (no
 * callback: a shrink must evict); bit 17 grow to the limit whenever it rises; bit 18 bench
 * mode (no verification passes: only poll, so the host measures the release path alone);
 * bit 19 pool mode: all chunks above the first `keep` MiB (bits 20-31) go to the driver's pool
 * after they are filled, so they are held but free in the guest's view. The harness word at
 * port 0x525 is re-read every pass: bit 0 set means ignore release requests for now. */
#include "common.h"

#define CHUNK_PAGES 512
#define MAX_CHUNKS 2048

static struct memout_extent chunk[MAX_CHUNKS];
static uint64_t seed[MAX_CHUNKS];
static uint32_t nchunks;
static uint64_t released_pages, grown_chunks, bad_pages;
static int ignoring;

/* The owner's release callback: drops the newest chunks, up to 64 per FREE (one doorbell). */
static uint64_t release(uint64_t pages, void *ctx)
{
    (void)ctx;
    uint64_t freed = 0;
    if (ignoring)
        return 0;
    while (freed < pages && nchunks > 0) {
        uint32_t n = 0;
        uint64_t batch = 0;
        while (n < 64 && n < nchunks && freed + batch < pages)
            batch += chunk[nchunks - 1 - n++].pages;
        struct memout_extent_list l = {.count = n, .capacity = n, .ext = &chunk[nchunks - n]};
        if (memout_free(&l) != 0)
            break;
        nchunks -= n;
        freed += batch;
    }
    released_pages += freed;
    return freed;
}

static int add_chunk(uint64_t s)
{
    if (nchunks == MAX_CHUNKS)
        return -MEMOUT_E_QUOTA;
    struct memout_extent_list l = {.capacity = 1, .ext = &chunk[nchunks]};
    int r = memout_alloc(CHUNK_PAGES, &l);
    if (r != 0)
        return r;
    seed[nchunks] = s;
    fill_extent(&chunk[nchunks], s);
    nchunks++;
    return 0;
}

int guest_main(void)
{
    uint32_t arg = rt_arg(), mib = arg & 0xffff;
    int ignore = (arg >> 16) & 1, grow = (arg >> 17) & 1, bench = (arg >> 18) & 1;
    int pool = (arg >> 19) & 1;
    uint32_t keep_chunks = (arg >> 20) / 2;
    CHECK(mib >= 2 && mib / 2 <= MAX_CHUNKS, 11, "hold %u MiB out of range\n", mib);
    int r = memout_init();
    CHECK(r == 0, 10, "init: %s\n", memout_status_name(r));
    if (!ignore)
        memout_on_release(release, 0);
    for (uint32_t i = 0; i < mib / 2; i++) {
        r = add_chunk(0x5000 + i);
        CHECK(r == 0, 12, "alloc chunk %u: %s\n", i, memout_status_name(r));
    }
    if (pool)
        while (nchunks > keep_chunks)
            memout_pool_put(&chunk[--nchunks]);
    rt_printf("resizer: holding %u MiB (%lu MiB in the pool), limit %lu MiB\n", nchunks * 2,
              memout_pool_pages() / 256, memout_limit_pages() / 256);
    rt_checkpoint(1);
    uint64_t passes = 0, next = 0, min_chunks = nchunks, max_chunks = nchunks;
    for (uint64_t spin = 0;; spin++) {
        memout_poll();
        if (bench) {
            if ((spin & 0xfff) == 0 && rt_in32(RT_PORT_FINISH))
                break;
            continue;
        }
        if (rt_in32(RT_PORT_FINISH))
            break;
        ignoring = rt_in32(RT_PORT_FLAGS) & 1;
        while (grow && (uint64_t)(nchunks + 1) * CHUNK_PAGES <= memout_limit_pages() &&
               memout_release_wanted() == 0) {
            if (add_chunk(0x9000000 + grown_chunks) != 0)
                break;
            grown_chunks++;
        }
        for (uint32_t i = 0; i < nchunks; i++)
            bad_pages += check_extent(&chunk[i], seed[i]);
        CHECK(bad_pages == 0, 13, "pass %lu: %lu pages came back wrong\n", passes, bad_pages);
        if (nchunks > 0) {
            uint32_t i = next++ % nchunks;
            seed[i] += 0x100000000ull;
            fill_extent(&chunk[i], seed[i]);
        }
        if (nchunks < min_chunks)
            min_chunks = nchunks;
        if (nchunks > max_chunks)
            max_chunks = nchunks;
        passes++;
    }
    rt_printf("resizer: %lu passes, %lu bad pages; holding %u MiB (min %lu, max %lu), released "
              "%lu MiB, grew %lu MiB\n",
              passes, bad_pages, nchunks * 2, min_chunks * 2, max_chunks * 2,
              released_pages / 256, grown_chunks * 2);
    return 0;
}
