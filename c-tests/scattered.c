/* scattered: memory whose pages are not physically contiguous, as a long-running process's, for
 * the page data's bounce ring (agent::bounce, tests/lazy_restore.rs).
 *   scattered MB
 * Maps MB MiB of private anonymous memory and first touches its pages in a shuffled order (the
 * kernel hands out physical pages in the order of the faults, so neighbours in the program are
 * not neighbours in physical memory), then fills it with pseudo-random words and keeps their
 * checksum; then maps 1 MiB more with MAP_NORESERVE (as glibc's thread arenas are) with a
 * free gap of 64 MiB below it (too small for the agent's scratch area, large enough for its
 * bounce ring, which the next checkpoint maps there, right below it: the kernel merges two such
 * mappings of the same flags into one), filled with a pattern. READY; then rewrites one 64-byte slot per step
 * (updating the checksum) until the GO file exists. After GO it recomputes the checksum of the
 * whole region and compares it, replays every step from scratch and compares the whole region,
 * and checks the last 1 MiB: PASS scattered. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t fill(uint64_t k)
{
    uint64_t x = (k + 1) * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ULL, x ^= x >> 29;
    return x;
}
static uint64_t mark(uint64_t step) { return ~step * 0xD6E8FEB86659FD93ULL; }

static uint64_t sum_of(const uint64_t *w, size_t n)
{
    uint64_t s = 0;
    for (size_t k = 0; k < n; k++) s += w[k] * (2 * k + 1);
    return s;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH scattered MB\n");
        return 2;
    }
    size_t len = (size_t)atol(argv[1]) << 20, words = len / 8, pages = len / 4096;
    size_t slots = words / 8;
    uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *order = malloc(pages * sizeof *order);
    if (mem == MAP_FAILED || !order || !pages) return 2;
    /* 4 KiB pages (no transparent huge pages: they would be contiguous again). */
    madvise(mem, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
    uint64_t y = 0x2545F4914F6CDD1DULL;
    for (size_t i = pages; i > 1; i--) {
        y ^= y << 13, y ^= y >> 7, y ^= y << 17;
        size_t j = (size_t)(y % i);
        uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < pages; i++) mem[(size_t)order[i] * 512] = 1;
    free(order);
    for (size_t k = 0; k < words; k++) mem[k] = fill(k);
    uint64_t sum = sum_of(mem, words);
    size_t tail_words = (1 << 20) / 8;
    /* (The tail 2 MiB aligned: the kernel places mappings of 2 MiB or more on such a boundary.) */
    char *r = mmap(NULL, 70 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return 2;
    uintptr_t t = ((uintptr_t)r + (67 << 20)) & ~(uintptr_t)((2 << 20) - 1);
    uint64_t *tail = (uint64_t *)t;
    if (mprotect(tail, 1 << 20, PROT_READ | PROT_WRITE) || munmap((char *)t - (64 << 20), 64 << 20))
        return 2;
    for (size_t k = 0; k < tail_words; k++) tail[k] = fill(words + k);
    printf("READY\n");
    fflush(stdout);
    uint64_t step = 0;
    for (;;) {
        size_t s = (size_t)(step * 2654435761u % slots);
        for (int j = 0; j < 8; j++) {
            size_t k = s * 8 + j;
            sum -= mem[k] * (2 * k + 1);
            mem[k] = mark(step) + j;
            sum += mem[k] * (2 * k + 1);
        }
        step++;
        if (step % 64 == 0) {
            if (access(go, F_OK) == 0) break;
            usleep(1000);
        }
    }
    if (sum_of(mem, words) != sum) {
        printf("FAIL scattered: checksum differs after %llu steps\n", (unsigned long long)step);
        fprintf(stderr, "FAIL scattered: checksum differs after %llu steps\n",
                (unsigned long long)step);
        return 1;
    }
    uint64_t *want = malloc(len);
    if (!want) return 2;
    for (size_t k = 0; k < words; k++) want[k] = fill(k);
    for (uint64_t i = 0; i < step; i++) {
        size_t s = (size_t)(i * 2654435761u % slots);
        for (int j = 0; j < 8; j++) want[s * 8 + j] = mark(i) + j;
    }
    if (memcmp(want, mem, len) != 0) {
        printf("FAIL scattered: memory differs after %llu steps\n", (unsigned long long)step);
        fprintf(stderr, "FAIL scattered: memory differs after %llu steps\n",
                (unsigned long long)step);
        return 1;
    }
    for (size_t k = 0; k < tail_words; k++)
        if (tail[k] != fill(words + k)) {
            printf("FAIL scattered: the last mapping differs at word %zu\n", k);
            fprintf(stderr, "FAIL scattered: the last mapping differs at word %zu\n", k);
            return 1;
        }
    printf("PASS scattered\n");
    return 0;
}
