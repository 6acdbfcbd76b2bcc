/* memout guest<->host ABI. Mirrors client-protocol/src/ring.rs field by field; the
 * abi_layout test in memout-protocol compiles this header and compares every size, offset and
 * constant with the Rust definitions. All fields are little-endian. Freestanding C only. */
#ifndef MEMOUT_ABI_H
#define MEMOUT_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

#define MEMOUT_ABI_VERSION 1u
#define MEMOUT_PAGE_SIZE 4096ull
#define MEMOUT_INFO_PAGE_GPA 0x5000ull

#define MEMOUT_PORT_DOORBELL 0x510
#define MEMOUT_PORT_DEBUG_STR 0x511
#define MEMOUT_PORT_EXIT 0x512

/* ivshmem transport (QEMU): memout's peer id, and the vector of doorbells and answers. */
#define MEMOUT_IVSHMEM_HOST_PEER 0u
#define MEMOUT_IVSHMEM_VECTOR 0u

#define MEMOUT_INFO_MAGIC 0x004954554f4d454dull /* "MEMOUTI\0" */
#define MEMOUT_RING_MAGIC 0x474e524du           /* "MRNG" */

#define MEMOUT_FEATURE_HOST_MESSAGES (1u << 0)
#define MEMOUT_FEATURE_FASTPATH (1u << 1)

#define MEMOUT_ALLOC_PARTIAL (1u << 0)
/* ALLOC flag: the fast path had no frame for this request (the host fills the magazines). */
#define MEMOUT_ALLOC_FASTPATH_EMPTY (1u << 1)
/* FREE flag: free page reporting; the guest keeps the frames, only their content goes. */
#define MEMOUT_FREE_REPORTED (1u << 0)

enum memout_opcode {
    MEMOUT_OP_HELLO = 1,
    MEMOUT_OP_ALLOC = 2,
    MEMOUT_OP_FREE = 3,
    MEMOUT_OP_STATS = 4,
    /* name (nr_extents bytes) at extents_gpa, target gpa in arg0; host: bytes in arg1 */
    MEMOUT_OP_MAP_SEGMENT = 5,
    MEMOUT_OP_UNMAP_SEGMENT = 6, /* gpa in arg0 */
};

enum memout_status {
    MEMOUT_OK = 0,
    MEMOUT_E_BAD_OPCODE = 1,
    MEMOUT_E_INVALID = 2,
    MEMOUT_E_BAD_POINTER = 3,
    MEMOUT_E_QUOTA = 4,
    MEMOUT_E_NO_MEMORY = 5,
    MEMOUT_E_NOT_OWNED = 6,
    MEMOUT_E_VERSION = 7,
    MEMOUT_E_RING_INDEX = 8,
    MEMOUT_E_NO_HELLO = 9,
    MEMOUT_E_HOST_ERROR = 10,
    MEMOUT_E_NO_SEGMENT = 11,
    MEMOUT_E_DENIED = 12,
    MEMOUT_E_IN_USE = 13,
};

/* At MEMOUT_INFO_PAGE_GPA, written by the host before the guest starts. */
struct memout_info {
    uint64_t magic;
    uint32_t abi_version;
    uint32_t features;
    uint64_t ring_gpa;
    uint32_t ring_slots;
    uint32_t reserved0;
    uint64_t region_gpa;
    uint64_t region_size;
    uint64_t quota_pages;
    uint64_t fastpath_gpa;
    uint64_t info_gpa;     /* this page in the host's view; other *_gpa are in that view */
    uint64_t scratch_gpa;  /* extent lists and STATS replies (0: use guest memory) */
    uint64_t scratch_size;
    uint64_t reserved[5];
};

/* At ring_gpa; ring_slots descriptors follow immediately. */
struct memout_ring_header {
    uint32_t magic;
    uint16_t abi_version;
    uint16_t slots;
    uint32_t req_prod;      /* guest */
    uint32_t req_cons;      /* host */
    uint32_t rsp_prod;      /* host */
    uint32_t ring_status;   /* host */
    uint32_t host_msg_prod; /* host: bumped after quota_pages/release_pages change */
    uint32_t host_msg_cons; /* guest: the host_msg_prod value it has handled */
    uint64_t quota_pages;   /* host: current quota (requested size) in pages */
    uint64_t release_pages; /* host: pages it asks the guest to free now (0: none) */
    uint64_t reserved[2];
};

