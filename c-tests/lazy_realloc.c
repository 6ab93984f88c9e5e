/* lazy_realloc: a large malloc block grown by realloc after a lazy restart.
 *   CR_TEST_GO=PATH lazy_realloc MB GROW_MB
 * Allocates MB MiB with malloc (above glibc's mmap threshold: a block glibc maps by itself),
 * fills it with a pattern, prints READY and spins until the GO file exists. Then it grows the
 * block to GROW_MB MiB with realloc, checks that the first MB MiB kept the pattern, writes the
 * whole block and reads it back. After a lazy restart the block is mapped from the image file;
 * glibc grows it with its internal mremap, which added the file's next bytes or SIGBUS past its
 * end until the preload stub's realloc copied such blocks instead. `PASS lazy_realloc`. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static uint64_t fill(uint64_t k) { return (k + 1) * 0x9E3779B97F4A7C15ULL ^ (k >> 9); }

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 3 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH lazy_realloc MB GROW_MB\n");
        return 2;
    }
    size_t len = (size_t)atol(argv[1]) << 20, grown = (size_t)atol(argv[2]) << 20;
    size_t words = len / 8, all = grown / 8;
    uint64_t *buf = malloc(len);
    if (!buf) return 2;
    for (size_t k = 0; k < words; k++) buf[k] = fill(k);
    printf("READY\n");
    fflush(stdout);
    volatile uint64_t burn = 0;
    for (uint64_t step = 1;; step++) {
        for (int b = 0; b < 20000; b++) burn += b;
        if (step % 64 == 0 && access(go, F_OK) == 0) break;
    }
    uint64_t *big = realloc(buf, grown);
    if (!big) {
        printf("FAIL lazy_realloc: realloc to %zu bytes\n", grown);
        return 1;
    }
    for (size_t k = 0; k < words; k++)
        if (big[k] != fill(k)) {
            printf("FAIL lazy_realloc: word %zu is %#llx, not %#llx\n", k,
                   (unsigned long long)big[k], (unsigned long long)fill(k));
            return 1;
        }
    for (size_t k = 0; k < all; k++) big[k] = ~fill(k);
    for (size_t k = 0; k < all; k++)
        if (big[k] != ~fill(k)) {
            printf("FAIL lazy_realloc: rewritten word %zu differs\n", k);
            return 1;
        }
    free(big);
    printf("PASS lazy_realloc\n");
    return 0;
}
