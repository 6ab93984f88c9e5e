/*
 * mappings.c - memory mappings of every kind across checkpoint/restart.
 *
 * Build: gcc -O2 -Wall -pthread -o mappings mappings.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./mappings
 *
 * Set up before READY (files in $CR_TEST_DIR), every region filled with a
 * known pattern and checksummed:
 *   A  private anonymous, 16 pages at a fixed unusual address, pages 6-9
 *      unmapped again (a hole that must stay unmapped)
 *   B  MAP_SHARED|MAP_ANONYMOUS, 10 pages (last 2 never touched)
 *   C  memfd_create + MAP_SHARED, 12 pages (last 4 never touched); fd closed
 *   D  shared.dat, MAP_SHARED, written through the mapping (pages 0-5);
 *      pages 6/7 are left zero for the post-GO write (the first process to
 *      create $CR_TEST_DIR/claim after GO takes page 6, a second one page 7:
 *      the original and a restored copy can run at once)
 *   E  private.dat, MAP_PRIVATE RW; pages 1, 4 get one word changed and
 *      page 6 is rewritten entirely (copy-on-write); the file must not change
 *   F  delpriv.dat, MAP_PRIVATE, one word changed, then unlinked
 *   G  delshared.dat, MAP_SHARED, written through the mapping, then unlinked
 *   H  ro.dat mapped PROT_READ at file offset 2 pages (3 pages)
 *   I  4 pages written, then mprotect(PROT_NONE)
 *   J  3 pages RW / PROT_NONE guard (never touched) / RW
 *   K  64 MiB anonymous, only read (zero page)
 *   L  64 MiB anonymous, written with zeros
 *   M  one 2-page memfd mapped twice, back to back (a "magic ring buffer"):
 *      both views must stay one object (a write through one shows in the
 *      other); with CR_TEST_SKIP_SHARED_ALIAS=1 in the environment a lost
 *      alias is only reported (the contents of both views are checked anyway)
 * Work loop: iteration n writes one word of each of A (both parts), B, C
 * and G (word (n-1) mod size) with a value derived from n, and then stores
 * n in a global counter.
 * After GO: every byte of every region is recomputed from the counter and
 * the patterns; protections (and file names/offsets of file mappings) are
 * checked in /proc/self/maps; the hole is still unmapped; a forked child
 * writes B, C and G and the parent must see it (still shared); a forked
 * child touching the guard page dies of SIGSEGV; a write through D reaches
 * the file (msync + pread) and a pwrite to the file shows in D; I is made
 * readable and verified.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "mappings"
#define CHUNK 20000
#define BIG (64u << 20)

#include "fail.h"

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t csum(const void *p, size_t len, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h = (h << 23) | (h >> 41);
    }
    return h ^ len;
}

/* Word i of a pattern with seed s. */
static inline uint64_t pat(uint64_t s, size_t i)
{
    return mix64(s * 0x9e3779b97f4a7c15ULL + i);
}

static void fill(void *p, size_t len, uint64_t s)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = pat(s, i);
}

static int check_fill(const void *p, size_t len, uint64_t s)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i] != pat(s, i))
            return 0;
    return 1;
}

static int all_zero(const void *p, size_t len)
{
    const uint64_t *w = p;
    uint64_t acc = 0;
    for (size_t i = 0; i < len / 8; i++)
        acc |= w[i];
    return acc == 0;
}

static size_t ps;
static char dir[PATH_MAX];

