/* SPDX-License-Identifier: Apache-2.0 OR MIT */
/* The memout VMM's own harness, shared by its guest programs and checked against the Rust side
 * (vmm-integration/src/layout.rs and runner.rs) by vmm-integration/tests/harness_layout.rs.
 * Not part of the memout ABI (memout_abi.h): another VMM has none of this. */
#ifndef MEMOUT_HARNESS_H
#define MEMOUT_HARNESS_H

/* Harness ports. */
#define MEMOUT_HARNESS_PORT_CHECKPOINT 0x520 /* out32: the VMM records host time, RSS, stats */
#define MEMOUT_HARNESS_PORT_ARG 0x521        /* in32: the run's argument (memout run --arg) */
#define MEMOUT_HARNESS_PORT_EVICT_ALL 0x523  /* out32: evict everything resident, timed */
#define MEMOUT_HARNESS_PORT_FINISH 0x524     /* in32: 1 once the host wants the guest to finish */
#define MEMOUT_HARNESS_PORT_FLAGS 0x525      /* in32: a word a test changes while the guest runs */
#define MEMOUT_HARNESS_PORT_PARAM 0x526      /* out32 selects a parameter, in32 reads it (0 past
                                              * the end; memout run --param, RunConfig::params) */
#define MEMOUT_HARNESS_PORT_SLEEP 0x527      /* out32: the vCPU sleeps N microseconds (<= 1 s) */

/* The memwork guest's parameters (indexes for MEMOUT_HARNESS_PORT_PARAM). */
#define MEMWORK_P_MIB 0         /* working set, MiB (1..4095) */
#define MEMWORK_P_PATTERN 1     /* 0 sequential, 1 uniform random, 2 hot-cold */
#define MEMWORK_P_WRITE_PCT 2   /* share of accesses that rewrite the page, % */
#define MEMWORK_P_ZERO_PCT 3    /* share of pages that hold zeros, % */
#define MEMWORK_P_CONTENT 4     /* other pages: 0 random words, 1 compressible (7 of 8 zero) */
#define MEMWORK_P_KOPS 5        /* page accesses after the fill, in thousands */
#define MEMWORK_P_SEED 6        /* seed of the access sequence and the content */
#define MEMWORK_P_PLAIN 7       /* 1: the region is a plain memslot; use it without memout */
#define MEMWORK_P_HOT_PCT 8     /* hot-cold: share of pages that are hot, % (0: 10) */
#define MEMWORK_P_HOT_HITS_PCT 9 /* hot-cold: share of accesses to hot pages, % (0: 90) */

/* The cpuwork guest's parameters. */
#define CPUWORK_P_DUTY_PCT 0 /* share of time it computes, % (1..100); the rest it sleeps */
#define CPUWORK_P_LIMIT 1    /* a work unit counts the primes below this (0: 20000) */

/* Guest-physical layout of the memout VMM. */
#define MEMOUT_HARNESS_BOOT_SIZE 0x1000000ull    /* boot region: tables, ring, image, stack */
#define MEMOUT_HARNESS_RING_GPA 0x6000ull        /* the request ring */
#define MEMOUT_HARNESS_RING_SLOTS 64
#define MEMOUT_HARNESS_IMAGE_BASE 0x200000ull    /* where guest images load */
#define MEMOUT_HARNESS_IMAGE_LIMIT 0xe00000ull   /* images (with bss) end below this */
#define MEMOUT_HARNESS_REGION_GPA 0x100000000ull /* the outsourced region (4 GiB) */

#endif
