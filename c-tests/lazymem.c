/* lazymem: a large private region with holes, for the lazy restore (cr_restart maps page data
 * from the image) and its eager counterpart.
 *   lazymem MB [CHILDREN]
 * Each process (the parent and CHILDREN forked children, each with its own seed) maps MB MiB of
 * private anonymous memory in 64 KiB chunks: chunk c is never touched when c % 7 == 3 (absent
 * from the image), written with zeros when c % 11 == 5 (present but zero: not saved either), and
 * filled with a pattern otherwise. READY once every process is filled; then each rewrites one
 * 64-byte slot per step until the GO file exists. After GO each replays its steps and compares
 * the whole region (pattern, zero chunks), then discards a filled chunk with
 * madvise(MADV_DONTNEED) and checks that it reads zeros (anonymous memory semantics), and writes
 * a new pattern over the whole region and reads it back. `PASS lazymem`. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define WPC (CHUNK / 8)

static uint64_t fill(uint64_t seed, uint64_t k) { return (k + 1) * 0x9E3779B97F4A7C15ULL ^ (seed << 40) ^ (k >> 7); }
static uint64_t mark(uint64_t step) { return ~step * 0xD6E8FEB86659FD93ULL; }
static int zero_chunk(size_t c) { return c % 7 == 3 || c % 11 == 5; }

static int run(uint64_t seed, size_t mb, int ready_fd, int wait_fd, int children, const char *go)
{
    size_t len = mb << 20, chunks = len / CHUNK, words = len / 8;
    uint64_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return 2;
    for (size_t c = 0; c < chunks; c++) {
        if (c % 7 == 3) continue;
        for (size_t k = c * WPC; k < (c + 1) * WPC; k++) buf[k] = c % 11 == 5 ? 0 : fill(seed, k);
    }
    if (ready_fd >= 0) {
        if (write(ready_fd, "r", 1) != 1) return 2;
    } else {
        char b;
        for (int i = 0; i < children; i++)
            if (read(wait_fd, &b, 1) != 1) return 2;
        printf("READY\n");
        fflush(stdout);
    }
    uint64_t step = 0;
    volatile uint64_t burn = 0;
    for (;;) {
        size_t s = (size_t)(step * 2654435761u % (words / 8));
        if (!zero_chunk(s * 64 / CHUNK))
            for (int j = 0; j < 8; j++) buf[s * 8 + j] = mark(step) + j;
        step++;
        for (int b = 0; b < 20000; b++) burn += b;
        if (step % 64 == 0 && access(go, F_OK) == 0) break;
    }
    uint64_t *want = malloc(len);
    if (!want) return 2;
    for (size_t k = 0; k < words; k++) want[k] = zero_chunk(k / WPC) ? 0 : fill(seed, k);
    for (uint64_t i = 0; i < step; i++) {
        size_t s = (size_t)(i * 2654435761u % (words / 8));
        if (!zero_chunk(s * 64 / CHUNK))
            for (int j = 0; j < 8; j++) want[s * 8 + j] = mark(i) + j;
    }
    for (size_t k = 0; k < words; k++)
        if (want[k] != buf[k]) {
            fprintf(stderr, "FAIL lazymem: process %llu word %zu (chunk %zu) is %#llx, not %#llx\n",
                    (unsigned long long)seed, k, k / WPC, (unsigned long long)buf[k],
                    (unsigned long long)want[k]);
            return 1;
        }
    /* Chunk 0 is filled: discarded, it must read zeros as anonymous memory does. */
    if (madvise(buf, CHUNK, MADV_DONTNEED) != 0) { perror("madvise"); return 1; }
    for (size_t k = 0; k < WPC; k++)
        if (buf[k] != 0) {
            fprintf(stderr, "FAIL lazymem: process %llu word %zu is %#llx after MADV_DONTNEED, not 0\n",
                    (unsigned long long)seed, k, (unsigned long long)buf[k]);
            return 1;
        }
    for (size_t k = 0; k < words; k++) buf[k] = ~fill(seed, k);
    for (size_t k = 0; k < words; k++)
        if (buf[k] != ~fill(seed, k)) {
            fprintf(stderr, "FAIL lazymem: rewritten word %zu differs\n", k);
            return 1;
        }
    int bad = 0;
    for (int i = 0; i < children; i++) {
        int st;
        pid_t w = wait(&st);
        if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "FAIL lazymem: child %d ended with status %#x\n", (int)w, st);
            bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 2 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH lazymem MB [CHILDREN]\n");
        return 2;
    }
    size_t mb = (size_t)atol(argv[1]);
    int children = argc > 2 ? atoi(argv[2]) : 0;
    int p[2];
    if (pipe(p) != 0) return 2;
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            close(p[0]);
            _exit(run(i + 1, mb, p[1], -1, 0, go));
        }
    }
    close(p[1]);
    int rc = run(0, mb, -1, p[0], children, go);
    if (rc != 0) {
        printf("FAIL lazymem\n");
        return rc;
    }
    printf("PASS lazymem\n");
    return 0;
}