static void path_of(char *out, const char *name)
{
    if (snprintf(out, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX)
        fail("path too long");
}

/* A file of npages filled with pattern seed s (or zero-sized holes when s == 0). */
static int make_file(const char *name, size_t npages, uint64_t s)
{
    char p[PATH_MAX];
    path_of(p, name);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        failf("create %s: %s", p, strerror(errno));
    if (s) {
        void *buf = malloc(npages * ps);
        if (!buf)
            fail("malloc");
        fill(buf, npages * ps, s);
        if (write(fd, buf, npages * ps) != (ssize_t)(npages * ps))
            failf("write %s", p);
        free(buf);
    } else if (ftruncate(fd, (off_t)(npages * ps)) != 0) {
        failf("ftruncate %s", p);
    }
    return fd;
}

static void *map(void *addr, size_t len, int prot, int flags, int fd, off_t off, const char *what)
{
    void *p = mmap(addr, len, prot, flags, fd, off);
    if (p == MAP_FAILED)
        failf("mmap %s: %s", what, strerror(errno));
    return p;
}

/* After GO: 1 for the first process of this run to get here, 0 for a later one (the original
 * and a restored copy may run at once and share $CR_TEST_DIR; pids are not compared). */
static int first_claim(void)
{
    char p[PATH_MAX];
    path_of(p, "claim");
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    if (errno != EEXIST)
        failf("create %s: %s", p, strerror(errno));
    return 0;
}

/* ---------------- /proc/self/maps ---------------- */
struct mline {
    uintptr_t start, end;
    char perms[8];
    unsigned long long off;
    char path[PATH_MAX];
};

/* The maps line containing addr; 0 if none. */
static int find_map(const void *addr, struct mline *out)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        fail("open /proc/self/maps");
    char line[PATH_MAX + 256];
    int found = 0;
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e, ino;
        unsigned long long off;
        unsigned maj, min;
        char perms[8];
        int n = 0;
        if (sscanf(line, "%lx-%lx %7s %llx %x:%x %lu %n", &s, &e, perms, &off, &maj, &min, &ino, &n) < 7)
            continue;
        if (a < s || a >= e)
            continue;
        out->start = s;
        out->end = e;
        snprintf(out->perms, sizeof out->perms, "%s", perms);
        out->off = off;
        char *pp = line + n;
        pp[strcspn(pp, "\n")] = 0;
        snprintf(out->path, sizeof out->path, "%s", pp);
        found = 1;
        break;
    }
    fclose(f);
    return found;
}

/* Every page of [p, p+len) must be mapped with these permissions (and file/offset if given). */
static void expect_map(const char *what, const void *p, size_t len, const char *perms,
                       const char *file, long long file_off)
{
    for (size_t o = 0; o < len; o += ps) {
        struct mline m;
        const char *a = (const char *)p + o;
        if (!find_map(a, &m))
            failf("%s: page %zu (%p) is not mapped", what, o / ps, (const void *)a);
        if (strcmp(m.perms, perms) != 0)
            failf("%s: page %zu (%p) has permissions %s, expected %s", what, o / ps,
                  (const void *)a, m.perms, perms);
        if (file && strcmp(m.path, file) != 0)
            failf("%s: page %zu maps '%s', expected '%s'", what, o / ps, m.path, file);
        if (file_off >= 0 && m.off + ((uintptr_t)a - m.start) != (unsigned long long)file_off + o)
            failf("%s: page %zu maps file offset %llu, expected %llu", what, o / ps,
                  m.off + (unsigned long long)((uintptr_t)a - m.start),
                  (unsigned long long)file_off + o);
    }
}

static void expect_unmapped(const char *what, const void *p, size_t len)
{
    for (size_t o = 0; o < len; o += ps) {
        struct mline m;
        if (find_map((const char *)p + o, &m))
            failf("%s: page %zu is mapped (%lx-%lx %s %s), should be a hole", what, o / ps,
                  (unsigned long)m.start, (unsigned long)m.end, m.perms, m.path);
    }
}

/* ---------------- work areas ---------------- */
struct area {
    const char *name;
    uint64_t *w;
    size_t nw;
    uint64_t seed; /* initial pattern */
};
#define NAREA 5
static struct area areas[NAREA];
static volatile uint64_t g_n;

static inline uint64_t wval(uint64_t n, int k)
{
    return mix64(n * 8 + (uint64_t)k + 0x5eed);
}

static void work_loop(const char *go)
{
    uint64_t n = g_n;
    for (;;) {
        for (int c = 0; c < CHUNK; c++) {
            n++;
            for (int k = 0; k < NAREA; k++)
                areas[k].w[(n - 1) % areas[k].nw] = wval(n, k);
            g_n = n;
        }
        if (access(go, F_OK) == 0)
            break;
    }
}

static void verify_areas(void)
{
    uint64_t n = g_n;
    if (n == 0)
        fail("work loop never ran");
    for (int k = 0; k < NAREA; k++) {
        const struct area *a = &areas[k];
        for (size_t i = 0; i < a->nw; i++) {
            uint64_t exp;
            if (n >= i + 1)
                exp = wval(i + 1 + a->nw * ((n - i - 1) / a->nw), k);
            else
                exp = pat(a->seed, i);
            if (a->w[i] != exp)
                failf("%s: word %zu is %#llx, expected %#llx (counter %llu)", a->name, i,
                      (unsigned long long)a->w[i], (unsigned long long)exp,
                      (unsigned long long)n);
        }
    }
    fprintf(stderr, "info %s: %llu work iterations\n", NAME, (unsigned long long)n);
}

