/*
 * single.c - single-threaded checkpoint/restart test for libcr-rs.
 *
 * Build: gcc -O2 -Wall -o single single.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./single
 *
 * State that must survive checkpoint/restart, all checksummed before READY
 * and re-verified after GO:
 *   - initialised .data (array + string), .rodata, a 1 MiB .bss array
 *   - heap: ~3000 malloc'd blocks of varied sizes (some above the mmap
 *     threshold, some freed again to leave holes), a 20000-node linked list
 *     (each node stores its own address), a realloc'd block
 *   - stack: a 1 MiB local array in main and a 2000-deep recursion whose
 *     frames hold locals; the work loop runs in the deepest frame, so the
 *     whole recursion is live when the checkpoint hits
 *   - a big buffer (256 MiB by default) where pages are either filled with
 *     an index-derived pattern, touched-but-zero, sparse (one word), or
 *     never touched at all (must read back as zero)
 *   - work loop state: counter (plus an inverted copy on the heap), an LCG
 *     value (verified by O(log n) jump-ahead from the counter) and a chained
 *     hash whose last 4096 values are kept in a ring (verified step by step)
 *
 * linked.c re-uses this file with TEST_NAME / BIG_MB / PRE_MAIN_HOOK set.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TEST_NAME
#define TEST_NAME "single"
#endif
#ifndef BIG_MB
#define BIG_MB 256
#endif
#ifndef PRE_MAIN_HOOK
#define PRE_MAIN_HOOK() do { } while (0)
#endif

#define NBLK 3000
#define NNODES 20000
#define DEPTH 2000
#define RING 4096 /* power of two */
#define STACKBUF (1 << 20)
#define CHUNK 100000 /* work steps between two GO checks (~0.3-1 ms) */

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", TEST_NAME, what);
    fflush(stdout);
    fprintf(stderr, "FAIL %s: %s\n", TEST_NAME, what);
    exit(1);
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Order-dependent checksum over arbitrary bytes. */
static uint64_t csum(const void *p, size_t len, uint64_t h)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h = (h << 23) | (h >> 41);
    }
    for (; i < len; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h ^ len;
}

static void fill_pattern(void *p, size_t len, uint64_t seed)
{
    unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = mix64(seed + i);
        memcpy(b + i, &w, 8);
    }
    for (; i < len; i++)
        b[i] = (unsigned char)mix64(seed ^ (i * 31));
}

static int check_pattern(const void *p, size_t len, uint64_t seed)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        if (w != mix64(seed + i))
            return 0;
    }
    for (; i < len; i++)
        if (b[i] != (unsigned char)mix64(seed ^ (i * 31)))
            return 0;
    return 1;
}

/* ---------------- globals: .data, .rodata, .bss ---------------- */
uint64_t g_data[16] = {
    0x0123456789abcdefULL, 0xfedcba9876543210ULL, 0x0f1e2d3c4b5a6978ULL,
    0x1111111111111111ULL, 0x2222222222222222ULL, 0xdeadbeefcafebabeULL,
    42, 43, 44, 45, 0x8000000000000000ULL, 1, 2, 3, 5, 8,
};
char g_text[] = "libcr-rs: initialised .data string that must survive restart";
static const char g_rodata[] = "read-only data; also part of the image (or re-mapped)";
static uint64_t g_bss[1 << 17]; /* 1 MiB */

/* work-loop state */
struct wstate {
    uint64_t n; /* iterations done */
    uint64_t x; /* LCG value after n steps */
    uint64_t h; /* chained hash after n steps */
};
static struct wstate g_ws;
static uint64_t *g_ring;      /* heap, RING entries: hash after step k at [k % RING] */
static uint64_t *g_ncount;    /* heap: ~n, redundant copy of the counter */
static const char *g_go;
static uint64_t *g_frames[DEPTH + 1];

#define LCG_A 6364136223846793005ULL
#define LCG_C 1442695040888963407ULL
#define X0 0x853c49e6748fea9bULL
#define H0 0x2545f4914f6cdd1dULL

