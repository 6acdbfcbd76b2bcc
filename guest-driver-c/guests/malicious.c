/* A hostile guest: each mode (the run argument) attacks the host through the ABI and checks
 * that the host answers with an error status and hands out nothing. Exit 0 means every
 * answer was the expected refusal; the host-side test also checks the host's own counters.
 * Modes 7 and 8 touch frames the guest does not hold: the host must stop the run.
 * Mode 10 spins forever: the VMM's time limit must end the run. Mode 11 floods the doorbell.
 * Modes 12 and 13 make KVM itself touch a frame the guest does not hold, through string I/O
 * that KVM emulates (`rep insl` writes it, `rep outsl` reads it): the host must stop the run
 * and the vCPU must leave KVM_RUN. */
#include "common.h"

static struct memout_extent ext[8];
static struct memout_stats st;

#define EXPECT(expr, want)                                                                    \
    do {                                                                                      \
        int got_ = (expr);                                                                    \
        CHECK(got_ == (want), 20, "%s gave %s, wanted %s\n", #expr, memout_status_name(got_),  \
              memout_status_name(want));                                                       \
    } while (0)

static int raw(struct memout_desc d)
{
    int r = memout_submit(&d, 1);
    return r ? r : -(int)d.status;
}

static void expect_nothing_held(void)
{
    EXPECT(memout_stats(&st), 0);
    CHECK(st.allocated_pages == 0 && st.resident_pages == 0, 21,
          "host holds %lu allocated / %lu resident after refused requests\n", st.allocated_pages,
          st.resident_pages);
}

