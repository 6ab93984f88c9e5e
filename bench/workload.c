/* workload: the benchmark's checkpoint target (built by bench/bench.py).
 *   workload KIND MIB [TOUCH_MIB] [THREADS] [PROCS]
 * KIND: random (MIB MiB of random bytes), zero-like (MIB MiB of a repeating 64-byte pattern:
 * highly compressible), text (numbered text records, compressible as logs are), sparse (MIB MiB reserved, TOUCH_MIB MiB of it written),
 * scattered (the same bytes as random, but every page first touched in a shuffled order, so that
 * pages next to each other in the program are not next to each other in physical memory: a
 * long-running process's memory, where the fresh memory of random is physically contiguous),
 * mixedP (the first P % of the memory random, the rest the compressible pattern), ileaveP (1 MiB
 * blocks, P % of them random, spread evenly: random and compressible interleaved).
 * THREADS extra threads (default 0) each loop on a private counter; PROCS-1 child processes
 * (default 1 = no children) each keep a copy of the memory and loop like the root.
 * After filling, prints READY on stdout, then every STEP_US (1000) microseconds appends the
 * CLOCK_REALTIME nanoseconds of the step as a decimal line to the file named by $BENCH_STEPS
 * (root only, O_APPEND, one write(2) per step), and touches one word of the memory. Runs until
 * killed. With $BENCH_DIRTY_MIB and $BENCH_DIRTY set, each SIGUSR1 makes the root write one word
 * in every page of the first BENCH_DIRTY_MIB MiB (within TOUCH_MIB) at its next step and append
 * the nanoseconds that took to the file $BENCH_DIRTY (the incremental checkpoint benchmark).
 * With $BENCH_FORK=N (one process only) it forks N times after filling instead, timing each
 * fork() until it returns in the parent (the child exits at once), prints
 * "FORK MS MS ... THP KIB" (KIB: its AnonHugePages from /proc/self/smaps_rollup) and exits:
 * the bare fork a `--cow` checkpoint's stop is compared with. $BENCH_THP=1 applies
 * MADV_HUGEPAGE to the memory itself (without cr_run --huge-pages). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;
static volatile sig_atomic_t dirty_asked;

static void ask_dirty(int sig)
{
    (void)sig;
    dirty_asked = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *spin(void *arg)
{
    volatile uint64_t *c = arg;
    for (;;) {
        (*c)++;
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: workload random|scattered|compressible|text|sparse|mixedP|ileaveP MIB [TOUCH_MIB] [THREADS] [PROCS]\n");
        return 2;
    }
    const char *kind = argv[1];
    size_t len = (size_t)atol(argv[2]) << 20;
    size_t touch = argc > 3 ? (size_t)atol(argv[3]) << 20 : len;
    int threads = argc > 4 ? atoi(argv[4]) : 0;
    int procs = argc > 5 ? atoi(argv[5]) : 1;
    const char *steps = getenv("BENCH_STEPS");
    if (!len || touch > len || !steps) {
        fprintf(stderr, "workload: bad arguments or BENCH_STEPS unset\n");
        return 2;
    }
    uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("workload: mmap");
        return 2;
    }
    if (getenv("BENCH_THP") && !strcmp(getenv("BENCH_THP"), "1") &&
        madvise(mem, len, MADV_HUGEPAGE) != 0) {
        perror("workload: madvise(MADV_HUGEPAGE)");
        return 2;
    }
    size_t words = touch / 8;
    if (!strcmp(kind, "scattered")) {
        /* First touch of every page in a shuffled order (Fisher-Yates, xorshift): the kernel
         * hands out physical pages in the order of the faults. The content is random's. */
        size_t pages = touch / 4096;
        uint32_t *order = malloc(pages * sizeof *order);
        if (!order) {
            perror("workload: malloc");
            return 2;
        }
        for (size_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
        uint64_t y = 0x2545F4914F6CDD1Dull;
        for (size_t i = pages; i > 1; i--) {
            y ^= y << 13, y ^= y >> 7, y ^= y << 17;
            size_t j = (size_t)(y % i);
            uint32_t t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
        for (size_t i = 0; i < pages; i++) mem[(size_t)order[i] * 512] = 1;
        free(order);
    }
    if (!strcmp(kind, "random") || !strcmp(kind, "sparse") || !strcmp(kind, "scattered")) {
        uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
        for (size_t k = 0; k < words; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            mem[k] = x;
        }
    } else if (!strcmp(kind, "compressible")) {
        for (size_t k = 0; k < words; k++) mem[k] = 0x0101010101010101ull * (k % 8 + 1);
    } else if (!strcmp(kind, "text")) {
        /* Numbered text records (as c-tests/zmem.c): compressible like tables and logs. */
        static const char *w[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta",
                                  "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"};
        char *p = (char *)mem;
        size_t at = 0;
        for (uint64_t i = 0; at < touch; i++) {
            char line[128];
            uint64_t x = i * 2654435761u;
            int n = snprintf(line, sizeof line, "%08llu %s %s count=%llu state=%s\n",
                             (unsigned long long)i, w[x % 15], w[(x >> 8) % 15],
                             (unsigned long long)(x % 1000), (x >> 16) % 3 ? "ok" : "retry");
            size_t take = (size_t)n < touch - at ? (size_t)n : touch - at;
            memcpy(p + at, line, take);
            at += take;
        }
    } else if (!strncmp(kind, "mixed", 5) || !strncmp(kind, "ileave", 6)) {
        /* mixedP: the first P % of the memory random, the rest the compressible pattern (one
         * region each); ileaveP: 1 MiB blocks, a spread P % of them random (interleaved). */
        int inter = kind[0] == 'i';
        long pct = atol(kind + (inter ? 6 : 5));
        if (pct < 0 || pct > 100) {
            fprintf(stderr, "workload: bad percentage in %s\n", kind);
            return 2;
        }
        uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
        size_t block = (1u << 20) / 8;
        size_t split = (size_t)((double)words * pct / 100.0);
        for (size_t k = 0; k < words; k++) {
            size_t b = k / block;
            /* Block b is random when floor((b+1)P/100) > floor(bP/100): P of every 100. */
            int rnd = inter ? (b + 1) * pct / 100 > b * pct / 100 : k < split;
            if (rnd) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                mem[k] = x;
            } else {
                mem[k] = 0x0101010101010101ull * (k % 8 + 1);
            }
        }
    } else {
        fprintf(stderr, "workload: unknown kind %s\n", kind);
        return 2;
    }
    int forks = getenv("BENCH_FORK") ? atoi(getenv("BENCH_FORK")) : 0;
    if (forks > 0) {
        printf("FORK");
        for (int i = 0; i < forks; i++) {
            /* The child waits until the parent has its time: its exit (unmapping a copy of
             * the page tables) must not run on the parent's clock. */
            int hold[2];
            if (pipe(hold)) {
                perror("workload: pipe");
                return 2;
            }
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            pid_t c = fork();
            if (c == 0) {
                char x;
                close(hold[1]);
                (void)!read(hold[0], &x, 1);
                _exit(0);
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            close(hold[0]);
            close(hold[1]);
            if (c < 0 || waitpid(c, NULL, 0) != c) {
                perror("workload: fork");
                return 2;
            }
            printf(" %.3f", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
        }
        long thp = -1;
        FILE *f = fopen("/proc/self/smaps_rollup", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "AnonHugePages: %ld kB", &thp) == 1) break;
        if (f) fclose(f);
        printf(" THP %ld\n", thp);
        return 0;
    }
    int root = 1;
    for (int p = 1; p < procs; p++) {
        pid_t c = fork();
        if (c < 0) {
            perror("workload: fork");
            return 2;
        }
        if (c == 0) {
            root = 0;
            break;
        }
    }
    static uint64_t counters[1024];
    for (int t = 0; t < threads && t < 1024; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, spin, &counters[t]) != 0) {
            perror("workload: pthread_create");
            return 2;
        }
    }
    const char *dirty_path = getenv("BENCH_DIRTY");
    size_t dirty = getenv("BENCH_DIRTY_MIB") ? (size_t)atol(getenv("BENCH_DIRTY_MIB")) << 20 : 0;
    if (dirty > touch) dirty = touch;
    if (root && dirty && dirty_path) signal(SIGUSR1, ask_dirty);
    int fd = -1;
    if (root) {
        fd = open(steps, O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (fd < 0) {
            perror("workload: open steps");
            return 2;
        }
        printf("READY\n");
        fflush(stdout);
    }
    for (uint64_t step = 0;; step++) {
        mem[(step * 4099) % words] += step;
        if (dirty_asked) {
            dirty_asked = 0;
            uint64_t t = now_ns();
            for (size_t k = 0; k < dirty / 8; k += 512) mem[k] += step;
            t = now_ns() - t;
            int dfd = open(dirty_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
            char line[32];
            int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)t);
            if (dfd < 0 || write(dfd, line, n) != n) return 3;
            close(dfd);
        }
        if (fd >= 0) {
            char line[32];
            int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)now_ns());
            if (write(fd, line, n) != n) return 3;
        }
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
}