static uint64_t lcg_jump(uint64_t x, uint64_t n)
{
    uint64_t am = 1, ap = 0, cm = LCG_A, cp = LCG_C;
    while (n) {
        if (n & 1) {
            am *= cm;
            ap = ap * cm + cp;
        }
        cp = (cm + 1) * cp;
        cm *= cm;
        n >>= 1;
    }
    return am * x + ap;
}

static inline uint64_t hstep(uint64_t h, uint64_t x, uint64_t n)
{
    h ^= x + n;
    h *= 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return h;
}

static __attribute__((noinline)) void work_loop(void)
{
    uint64_t n = g_ws.n, x = g_ws.x, h = g_ws.h;
    for (;;) {
        for (int k = 0; k < CHUNK; k++) {
            n++;
            x = x * LCG_A + LCG_C;
            h = hstep(h, x, n);
            g_ring[n & (RING - 1)] = h;
            g_ws.n = n;
            g_ws.x = x;
            g_ws.h = h;
            *g_ncount = ~n;
            __asm__ volatile("" ::: "memory");
        }
        if (access(g_go, F_OK) == 0)
            break;
    }
    if (n != g_ws.n || x != g_ws.x || h != g_ws.h)
        fail("work loop registers differ from memory copy");
}

static void verify_work(void)
{
    char msg[160];
    uint64_t n = g_ws.n;
    if (n == 0)
        fail("work loop never ran");
    if (*g_ncount != ~n)
        fail("redundant counter copy mismatch");
    if (lcg_jump(X0, n) != g_ws.x) {
        snprintf(msg, sizeof msg, "LCG state does not match counter n=%llu",
                 (unsigned long long)n);
        fail(msg);
    }
    if (g_ring[n & (RING - 1)] != g_ws.h)
        fail("hash != ring[n]");
    /* replay the chained hash over the last (up to) RING-1 steps */
    uint64_t first = n >= RING ? n - RING + 2 : 1;
    uint64_t prevh = first == 1 ? H0 : g_ring[(first - 1) & (RING - 1)];
    uint64_t x = lcg_jump(X0, first - 1);
    for (uint64_t k = first; k <= n; k++) {
        x = x * LCG_A + LCG_C;
        prevh = hstep(prevh, x, k);
        if (g_ring[k & (RING - 1)] != prevh) {
            snprintf(msg, sizeof msg, "hash ring broken at step %llu of %llu",
                     (unsigned long long)k, (unsigned long long)n);
            fail(msg);
        }
    }
    fprintf(stderr, "info %s: %llu work iterations\n", TEST_NAME, (unsigned long long)n);
}

/* ---------------- stack: recursion with locals ---------------- */
#define NLOC 24
static __attribute__((noinline)) uint64_t recurse(int depth, uint64_t seed)
{
    uint64_t loc[NLOC];
    for (int i = 0; i < NLOC; i++)
        loc[i] = mix64(seed + (uint64_t)i * 7919 + (uint64_t)depth);
    g_frames[depth] = loc; /* escape: forces loc into memory */
    uint64_t r;
    if (depth == 0)
        work_loop(), r = 1;
    else
        r = recurse(depth - 1, loc[3]);
    if (g_frames[depth] != loc)
        fail("stack frame address changed");
    for (int i = 0; i < NLOC; i++)
        if (loc[i] != mix64(seed + (uint64_t)i * 7919 + (uint64_t)depth))
            fail("stack frame locals corrupted");
    return r + 1;
}

/* ---------------- heap ---------------- */
struct node {
    struct node *next;
    struct node *self;
    uint64_t idx;
    uint64_t val;
    unsigned char pad[40];
};

static size_t blk_size(int i)
{
    if (i % 50 == 7)
        return 200 * 1024 + (mix64(i) % (800 * 1024)); /* mmap'd chunks */
    return 1 + mix64(i) % 4096;
}

