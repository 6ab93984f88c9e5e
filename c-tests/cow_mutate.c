/*
 * cow_mutate.c - target of the copy-on-write checkpoint tests (tests/cow.rs).
 *
 * Run: CR_TEST_GO=/path/to/go [COW_THREADS=N] [COW_MIB=M] cr_run ./cow_mutate
 *
 * The main thread and COW_THREADS (default 0) worker threads each own a segment of a private
 * array (COW_MIB MiB in all, default 64) and of a 4 MiB MAP_SHARED anonymous array. Without
 * pause each rewrites a word chosen by a generator (private and shared in turn) and keeps the
 * sum of its words in step. The main thread also keeps 1000 bytes queued in a pipe to itself,
 * writing one and reading one (which must be the expected one) every 64 steps. So the program
 * keeps writing its memory while a copy-on-write writer writes the image, and an image taken
 * from memory at several instants (shared memory read after the program went on, say) restores
 * to sums that do not match.
 *
 * With COW_DONTFORK=1 it also has 1 MiB of private memory with a pattern marked MADV_DONTFORK
 * (a fork does not copy it: a copy-on-write checkpoint must be written stopped).
 *
 * After GO: the workers stop, every segment's sum is recomputed and compared with the kept one
 * (and the MADV_DONTFORK pattern checked), then PASS cow_mutate (or FAIL cow_mutate: what).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAXT 16
#define SHARED_BYTES (4u << 20)
#define PIPE_FILL 1000

struct worker {
    uint64_t *priv;
    uint64_t *shared;
    size_t npriv, nshared;
    uint64_t sum;
    uint64_t step;
    uint64_t rng;
    pthread_t th;
} __attribute__((aligned(64)));

static struct worker W[MAXT + 1];
static atomic_int stop_workers;
static int pfd[2];
static uint64_t wseq, rseq;
static int pipe_bad;

static void fail(const char *what)
{
    printf("FAIL cow_mutate: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL cow_mutate: %s\n", what);
    exit(1);
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* One step of worker w: rewrite one word, keep the sum in step. */
static inline void step(struct worker *w)
{
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t *a;
    size_t n;
    if (w->step & 1) {
        a = w->shared;
        n = w->nshared;
    } else {
        a = w->priv;
        n = w->npriv;
    }
    size_t i = (size_t)(w->rng >> 20) % n;
    uint64_t v = mix64(w->step);
    uint64_t old = a[i];
    a[i] = v;
    w->sum += v - old;
    w->step++;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load_explicit(&stop_workers, memory_order_relaxed))
        step(w);
    return NULL;
}

static uint64_t recompute(const struct worker *w)
{
    uint64_t s = 0;
    for (size_t i = 0; i < w->npriv; i++)
        s += w->priv[i];
    for (size_t i = 0; i < w->nshared; i++)
        s += w->shared[i];
    return s;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO unset");
    int nt = getenv("COW_THREADS") ? atoi(getenv("COW_THREADS")) : 0;
    size_t mib = getenv("COW_MIB") ? (size_t)atol(getenv("COW_MIB")) : 64;
    if (nt < 0 || nt > MAXT || mib < 1)
        fail("bad COW_THREADS or COW_MIB");
    size_t plen = mib << 20;
    uint64_t *priv = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *shared =
        mmap(NULL, SHARED_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (priv == MAP_FAILED || shared == MAP_FAILED)
        fail("mmap");
    size_t pw = plen / 8, sw = SHARED_BYTES / 8;
    for (size_t i = 0; i < pw; i++)
        priv[i] = mix64(i + 1);
    for (size_t i = 0; i < sw; i++)
        shared[i] = mix64(i + pw + 1);
    int n = nt + 1;
    for (int t = 0; t < n; t++) {
        struct worker *w = &W[t];
        w->npriv = pw / n;
        w->nshared = sw / n;
        w->priv = priv + t * w->npriv;
        w->shared = shared + t * w->nshared;
        w->rng = mix64(1000 + t);
        w->step = 0;
        w->sum = recompute(w);
    }
    unsigned char *nofork = NULL;
    if (getenv("COW_DONTFORK") && atoi(getenv("COW_DONTFORK"))) {
        nofork = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (nofork == MAP_FAILED || madvise(nofork, 1 << 20, MADV_DONTFORK))
            fail("MADV_DONTFORK region");
        for (size_t i = 0; i < 1 << 20; i++)
            nofork[i] = (unsigned char)(i * 13 + 5);
    }
    if (pipe(pfd))
        fail("pipe");
    for (int i = 0; i < PIPE_FILL; i++) {
        unsigned char b = (unsigned char)(wseq++ * 7);
        if (write(pfd[1], &b, 1) != 1)
            fail("pipe fill");
    }
    for (int t = 1; t < n; t++)
        if (pthread_create(&W[t].th, NULL, run, &W[t]))
            fail("pthread_create");
    printf("READY\n");
    fflush(stdout);
    uint64_t k = 0;
    for (;;) {
        step(&W[0]);
        if ((++k & 63) == 0) {
            unsigned char b = (unsigned char)(wseq++ * 7), r;
            if (write(pfd[1], &b, 1) != 1 || read(pfd[0], &r, 1) != 1 ||
                r != (unsigned char)(rseq++ * 7))
                pipe_bad = 1;
        }
        if ((k & 4095) == 0 && access(go, F_OK) == 0)
            break;
    }
    atomic_store(&stop_workers, 1);
    for (int t = 1; t < n; t++)
        pthread_join(W[t].th, NULL);
    if (pipe_bad)
        fail("a byte read from the pipe is not the one written");
    for (size_t i = 0; nofork && i < 1 << 20; i++)
        if (nofork[i] != (unsigned char)(i * 13 + 5))
            fail("the MADV_DONTFORK region lost its pattern");
    for (int t = 0; t < n; t++) {
        if (recompute(&W[t]) != W[t].sum) {
            char m[96];
            snprintf(m, sizeof m, "thread %d: its words do not add up to its sum (step %llu)", t,
                     (unsigned long long)W[t].step);
            fail(m);
        }
    }
    fprintf(stderr, "info cow_mutate: %d threads, steps of main %llu\n", n,
            (unsigned long long)W[0].step);
    printf("PASS cow_mutate\n");
    fflush(stdout);
    return 0;
}
