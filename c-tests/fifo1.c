/*
 * fifo1.c - named FIFOs opened by one process (issue 9; BLCR's named_fifo and linked_fifo):
 * the FIFO is $CR_TEST_DIR/fifo (or fifo.b after a rename or link).
 *
 *   rdwr      opened O_RDWR; 3000 bytes in flight.
 *   both      a reader and a writer in this process; 3000 bytes in flight; after GO the
 *             writer is closed and the reader must see EOF after the bytes.
 *   reader N  only the read end (O_NONBLOCK); the writer is outside (the test writes 3000
 *             bytes before the checkpoint and more after the restart); after GO exactly N
 *             bytes of the pattern must arrive, then EOF.
 *   writer N  only the write end; the reader is outside (the test); 3000 bytes in flight
 *             before READY, N more after GO (the test checks what it reads).
 *   renamed   reader and writer opened through "fifo", renamed to "fifo.b" before READY.
 *   linked    O_RDWR through "fifo", linked as "fifo.b", "fifo" unlinked before READY.
 *   unlinked  O_RDWR, the FIFO's only name unlinked before READY (comes back as a pipe).
 *   moved     O_RDWR; the test renames "fifo" to "fifo.b" between checkpoint and restart.
 *
 * After GO (except writer): the bytes in flight come first, in order; for renamed/linked a
 * byte written through the FIFO's current name must arrive on the process's descriptor (the
 * descriptor is still that FIFO), and a round trip through the descriptors works.
 *
 * Build: gcc -O2 -Wall -o fifo1 fifo1.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *mode;

static void fail(const char *what)
{
    printf("FAIL fifo1 %s: %s\n", mode, what);
    fflush(stdout);
    fprintf(stderr, "FAIL fifo1 %s: %s\n", mode, what);
    exit(1);
}

static char msg[512];
#define FAILF(...) (snprintf(msg, sizeof msg, __VA_ARGS__), fail(msg))

static unsigned char pat(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static void write_pattern(int fd, size_t from, size_t n)
{
    unsigned char buf[4096];
    size_t done = 0;
    while (done < n) {
        size_t k = n - done < sizeof buf ? n - done : sizeof buf;
        for (size_t i = 0; i < k; i++)
            buf[i] = pat(from + done + i);
        ssize_t w = write(fd, buf, k);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            FAILF("write: %s", strerror(errno));
        done += (size_t)w;
    }
}

/* Reads exactly n bytes of the pattern starting at `from` (waiting with poll). */
static void expect_pattern(int fd, size_t from, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 10000) == 0)
            FAILF("only %zu of %zu bytes arrived (timeout)", got, n);
        unsigned char buf[4096];
        size_t want = n - got < sizeof buf ? n - got : sizeof buf;
        ssize_t r = read(fd, buf, want);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0)
            FAILF("read: %s", strerror(errno));
        if (r == 0)
            FAILF("EOF after %zu of %zu bytes", got, n);
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pat(from + got + (size_t)i))
                FAILF("byte %zu is %u, expected %u", from + got + (size_t)i, buf[i], pat(from + got + (size_t)i));
        got += (size_t)r;
    }
}

static void expect_eof(int fd)
{
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 10000) == 0)
            fail("no EOF (a writer is still open)");
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r == 0)
            return;
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0)
            FAILF("read: %s", strerror(errno));
        fail("more bytes than expected before EOF");
    }
}

/* A byte written through the FIFO's name `path` arrives on `rd`. */
static void same_fifo(const char *path, int rd)
{
    int w = open(path, O_WRONLY | O_NONBLOCK);
    if (w < 0)
        FAILF("open %s for writing: %s (the descriptor is not that FIFO any more)", path, strerror(errno));
    if (write(w, "N", 1) != 1)
        FAILF("write through %s", path);
    close(w);
    struct pollfd p = {rd, POLLIN, 0};
    char c = 0;
    if (poll(&p, 1, 5000) != 1 || read(rd, &c, 1) != 1 || c != 'N')
        FAILF("a byte written through %s did not arrive on the descriptor", path);
}

static void round_trip(int wr, int rd)
{
    if (write(wr, "ping", 4) != 4)
        fail("round trip write");
    char b[4];
    struct pollfd p = {rd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1 || read(rd, b, 4) != 4 || memcmp(b, "ping", 4) != 0)
        fail("round trip read");
}

static void set_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
        fail("F_SETFL");
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    const char *dir = getenv("CR_TEST_DIR");
    mode = argc > 1 ? argv[1] : "?";
    size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    if (!go || !dir)
        fail("CR_TEST_GO and CR_TEST_DIR must be set");
    char path[4096], path_b[4096];
    snprintf(path, sizeof path, "%s/fifo", dir);
    snprintf(path_b, sizeof path_b, "%s/fifo.b", dir);
    unlink(path);
    unlink(path_b);
    if (mkfifo(path, 0600) != 0)
        fail("mkfifo");
    int rd = -1, wr = -1;
    const size_t flight = 3000;
    if (!strcmp(mode, "rdwr") || !strcmp(mode, "linked") || !strcmp(mode, "unlinked") ||
        !strcmp(mode, "moved")) {
        rd = wr = open(path, O_RDWR);
        if (rd < 0)
            fail("open O_RDWR");
        write_pattern(wr, 0, flight);
        if (!strcmp(mode, "linked") && (link(path, path_b) != 0 || unlink(path) != 0))
            fail("link/unlink");
        if (!strcmp(mode, "unlinked") && unlink(path) != 0)
            fail("unlink");
    } else if (!strcmp(mode, "both") || !strcmp(mode, "renamed")) {
        rd = open(path, O_RDONLY | O_NONBLOCK);
        wr = open(path, O_WRONLY);
        if (rd < 0 || wr < 0)
            fail("open");
        set_blocking(rd);
        write_pattern(wr, 0, flight);
        if (!strcmp(mode, "renamed") && rename(path, path_b) != 0)
            fail("rename");
    } else if (!strcmp(mode, "reader")) {
        rd = open(path, O_RDONLY | O_NONBLOCK);
        if (rd < 0)
            fail("open");
    } else if (!strcmp(mode, "writer")) {
        /* Wait for the test's reader. */
        struct timespec ms = {0, 1000000};
        for (int i = 0; i < 20000 && wr < 0; i++) {
            wr = open(path, O_WRONLY | O_NONBLOCK);
            if (wr < 0 && errno != ENXIO)
                fail("open");
            if (wr < 0)
                nanosleep(&ms, NULL);
        }
        if (wr < 0)
            fail("no reader came");
        set_blocking(wr);
        write_pattern(wr, 0, flight);
    } else {
        fail("unknown mode");
    }
    printf("READY\n");
    fflush(stdout);
    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);

    if (!strcmp(mode, "reader")) {
        expect_pattern(rd, 0, n);
        expect_eof(rd);
    } else if (!strcmp(mode, "writer")) {
        write_pattern(wr, flight, n);
    } else {
        expect_pattern(rd, 0, flight);
        if (!strcmp(mode, "renamed") || !strcmp(mode, "linked") || !strcmp(mode, "moved"))
            same_fifo(path_b, rd);
        round_trip(wr, rd);
        if (!strcmp(mode, "both") || !strcmp(mode, "renamed")) {
            close(wr);
            expect_eof(rd);
        }
    }
    printf("PASS fifo1 %s\n", mode);
    fflush(stdout);
    return 0;
}
