/* A CPU-bound guest for interference experiments (seed 004): counts the primes below a limit
 * (trial division: CPU work, no memory traffic) in work units until the host asks it to
 * finish, then prints "CPUWORK: units N". With a duty cycle below 100 % it sleeps between
 * units (the harness's sleep port: the vCPU thread sleeps, as a halted CPU would) so that it
 * computes that share of the time: a mostly idle dummy guest. Parameters: CPUWORK_P_* in
 * memout_harness.h. */
#include "common.h"

static uint32_t param(uint32_t i)
{
    rt_out32(MEMOUT_HARNESS_PORT_PARAM, i);
    return rt_in32(MEMOUT_HARNESS_PORT_PARAM);
}

static uint64_t primes_below(uint64_t limit)
{
    uint64_t count = 0;
    for (uint64_t n = 2; n < limit; n++) {
        uint64_t d = 2;
        while (d * d <= n && n % d)
            d++;
        count += d * d > n;
    }
    return count;
}

int guest_main(void)
{
    uint32_t duty = param(CPUWORK_P_DUTY_PCT), limit = param(CPUWORK_P_LIMIT);
    limit = limit ? limit : 20000;
    CHECK(duty >= 1 && duty <= 100, 11, "duty %u%% out of range\n", duty);
    uint64_t ticks_per_us = 1;
    if (duty < 100) {
        uint64_t t = rt_rdtsc();
        rt_out32(MEMOUT_HARNESS_PORT_SLEEP, 20000);
        ticks_per_us = (rt_rdtsc() - t) / 20000;
        ticks_per_us = ticks_per_us ? ticks_per_us : 1;
    }
    rt_checkpoint(1);
    uint64_t units = 0, found = 0;
    while (!rt_in32(MEMOUT_HARNESS_PORT_FINISH)) {
        uint64_t t = rt_rdtsc();
        found += primes_below(limit);
        units++;
        if (duty < 100) {
            uint64_t idle_us = (rt_rdtsc() - t) * (100 - duty) / duty / ticks_per_us;
            rt_out32(MEMOUT_HARNESS_PORT_SLEEP, (uint32_t)(idle_us < 1000000 ? idle_us : 1000000));
        }
    }
    rt_checkpoint(2);
    rt_printf("CPUWORK: units %lu primes %lu\n", units, found);
    return 0;
}
