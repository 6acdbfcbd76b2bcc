// SPDX-License-Identifier: GPL-2.0
/*
 * memout-test: the guest side of memout's Linux tests. Prints "MEMOUT-TEST: ..." lines on
 * the console for the host to follow.
 *
 *   memout-test free MIB SECS   allocate MIB, touch and check every page, free it all,
 *                               then wait SECS (while the host watches its memory fall)
 *   memout-test hold MIB SECS   fill MIB, wait SECS (while the host does something), then
 *                               check every byte is still what was written
 *   memout-test dev MIB SECS    map MIB of /dev/memout (host-granted frames), check they read
 *                               zero, fill them, wait SECS, check and unmap them; then check
 *                               that mappings the module must refuse are refused
 *   memout-test devloop MAPS PAGES HOLD  MAPS times: map PAGES pages of /dev/memout, check
 *                               they read zero, fill and check them, and unmap them at once
 *                               (HOLD 0: the fast path's alloc/free pairs) or all at the end
 *                               (HOLD 1: the guest grows); a line after the first tenth,
 *                               and one at the end after which it waits 3 s for the host
 *   memout-test ksm MIB CONTENT PRIMES  seed 000's guest: fill MIB of anonymous memory with
 *                               data identical in every guest (CONTENT 0; each page differs)
 *                               or random (1), say "ksm ready", then until killed: count
 *                               primes below 200000 for 1 s (PRIMES 1) or sleep 1 s, check
 *                               every word, and print a "ksm round" line with the count,
 *                               time and errors
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* One line with the guest's free memory, for the host's log. */
static void show_free(const char *when)
{
	char line[128];
	FILE *f = fopen("/proc/meminfo", "r");

	while (f && fgets(line, sizeof(line), f))
		printf("MEMOUT-TEST: %s %s", when, line);
	if (f)
		fclose(f);
}

static int do_free(size_t mib, unsigned int secs)
{
	size_t len = mib << 20, off;
	unsigned long long *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("MEMOUT-TEST: mmap");
		return 1;
	}
	/* Let the reports of what boot freed settle, so the host sees this test's pages alone. */
	sleep(2);
	show_free("before");
	printf("MEMOUT-TEST: start\n");
	fflush(stdout);
	for (off = 0; off < len; off += 4096)
		p[off / 8] = off ^ 0x6d656d6f7574ull;
	for (off = 0; off < len; off += 4096) {
		if (p[off / 8] != (off ^ 0x6d656d6f7574ull)) {
			printf("MEMOUT-TEST: corrupt at %zu\n", off);
			return 1;
		}
	}
	printf("MEMOUT-TEST: touched %zu MiB\n", mib);
	fflush(stdout);
	sleep(1);
	munmap(p, len);
	printf("MEMOUT-TEST: freed %zu MiB at %.0f ms\n", mib, now_ms());
	fflush(stdout);
	sleep(secs);
	show_free("after");
	return 0;
}

static int do_hold(size_t mib, unsigned int secs)
{
	size_t len = mib << 20, i, bad = 0;
	unsigned long long *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("MEMOUT-TEST: mmap");
		return 1;
	}
	for (i = 0; i < len / 8; i++)
		p[i] = i * 0x9e3779b97f4a7c15ull;
	printf("MEMOUT-TEST: holding %zu MiB\n", mib);
	fflush(stdout);
	sleep(secs);
	for (i = 0; i < len / 8; i++)
		bad += p[i] != i * 0x9e3779b97f4a7c15ull;
	printf("MEMOUT-TEST: %s (%zu bad words)\n", bad ? "corrupt" : "intact", bad);
	return bad != 0;
}

/* Expects mmap of @len bytes of @fd with @flags to fail with @want. */
static int expect_refusal(int fd, size_t len, int flags, int want, const char *what)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	if (p != MAP_FAILED) {
		printf("MEMOUT-TEST: dev %s was mapped\n", what);
		munmap(p, len);
		return 1;
	}
	printf("MEMOUT-TEST: dev %s refused: %s\n", what, strerror(errno));
	return errno != want;
}

static int do_dev(size_t mib, unsigned int secs)
{
	size_t len = mib << 20, i, nonzero = 0, bad = 0;
	unsigned long long *p;
	int fd = open("/dev/memout", O_RDWR), err = 0;

	if (fd < 0) {
		perror("MEMOUT-TEST: open /dev/memout");
		return 1;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("MEMOUT-TEST: mmap /dev/memout");
		return 1;
	}
	for (i = 0; i < len / 8; i++)
		nonzero += p[i] != 0;
	for (i = 0; i < len / 8; i++)
		p[i] = i * 0x9e3779b97f4a7c15ull;
	printf("MEMOUT-TEST: dev mapped %zu MiB (%zu nonzero words)\n", mib, nonzero);
	fflush(stdout);
	sleep(secs);
	for (i = 0; i < len / 8; i++)
		bad += p[i] != i * 0x9e3779b97f4a7c15ull;
	printf("MEMOUT-TEST: dev %s (%zu bad words)\n", bad ? "corrupt" : "intact", bad);
	/* Half of it: the mapping cannot be split. */
	if (munmap(p, len / 2) == 0) {
		printf("MEMOUT-TEST: dev mapping was split\n");
		err = 1;
	}
	if (munmap(p, len)) {
		perror("MEMOUT-TEST: munmap /dev/memout");
		err = 1;
	}
	printf("MEMOUT-TEST: dev unmapped at %.0f ms\n", now_ms());
	fflush(stdout);
	sleep(2);
	err |= expect_refusal(fd, 1 << 20, MAP_PRIVATE, EINVAL, "private mapping");
	err |= expect_refusal(fd, 2ull << 30, MAP_SHARED, E2BIG, "2 GiB mapping");
	err |= expect_refusal(fd, 900ull << 20, MAP_SHARED, ENOMEM, "900 MiB mapping");
	fflush(stdout);
	close(fd);
	return err || bad || nonzero;
}

