/*
 * fileio.c - regular-file descriptor checkpoint/restart test.
 *
 * Build: gcc -O2 -Wall -o fileio fileio.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./fileio
 *
 * Setup (before READY), in $CR_TEST_DIR:
 *   input.dat  - 4 MiB, byte at offset o = pattern(o); opened O_RDONLY
 *   output.log - opened O_WRONLY|O_CREAT|O_APPEND|O_TRUNC (truncated once)
 * Work loop: read the next 64-byte record of input.dat (at EOF: lseek to 0
 * and count a wrap), check it against the pattern for its offset, append
 * "rec <n>\n" to output.log with write(2).  After GO: the input offset
 * (lseek SEEK_CUR) must equal the tracked offset, n == wraps*65536 + off/64,
 * O_APPEND / access modes must still be set, output.log size == bytes
 * written, and output.log must contain exactly "rec 0" .. "rec n-1" in order.
 *
 * NOTE: files are not rolled back by a restart.  The test assumes the
 * process that ran after a checkpoint is gone (cr_checkpoint --term) and
 * that only the most recent image is restarted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IN_SIZE (4u << 20)
#define REC 64
#define RECS_PER_FILE (IN_SIZE / REC)
#define RECS_PER_CHECK 32

static void fail(const char *what)
{
    printf("FAIL fileio: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL fileio: %s\n", what);
    exit(1);
}

static inline unsigned char pattern(uint64_t o)
{
    return (unsigned char)((o * 131) ^ (o >> 8) ^ (o >> 16) * 7);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *dir = getenv("CR_TEST_DIR");
    char in_path[4096], out_path[4096], m[200];
    if (!go || !dir)
        fail("CR_TEST_GO / CR_TEST_DIR not set");
    snprintf(in_path, sizeof in_path, "%s/input.dat", dir);
    snprintf(out_path, sizeof out_path, "%s/output.log", dir);

    /* ---- create input.dat ---- */
    int wfd = open(in_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (wfd < 0)
        fail("create input.dat");
    static unsigned char buf[1 << 16];
    for (uint64_t off = 0; off < IN_SIZE; off += sizeof buf) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = pattern(off + i);
        if (write(wfd, buf, sizeof buf) != (ssize_t)sizeof buf)
            fail("write input.dat");
    }
    if (close(wfd))
        fail("close input.dat");

    int in = open(in_path, O_RDONLY);
    if (in < 0)
        fail("open input.dat");
    int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    if (out < 0)
        fail("open output.log");

    uint64_t n = 0, pos = 0, wraps = 0, bytes = 0;

    printf("READY\n");
    fflush(stdout);

    for (;;) {
        for (int c = 0; c < RECS_PER_CHECK; c++) {
            unsigned char rec[REC];
            ssize_t r = read(in, rec, REC);
            if (r == 0) {
                if (lseek(in, 0, SEEK_SET) != 0)
                    fail("lseek input to 0");
                pos = 0;
                wraps++;
                continue;
            }
            if (r != REC) {
                snprintf(m, sizeof m, "read returned %zd at offset %llu", r, (unsigned long long)pos);
                fail(m);
            }
            for (int i = 0; i < REC; i++)
                if (rec[i] != pattern(pos + i)) {
                    snprintf(m, sizeof m, "input record at offset %llu has wrong contents",
                             (unsigned long long)pos);
                    fail(m);
                }
            pos += REC;
            char line[32];
            int len = snprintf(line, sizeof line, "rec %llu\n", (unsigned long long)n);
            ssize_t w = write(out, line, len);
            if (w != len)
                fail("write output.log");
            bytes += len;
            n++;
        }
        if (access(go, F_OK) == 0)
            break;
        usleep(500);
    }

    /* ---- verification ---- */
    off_t cur = lseek(in, 0, SEEK_CUR);
    if (cur != (off_t)pos) {
        snprintf(m, sizeof m, "input offset %lld, expected %llu", (long long)cur, (unsigned long long)pos);
        fail(m);
    }
    if (n != wraps * RECS_PER_FILE + pos / REC)
        fail("record count inconsistent with wraps/offset");
    int fl = fcntl(in, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != O_RDONLY)
        fail("input.dat fd flags");
    fl = fcntl(out, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != O_WRONLY || !(fl & O_APPEND))
        fail("output.log fd lost O_WRONLY|O_APPEND");
    struct stat st;
    if (fstat(out, &st) || (uint64_t)st.st_size != bytes) {
        snprintf(m, sizeof m, "output.log size %lld, expected %llu", (long long)st.st_size,
                 (unsigned long long)bytes);
        fail(m);
    }
    if (lseek(out, 0, SEEK_CUR) != (off_t)bytes)
        fail("output.log offset != size");
    if (close(out))
        fail("close output.log");
    if (close(in))
        fail("close input.dat");

    int rfd = open(out_path, O_RDONLY);
    if (rfd < 0)
        fail("re-open output.log");
    char *data = malloc(bytes + 1);
    if (!data)
        fail("malloc");
    uint64_t got = 0;
    for (;;) {
        ssize_t r = read(rfd, data + got, bytes + 1 - got);
        if (r < 0)
            fail("read output.log");
        if (r == 0)
            break;
        got += r;
        if (got > bytes)
            fail("output.log longer than expected");
    }
    close(rfd);
    if (got != bytes)
        fail("output.log shorter than expected");
    data[got] = 0;
    char *p = data;
    for (uint64_t i = 0; i < n; i++) {
        char exp[32];
        int len = snprintf(exp, sizeof exp, "rec %llu\n", (unsigned long long)i);
        if ((uint64_t)(p - data) + len > got || memcmp(p, exp, len) != 0) {
            snprintf(m, sizeof m, "output.log line %llu wrong (gap/duplicate?)", (unsigned long long)i);
            fail(m);
        }
        p += len;
    }
    if (p != data + got)
        fail("trailing data in output.log");
    free(data);
    fprintf(stderr, "info fileio: %llu records, %llu wraps\n", (unsigned long long)n, (unsigned long long)wraps);
    printf("PASS fileio\n");
    fflush(stdout);
    return 0;
}
