/*
 * threads.c - multi-threaded floating-point checkpoint/restart test.
 *
 * Build: gcc -O2 -Wall -pthread -o threads threads.c -lm
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./threads
 *
 * 8 pthreads run "blocks" of K floating-point iterations (libm sin/cos/sqrt,
 * x87 long double, and a 64-wide vector update done with AVX-512, AVX or
 * plain SSE2 code depending on the CPU).  Each block's result is a pure
 * function of (thread, block index mod 16), so the end result can be
 * verified by recomputing only 16 blocks: any FP register / MXCSR / x87
 * state corrupted by checkpoint/restart changes a block digest.
 * Threads 2, 4 and 6 run with a non-default rounding mode (toward zero,
 * upward, downward), which must survive restart (x87 CW and MXCSR checked).
 *
 * Per iteration each thread increments a mutex-protected shared counter,
 * a __thread counter and a volatile counter on its own stack.  After GO the
 * main thread tells the workers to stop, pthread_join()s them and verifies:
 * sum of per-thread counts == shared counter, tls == stack == K * blocks,
 * block digests == recomputation, pthread_self()/TLS addresses unchanged.
 */
#define _GNU_SOURCE
#include <fenv.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NT 8
#define VN 64
#define K 256      /* iterations per block */
#define PERIOD 16  /* block inputs repeat with this period */

static void fail(const char *what)
{
    printf("FAIL threads: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL threads: %s\n", what);
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

/* ---------------- vector kernels ---------------- */
/* a = a*0.999 + b*0.001 + f ; b = b*0.5 + a*0.25  (no FMA anywhere) */
static void vec_plain(double *a, double *b, double f)
{
    for (int j = 0; j < VN; j++) {
        a[j] = a[j] * 0.999 + b[j] * 0.001 + f;
        b[j] = b[j] * 0.5 + a[j] * 0.25;
    }
}

__attribute__((target("avx"))) static void vec_avx(double *a, double *b, double f)
{
    const __m256d c999 = _mm256_set1_pd(0.999), c001 = _mm256_set1_pd(0.001);
    const __m256d c5 = _mm256_set1_pd(0.5), c25 = _mm256_set1_pd(0.25);
    const __m256d vf = _mm256_set1_pd(f);
    for (int j = 0; j < VN; j += 4) {
        __m256d va = _mm256_loadu_pd(a + j), vb = _mm256_loadu_pd(b + j);
        va = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(va, c999), _mm256_mul_pd(vb, c001)), vf);
        vb = _mm256_add_pd(_mm256_mul_pd(vb, c5), _mm256_mul_pd(va, c25));
        _mm256_storeu_pd(a + j, va);
        _mm256_storeu_pd(b + j, vb);
    }
}

__attribute__((target("avx512f"))) static void vec_avx512(double *a, double *b, double f)
{
    const __m512d c999 = _mm512_set1_pd(0.999), c001 = _mm512_set1_pd(0.001);
    const __m512d c5 = _mm512_set1_pd(0.5), c25 = _mm512_set1_pd(0.25);
    const __m512d vf = _mm512_set1_pd(f);
    for (int j = 0; j < VN; j += 8) {
        __m512d va = _mm512_loadu_pd(a + j), vb = _mm512_loadu_pd(b + j);
        va = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(va, c999), _mm512_mul_pd(vb, c001)), vf);
        vb = _mm512_add_pd(_mm512_mul_pd(vb, c5), _mm512_mul_pd(va, c25));
        _mm512_storeu_pd(a + j, va);
        _mm512_storeu_pd(b + j, vb);
    }
}

static void (*vec_step)(double *, double *, double);
static const char *vec_name;

/* ---------------- per-thread state ---------------- */
static const int modes[NT] = {FE_TONEAREST, FE_TONEAREST, FE_TOWARDZERO, FE_TONEAREST,
                              FE_UPWARD,    FE_TONEAREST, FE_DOWNWARD,   FE_TONEAREST};
