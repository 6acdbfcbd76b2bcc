/* The memout guest driver: forwards the guest's page-frame allocator calls to the host. */
#ifndef MEMOUT_H
#define MEMOUT_H

#include "memout_abi.h"

/* A list of extents: `count` filled of `capacity`, stored at `ext`. */
struct memout_extent_list {
    uint32_t count;
    uint32_t capacity;
    struct memout_extent *ext;
};

/* Finds the info page and ring and shakes hands. 0 or a negative memout_status. */
int memout_init(void);
/* Region the host serves frames from (valid after memout_init). */
uint64_t memout_region_base(void);
uint64_t memout_region_size(void);
/* Allocates `pages` frames, all or nothing, into `out` (up to out->capacity extents). */
int memout_alloc(uint64_t pages, struct memout_extent_list *out);
/* Allocates up to `pages` frames (a partial grant is fine); *granted says how many. */
int memout_alloc_partial(uint64_t pages, struct memout_extent_list *out, uint64_t *granted);
/* Gives the frames of `list` back; the host drops their memory at once. */
int memout_free(const struct memout_extent_list *list);
/* Reads this guest's statistics. */
int memout_stats(struct memout_stats *out);
/* Posts `n` raw descriptors and rings the doorbell once (batching). Results are written back
 * into `descs`. Returns 0, or -MEMOUT_E_RING_INDEX if the host refused the ring. */
int memout_submit(struct memout_desc *descs, uint32_t n);
/* The ring header (for tests that exercise the ABI directly). */
volatile struct memout_ring_header *memout_ring(void);
/* Human-readable name of a status code. */
const char *memout_status_name(int status);

#endif
