/*
 * outside.c - descriptors that lead outside the job (BLCR's rule: a restored descriptor whose
 * pipe is not part of the checkpoint takes cr_restart's descriptor of the same number).
 *
 * Started with fd 5 the write end and fd 6 the read end of pipes whose other ends the test
 * holds (and stdout/stderr pipes of the test harness).  After GO it writes "info outside
 * stderr" on fd 2, "outside fd5" on fd 5, reads one line from fd 6 (must be "outside fd6",
 * written by the test into the pipe it gave cr_restart), and prints PASS on fd 1.  The test
 * checks that each line arrived on the pipe cr_restart was given for that number.
 * When fd 7 (a unix stream socket) and fd 8 (a TCP connection) are open at start, their peers
 * are the test's too: after GO it also writes "outside fdN" on each and reads one line from
 * each, which must be "reply fdN" (written by the test into the peer of the socket it gave
 * cr_restart at that number).
 * When fd 9 is a terminal at start (a pseudo-terminal of the test), after GO it writes
 * "outside fd9" on it: the test reads it from the terminal it gave cr_restart at that number.
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

static void read_line(int fd, const char *want)
{
    char buf[64], msg[160];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got++;
        if (buf[got - 1] == '\n')
            break;
    }
    buf[got] = 0;
    if (strcmp(buf, want) != 0) {
        snprintf(msg, sizeof msg, "fd %d gave \"%.40s\" (%zu bytes), expected \"%.40s\"", fd, buf, got, want);
        fail(msg);
    }
}

static int is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
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
    int sockets = is_socket(7) && is_socket(8);
    int tty = isatty(9);
    printf("READY\n");
    fflush(stdout);
    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
    write_all(2, "info outside stderr\n", "write on fd 2");
    write_all(5, "outside fd5\n", "write on fd 5");
    read_line(6, "outside fd6\n");
    if (sockets) {
        write_all(7, "outside fd7\n", "write on fd 7 (unix socket)");
        write_all(8, "outside fd8\n", "write on fd 8 (TCP connection)");
        read_line(7, "reply fd7\n");
        read_line(8, "reply fd8\n");
    }
    if (tty) {
        if (!isatty(9))
            fail("fd 9 is no terminal after the restart");
        write_all(9, "outside fd9\n", "write on fd 9 (terminal)");
    }
    printf("PASS outside\n");
    fflush(stdout);
    return 0;
}