static const unsigned mxcsr_rc[NT] = {0, 0, 3, 0, 2, 0, 1, 0}; /* MXCSR RC bits */

struct fpblk {
    double acc, acc2;
    long double lacc;
    double a[VN], b[VN];
};

struct tres {
    pthread_t self_start, self_end;
    void *tls_addr_start, *tls_addr_end;
    uint64_t blocks, tls_count, stack_count;
    uint64_t dsum, dchain, last_digest;
    int mode_end;
    unsigned mxcsr_end;
    int started;
};

static struct tres res[NT];
static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static uint64_t shared_count;
static atomic_int stop_flag;
static atomic_int n_started;
static __thread uint64_t tls_count;
static __thread uint64_t tls_guard[4] = {0x1111, 0x2222, 0x3333, 0x4444};

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

static uint64_t blk_digest(const struct fpblk *s)
{
    unsigned char ld[16] = {0};
    memcpy(ld, &s->lacc, 10); /* 80-bit value, ignore padding */
    uint64_t l0, l1;
    memcpy(&l0, ld, 8);
    memcpy(&l1, ld + 8, 8);
    uint64_t h = mix64(dbits(s->acc) ^ 0x1234);
    h = mix64(h ^ dbits(s->acc2));
    h = mix64(h ^ l0);
    h = mix64(h ^ l1);
    for (int j = 0; j < VN; j++)
        h = mix64(h ^ dbits(s->a[j]) ^ (dbits(s->b[j]) << 1));
    return h;
}

