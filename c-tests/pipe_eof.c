/* pipe_eof.c - a pipe whose writers have all exited, with bytes still buffered
 * (`seq | cksum` where seq finished before cksum read): the reader must get
 * those bytes and then end of file after a restart, not a pipe leading
 * outside the job.
 *
 * Setup: two pipes, each written by a child that then exits (and is reaped):
 * "full" holds 3000 bytes of a pattern, "empty" holds nothing.  READY; until
 * GO, 1 ms sleeps.  After GO: "full" yields exactly the pattern, then EOF;
 * "empty" yields EOF at once (never blocks: poll first).  PASS pipe_eof.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "pipe_eof"
#define LEN 3000

static void fail(const char *what)
{
    printf("FAIL " NAME ": %s\n", what);
    fprintf(stderr, "FAIL " NAME ": %s (errno %d)\n", what, errno);
    fflush(stdout);
    exit(1);
}

static unsigned char pattern(int i) { return (unsigned char)(i * 7 + 3); }

/* A pipe whose only writer, a child, wrote `len` bytes and exited. */
static int writerless_pipe(int len)
{
    int p[2];
    if (pipe(p) != 0)
        fail("pipe");
    pid_t c = fork();
    if (c < 0)
        fail("fork");
    if (c == 0) {
        close(p[0]);
        unsigned char buf[LEN];
        for (int i = 0; i < len; i++)
            buf[i] = pattern(i);
        _exit(write(p[1], buf, len) == len ? 0 : 1);
    }
    close(p[1]);
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("writer child");
    return p[0];
}

/* Reads until EOF (each read waits at most 5 s); returns the byte count. */
static int drain(int fd, unsigned char *buf, int cap)
{
    int got = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, 5000);
        if (r == 0)
            fail("read blocks: no end of file (the pipe has a writer)");
        if (r < 0)
            fail("poll");
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0)
            fail("read");
        if (n == 0)
            return got;
        got += n;
        if (got >= cap)
            fail("more bytes than were written");
    }
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    int full = writerless_pipe(LEN);
    int empty = writerless_pipe(0);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    static unsigned char buf[2 * LEN];
    int n = drain(full, buf, sizeof buf);
    if (n != LEN) {
        fprintf(stderr, "info: %d bytes, expected %d\n", n, LEN);
        fail("wrong number of buffered bytes");
    }
    for (int i = 0; i < LEN; i++)
        if (buf[i] != pattern(i))
            fail("buffered bytes differ");
    if (drain(empty, buf, sizeof buf) != 0)
        fail("bytes in the empty pipe");
    printf("PASS " NAME "\n");
    return 0;
}
