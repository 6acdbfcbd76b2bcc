/* The guest runtime: port I/O, output through the debug port, exit, and the few libc
 * functions gcc may call. Freestanding; guest programs run at CPL3 with IOPL=3. */
#ifndef MEMOUT_RUNTIME_H
#define MEMOUT_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "../include/memout_harness.h"

/* Ports of the memout VMM that are not part of the memout ABI (harness only). */
#define RT_PORT_CHECKPOINT MEMOUT_HARNESS_PORT_CHECKPOINT
#define RT_PORT_ARG MEMOUT_HARNESS_PORT_ARG
#define RT_PORT_EVICT_ALL MEMOUT_HARNESS_PORT_EVICT_ALL
#define RT_PORT_FINISH MEMOUT_HARNESS_PORT_FINISH
#define RT_PORT_FLAGS MEMOUT_HARNESS_PORT_FLAGS

static inline void rt_out32(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint32_t rt_in32(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

/* The run's argument (memout run --arg N). */
static inline uint32_t rt_arg(void)
{
    return rt_in32(RT_PORT_ARG);
}

static inline uint64_t rt_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

void rt_puts(const char *s);
void rt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void rt_exit(int code) __attribute__((noreturn));
void rt_checkpoint(uint32_t id);
uint64_t rt_rand(uint64_t *state);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#endif