/* One block of K iterations; if live != NULL, also does the counters. */
static __attribute__((noinline)) uint64_t fp_block(int id, unsigned k, struct fpblk *s,
                                                  volatile uint64_t *live)
{
    s->acc = 0;
    s->acc2 = 0;
    s->lacc = 0;
    for (int j = 0; j < VN; j++) {
        s->a[j] = (id + 1) * 0.01 * j + k * 0.001;
        s->b[j] = 1.0 / (1.0 + j + id);
    }
    for (int it = 0; it < K; it++) {
        double x = (double)(k * K + it) * 1e-3 + id * 0.37;
        s->acc += sin(x) * cos(0.5 * x);
        s->acc2 += sqrt(x + 1.0) / (1.0 + (double)(it & 15));
        s->lacc += (long double)x / 3.0L;
        vec_step(s->a, s->b, (double)(it & 7) * 1e-3);
        if (live) {
            pthread_mutex_lock(&mtx);
            shared_count++;
            pthread_mutex_unlock(&mtx);
            tls_count++;
            (*live)++;
        }
    }
    return blk_digest(s);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    struct tres *r = &res[id];
    if (fesetround(modes[id]) != 0)
        fail("fesetround");
    r->self_start = pthread_self();
    r->tls_addr_start = &tls_count;
    struct fpblk st; /* on this thread's stack */
    volatile uint64_t stack_count = 0;
    uint64_t blocks = 0, dsum = 0, dchain = 0x5eed, last = 0;
    r->started = 1;
    atomic_fetch_add(&n_started, 1);
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        uint64_t d = fp_block(id, (unsigned)(blocks % PERIOD), &st, &stack_count);
        dsum += d;
        dchain = mix64(dchain ^ d);
        last = d;
        blocks++;
        usleep(50);
    }
    r->self_end = pthread_self();
    r->tls_addr_end = &tls_count;
    r->blocks = blocks;
    r->tls_count = tls_count;
    r->stack_count = stack_count;
    r->dsum = dsum;
    r->dchain = dchain;
    r->last_digest = last;
    r->mode_end = fegetround();
    r->mxcsr_end = (_mm_getcsr() >> 13) & 3;
    if (tls_guard[0] != 0x1111 || tls_guard[3] != 0x4444)
        fail("initialised TLS corrupted");
    /* redo the last block in this thread and compare the whole state */
    if (blocks) {
        struct fpblk st2;
        uint64_t d2 = fp_block(id, (unsigned)((blocks - 1) % PERIOD), &st2, NULL);
        if (d2 != last || memcmp(st2.a, st.a, sizeof st.a) || memcmp(st2.b, st.b, sizeof st.b) ||
            st2.acc != st.acc || st2.acc2 != st.acc2 || st2.lacc != st.lacc)
            fail("last block state differs from in-thread recomputation");
    }
    return (void *)(intptr_t)(id + 100);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    char msg[200];
    if (!go)
        fail("CR_TEST_GO not set");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        vec_step = vec_avx512, vec_name = "avx512f";
    else if (__builtin_cpu_supports("avx"))
        vec_step = vec_avx, vec_name = "avx";
    else
        vec_step = vec_plain, vec_name = "sse2";

    pthread_t self0 = pthread_self();
    pthread_t tids[NT];
    for (int i = 0; i < NT; i++)
        if (pthread_create(&tids[i], NULL, worker, (void *)(intptr_t)i) != 0)
            fail("pthread_create");
    while (atomic_load(&n_started) < NT)
        usleep(1000);

    printf("READY\n");
    fflush(stdout);

    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
    atomic_store(&stop_flag, 1);

    for (int i = 0; i < NT; i++) {
        void *ret = NULL;
        int e = pthread_join(tids[i], &ret);
        if (e != 0) {
            snprintf(msg, sizeof msg, "pthread_join(%d) = %d", i, e);
            fail(msg);
        }
        if ((intptr_t)ret != i + 100)
            fail("thread return value");
    }
    if (!pthread_equal(self0, pthread_self()))
        fail("main pthread_self changed");

    /* digests of the PERIOD possible blocks, recomputed per rounding mode */
    uint64_t total = 0;
    for (int i = 0; i < NT; i++) {
        struct tres *r = &res[i];
        if (!r->started)
            fail("thread never started");
        if (!pthread_equal(r->self_start, tids[i]) || !pthread_equal(r->self_end, tids[i]))
            fail("pthread_self inconsistent with pthread_create id");
        if (r->tls_addr_start != r->tls_addr_end)
            fail("TLS address changed");
        if (r->mode_end != modes[i] || r->mxcsr_end != mxcsr_rc[i]) {
            snprintf(msg, sizeof msg, "thread %d rounding mode lost (fegetround %d, mxcsr rc %u)", i,
                     r->mode_end, r->mxcsr_end);
            fail(msg);
        }
        if (r->blocks == 0)
            fail("a thread did no work");
        if (r->tls_count != r->blocks * K || r->stack_count != r->blocks * K) {
            snprintf(msg, sizeof msg, "thread %d counts: blocks %llu tls %llu stack %llu", i,
                     (unsigned long long)r->blocks, (unsigned long long)r->tls_count,
                     (unsigned long long)r->stack_count);
            fail(msg);
        }
        total += r->tls_count;

        uint64_t dig[PERIOD];
        struct fpblk tmp;
        fesetround(modes[i]);
        for (unsigned k = 0; k < PERIOD; k++)
            dig[k] = fp_block(i, k, &tmp, NULL);
        fesetround(FE_TONEAREST);
        uint64_t dsum = 0, dchain = 0x5eed;
        for (uint64_t b = 0; b < r->blocks; b++) {
            dsum += dig[b % PERIOD];
            dchain = mix64(dchain ^ dig[b % PERIOD]);
        }
        if (dsum != r->dsum || dchain != r->dchain || r->last_digest != dig[(r->blocks - 1) % PERIOD]) {
            snprintf(msg, sizeof msg, "thread %d FP results differ from recomputation (%llu blocks)", i,
                     (unsigned long long)r->blocks);
            fail(msg);
        }
    }
    if (total != shared_count) {
        snprintf(msg, sizeof msg, "sum of thread counts %llu != shared counter %llu",
                 (unsigned long long)total, (unsigned long long)shared_count);
        fail(msg);
    }
    fprintf(stderr, "info threads: vec=%s total iterations %llu\n", vec_name, (unsigned long long)total);
    printf("PASS threads\n");
    fflush(stdout);
    return 0;
}
