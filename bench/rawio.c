/* rawio: the benchmark's raw I/O baseline (built by bench/bench.py).
 *   rawio write FILE MIB direct|buffered   fills a pre-faulted buffer of MIB MiB with random
 *                                          bytes, then times creating FILE, writing it in 8 MiB
 *                                          writes and fdatasync
 *   rawio read FILE direct|buffered        times reading FILE whole in 8 MiB reads into a
 *                                          pre-faulted buffer
 *   rawio read FILE fresh                  the same (buffered) into fresh anonymous memory, as a
 *                                          restore that reads must: each page's first touch
 *                                          (allocating and zeroing it) is counted
 * Prints the seconds taken (the filling and faulting are not counted). Exit 3: O_DIRECT refused
 * by the file system (EINVAL on open or on the first write). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (8u << 20)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *buffer(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        perror("rawio: mmap");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: rawio write FILE MIB direct|buffered | rawio read FILE direct|buffered|fresh\n");
        return 2;
    }
    int writing = !strcmp(argv[1], "write");
    const char *mode = argv[writing ? 4 : 3];
    int direct = !strcmp(mode, "direct");
    if (writing && argc < 5) {
        fprintf(stderr, "rawio: write needs FILE MIB MODE\n");
        return 2;
    }
    if (writing) {
        size_t len = (size_t)atol(argv[3]) << 20;
        uint64_t *buf = buffer(len);
        uint64_t x = 0x9E3779B97F4A7C15ull;
        for (size_t k = 0; k < len / 8; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[k] = x;
        }
        double t0 = now();
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0600);
        if (fd < 0) {
            if (errno == EINVAL) return 3;
            perror("rawio: open");
            return 2;
        }
        for (size_t off = 0; off < len; off += CHUNK) {
            size_t n = len - off < CHUNK ? len - off : CHUNK;
            ssize_t w = write(fd, (char *)buf + off, n);
            if (w < 0 && errno == EINVAL && direct && off == 0) return 3;
            if (w != (ssize_t)n) {
                perror("rawio: write");
                return 2;
            }
        }
        if (fdatasync(fd) != 0) {
            perror("rawio: fdatasync");
            return 2;
        }
        close(fd);
        printf("%.6f\n", now() - t0);
        return 0;
    }
    struct stat st;
    if (stat(argv[2], &st) != 0) {
        perror("rawio: stat");
        return 2;
    }
    size_t len = (size_t)st.st_size;
    int fresh = !strcmp(mode, "fresh");
    char *buf = fresh ? mmap(NULL, len + CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                      : buffer(len + CHUNK);
    if (buf == MAP_FAILED) {
        perror("rawio: mmap");
        return 2;
    }
    double t0 = now();
    int fd = open(argv[2], O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        if (errno == EINVAL) return 3;
        perror("rawio: open");
        return 2;
    }
    size_t off = 0;
    for (;;) {
        ssize_t r = read(fd, buf + off, CHUNK);
        if (r < 0) {
            if (errno == EINVAL && direct && off == 0) return 3;
            perror("rawio: read");
            return 2;
        }
        if (r == 0) break;
        off += (size_t)r;
    }
    close(fd);
    printf("%.6f\n", now() - t0);
    return 0;
}
