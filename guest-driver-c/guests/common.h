/* Helpers shared by the guest programs: page patterns and checks. */
#ifndef GUEST_COMMON_H
#define GUEST_COMMON_H

#include "memout.h"
#include "../runtime/runtime.h"

#define CHECK(cond, code, ...)                                                                 \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            rt_printf("FAIL: " __VA_ARGS__);                                                   \
            rt_exit(code);                                                                     \
        }                                                                                      \
    } while (0)

/* Writes a pattern derived from (gpa, seed) into every 8-byte word of each page. */
static inline void fill_extent(const struct memout_extent *e, uint64_t seed)
{
    for (uint64_t p = 0; p < e->pages; p++) {
        volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(e->gpa + p * MEMOUT_PAGE_SIZE);
        uint64_t v = (e->gpa + p * MEMOUT_PAGE_SIZE) ^ seed;
        for (int i = 0; i < 512; i++)
            w[i] = v + i;
    }
}

/* Returns the number of pages whose pattern does not match. */
static inline uint64_t check_extent(const struct memout_extent *e, uint64_t seed)
{
    uint64_t bad = 0;
    for (uint64_t p = 0; p < e->pages; p++) {
        volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(e->gpa + p * MEMOUT_PAGE_SIZE);
        uint64_t v = (e->gpa + p * MEMOUT_PAGE_SIZE) ^ seed;
        for (int i = 0; i < 512; i++)
            if (w[i] != v + i) {
                bad++;
                break;
            }
    }
    return bad;
}

#endif