static int do_devloop(unsigned long maps, unsigned long pages, int hold)
{
	size_t len = pages * 4096, i, nonzero = 0, bad = 0;
	int fd = open("/dev/memout", O_RDWR);
	unsigned long long *p, **held = calloc(maps, sizeof(*held));
	unsigned long n;
	double t0 = 0;

	if (fd < 0 || !held) {
		perror("MEMOUT-TEST: open /dev/memout");
		return 1;
	}
	for (n = 0; n < maps; n++) {
		if (n == maps / 10) {
			printf("MEMOUT-TEST: devloop warm after %lu maps\n", n);
			fflush(stdout);
			t0 = now_ms();
		}
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED) {
			perror("MEMOUT-TEST: mmap /dev/memout");
			return 1;
		}
		for (i = 0; i < len / 8; i += 8)
			nonzero += p[i] != 0;
		for (i = 0; i < len / 8; i += 8)
			p[i] = (n << 32) ^ i;
		for (i = 0; i < len / 8; i += 8)
			bad += p[i] != ((n << 32) ^ i);
		if (hold)
			held[n] = p;
		else
			munmap(p, len);
	}
	for (n = 0; hold && n < maps; n++) {
		for (i = 0; i < len / 8; i += 8)
			bad += held[n][i] != ((n << 32) ^ i);
		munmap(held[n], len);
	}
	printf("MEMOUT-TEST: devloop %lu maps of %lu pages in %.0f ms after warm-up",
	       maps - maps / 10, pages, now_ms() - t0);
	printf(" (%zu nonzero, %zu bad)\n", nonzero, bad);
	fflush(stdout);
	sleep(3);
	close(fd);
	free(held);
	return nonzero || bad;
}

/* The word at @i of the KSM fill: identical content ignores where it lies in memory. */
static unsigned long long ksm_word(size_t i, unsigned long long *rng, int random)
{
	if (!random)
		return (i / 512 * 0x9e3779b97f4a7c15ull + i % 512) ^ 0x5eed0000d00dfeedull;
	*rng ^= *rng << 13;
	*rng ^= *rng >> 7;
	*rng ^= *rng << 17;
	return *rng;
}

/* Counts primes below @limit by trial division: CPU work, no memory traffic. */
static unsigned long primes_below(unsigned long limit)
{
	unsigned long n, d, count = 0;

	for (n = 2; n < limit; n++) {
		for (d = 2; d * d <= n && n % d; d++)
			;
		count += d * d > n;
	}
	return count;
}

static int do_ksm(size_t mib, int random, int primes)
{
	size_t len = mib << 20, i, bad;
	unsigned long long seed = random ? (unsigned long long)now_ms() * 1e6 + getpid() : 1;
	unsigned long long rng = seed | 1, *p = NULL;
	unsigned long round, found;
	double t;

	if (len) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("MEMOUT-TEST: mmap");
			return 1;
		}
	}
	for (i = 0; i < len / 8; i++)
		p[i] = ksm_word(i, &rng, random);
	printf("MEMOUT-TEST: ksm ready %zu MiB\n", mib);
	fflush(stdout);
	for (round = 1;; round++) {
		t = now_ms();
		found = 0;
		if (!primes)
			sleep(1);
		while (primes && now_ms() - t < 1000)
			found += primes_below(200000);
		t = now_ms() - t;
		rng = seed | 1;
		bad = 0;
		for (i = 0; i < len / 8; i++)
			bad += p[i] != ksm_word(i, &rng, random);
		printf("MEMOUT-TEST: ksm round %lu primes %lu ms %.1f bad %zu\n", round, found, t,
		       bad);
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "ksm"))
		return do_ksm(strtoul(argv[2], NULL, 0), atoi(argv[3]) == 1, atoi(argv[4]) == 1);
	if (argc == 5 && !strcmp(argv[1], "devloop"))
		return do_devloop(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0),
				  atoi(argv[4]));
	if (argc == 4 && !strcmp(argv[1], "free"))
		return do_free(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "hold"))
		return do_hold(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "dev"))
		return do_dev(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0));
	fprintf(stderr, "usage: memout-test free|hold|dev MIB SECS | devloop MAPS PAGES HOLD\n"
		"       memout-test ksm MIB CONTENT PRIMES\n");
	return 2;
}
