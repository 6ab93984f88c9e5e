/*
 * crowd.c - many threads (default 200) all computing, the CPU fully loaded, while checkpoints
 * hit (issue 13, load).
 *
 * Build: gcc -O2 -Wall -pthread -o crowd crowd.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./crowd [NTHREADS]
 *
 * Each thread runs an xorshift generator over its own 4 KiB buffer without pause, counting
 * rounds in a __thread counter, a stack counter and a shared atomic. READY once every thread
 * has done a round. After GO: every thread stops, the main thread joins them and checks that
 * each one's buffer is what its last round (by its count) writes, that its two counters agree
 * and that the shared total is their sum (a lost or repeated round, or memory or registers
 * corrupted across a checkpoint, breaks one of these). "PASS crowd".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORDS 512
struct worker {
    pthread_t th;
    int id;
    uint64_t buf[WORDS];
    long rounds_tls, rounds_stack;
};
static struct worker *w;
static atomic_long total;
static atomic_int stop, started;
static __thread long rounds_tls;

/* Round r of thread id: the buffer becomes a function of (id, r). */
static void round_of(uint64_t *buf, int id, long r)
{
    uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ull + (uint64_t)r + 1;
    for (int i = 0; i < WORDS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }
}

static void *run(void *arg)
{
    struct worker *me = arg;
    volatile long rounds_stack = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        round_of(me->buf, me->id, rounds_stack);
        rounds_stack++;
        rounds_tls++;
        atomic_fetch_add_explicit(&total, 1, memory_order_relaxed);
        if (rounds_stack == 1)
            atomic_fetch_add(&started, 1);
    }
    me->rounds_tls = rounds_tls;
    me->rounds_stack = rounds_stack;
    return NULL;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (!go || n <= 0) {
        printf("FAIL crowd: CR_TEST_GO not set or bad thread count\n");
        return 1;
    }
    w = calloc((size_t)n, sizeof *w);
    for (int i = 0; i < n; i++) {
        w[i].id = i;
        if (pthread_create(&w[i].th, NULL, run, &w[i]) != 0) {
            printf("FAIL crowd: pthread_create %d\n", i);
            return 1;
        }
    }
    while (atomic_load(&started) < n)
        usleep(1000);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    atomic_store(&stop, 1);
    long sum = 0, least = -1;
    static uint64_t check[WORDS];
    for (int i = 0; i < n; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].rounds_tls != w[i].rounds_stack) {
            printf("FAIL crowd: thread %d: tls %ld stack %ld rounds\n", i, w[i].rounds_tls,
                   w[i].rounds_stack);
            return 1;
        }
        round_of(check, i, w[i].rounds_stack - 1);
        if (memcmp(check, w[i].buf, sizeof check) != 0) {
            printf("FAIL crowd: thread %d: buffer differs after %ld rounds\n", i,
                   w[i].rounds_stack);
            return 1;
        }
        sum += w[i].rounds_stack;
        if (least < 0 || w[i].rounds_stack < least)
            least = w[i].rounds_stack;
    }
    if (sum != atomic_load(&total)) {
        printf("FAIL crowd: total %ld, threads' sum %ld\n", atomic_load(&total), sum);
        return 1;
    }
    fprintf(stderr, "info crowd: %d threads, %ld rounds, fewest %ld\n", n, sum, least);
    printf("PASS crowd\n");
    return 0;
}