int guest_main(void)
{
    uint32_t mode = rt_arg();
    uint64_t rng = 0x1234567 + mode;
    struct memout_extent_list l = {.capacity = 8, .ext = ext};
    rt_printf("malicious: mode %u\n", mode);

    if (mode == 9) { /* requests before HELLO */
        volatile struct memout_info *info = (void *)(uintptr_t)MEMOUT_INFO_PAGE_GPA;
        volatile struct memout_ring_header *ring = (void *)(uintptr_t)info->ring_gpa;
        volatile struct memout_desc *slot = (volatile struct memout_desc *)(ring + 1);
        struct memout_desc d = {.opcode = MEMOUT_OP_ALLOC, .pages = 1, .nr_extents = 8,
                                .extents_gpa = (uint64_t)(uintptr_t)ext};
        slot[0] = d;
        ring->req_prod = 1;
        rt_out32(MEMOUT_PORT_DOORBELL, 1);
        CHECK(slot[0].status == MEMOUT_E_NO_HELLO, 22, "ALLOC before HELLO gave %s\n",
              memout_status_name(slot[0].status));
        struct memout_desc h = {.opcode = MEMOUT_OP_HELLO, .arg0 = 99};
        slot[1] = h;
        ring->req_prod = 2;
        rt_out32(MEMOUT_PORT_DOORBELL, 2);
        CHECK(slot[1].status == MEMOUT_E_VERSION, 23, "HELLO v99 gave %s\n",
              memout_status_name(slot[1].status));
        rt_puts("malicious: PASS\n");
        return 0;
    }

    EXPECT(memout_init(), 0);
    switch (mode) {
    case 1: /* garbage descriptors: random bytes in every field */
        for (int i = 0; i < 2000; i++) {
            struct memout_desc d;
            uint64_t *w = (uint64_t *)&d;
            for (int j = 0; j < 8; j++)
                w[j] = rt_rand(&rng);
            if (i % 3 == 0)
                d.opcode = 1 + i % 4; /* valid opcode, garbage arguments */
            if (d.opcode == MEMOUT_OP_HELLO)
                continue;
            int r = raw(d);
            CHECK(r != 0 || d.opcode == MEMOUT_OP_STATS, 24, "garbage #%d (op %u) accepted\n", i,
                  d.opcode);
            if (r == 0) /* a STATS that happened to point into our memory: harmless */
                continue;
        }
        expect_nothing_held();
        break;
    case 2: { /* out-of-range ring index */
        volatile struct memout_ring_header *ring = memout_ring();
        uint32_t saved = ring->req_prod;
        ring->req_prod = saved + 100000;
        rt_out32(MEMOUT_PORT_DOORBELL, 0);
        CHECK(ring->ring_status == MEMOUT_E_RING_INDEX, 25, "bad req_prod gave %s\n",
              memout_status_name(ring->ring_status));
        CHECK(ring->req_cons == saved, 26, "host consumed from a bad index\n");
        ring->req_prod = saved;
        EXPECT(memout_stats(&st), 0); /* the ring works again once the index is sane */
        expect_nothing_held();
        break;
    }
    case 3: { /* pointers outside the memory the host reads for us */
        uint64_t bad[] = {0x7fff00000000ull, memout_region_base(), 0xffffffffffffff00ull,
                          0x00fffff8ull /* straddles the end of the 16 MiB boot region */};
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            struct memout_desc a = {.opcode = MEMOUT_OP_ALLOC, .pages = 1, .nr_extents = 1,
                                    .extents_gpa = bad[i]};
            EXPECT(raw(a), -MEMOUT_E_BAD_POINTER);
            struct memout_desc f = {.opcode = MEMOUT_OP_FREE, .nr_extents = 1,
                                    .extents_gpa = bad[i]};
            EXPECT(raw(f), -MEMOUT_E_BAD_POINTER);
            struct memout_desc s = {.opcode = MEMOUT_OP_STATS, .arg0 = bad[i]};
            EXPECT(raw(s), -MEMOUT_E_BAD_POINTER);
        }
        struct memout_desc huge = {.opcode = MEMOUT_OP_FREE, .nr_extents = 0xffffffffu,
                                   .extents_gpa = (uint64_t)(uintptr_t)ext};
        EXPECT(raw(huge), -MEMOUT_E_INVALID);
        expect_nothing_held();
        break;
    }
    case 4: { /* unknown opcodes, and segment requests with garbage */
        uint16_t ops[] = {0, 7, 77, 0xffff};
        for (unsigned i = 0; i < 4; i++) {
            struct memout_desc d = {.opcode = ops[i], .pages = 100, .nr_extents = 8,
                                    .extents_gpa = (uint64_t)(uintptr_t)ext};
            EXPECT(raw(d), -MEMOUT_E_BAD_OPCODE);
        }
        struct memout_desc m = {.opcode = MEMOUT_OP_MAP_SEGMENT, .nr_extents = 0};
        EXPECT(raw(m), -MEMOUT_E_INVALID);
        m.nr_extents = 8;
        m.extents_gpa = 0xdead000000ull;
        EXPECT(raw(m), -MEMOUT_E_BAD_POINTER);
        struct memout_desc u = {.opcode = MEMOUT_OP_UNMAP_SEGMENT, .arg0 = 0x80000000ull};
        EXPECT(raw(u), -MEMOUT_E_IN_USE);
        expect_nothing_held();
        break;
    }
    case 5: { /* FREE of frames we do not hold */
        uint64_t base = memout_region_base();
        EXPECT(memout_alloc(16, &l), 0);
        struct memout_extent held = ext[0];
        struct memout_extent bad[][2] = {
            {{base + 4096ull * 1000, 1}, {0, 0}},                  /* never allocated */
            {{held.gpa, 17}, {0, 0}},                              /* runs past our grant */
            {{held.gpa, 4}, {held.gpa + 4096, 1}},                 /* overlaps itself */
            {{held.gpa + 1, 1}, {0, 0}},                           /* misaligned */
            {{held.gpa, 0}, {0, 0}},                               /* empty */
            {{base - 4096, 1}, {0, 0}},                            /* below the region */
            {{base + memout_region_size(), 1}, {0, 0}},            /* above the region */
            {{held.gpa, 0xfffffffffffffull}, {0, 0}},              /* overflows */
        };
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            struct memout_extent_list f = {.count = bad[i][1].pages ? 2 : 1, .capacity = 2,
                                           .ext = bad[i]};
            int r = memout_free(&f);
            CHECK(r == -MEMOUT_E_NOT_OWNED || r == -MEMOUT_E_INVALID, 27,
                  "bad free #%u gave %s\n", i, memout_status_name(r));
        }
        EXPECT(memout_stats(&st), 0);
        CHECK(st.allocated_pages == 16, 28, "refused frees changed the grant: %lu\n",
              st.allocated_pages);
        struct memout_extent_list f = {.count = 1, .capacity = 1, .ext = &held};
        EXPECT(memout_free(&f), 0);
        EXPECT(memout_free(&f), -MEMOUT_E_NOT_OWNED);
        expect_nothing_held();
        break;
    }
    case 6: { /* more than the quota */
        struct memout_desc q = {.opcode = MEMOUT_OP_ALLOC, .pages = memout_ring()->quota_pages + 1,
                                .nr_extents = 8, .extents_gpa = (uint64_t)(uintptr_t)ext};
        EXPECT(raw(q), -MEMOUT_E_QUOTA);
        expect_nothing_held();
        break;
    }
    case 7: { /* touch a frame never granted: the host must stop us */
        volatile uint64_t *p = (void *)(uintptr_t)(memout_region_base() + 0x123000);
        *p = 1;
        rt_puts("malicious: write to an ungranted frame went through\n");
        return 30;
    }
    case 8: { /* touch a frame after freeing it */
        EXPECT(memout_alloc(1, &l), 0);
        volatile uint64_t *p = (void *)(uintptr_t)ext[0].gpa;
        *p = 42;
        EXPECT(memout_free(&l), 0);
        (void)*p;
        rt_puts("malicious: read of a freed frame went through\n");
        return 31;
    }
    case 11: { /* flood the doorbell with full batches of garbage while others run */
        struct memout_desc d[64];
        for (int round = 0; round < 3000; round++) {
            for (int j = 0; j < 64; j++) {
                uint64_t *w = (uint64_t *)&d[j];
                for (int k = 0; k < 8; k++)
                    w[k] = rt_rand(&rng);
            }
            memout_submit(d, 64);
        }
        expect_nothing_held();
        break;
    }
    case 12: { /* KVM's emulator writes an ungranted frame (rep insl from the argument port) */
        void *dst = (void *)(uintptr_t)(memout_region_base() + 0x456000);
        uint64_t n = 16;
        __asm__ volatile("rep insl" : "+D"(dst), "+c"(n) : "d"((uint16_t)RT_PORT_ARG) : "memory");
        rt_puts("malicious: string input into an ungranted frame went through\n");
        return 32;
    }
    case 13: { /* KVM's emulator reads an ungranted frame (rep outsl to the checkpoint port) */
        const void *src = (const void *)(uintptr_t)(memout_region_base() + 0x789000);
        uint64_t n = 16;
        __asm__ volatile("rep outsl" : "+S"(src), "+c"(n) : "d"((uint16_t)RT_PORT_CHECKPOINT)
                         : "memory");
        rt_puts("malicious: string output from an ungranted frame went through\n");
        return 33;
    }
    case 10: /* never ends: the VMM's time limit must stop it */
        for (;;)
            __asm__ volatile("pause");
    default:
        rt_printf("malicious: unknown mode %u\n", mode);
        return 2;
    }
    rt_puts("malicious: PASS\n");
    return 0;
}
