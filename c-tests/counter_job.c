/* counter_job: a long batch job for the supervisor tests (cr_run --checkpoint-dir).
 *   counter_job STEPS INTERVAL_MS [EXIT_CODE [BALLAST_MB]]
 * Runs STEPS steps, one every INTERVAL_MS: each advances a 64-bit LCG state and a chained hash
 * over a 1 MiB heap buffer it also rewrites, and prints "step N" (flushed). At the end it
 * recomputes state, hash and buffer from scratch and compares: a job resumed from a checkpoint
 * must end exactly as an uninterrupted one. Prints "PASS counter_job STEPS" and exits with
 * EXIT_CODE (default 0); "FAIL counter_job: ..." and exit 1 on a mismatch. BALLAST_MB (default
 * 0) MiB are filled with a pattern at the start, never written again, and checked at the end
 * (memory an incremental checkpoint's deltas leave to the chain's full image). 
 * Reads no stdin and needs no GO file: it simply ends after STEPS steps. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUF (1 << 20)

static uint64_t lcg(uint64_t x) { return x * 6364136223846793005ULL + 1442695040888963407ULL; }

static void advance(uint64_t *state, uint64_t *hash, unsigned char *buf, long step)
{
    *state = lcg(*state);
    size_t at = (size_t)(*state >> 20) % (BUF - 64);
    for (int k = 0; k < 64; k++) buf[at + k] = (unsigned char)(*state >> (k % 8 * 8)) ^ (unsigned char)step;
    *hash = (*hash ^ *state ^ (uint64_t)step) * 1099511628211ULL;
    for (int k = 0; k < 64; k += 8) *hash ^= (uint64_t)buf[at + k] << k;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: counter_job STEPS INTERVAL_MS [EXIT_CODE]\n");
        return 2;
    }
    long steps = atol(argv[1]);
    long interval = atol(argv[2]);
    int code = argc > 3 ? atoi(argv[3]) : 0;
    size_t ballast_len = argc > 4 ? (size_t)atol(argv[4]) << 20 : 0;
    unsigned char *ballast = ballast_len ? malloc(ballast_len) : NULL;
    if (ballast_len && !ballast) return 2;
    for (size_t i = 0; i < ballast_len; i++) ballast[i] = (unsigned char)(i * 7 + 13 + (i >> 12));
    unsigned char *buf = calloc(1, BUF);
    if (!buf) return 2;
    uint64_t state = 12345, hash = 1469598103934665603ULL;
    struct timespec ts = { interval / 1000, interval % 1000 * 1000000L };
    for (long i = 0; i < steps; i++) {
        advance(&state, &hash, buf, i);
        printf("step %ld\n", i);
        fflush(stdout);
        nanosleep(&ts, NULL);
    }
    unsigned char *check = calloc(1, BUF);
    if (!check) return 2;
    uint64_t s2 = 12345, h2 = 1469598103934665603ULL;
    for (long i = 0; i < steps; i++) advance(&s2, &h2, check, i);
    if (s2 != state || h2 != hash || memcmp(check, buf, BUF) != 0) {
        printf("FAIL counter_job: state %s, hash %s, buffer %s\n", s2 == state ? "ok" : "differs",
               h2 == hash ? "ok" : "differs", memcmp(check, buf, BUF) ? "differs" : "ok");
        fflush(stdout);
        return 1;
    }
    for (size_t i = 0; i < ballast_len; i++) {
        if (ballast[i] != (unsigned char)(i * 7 + 13 + (i >> 12))) {
            printf("FAIL counter_job: ballast differs at %zu\n", i);
            fflush(stdout);
            return 1;
        }
    }
    printf("PASS counter_job %ld\n", steps);
    fflush(stdout);
    return code;
}
