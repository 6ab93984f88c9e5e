/* bigmem: a program with a large, changing heap, for fault tests that need a checkpoint to take
 * a while (the requester killed mid-write, …), and for trees whose images are written at once.
 *   bigmem MB [NPROC]
 * With NPROC (default 1) the program forks NPROC-1 children first (node 0 is the parent, nodes
 * 1.. its children); every node fills its own MB MiB with a pattern of its own (the node's
 * number is in it), and the parent prints READY once every node has. Each node then keeps
 * rewriting one 64-byte slot per step (burning a little CPU, so its user time shows whether
 * it runs) until the GO file exists. After GO each node replays every step from scratch and
 * compares its whole buffer; a child exits 0 when it matches; the parent prints PASS bigmem
 * when its own matches and every child exited 0 (else FAIL and why). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t node;
static uint64_t fill(uint64_t k) { return (k * 0x9E3779B97F4A7C15ULL ^ (k >> 7)) + node * 0x5851F42D4C957F2DULL; }
static uint64_t mark(uint64_t step) { return ~step * 0xD6E8FEB86659FD93ULL ^ node; }

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH bigmem MB [NPROC]\n");
        return 2;
    }
    int nproc = argc > 2 ? atoi(argv[2]) : 1;
    if (nproc < 1 || nproc > 64) {
        fprintf(stderr, "bigmem: NPROC must be 1-64\n");
        return 2;
    }
    int ready[2];
    if (pipe(ready) != 0) return 2;
    pid_t kids[64];
    for (int i = 1; i < nproc; i++) {
        pid_t p = fork();
        if (p < 0) return 2;
        if (p == 0) {
            node = (uint64_t)i;
            break;
        }
        kids[i] = p;
    }
    size_t words = (size_t)atol(argv[1]) << 17; /* MiB / 8 bytes */
    size_t slots = words / 8;
    uint64_t *buf = malloc(words * 8);
    if (!buf) return 2;
    for (size_t k = 0; k < words; k++) buf[k] = fill(k);
    if (node != 0) {
        char c = 'r';
        if (write(ready[1], &c, 1) != 1) return 2;
    } else {
        for (int i = 1; i < nproc; i++) {
            char c;
            if (read(ready[0], &c, 1) != 1) return 2;
        }
        printf("READY\n");
        fflush(stdout);
    }
    close(ready[0]);
    close(ready[1]);
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
    int bad = memcmp(want, buf, words * 8) != 0;
    if (node != 0) return bad ? 1 : 0;
    if (bad) {
        printf("FAIL bigmem: buffer differs after %llu steps\n", (unsigned long long)step);
        fprintf(stderr, "FAIL bigmem: buffer differs after %llu steps\n", (unsigned long long)step);
        return 1;
    }
    for (int i = 1; i < nproc; i++) {
        int st = 0;
        if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("FAIL bigmem: node %d (pid %d) ended with status 0x%x\n", i, (int)kids[i], st);
            fprintf(stderr, "FAIL bigmem: node %d ended with status 0x%x\n", i, st);
            return 1;
        }
    }
    printf("PASS bigmem\n");
    return 0;
}
