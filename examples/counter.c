/*
 * counter.c - quick-start example for libcr-rs.
 *
 * Prints an incrementing counter once per second.  Alongside the counter it
 * keeps the running sum 1 + 2 + ... + n and checks every second that
 * sum == n(n+1)/2, so a restarted process proves its memory came back intact.
 * Runs forever, or for N iterations if given an argument.
 *
 * Build:
 *     gcc -O2 -Wall -o counter examples/counter.c
 *
 * Run under the checkpoint agent, checkpoint it, restart it:
 *     cr_run ./counter &                 # prints "counter 1 (pid 12345)" ...
 *     cr_checkpoint --term 12345         # writes context.12345, stops the original
 *     cr_restart context.12345           # continues counting where it left off
 *
 * (Without --term the original keeps running after the checkpoint.)
 * Exit status: 0 after N iterations, 1 if the consistency check ever fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    unsigned long long limit = argc > 1 ? strtoull(argv[1], NULL, 10) : 0; /* 0 = forever */
    unsigned long long n = 0, sum = 0;

    while (limit == 0 || n < limit) {
        n++;
        sum += n;
        if (sum != n * (n + 1) / 2) {
            fprintf(stderr, "counter: INCONSISTENT at %llu (sum %llu)\n", n, sum);
            return 1;
        }
        printf("counter %llu (pid %d)\n", n, (int)getpid());
        fflush(stdout);

        /* sleep one second, resuming if a signal interrupts the sleep */
        struct timespec req = {1, 0}, rem;
        while (nanosleep(&req, &rem) != 0 && errno == EINTR)
            req = rem;
    }
    return 0;
}
