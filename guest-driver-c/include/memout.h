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
/* ---- Host→guest messages (resize) ----------------------------------------------------
 * The host changes the guest's limit (quota) and asks it to release frames by writing the
 * ring header and bumping host_msg_prod. There is no interrupt: the guest calls memout_poll()
 * from its main loop (it reads shared memory only; no VM exit unless it frees frames). */

/* The owner's release callback: free up to `pages` frames with memout_free and return how
 * many were freed (0 if the owner cannot give any back now). */
typedef uint64_t (*memout_release_fn)(uint64_t pages, void *ctx);
/* Installs the owner's release callback (NULL: the owner never releases). */
void memout_on_release(memout_release_fn fn, void *ctx);
/* Handles pending host messages: a release request is answered from the driver's pool first,
 * then by the owner's callback. Returns 1 if a message was handled, 0 if none was pending. */
int memout_poll(void);
/* The guest's current limit (requested size) in pages. */
uint64_t memout_limit_pages(void);
/* Pages the host is asking the guest to release now (0: none). */
uint64_t memout_release_wanted(void);

/* ---- The driver's pool: frames the guest holds but does not use ----------------------
 * Like a guest kernel's free list over memory it got from the host: memout_pool_put keeps an
 * extent for later without a doorbell; memout_pool_take hands pool frames out again; a release
 * request is answered from the pool before the owner is asked. */
/* Keeps `e` in the pool; if the pool is full, frees it to the host instead. */
int memout_pool_put(const struct memout_extent *e);
/* Takes up to `pages` frames (one extent) from the pool into *out; returns the pages taken. */
uint64_t memout_pool_take(uint64_t pages, struct memout_extent *out);
/* Frames in the pool. */
uint64_t memout_pool_pages(void);

/* ---- The exit-free fast path (MEMOUT_FEATURE_FASTPATH) ----------------------------------
 * Single pages without a VM exit: memout_alloc_page takes a frame the guest freed earlier
 * (its old content stays) or one the host granted ahead (zero-filled) from shared memory, and
 * memout_free_page puts it back there; the host takes freed frames in batches. Both fall back
 * to the doorbell when the fast path is off, empty or full. */
struct memout_fast_stats {
    uint64_t fast_allocs; /* served from shared memory, no exit */
    uint64_t slow_allocs; /* through the doorbell */
    uint64_t fast_frees;
    uint64_t slow_frees;
};
/* 1 if the host offered the fast path (after memout_init). */
int memout_fastpath_on(void);
/* Frames the host has granted ahead into this vCPU's magazine right now (0 without a fast
 * path): a guest that wants to start warm waits until it is above 0. */
uint32_t memout_fastpath_cached(void);
/* One frame into *gpa. 0 or a negative memout_status. */
int memout_alloc_page(uint64_t *gpa);
/* Gives one frame back. 0 or a negative memout_status. */
int memout_free_page(uint64_t gpa);
/* How many pages went each way. */
void memout_fast_stats(struct memout_fast_stats *out);

/* Human-readable name of a status code. */
/* Maps the host's shared segment `name` (read-only) at guest-physical `gpa` (2 MiB aligned, in
 * the segment window the VMM gives); `*bytes` gets its length. 0 or -MEMOUT_E_*
 * (NO_SEGMENT, DENIED, IN_USE, INVALID, NO_MEMORY: larger than the window). */
int memout_map_segment(const char *name, uint64_t gpa, uint64_t *bytes);
/* Unmaps the segment at `gpa`. */
int memout_unmap_segment(uint64_t gpa);

const char *memout_status_name(int status);

#endif
