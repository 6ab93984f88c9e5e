/* incr: memory that changes by known steps between checkpoints, for incremental checkpoints.
 *   CR_TEST_GO=PATH incr MB [hot]
 * Fills an MB MiB anonymous region with a pattern, prints READY, then polls every millisecond
 * for the file PATH.step holding a number k > the last step done; it then takes steps up to k
 * and writes k to PATH.ack (through a temporary file and rename). Step k:
 *   - writes one word into every page p of the big region with p % 64 == k % 64;
 *   - drops page 512 + k of each 1024 with MADV_DONTNEED (it reads as zero afterwards);
 *   - maps a new 1 MiB region and fills it (kept: at most 16 such regions);
 *   - unmaps the 256 KiB region "moved" and maps a new one at the same address, refilled;
 *   - grows the heap by a 1 MiB malloc filled with a pattern;
 *   - with the argument "hot" (incr MB hot), also writes one word into every page of a hot
 *     window of the big region, written at every step: pages [0, 256) up to step 6, pages
 *     [128, 384) after (pages 0-127 stop being written, 256-383 start), and then drops page
 *     3 + 16 * (k % 8) with MADV_DONTNEED (hot at first, written no more later).
 * After GO it recomputes what every region must hold after the steps it took and compares:
 * PASS incr, or FAIL incr: what. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define MAXSTEP 16
#define NEWSZ (1 << 20)
#define MOVSZ (256 << 10)

static uint64_t fill(uint64_t k) { return k * 0x9E3779B97F4A7C15ULL ^ (k >> 7); }
static uint64_t mark(uint64_t step, uint64_t p) { return ~(step * 1000003 + p) * 0xD6E8FEB86659FD93ULL; }

static uint64_t *big, *newr[MAXSTEP + 1], *heap[MAXSTEP + 1];
static uint64_t *moved;
static size_t words, pages;
static int steps;
static int hot;

/* Step k's writes to the hot window of the big region (or of its expected copy). */
static void hot_step(uint64_t *b, int k)
{
    size_t from = k <= 6 ? 0 : 128;
    for (size_t p = from; p < from + 256 && p < pages; p++) b[p * (PAGE / 8) + (size_t)(k * 7) % (PAGE / 8)] = mark(k + 100, p);
}

/* The page of the hot window step k drops after its writes. */
static size_t hot_drop(int k) { return 3 + 16 * (size_t)(k % 8); }

static void fail(const char *what, long at)
{
    printf("FAIL incr: %s (at %ld, after %d steps)\n", what, at, steps);
    fprintf(stderr, "FAIL incr: %s (at %ld, after %d steps)\n", what, at, steps);
    exit(1);
}

static void fill_words(uint64_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) p[i] = fill(i + seed);
}

static void step(int k)
{
    for (size_t p = (size_t)(k % 64); p < pages; p += 64) big[p * (PAGE / 8) + k % (PAGE / 8)] = mark(k, p);
    for (size_t p = 512 + (size_t)k; p < pages; p += 1024) madvise((char *)big + p * PAGE, PAGE, MADV_DONTNEED);
    if (hot) {
        hot_step(big, k);
        madvise((char *)big + hot_drop(k) * PAGE, PAGE, MADV_DONTNEED);
    }
    newr[k] = mmap(NULL, NEWSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (newr[k] == MAP_FAILED) fail("mmap new", k);
    fill_words(newr[k], NEWSZ / 8, 1000000 * (uint64_t)k);
    munmap(moved, MOVSZ);
    uint64_t *again = mmap(moved, MOVSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (again != moved) fail("mmap moved", k);
    fill_words(moved, MOVSZ / 8, 7000000 * (uint64_t)k);
    heap[k] = malloc(NEWSZ);
    if (!heap[k]) fail("malloc", k);
    fill_words(heap[k], NEWSZ / 8, 3000000 * (uint64_t)k);
}

static void verify(void)
{
    uint64_t *want = malloc(words * 8);
    if (!want) fail("malloc want", 0);
    fill_words(want, words, 0);
    for (int k = 1; k <= steps; k++) {
        for (size_t p = (size_t)(k % 64); p < pages; p += 64) want[p * (PAGE / 8) + k % (PAGE / 8)] = mark(k, p);
        for (size_t p = 512 + (size_t)k; p < pages; p += 1024) memset(want + p * (PAGE / 8), 0, PAGE);
        if (hot) {
            hot_step(want, k);
            memset(want + hot_drop(k) * (PAGE / 8), 0, PAGE);
        }
    }
    for (size_t i = 0; i < words; i++)
        if (big[i] != want[i]) fail("big region differs", (long)i);
    free(want);
    uint64_t *w2 = malloc(NEWSZ);
    for (int k = 1; k <= steps; k++) {
        fill_words(w2, NEWSZ / 8, 1000000 * (uint64_t)k);
        if (memcmp(w2, newr[k], NEWSZ)) fail("new region differs", k);
        fill_words(w2, NEWSZ / 8, 3000000 * (uint64_t)k);
        if (memcmp(w2, heap[k], NEWSZ)) fail("heap block differs", k);
    }
    fill_words(w2, MOVSZ / 8, 7000000 * (uint64_t)steps);
    if (memcmp(w2, moved, MOVSZ)) fail("remapped region differs", steps);
    free(w2);
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH incr MB [hot]\n");
        return 2;
    }
    hot = argc > 2 && strcmp(argv[2], "hot") == 0;
    words = (size_t)atol(argv[1]) << 17;
    pages = words * 8 / PAGE;
    big = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    moved = mmap(NULL, MOVSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED || moved == MAP_FAILED) return 2;
    fill_words(big, words, 0);
    fill_words(moved, MOVSZ / 8, 0);
    char stepf[4096], ackf[4096], tmpf[4096];
    snprintf(stepf, sizeof stepf, "%s.step", go);
    snprintf(ackf, sizeof ackf, "%s.ack", go);
    snprintf(tmpf, sizeof tmpf, "%s.ack.tmp", go);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0) {
        FILE *f = fopen(stepf, "r");
        int want = 0;
        if (f) {
            if (fscanf(f, "%d", &want) != 1) want = 0;
            fclose(f);
        }
        if (want > steps && want <= MAXSTEP) {
            while (steps < want) step(++steps);
            FILE *a = fopen(tmpf, "w");
            if (!a) fail("ack", want);
            fprintf(a, "%d\n", steps);
            fclose(a);
            rename(tmpf, ackf);
        }
        usleep(1000);
    }
    verify();
    printf("PASS incr\n");
    return 0;
}
