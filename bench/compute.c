/* compute: the benchmark's idle-cost program (built by bench/bench.py, once with -pthread and
 * once with -fopenmp -DOMP). A fixed amount of floating-point work split over THREADS threads.
 *   compute THREADS MILLIONS
 * Prints the seconds taken and the CPU seconds used (user + system). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static long iters;
static volatile double out[256];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double work(long n, double seed)
{
    double x = seed;
    for (long i = 0; i < n; i++) x = x * 1.0000001 + 1e-9 / (x + 1.0);
    return x;
}

#ifndef OMP
static void *body(void *arg)
{
    long t = (long)arg;
    out[t] = work(iters, 1.0 + t);
    return NULL;
}
#endif

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: compute THREADS MILLIONS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    if (threads < 1 || threads > 256) return 2;
    iters = atol(argv[2]) * 1000000L / threads;
    double t0 = now();
#ifdef OMP
#pragma omp parallel for num_threads(threads)
    for (int t = 0; t < threads; t++) out[t] = work(iters, 1.0 + t);
#else
    pthread_t th[256];
    for (long t = 0; t < threads; t++) pthread_create(&th[t], NULL, body, (void *)t);
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
#endif
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%.6f %.6f\n", wall,
           ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    return 0;
}
