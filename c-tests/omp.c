/*
 * omp.c - OpenMP checkpoint/restart test.
 *
 * Build: gcc -O2 -Wall -fopenmp -o omp omp.c
 * Run:   OMP_NUM_THREADS=4 CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./omp
 *
 * Repeats "rounds" until GO (checked in the serial part between parallel
 * regions).  Round r (k = r mod 64) runs one parallel region with:
 *   - a static "omp for" that adds h(i,k) to a[i] and reduces
 *     sum (+, uint64), dsum (+, double; exact: small integers), max
 *   - a dynamic "omp for" with an xor reduction of h(i,k+64)
 *   - a critical-section counter and a threadprivate per-thread counter
 * After GO everything is checked against a serial recomputation (per-k
 * tables, so the check costs O(64*N + rounds) no matter how long it ran),
 * and a final parallel region must see omp_get_num_threads() == 4, distinct
 * thread numbers, and threadprivate counters == rounds in every thread.
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N (1 << 14)
#define NK 64
#define NTHR 4

static void fail(const char *what)
{
    printf("FAIL omp: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL omp: %s\n", what);
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

static inline uint64_t h(uint64_t i, uint64_t k)
{
    return mix64(i * 0x9e3779b97f4a7c15ULL + k * 0xc2b2ae3d27d4eb4fULL + 1);
}

static uint64_t a[N];
static uint64_t tp_count;
#pragma omp threadprivate(tp_count)

/* per-round results, accumulated in the serial part */
static uint64_t rounds, tot_sum, tot_dsum, chain_max, chain_xor, crit_count, bad_nthreads;

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    char msg[200];
    if (!go)
        fail("CR_TEST_GO not set");
    for (int i = 0; i < N; i++)
        a[i] = mix64((uint64_t)i ^ 0xa0a0);

    if (omp_get_max_threads() != NTHR) {
        snprintf(msg, sizeof msg, "omp_get_max_threads() = %d, run with OMP_NUM_THREADS=%d",
                 omp_get_max_threads(), NTHR);
        fail(msg);
    }
    /* warm up the thread pool before READY */
#pragma omp parallel
    {
        tp_count = 0;
    }

    printf("READY\n");
    fflush(stdout);

    for (;;) {
        uint64_t k = rounds % NK;
        uint64_t s = 0, m = 0, x = 0;
        double d = 0.0;
#pragma omp parallel
        {
            if (omp_get_num_threads() != NTHR) {
#pragma omp atomic
                bad_nthreads++;
            }
#pragma omp for schedule(static) reduction(+ : s, d) reduction(max : m)
            for (int i = 0; i < N; i++) {
                uint64_t v = h(i, k);
                a[i] += v;
                s += v;
                d += (double)(v & 0xffff);
                if ((v >> 32) > m)
                    m = v >> 32;
            }
#pragma omp for schedule(dynamic, 256) reduction(^ : x)
            for (int i = 0; i < N; i++)
                x ^= h(i, k + NK) * (uint64_t)(i + 1);
#pragma omp critical
            crit_count++;
            tp_count++;
        }
        tot_sum += s;
        tot_dsum += (uint64_t)d;
        chain_max = mix64(chain_max ^ m);
        chain_xor = mix64(chain_xor + x);
        rounds++;
        if (access(go, F_OK) == 0)
            break;
        usleep(100);
    }

    /* ---- final region: thread count and threadprivate state ---- */
    int nth = -1, seen[NTHR] = {0}, bad_tp = 0;
#pragma omp parallel
    {
        int t = omp_get_thread_num();
#pragma omp critical
        {
            if (t == 0)
                nth = omp_get_num_threads();
            if (t >= 0 && t < NTHR)
                seen[t]++;
            if (tp_count != rounds)
                bad_tp++;
        }
    }
    if (nth != NTHR) {
        snprintf(msg, sizeof msg, "omp_get_num_threads() = %d after GO, expected %d", nth, NTHR);
        fail(msg);
    }
    for (int t = 0; t < NTHR; t++)
        if (seen[t] != 1)
            fail("thread numbers not distinct 0..3");
    if (bad_tp)
        fail("threadprivate counter != rounds in some thread");
    if (bad_nthreads)
        fail("a parallel region ran with the wrong number of threads");

    /* ---- serial recomputation ---- */
    uint64_t ks[NK], kd[NK], km[NK], kx[NK];
    for (int k = 0; k < NK; k++) {
        uint64_t s = 0, dd = 0, m = 0, x = 0;
        for (int i = 0; i < N; i++) {
            uint64_t v = h(i, k);
            s += v;
            dd += v & 0xffff;
            if ((v >> 32) > m)
                m = v >> 32;
            x ^= h(i, k + NK) * (uint64_t)(i + 1);
        }
        ks[k] = s, kd[k] = dd, km[k] = m, kx[k] = x;
    }
    uint64_t es = 0, ed = 0, em = 0, ex = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        es += ks[r % NK];
        ed += kd[r % NK];
        em = mix64(em ^ km[r % NK]);
        ex = mix64(ex + kx[r % NK]);
    }
    if (es != tot_sum)
        fail("sum reduction total");
    if (ed != tot_dsum)
        fail("double reduction total");
    if (em != chain_max)
        fail("max reduction chain");
    if (ex != chain_xor)
        fail("xor reduction chain");
    if (crit_count != rounds * NTHR)
        fail("critical counter");
    uint64_t full = rounds / NK, part = rounds % NK;
    for (int i = 0; i < N; i++) {
        uint64_t e = mix64((uint64_t)i ^ 0xa0a0), col = 0, pc = 0;
        for (uint64_t k = 0; k < NK; k++) {
            uint64_t v = h(i, k);
            col += v;
            if (k < part)
                pc += v;
        }
        e += full * col + pc;
        if (a[i] != e) {
            snprintf(msg, sizeof msg, "array element %d wrong after %llu rounds", i, (unsigned long long)rounds);
            fail(msg);
        }
    }
    fprintf(stderr, "info omp: %llu rounds\n", (unsigned long long)rounds);
    printf("PASS omp\n");
    fflush(stdout);
    return 0;
}
