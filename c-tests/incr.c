/* incr: memory that changes by known steps between checkpoints, for incremental checkpoints.
 *   CR_TEST_GO=PATH incr MB [hot|holes]
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
 *     3 + 16 * (k % 8) with MADV_DONTNEED (hot at first, written no more later);
 *   - with the argument "holes" (incr MB holes), also changes an arena of regions (2 MiB-aligned,
 *     PROT_NONE between them) so that ranges read as zero or move (see step_holes): a region of
 *     transparent huge pages (MADV_HUGEPAGE; a whole 2 MiB huge page dropped with MADV_DONTNEED,
 *     which leaves no page table: "THP AnonHugePages before the drop: N kB" says whether the
 *     kernel gave huge pages), the same with 4 KiB pages (a whole page table's worth dropped),
 *     a region unmapped and mapped again at its address (not refilled), pages moved with mremap
 *     to another region and back, a region shrunk with mremap and grown back in place, and pages
 *     freed with MADV_FREE and reclaimed at once (MADV_PAGEOUT); a guard page
 *     (MADV_GUARD_INSTALL) must come back as a zero page. A copy of what the arena must hold
 *     (the shadow) is changed with it.
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
static int holes;

/* The arena of "holes" mode: regions at these offsets (MiB) and of these sizes. */
#define MIB ((size_t)1 << 20)
#define ARENA (46 * MIB)
enum { THP = 0, SMALL = 8, REMAP = 16, MVDST = 22, MVSRC = 28, SHRINK = 32, LAZY = 40, GUARD = 43 };
static const struct { size_t at, len; } regions[] = {
    {THP, 6}, {SMALL, 6}, {REMAP, 4}, {MVDST, 4}, {MVSRC, 2}, {SHRINK, 6}, {LAZY, 2}, {GUARD, 2},
};
static char *arena;
static unsigned char *shadow;
static long lazy_pages, lazy_zero;

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

static char *at(size_t mib) { return arena + mib * MIB; }

static void map_rw(size_t mib, size_t len)
{
    if (mmap(at(mib), len * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != at(mib))
        fail("mmap arena region", (long)mib);
    memset(shadow + mib * MIB, 0, len * MIB);
}

/* Fills len MiB at offset mib (and the shadow) with a pattern. */
static void fill_at(size_t mib, size_t len, uint64_t seed)
{
    fill_words((uint64_t *)at(mib), len * MIB / 8, seed);
    memcpy(shadow + mib * MIB, at(mib), len * MIB);
}

/* Writes one word at byte offset off of the arena (and the shadow). */
static void word_at(size_t off, uint64_t v)
{
    memcpy(arena + off, &v, 8);
    memcpy(shadow + off, &v, 8);
}

static void drop(size_t off, size_t len)
{
    if (madvise(arena + off, len, MADV_DONTNEED)) fail("MADV_DONTNEED", (long)off);
    memset(shadow + off, 0, len);
}

/* AnonHugePages (kB) of the mapping that starts at p, from /proc/self/smaps (-1: not found). */
static long anon_huge_kb(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    long kb = -1;
    int in = 0;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) in = s == (unsigned long)p;
        else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    }
    fclose(f);
    return kb;
}

