/* bigmem: a program with a large, changing heap, for fault tests that need a checkpoint to take
 * a while (the requester killed mid-write, …).
 *   bigmem MB
 * Fills MB MiB with a pattern, prints READY, then keeps rewriting one 64-byte slot per step
 * (burning a little CPU, so its user time shows whether it runs) until the GO file exists.
 * After GO it replays every step from scratch and compares the whole buffer: PASS bigmem. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t fill(uint64_t k) { return k * 0x9E3779B97F4A7C15ULL ^ (k >> 7); }
static uint64_t mark(uint64_t step) { return ~step * 0xD6E8FEB86659FD93ULL; }

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH bigmem MB\n");
        return 2;
    }
    size_t words = (size_t)atol(argv[1]) << 17; /* MiB / 8 bytes */
    size_t slots = words / 8;
    uint64_t *buf = malloc(words * 8);
    if (!buf) return 2;
    for (size_t k = 0; k < words; k++) buf[k] = fill(k);
    printf("READY\n");
    fflush(stdout);
    uint64_t step = 0;
    volatile uint64_t burn = 0;
    for (;;) {
        size_t s = (size_t)(step * 2654435761u % slots);
        for (int j = 0; j < 8; j++) buf[s * 8 + j] = mark(step) + j;
        step++;
        for (int b = 0; b < 20000; b++) burn += b;
        if (step % 64 == 0 && access(go, F_OK) == 0) break;
    }
    uint64_t *want = malloc(words * 8);
    if (!want) return 2;
    for (size_t k = 0; k < words; k++) want[k] = fill(k);
    for (uint64_t i = 0; i < step; i++) {
        size_t s = (size_t)(i * 2654435761u % slots);
        for (int j = 0; j < 8; j++) want[s * 8 + j] = mark(i) + j;
    }
    if (memcmp(want, buf, words * 8) != 0) {
        printf("FAIL bigmem: buffer differs after %llu steps\n", (unsigned long long)step);
        fprintf(stderr, "FAIL bigmem: buffer differs after %llu steps\n", (unsigned long long)step);
        return 1;
    }
    printf("PASS bigmem\n");
    return 0;
}
