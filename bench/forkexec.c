/* forkexec: the benchmark's process start-up cost (built by bench/bench.py).
 *   forkexec N PROGRAM
 * Runs PROGRAM (no arguments) N times, one after another, by fork + execv + waitpid, as a shell
 * script does (PROGRAM "-": the child only calls _exit(0), as a subshell that forks without
 * exec); prints the seconds taken and the CPU seconds used (this process and its children, user
 * and system). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: forkexec N PROGRAM\n");
        return 2;
    }
    long n = atol(argv[1]);
    char *args[] = {argv[2], NULL};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("forkexec: fork");
            return 2;
        }
        if (p == 0) {
            if (!strcmp(argv[2], "-")) _exit(0);
            execv(argv[2], args);
            _exit(127);
        }
        int st;
        if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "forkexec: %s failed\n", argv[2]);
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    double cpu = self.ru_utime.tv_sec + self.ru_stime.tv_sec + kids.ru_utime.tv_sec +
                 kids.ru_stime.tv_sec +
                 (self.ru_utime.tv_usec + self.ru_stime.tv_usec + kids.ru_utime.tv_usec +
                  kids.ru_stime.tv_usec) / 1e6;
    printf("%.6f %.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9, cpu);
    return 0;
}