/* A child writes val at p; the parent must see it (the mapping is shared). */
static void expect_shared(const char *what, volatile uint64_t *p, uint64_t val)
{
    pid_t c = fork();
    if (c < 0)
        fail("fork");
    if (c == 0) {
        *p = val;
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failf("%s: writer child failed", what);
    if (*p != val)
        failf("%s: a child's write is not visible: the mapping is no longer shared", what);
    *p = 0;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *d = getenv("CR_TEST_DIR");
    if (!go || !d)
        fail("CR_TEST_GO / CR_TEST_DIR not set");
    if (!realpath(d, dir))
        fail("realpath CR_TEST_DIR");
    setvbuf(stdout, NULL, _IOLBF, 0);
    ps = (size_t)sysconf(_SC_PAGESIZE);
    const int RW = PROT_READ | PROT_WRITE;
    const int PA = MAP_PRIVATE | MAP_ANONYMOUS;
    char p_shared[PATH_MAX], p_private[PATH_MAX], p_ro[PATH_MAX], p_tmp[PATH_MAX];
    path_of(p_shared, "shared.dat");
    path_of(p_private, "private.dat");
    path_of(p_ro, "ro.dat");
    path_of(p_tmp, "claim");
    if (unlink(p_tmp) != 0 && errno != ENOENT)
        fail("unlink claim");

    /* A: private anonymous with a hole, far from everything else */
    unsigned char *A = mmap((void *)0x3f0000000000UL, 16 * ps, RW, PA | MAP_FIXED_NOREPLACE, -1, 0);
    if (A == MAP_FAILED)
        A = map(NULL, 16 * ps, RW, PA, -1, 0, "A");
    memset(A, 0xaa, 16 * ps);
    if (munmap(A + 6 * ps, 4 * ps) != 0)
        fail("munmap hole");
    fill(A, 6 * ps, 0xA0);
    fill(A + 10 * ps, 6 * ps, 0xA1);
    areas[0] = (struct area){"A (private anon, below the hole)", (uint64_t *)A, 6 * ps / 8, 0xA0};
    areas[1] = (struct area){"A (private anon, above the hole)", (uint64_t *)(A + 10 * ps), 6 * ps / 8, 0xA1};

    /* B: shared anonymous */
    unsigned char *B = map(NULL, 10 * ps, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0, "B");
    fill(B, 8 * ps, 0xB);
    areas[2] = (struct area){"B (shared anon)", (uint64_t *)B, 8 * ps / 8, 0xB};

    /* C: memfd */
    int mfd = memfd_create("crtest", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)(12 * ps)) != 0)
        fail("memfd_create");
    unsigned char *C = map(NULL, 12 * ps, RW, MAP_SHARED, mfd, 0, "C");
    close(mfd);
    fill(C, 8 * ps, 0xC);
    areas[3] = (struct area){"C (memfd)", (uint64_t *)C, 8 * ps / 8, 0xC};

    /* D: shared file mapping, written through the mapping */
    int fd = make_file("shared.dat", 8, 0);
    unsigned char *D = map(NULL, 8 * ps, RW, MAP_SHARED, fd, 0, "D");
    close(fd);
    fill(D, 6 * ps, 0xD);
    if (msync(D, 8 * ps, MS_SYNC) != 0)
        fail("msync D");

    /* E: private file mapping with copy-on-written pages */
    fd = make_file("private.dat", 8, 0xE);
    unsigned char *E = map(NULL, 8 * ps, RW, MAP_PRIVATE, fd, 0, "E");
    close(fd);
    volatile uint64_t sink = csum(E, 3 * ps, 0); /* pages 0-2 read: file pages, not copied */
    ((uint64_t *)(E + 1 * ps))[100] = 0xe1e1e1e1e1e1e1e1ULL;
    ((uint64_t *)(E + 4 * ps))[7] = 0xe4e4e4e4e4e4e4e4ULL;
    fill(E + 6 * ps, ps, 0xE6);

    /* F: deleted file, MAP_PRIVATE, one word changed */
    fd = make_file("delpriv.dat", 4, 0xF);
    unsigned char *F = map(NULL, 4 * ps, RW, MAP_PRIVATE, fd, 0, "F");
    close(fd);
    ((uint64_t *)(F + 2 * ps))[11] = 0xf2f2f2f2f2f2f2f2ULL;
    path_of(p_tmp, "delpriv.dat");
    if (unlink(p_tmp) != 0)
        fail("unlink delpriv.dat");

    /* G: deleted file, MAP_SHARED, written through the mapping */
    fd = make_file("delshared.dat", 4, 0);
    unsigned char *G = map(NULL, 4 * ps, RW, MAP_SHARED, fd, 0, "G");
    close(fd);
    fill(G, 4 * ps, 0x6);
    path_of(p_tmp, "delshared.dat");
    if (unlink(p_tmp) != 0)
        fail("unlink delshared.dat");
    areas[4] = (struct area){"G (deleted file, shared)", (uint64_t *)G, 4 * ps / 8, 0x6};

    /* H: read-only mapping at a non-zero file offset */
    fd = make_file("ro.dat", 6, 0x40);
    unsigned char *H = map(NULL, 3 * ps, PROT_READ, MAP_PRIVATE, fd, (off_t)(2 * ps), "H");
    close(fd);
    uint64_t cs_h = csum(H, 3 * ps, 0x4);

    /* I: data, then PROT_NONE */
    unsigned char *I = map(NULL, 4 * ps, RW, PA, -1, 0, "I");
    fill(I, 4 * ps, 0x1);
    uint64_t cs_i = csum(I, 4 * ps, 0x1);
    if (mprotect(I, 4 * ps, PROT_NONE) != 0)
        fail("mprotect I");

    /* J: RW / guard / RW */
    unsigned char *J = map(NULL, 3 * ps, RW, PA, -1, 0, "J");
    if (mprotect(J + ps, ps, PROT_NONE) != 0)
        fail("mprotect guard");
    fill(J, ps, 0x10);
    fill(J + 2 * ps, ps, 0x12);

    /* M: one memfd mapped twice, back to back */
    unsigned char *M = map(NULL, 4 * ps, PROT_NONE, PA, -1, 0, "M reservation");
    mfd = memfd_create("crtest-ring", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)(2 * ps)) != 0)
        fail("memfd_create ring");
    map(M, 2 * ps, RW, MAP_SHARED | MAP_FIXED, mfd, 0, "M first view");
    map(M + 2 * ps, 2 * ps, RW, MAP_SHARED | MAP_FIXED, mfd, 0, "M second view");
    close(mfd);
    fill(M, 2 * ps, 0x3);
    if (!check_fill(M + 2 * ps, 2 * ps, 0x3))
        fail("M: the second view does not show the first one's writes (before any checkpoint)");

    /* K: 64 MiB only read; L: 64 MiB written with zeros */
    unsigned char *K = map(NULL, BIG, RW, PA, -1, 0, "K");
    for (size_t o = 0; o < BIG; o += ps)
        sink += K[o];
    unsigned char *L = map(NULL, BIG, RW, PA, -1, 0, "L");
    memset(L, 0, BIG);
    __asm__ volatile("" ::: "memory");

    uint64_t cs_d = csum(D, 6 * ps, 0xD);
    uint64_t cs_e = csum(E, 8 * ps, 0xE);
    uint64_t cs_f = csum(F, 4 * ps, 0xF);
    uint64_t cs_j = csum(J, ps, 0x10) ^ csum(J + 2 * ps, ps, 0x12);

    printf("READY\n");
    fflush(stdout);

    work_loop(go);

    /* ---------------- verification ---------------- */

    /* contents */
    verify_areas();
    if (!all_zero(B + 8 * ps, 2 * ps))
        fail("B: never-touched pages are not zero");
    if (!all_zero(C + 8 * ps, 4 * ps))
        fail("C: never-touched pages are not zero");
    /* page 6 is the first process's, page 7 a second one's (for the post-GO write below) */
    const size_t own_pg = first_claim() ? 6 : 7;
    if (!check_fill(D, 6 * ps, 0xD) || !all_zero(D + own_pg * ps, ps))
        fail("D (shared file mapping) contents");
    {
        /* the file holds what was written through the mapping */
        unsigned char *buf = malloc(8 * ps);
        int f2 = open(p_shared, O_RDONLY);
        if (!buf || f2 < 0 || pread(f2, buf, 6 * ps, 0) != (ssize_t)(6 * ps))
            fail("read shared.dat");
        if (memcmp(buf, D, 6 * ps) != 0)
            fail("shared.dat differs from its MAP_SHARED mapping");
        close(f2);
        /* private.dat is unchanged; E's unmodified pages equal it, modified ones kept the change */
        f2 = open(p_private, O_RDONLY);
        if (f2 < 0 || pread(f2, buf, 8 * ps, 0) != (ssize_t)(8 * ps))
            fail("read private.dat");
        close(f2);
        if (!check_fill(buf, 8 * ps, 0xE))
            fail("private.dat changed: a MAP_PRIVATE write reached the file");
        for (size_t pg = 0; pg < 8; pg++) {
            const unsigned char *m = E + pg * ps, *f = buf + pg * ps;
            if (pg == 1 || pg == 4) {
                size_t wi = pg == 1 ? 100 : 7;
                uint64_t want = pg == 1 ? 0xe1e1e1e1e1e1e1e1ULL : 0xe4e4e4e4e4e4e4e4ULL;
                if (((const uint64_t *)m)[wi] != want)
                    failf("E: modified word of page %zu lost", pg);
                if (memcmp(m, f, wi * 8) != 0 || memcmp(m + wi * 8 + 8, f + wi * 8 + 8, ps - wi * 8 - 8) != 0)
                    failf("E: rest of modified page %zu differs from the file", pg);
            } else if (pg == 6) {
                if (!check_fill(m, ps, 0xE6))
                    fail("E: rewritten page 6 lost its content");
            } else if (memcmp(m, f, ps) != 0) {
                failf("E: unmodified page %zu differs from the file", pg);
            }
        }
        free(buf);
    }
    if (csum(D, 6 * ps, 0xD) != cs_d)
        fail("D checksum");
    if (csum(E, 8 * ps, 0xE) != cs_e)
        fail("E checksum");
    for (size_t pg = 0; pg < 4; pg++) {
        const uint64_t *w = (const uint64_t *)(F + pg * ps);
        for (size_t i = 0; i < ps / 8; i++) {
            uint64_t exp = (pg == 2 && i == 11) ? 0xf2f2f2f2f2f2f2f2ULL : pat(0xF, pg * ps / 8 + i);
            if (w[i] != exp)
                failf("F (deleted file, private): page %zu word %zu", pg, i);
        }
    }
    if (csum(F, 4 * ps, 0xF) != cs_f)
        fail("F checksum");
    {
        const uint64_t *w = (const uint64_t *)H;
        for (size_t i = 0; i < 3 * ps / 8; i++)
            if (w[i] != pat(0x40, 2 * ps / 8 + i))
                failf("H (read-only at offset): word %zu", i);
        if (csum(H, 3 * ps, 0x4) != cs_h)
            fail("H checksum");
    }
    if (!check_fill(J, ps, 0x10) || !check_fill(J + 2 * ps, ps, 0x12) ||
        (csum(J, ps, 0x10) ^ csum(J + 2 * ps, ps, 0x12)) != cs_j)
        fail("J (pages around the guard) contents");
    if (!all_zero(K, BIG))
        fail("K (64 MiB read-only-touched) is not all zero");
    if (!all_zero(L, BIG))
        fail("L (64 MiB zero-written) is not all zero");

    /* protections, names, offsets */
    expect_map("A below the hole", A, 6 * ps, "rw-p", NULL, -1);
    expect_map("A above the hole", A + 10 * ps, 6 * ps, "rw-p", NULL, -1);
    expect_unmapped("A hole", A + 6 * ps, 4 * ps);
    expect_map("B (shared anon)", B, 10 * ps, "rw-s", NULL, -1);
    expect_map("C (memfd)", C, 12 * ps, "rw-s", NULL, -1);
    expect_map("D (shared file)", D, 8 * ps, "rw-s", p_shared, 0);
    expect_map("E (private file)", E, 8 * ps, "rw-p", p_private, 0);
    expect_map("F (deleted, private)", F, 4 * ps, "rw-p", NULL, -1);
    expect_map("G (deleted, shared)", G, 4 * ps, "rw-s", NULL, -1);
    expect_map("H (read-only at offset)", H, 3 * ps, "r--p", p_ro, (long long)(2 * ps));
    expect_map("I (PROT_NONE with data)", I, 4 * ps, "---p", NULL, -1);
    expect_map("J first page", J, ps, "rw-p", NULL, -1);
    expect_map("J guard page", J + ps, ps, "---p", NULL, -1);
    expect_map("J last page", J + 2 * ps, ps, "rw-p", NULL, -1);
    expect_map("K (64 MiB read)", K, BIG, "rw-p", NULL, -1);
    expect_map("L (64 MiB zeroed)", L, BIG, "rw-p", NULL, -1);
    expect_map("M (memfd mapped twice)", M, 4 * ps, "rw-s", NULL, -1);

    /* still shared and writable */
    expect_shared("B (shared anon)", (volatile uint64_t *)(B + 9 * ps), 0xb0b0b0b0ULL);
    expect_shared("C (memfd)", (volatile uint64_t *)(C + 11 * ps), 0xc0c0c0c0ULL);
    expect_shared("G (deleted, shared)", (volatile uint64_t *)(G + 3 * ps + 8), 0x60606060ULL);

    /* the guard page still faults */
    {
        pid_t c = fork();
        if (c < 0)
            fail("fork");
        if (c == 0) {
            signal(SIGSEGV, SIG_DFL);
            volatile unsigned char *g = J + ps;
            (void)*g;
            _exit(0);
        }
        int st;
        if (waitpid(c, &st, 0) != c || !WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV)
            fail("J: reading the guard page did not raise SIGSEGV");
    }

    /* D still reaches the file, both ways (a concurrent copy uses the other page) */
    {
        size_t pg = own_pg;
        uint64_t seed = 0xD00 + (uint64_t)getpid();
        unsigned char *page = D + pg * ps;
        unsigned char *buf = malloc(ps);
        if (!buf)
            fail("malloc");
        fill(page, ps, seed);
        if (msync(D, 8 * ps, MS_SYNC) != 0)
            fail("msync D after restart");
        int f2 = open(p_shared, O_RDWR);
        if (f2 < 0 || pread(f2, buf, ps, (off_t)(pg * ps)) != (ssize_t)ps)
            fail("pread shared.dat");
        if (!check_fill(buf, ps, seed))
            fail("a write through the MAP_SHARED mapping did not reach shared.dat");
        fill(buf, ps, seed + 1);
        if (pwrite(f2, buf, ps, (off_t)(pg * ps)) != (ssize_t)ps)
            fail("pwrite shared.dat");
        close(f2);
        if (!check_fill(page, ps, seed + 1))
            fail("a pwrite to shared.dat does not show in its MAP_SHARED mapping");
        free(buf);
    }

    /* I: still holds its data once readable again */
    if (mprotect(I, 4 * ps, PROT_READ) != 0)
        fail("mprotect I readable");
    expect_map("I (made readable)", I, 4 * ps, "r--p", NULL, -1);
    if (!check_fill(I, 4 * ps, 0x1) || csum(I, 4 * ps, 0x1) != cs_i)
        fail("I (PROT_NONE region) lost its data");

    /* M: both views hold the data, and are still one object */
    if (!check_fill(M, 2 * ps, 0x3) || !check_fill(M + 2 * ps, 2 * ps, 0x3))
        fail("M (memfd mapped twice) contents");
    {
        volatile uint64_t *v1 = (volatile uint64_t *)(M + ps + 64);
        volatile uint64_t *v2 = (volatile uint64_t *)(M + 3 * ps + 64);
        *v1 = 0x1234567887654321ULL;
        int aliased = *v2 == 0x1234567887654321ULL;
        *v1 = pat(0x3, (ps + 64) / 8);
        if (!aliased) {
            if (!getenv("CR_TEST_SKIP_SHARED_ALIAS"))
                fail("M: a write through the first view of the memfd does not show in the second: "
                     "the two mappings are no longer one object");
            fprintf(stderr, "info %s: the two views of M are no longer one object (known gap, not checked)\n", NAME);
        }
    }

    /* the areas are still writable */
    for (int k = 0; k < NAREA; k++)
        areas[k].w[0] ^= 1;

    (void)sink;
    printf("PASS %s\n", NAME);
    fflush(stdout);
    return 0;
}