struct memout_desc {
    uint16_t opcode;
    uint16_t flags;
    uint32_t tag;
    uint32_t status;     /* host */
    uint32_t nr_extents; /* ALLOC: capacity in, filled out; FREE: count in */
    uint64_t pages;      /* ALLOC: wanted in, granted out; FREE: freed out */
    uint64_t extents_gpa;
    uint64_t arg0; /* HELLO: guest version; STATS: gpa of struct memout_stats */
    uint64_t arg1; /* HELLO: host version out */
    uint64_t reserved[2];
};

struct memout_extent {
    uint64_t gpa;
    uint64_t pages;
};

struct memout_stats {
    uint64_t quota_pages;
    uint64_t allocated_pages;
    uint64_t resident_pages;
    uint64_t faults;
    uint64_t freed_pages;
    uint64_t reserved[3];
};

/* ---- Exit-free fast path (MEMOUT_FEATURE_FASTPATH), at info->fastpath_gpa ----
 * Mirrors client-protocol/src/fastpath.rs (read its docs). Each state word changes only by
 * compare-and-swap of the whole word.
 * Magazine: state = head (low 32, guest pops) | tail (high 32, host pushes); entries
 * [head, tail) mod MEMOUT_MAG_SLOTS are zero-filled frames granted ahead. Pop: read
 * entry[head], swap in head + 1. The host reclaims by swapping in (tail, tail).
 * Free stack: state = top (low 32, guest) | taken (high 32, host), 31-bit indices (mod 2^31);
 * bit 31 of taken is MEMOUT_STACK_BUSY. Push: write entry[top], swap in top + 1 (while
 * top - taken < slots). Pop: read entry[top - 1], swap in top - 1 (while top != taken).
 * Neither while BUSY is set: the host is reading the entries it takes, first swapping in
 * (top, taken | BUSY), then (top, top). */
#define MEMOUT_FASTPATH_MAGIC 0x4150464du /* "MFPA" */
#define MEMOUT_FASTPATH_VERSION 1u
#define MEMOUT_MAG_SLOTS 512u
#define MEMOUT_STACK_SLOTS 512u
#define MEMOUT_STACK_BUSY (1u << 31)
#define MEMOUT_STACK_INDEX_MASK (MEMOUT_STACK_BUSY - 1)

struct memout_fastpath {
    uint32_t magic;
    uint32_t version;
    uint32_t nr_cpus;
    uint32_t mag_slots;
    uint32_t stack_slots;
    uint32_t reserved0;
    uint64_t mags_gpa;   /* magazine i at mags_gpa + i * (64 + 8 * mag_slots) */
    uint64_t stacks_gpa; /* free stack i at stacks_gpa + i * (64 + 8 * stack_slots) */
    uint64_t reserved[3];
};

struct memout_magazine {
    uint64_t state;    /* head | tail << 32 */
    uint64_t refills;  /* host: pushes so far */
    uint64_t granting; /* host: frames on their way in (counted against the quota already) */
    uint64_t reserved[5];
    /* uint64_t frames[mag_slots] follows */
};

struct memout_free_stack {
    uint64_t state; /* top | taken << 32 */
    uint64_t reserved[7];
    /* uint64_t frames[stack_slots] follows */
};

_Static_assert(sizeof(struct memout_fastpath) == 64, "memout_fastpath size");
_Static_assert(sizeof(struct memout_magazine) == 64, "memout_magazine size");
_Static_assert(sizeof(struct memout_free_stack) == 64, "memout_free_stack size");
_Static_assert(sizeof(struct memout_info) == 128, "memout_info size");
_Static_assert(sizeof(struct memout_ring_header) == 64, "memout_ring_header size");
_Static_assert(sizeof(struct memout_desc) == 64, "memout_desc size");
_Static_assert(sizeof(struct memout_extent) == 16, "memout_extent size");
_Static_assert(sizeof(struct memout_stats) == 64, "memout_stats size");

#endif