static void setup_holes(void)
{
    char *r = mmap(NULL, ARENA + 2 * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    shadow = mmap(NULL, ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED || shadow == MAP_FAILED) fail("mmap arena", 0);
    arena = (char *)(((uintptr_t)r + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1));
    for (size_t i = 0; i < sizeof regions / sizeof regions[0]; i++) {
        map_rw(regions[i].at, regions[i].len);
        madvise(at(regions[i].at), regions[i].len * MIB, regions[i].at == THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        fill_at(regions[i].at, regions[i].len, 11000000 * (uint64_t)(i + 1));
    }
    /* A guard page (MADV_GUARD_INSTALL, Linux 6.13): it faults when read, so a checkpoint must
     * leave it out; after a restart it is an ordinary zero page. */
    if (madvise(at(GUARD) + 7 * PAGE, PAGE, 102 /* MADV_GUARD_INSTALL */) == 0) {
        memset(shadow + GUARD * MIB + 7 * PAGE, 0, PAGE);
        printf("GUARD installed\n");
    } else {
        printf("GUARD not installed: MADV_GUARD_INSTALL refused (kernel older than 6.13)\n");
    }
    long kb = anon_huge_kb(at(THP));
    printf("THP AnonHugePages after the fill: %ld kB\n", kb);
    if (kb <= 0) {
        char mode[128] = "?";
        FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
        if (f) {
            if (!fgets(mode, sizeof mode, f)) strcpy(mode, "?");
            fclose(f);
        }
        printf("THP: no huge pages were given (transparent_hugepage/enabled: %s): the huge page drop is "
               "a drop of 4 KiB pages here\n", strtok(mode, "\n"));
    }
}

/* Step k of "holes" mode (see the top of the file). */
static void step_holes(int k)
{
    /* Huge pages and 4 KiB pages: drop a whole 2 MiB (k=1: a huge page untouched since the
     * last checkpoint, still mapped by its PMD), then write a word into another 2 MiB. */
    if (k == 1) { printf("THP AnonHugePages before the drop: %ld kB\n", anon_huge_kb(at(THP))); fflush(stdout); }
    for (size_t r = THP; r <= SMALL; r += SMALL - THP) {
        drop(r * MIB + (size_t)((k - 1) % 3) * 2 * MIB, 2 * MIB);
        word_at(r * MIB + (size_t)(k % 3) * 2 * MIB + 3 * PAGE + 8 * (size_t)k, mark(k, r));
    }
    if (k == 1) { printf("THP AnonHugePages after the drop: %ld kB\n", anon_huge_kb(at(THP))); fflush(stdout); }
    /* Unmapped and mapped again at the same address, not refilled: zero but one word. */
    if (munmap(at(REMAP), 4 * MIB)) fail("munmap remap", k);
    map_rw(REMAP, 4);
    word_at(REMAP * MIB + (size_t)k * PAGE, mark(k, REMAP));
    /* Pages moved with mremap: odd steps move the 2 MiB at MVSRC onto the second half of
     * MVDST and map MVSRC anew (zero but one word); even steps move the first half of MVDST
     * onto MVSRC and map that half anew, refilled. */
    if (k % 2) {
        if (mremap(at(MVSRC), 2 * MIB, 2 * MIB, MREMAP_MAYMOVE | MREMAP_FIXED, at(MVDST + 2)) != at(MVDST + 2))
            fail("mremap src", k);
        memmove(shadow + (MVDST + 2) * MIB, shadow + MVSRC * MIB, 2 * MIB);
        map_rw(MVSRC, 2);
        word_at(MVSRC * MIB + (size_t)k * PAGE, mark(k, MVSRC));
    } else {
        if (mremap(at(MVDST), 2 * MIB, 2 * MIB, MREMAP_MAYMOVE | MREMAP_FIXED, at(MVSRC)) != at(MVSRC))
            fail("mremap dst", k);
        memmove(shadow + MVSRC * MIB, shadow + MVDST * MIB, 2 * MIB);
        map_rw(MVDST, 2);
        fill_at(MVDST, 2, 19000000 * (uint64_t)k);
    }
    /* Shrunk to 1 MiB and grown back in place: the 5 MiB past it read as zero (4 MiB of them
     * whole page tables' worth), one word written into them. */
    if (mremap(at(SHRINK), 6 * MIB, MIB, 0) != at(SHRINK)) fail("mremap shrink", k);
    if (mremap(at(SHRINK), MIB, 6 * MIB, 0) != at(SHRINK)) fail("mremap grow", k);
    memset(shadow + (SHRINK + 1) * MIB, 0, 5 * MIB);
    word_at((SHRINK + 1) * MIB + (size_t)k * PAGE, mark(k, SHRINK));
    /* MADV_FREE, then reclaimed at once where the kernel does (such a page reads as zero, the
     * others keep their bytes): what they read now is what they must hold; a word of each is
     * written back so that a later reclaim cannot change them any more. */
    char *lz = at(LAZY) + (size_t)(k % 8) * 16 * PAGE;
    if (madvise(lz, 16 * PAGE, MADV_FREE)) fail("MADV_FREE", k);
    madvise(lz, 16 * PAGE, 21 /* MADV_PAGEOUT */);
    for (size_t p = 0; p < 16; p++) {
        volatile uint64_t *w = (volatile uint64_t *)(lz + p * PAGE);
        int zero = 1;
        for (size_t i = 0; i < PAGE / 8; i++) zero &= w[i] == 0;
        lazy_zero += zero;
        lazy_pages++;
        w[1] = w[1];
        memcpy(shadow + (size_t)(lz - arena) + p * PAGE, lz + p * PAGE, PAGE);
    }
}

static void verify_holes(void)
{
    printf("MADV_FREE pages reclaimed (read as zero): %ld of %ld\n", lazy_zero, lazy_pages);
    for (size_t i = 0; i < sizeof regions / sizeof regions[0]; i++) {
        size_t off = regions[i].at * MIB, len = regions[i].len * MIB;
        if (memcmp(arena + off, shadow + off, len) == 0) continue;
        const unsigned char *m = (const unsigned char *)arena + off, *w = shadow + off;
        size_t b = 0, n = 0;
        while (m[b] == w[b]) b++;
        for (size_t j = b; j < len; j++) n += m[j] != w[j];
        printf("region at %zu MiB: byte %zu is %u, must be %u (%zu bytes differ)\n", regions[i].at, b, m[b], w[b], n);
        fail("arena region differs", (long)regions[i].at);
    }
}

static void step(int k)
{
    if (holes) step_holes(k);
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
    if (holes) verify_holes();
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH incr MB [hot|holes]\n");
        return 2;
    }
    hot = argc > 2 && strcmp(argv[2], "hot") == 0;
    holes = argc > 2 && strcmp(argv[2], "holes") == 0;
    words = (size_t)atol(argv[1]) << 17;
    pages = words * 8 / PAGE;
    big = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    moved = mmap(NULL, MOVSZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED || moved == MAP_FAILED) return 2;
    fill_words(big, words, 0);
    fill_words(moved, MOVSZ / 8, 0);
    if (holes) setup_holes();
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
