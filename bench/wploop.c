/* wploop: a write-heavy step loop, for the cost of incremental write-tracking (issue 14).
 *   BENCH_STEPS=FILE wploop MIB HOT_MIB
 * Maps MIB MiB of anonymous memory and fills it, prints READY, then loops: each step writes
 * 1 MiB (every byte of 256 pages, memset) at the next position of the first HOT_MIB MiB,
 * cyclically. Every 64 steps it appends "WALL_NS CPU_NS STEPS MINFLT" to FILE (one write(2)):
 * the CLOCK_REALTIME time, the thread's CPU time (user + system: write-protection faults
 * count), the steps done so far and the thread's minor faults (getrusage RUSAGE_THREAD: every
 * write-protection fault is one). Runs until killed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static uint64_t ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *steps = getenv("BENCH_STEPS");
    if (argc < 3 || !steps) {
        fprintf(stderr, "usage: BENCH_STEPS=FILE wploop MIB HOT_MIB\n");
        return 2;
    }
    size_t len = (size_t)atol(argv[1]) << 20, hot = (size_t)atol(argv[2]) << 20;
    if (!len || !hot || hot > len) {
        fprintf(stderr, "wploop: bad sizes\n");
        return 2;
    }
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("wploop: mmap");
        return 2;
    }
    for (size_t i = 0; i < len; i += 4096) mem[i] = (char)(i >> 12 | 1);
    int fd = open(steps, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd < 0) {
        perror("wploop: open");
        return 2;
    }
    printf("READY\n");
    fflush(stdout);
    size_t chunk = 1 << 20, at = 0;
    for (uint64_t step = 1;; step++) {
        memset(mem + at, (int)step, chunk);
        at = (at + chunk) % hot;
        if (step % 64 == 0) {
            char line[100];
            struct rusage ru;
            getrusage(RUSAGE_THREAD, &ru);
            int n = snprintf(line, sizeof line, "%llu %llu %llu %llu\n",
                             (unsigned long long)ns(CLOCK_REALTIME),
                             (unsigned long long)ns(CLOCK_THREAD_CPUTIME_ID),
                             (unsigned long long)step, (unsigned long long)ru.ru_minflt);
            if (write(fd, line, n) != n) return 3;
        }
    }
}
