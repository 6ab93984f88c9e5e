/*
 * outside.c - descriptors that lead outside the job (BLCR's rule: a restored descriptor whose
 * pipe is not part of the checkpoint takes cr_restart's descriptor of the same number).
 *
 * Started with fd 5 the write end and fd 6 the read end of pipes whose other ends the test
 * holds (and stdout/stderr pipes of the test harness).  After GO it writes "info outside
 * stderr" on fd 2, "outside fd5" on fd 5, reads one line from fd 6 (must be "outside fd6",
 * written by the test into the pipe it gave cr_restart), and prints PASS on fd 1.  The test
 * checks that each line arrived on the pipe cr_restart was given for that number.
 *
 * Build: gcc -O2 -Wall -o outside outside.c
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what)
{
    printf("FAIL outside: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL outside: %s\n", what);
    exit(1);
}

static void write_all(int fd, const char *s, const char *what)
{
    size_t len = strlen(s), done = 0;
    while (done < len) {
        ssize_t n = write(fd, s + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(what);
        done += (size_t)n;
    }
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    struct stat st;
    if (!go)
        fail("CR_TEST_GO not set");
    if (fstat(5, &st) != 0 || !S_ISFIFO(st.st_mode) || (fcntl(5, F_GETFL) & O_ACCMODE) != O_WRONLY)
        fail("fd 5 is not the write end of a pipe at start");
    if (fstat(6, &st) != 0 || !S_ISFIFO(st.st_mode) || (fcntl(6, F_GETFL) & O_ACCMODE) != O_RDONLY)
        fail("fd 6 is not the read end of a pipe at start");
    printf("READY\n");
    fflush(stdout);
    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
    write_all(2, "info outside stderr\n", "write on fd 2");
    write_all(5, "outside fd5\n", "write on fd 5");
    char buf[64];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(6, buf + got, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got++;
        if (buf[got - 1] == '\n')
            break;
    }
    buf[got] = 0;
    if (strcmp(buf, "outside fd6\n") != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "fd 6 gave \"%.40s\" (%zu bytes), expected \"outside fd6\"", buf, got);
        fail(msg);
    }
    printf("PASS outside\n");
    fflush(stdout);
    return 0;
}