int main(void)
{
    PRE_MAIN_HOOK();
    g_go = getenv("CR_TEST_GO");
    if (!g_go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* ---- globals ---- */
    for (size_t i = 0; i < (1 << 17); i += 2) /* fill half of .bss */
        g_bss[i] = mix64(i ^ 0xb55);
    g_data[15] ^= 0x5a5a5a5a5a5a5a5aULL; /* dirty the .data page */
    uint64_t cs_data = csum(g_data, sizeof g_data, 1);
    uint64_t cs_text = csum(g_text, sizeof g_text, 2);
    uint64_t cs_ro = csum(g_rodata, sizeof g_rodata, 3);
    uint64_t cs_bss = csum(g_bss, sizeof g_bss, 4);

    /* ---- heap ---- */
    static void *blk[NBLK];
    struct node *head = NULL, *tail = NULL;
    int nodes_made = 0;
    for (int i = 0; i < NBLK; i++) {
        size_t sz = blk_size(i);
        blk[i] = malloc(sz);
        if (!blk[i])
            fail("malloc");
        fill_pattern(blk[i], sz, (uint64_t)i << 32);
        /* interleave list nodes with the blocks */
        for (int j = 0; j < NNODES / NBLK + 1 && nodes_made < NNODES; j++) {
            struct node *nd = malloc(sizeof *nd);
            if (!nd)
                fail("malloc node");
            nd->next = NULL;
            nd->self = nd;
            nd->idx = nodes_made;
            nd->val = mix64(nodes_made ^ 0xabcdef);
            memset(nd->pad, (int)(nodes_made & 0xff), sizeof nd->pad);
            if (tail)
                tail->next = nd;
            else
                head = nd;
            tail = nd;
            nodes_made++;
        }
    }
    for (int i = 0; i < NBLK; i += 3) { /* leave holes */
        free(blk[i]);
        blk[i] = NULL;
    }
    char *grow = malloc(100);
    for (int k = 1; k <= 6; k++) {
        grow = realloc(grow, (size_t)100 << (3 * k));
        if (!grow)
            fail("realloc");
    }
    size_t grow_len = (size_t)100 << 18; /* 25.6 MB */
    fill_pattern(grow, grow_len, 0x6709);
    uint64_t cs_heap = 0;
    for (int i = 0; i < NBLK; i++)
        if (blk[i])
            cs_heap = csum(blk[i], blk_size(i), cs_heap);
    cs_heap = csum(grow, grow_len, cs_heap);

    g_ring = malloc(RING * sizeof *g_ring);
    g_ncount = malloc(sizeof *g_ncount);
    if (!g_ring || !g_ncount)
        fail("malloc ring");
    memset(g_ring, 0, RING * sizeof *g_ring);
    g_ws.n = 0;
    g_ws.x = X0;
    g_ws.h = H0;
    *g_ncount = ~0ULL;

    /* ---- big buffer ---- */
    long ps = sysconf(_SC_PAGESIZE);
    size_t big_len = (size_t)BIG_MB << 20;
    size_t npages = big_len / ps;
    unsigned char *big_raw = malloc(big_len + ps);
    if (!big_raw)
        fail("malloc big buffer");
    unsigned char *big = (unsigned char *)(((uintptr_t)big_raw + ps - 1) & ~(uintptr_t)(ps - 1));
    /* page classes: 0 pattern, 1 never touched, 2 touched zero, 3 sparse */
#define PCLASS(p) ((p) % 13 == 5 ? 1 : (p) % 11 == 3 ? 2 : (p) % 17 == 7 ? 3 : 0)
    for (size_t p = 0; p < npages; p++) {
        unsigned char *pg = big + p * ps;
        switch (PCLASS(p)) {
        case 0: {
            uint64_t *w = (uint64_t *)pg;
            for (size_t i = 0; i < (size_t)ps / 8; i++)
                w[i] = (p * (ps / 8) + i) * 0x9e3779b97f4a7c15ULL + p;
            break;
        }
        case 1:
            break;
        case 2:
            memset(pg, 0, ps);
            break;
        case 3:
            ((uint64_t *)pg)[(p * 7) % (ps / 8)] = p | 0x100;
            break;
        }
    }
    uint64_t cs_big = 0;
    for (size_t p = 0; p < npages; p++)
        if (PCLASS(p) != 1)
            cs_big = csum(big + p * ps, ps, cs_big);

    /* ---- stack ---- */
    unsigned char stackbuf[STACKBUF];
    fill_pattern(stackbuf, sizeof stackbuf, 0x57ac);
    uint64_t cs_stack = csum(stackbuf, sizeof stackbuf, 5);

    /* ---- list checksum ---- */
    uint64_t cs_list = 0;
    for (struct node *nd = head; nd; nd = nd->next)
        cs_list = csum(nd, sizeof *nd, cs_list);

    printf("READY\n");
    fflush(stdout);

    /* work loop runs at the bottom of a DEPTH-deep recursion */
    uint64_t r = recurse(DEPTH, 0x1234);
    if (r != DEPTH + 2)
        fail("recursion return value");

    /* ---------------- verification ---------------- */
    verify_work();
    if (csum(g_data, sizeof g_data, 1) != cs_data)
        fail(".data array checksum");
    if (csum(g_text, sizeof g_text, 2) != cs_text)
        fail(".data string checksum");
    if (csum(g_rodata, sizeof g_rodata, 3) != cs_ro)
        fail(".rodata checksum");
    if (csum(g_bss, sizeof g_bss, 4) != cs_bss)
        fail(".bss checksum");
    for (size_t i = 0; i < (1 << 17); i++)
        if (g_bss[i] != ((i & 1) ? 0 : mix64(i ^ 0xb55)))
            fail(".bss contents");
    if (g_data[0] != 0x0123456789abcdefULL || g_data[15] != (8 ^ 0x5a5a5a5a5a5a5a5aULL))
        fail(".data contents");

    uint64_t cs2 = 0;
    for (int i = 0; i < NBLK; i++) {
        if (i % 3 == 0) {
            if (blk[i])
                fail("freed block pointer not NULL");
            continue;
        }
        if (!check_pattern(blk[i], blk_size(i), (uint64_t)i << 32))
            fail("heap block contents");
        cs2 = csum(blk[i], blk_size(i), cs2);
    }
    if (!check_pattern(grow, grow_len, 0x6709))
        fail("realloc'd block contents");
    cs2 = csum(grow, grow_len, cs2);
    if (cs2 != cs_heap)
        fail("heap checksum");

    uint64_t cs_l2 = 0;
    int cnt = 0;
    for (struct node *nd = head; nd; nd = nd->next, cnt++) {
        if (nd->self != nd || nd->idx != (uint64_t)cnt || nd->val != mix64(cnt ^ 0xabcdef))
            fail("linked list node");
        cs_l2 = csum(nd, sizeof *nd, cs_l2);
    }
    if (cnt != NNODES || cs_l2 != cs_list)
        fail("linked list checksum/length");

    if (csum(stackbuf, sizeof stackbuf, 5) != cs_stack || !check_pattern(stackbuf, sizeof stackbuf, 0x57ac))
        fail("stack array in main");

    uint64_t cs_b2 = 0;
    for (size_t p = 0; p < npages; p++) {
        const uint64_t *w = (const uint64_t *)(big + p * ps);
        int cls = PCLASS(p);
        for (size_t i = 0; i < (size_t)ps / 8; i++) {
            uint64_t exp = 0;
            if (cls == 0)
                exp = (p * (ps / 8) + i) * 0x9e3779b97f4a7c15ULL + p;
            else if (cls == 3 && i == (p * 7) % (ps / 8))
                exp = p | 0x100;
            if (w[i] != exp) {
                char msg[128];
                snprintf(msg, sizeof msg, "big buffer page %zu (class %d) word %zu", p, cls, i);
                fail(msg);
            }
        }
        if (cls != 1)
            cs_b2 = csum(big + p * ps, ps, cs_b2);
    }
    if (cs_b2 != cs_big)
        fail("big buffer checksum");

    /* the allocator must still be usable: churn, then free everything */
    for (int round = 0; round < 4; round++) {
        void *tmp[512];
        for (int i = 0; i < 512; i++) {
            size_t sz = 1 + mix64(i + round * 1000) % 70000;
            tmp[i] = malloc(sz);
            if (!tmp[i])
                fail("malloc after restart");
            memset(tmp[i], i & 0xff, sz);
        }
        for (int i = 0; i < 512; i++)
            free(tmp[i]);
    }
    for (int i = 0; i < NBLK; i++)
        free(blk[i]);
    while (head) {
        struct node *nx = head->next;
        free(head);
        head = nx;
    }
    free(grow);
    free(big_raw);
    free(g_ring);
    free(g_ncount);

    printf("PASS %s\n", TEST_NAME);
    fflush(stdout);
    return 0;
}
