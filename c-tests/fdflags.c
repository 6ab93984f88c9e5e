/*
 * fdflags.c - file status flags across checkpoint/restart (issue 9, BLCR's filedescriptors and
 * pipe tests): O_SYNC, O_DSYNC, O_DIRECT, O_NOATIME, O_APPEND, O_NONBLOCK on files in
 * $CR_TEST_DIR (one of them unlinked), O_ASYNC with its owner (F_SETOWN) and signal (F_SETSIG)
 * on a pipe and on a FIFO, and F_SETPIPE_SZ sizes (pipe, FIFO).
 *
 * After GO every descriptor's F_GETFL (those flags), F_GETOWN, F_GETSIG and F_GETPIPE_SZ are
 * compared with what was set, and a byte written into each async pipe must raise its signal
 * with si_fd naming the read end.  O_DIRECT is skipped (with an info line) where the file
 * system refuses it at open.
 *
 * Build: gcc -O2 -Wall -o fdflags fdflags.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NAME "fdflags"
#define CHECKED (O_SYNC | O_DSYNC | O_DIRECT | O_NOATIME | O_APPEND | O_NONBLOCK | O_ASYNC | O_ACCMODE)

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", NAME, what);
    fflush(stdout);
    fprintf(stderr, "FAIL %s: %s\n", NAME, what);
    exit(1);
}

static char msg[512];
#define FAILF(...) (snprintf(msg, sizeof msg, __VA_ARGS__), fail(msg))

struct item {
    const char *what;
    int fd;
    int flags;    /* expected F_GETFL & CHECKED */
    int sig;      /* F_SETSIG, 0: none */
    int pipe_sz;  /* expected F_GETPIPE_SZ, 0: not a pipe */
    int wfd;      /* write end for the async check, -1: none */
};

static struct item items[16];
static int nitems;

static int open_file(const char *dir, const char *name, int flags, int unlink_it)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    int fd = open(path, flags | O_CREAT, 0600);
    if (fd < 0)
        return -1;
    if (unlink_it && unlink(path) != 0)
        fail("unlink");
    return fd;
}

static void add(const char *what, int fd, int flags, int sig, int pipe_sz, int wfd)
{
    items[nitems++] = (struct item){what, fd, flags & CHECKED, sig, pipe_sz, wfd};
}

static void async_pipe(const char *what, int rd, int wr, int sig, int size)
{
    if (fcntl(rd, F_SETOWN, getpid()) != 0)
        fail("F_SETOWN");
    if (sig && fcntl(rd, F_SETSIG, sig) != 0)
        fail("F_SETSIG");
    int fl = fcntl(rd, F_GETFL);
    if (fcntl(rd, F_SETFL, fl | O_ASYNC | O_NONBLOCK) != 0)
        fail("F_SETFL O_ASYNC");
    if (size && fcntl(wr, F_SETPIPE_SZ, size) < 0)
        fail("F_SETPIPE_SZ");
    add(what, rd, fcntl(rd, F_GETFL), sig, size ? fcntl(rd, F_GETPIPE_SZ) : 0, wr);
}

static void check(const struct item *it)
{
    int fl = fcntl(it->fd, F_GETFL);
    if (fl < 0)
        FAILF("%s (fd %d) is not open", it->what, it->fd);
    if ((fl & CHECKED) != it->flags)
        FAILF("%s (fd %d): status flags %#o, expected %#o (lost %#o, gained %#o)", it->what, it->fd,
              fl & CHECKED, it->flags, it->flags & ~fl & CHECKED, fl & CHECKED & ~it->flags);
    if (it->flags & O_ASYNC) {
        int own = fcntl(it->fd, F_GETOWN);
        if (own != getpid())
            FAILF("%s (fd %d): owner %d, expected this process (%d)", it->what, it->fd, own, getpid());
        int sig = fcntl(it->fd, F_GETSIG);
        if (sig != it->sig)
            FAILF("%s (fd %d): F_GETSIG %d, expected %d", it->what, it->fd, sig, it->sig);
    }
    if (it->pipe_sz) {
        int sz = fcntl(it->fd, F_GETPIPE_SZ);
        if (sz != it->pipe_sz)
            FAILF("%s (fd %d): pipe size %d, expected %d", it->what, it->fd, sz, it->pipe_sz);
    }
    if (it->wfd >= 0) {
        /* The signal must come for a byte written now, naming the read end. */
        int sig = it->sig ? it->sig : SIGIO;
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        siginfo_t si;
        struct timespec zero = {0, 0};
        while (sigtimedwait(&set, &si, &zero) > 0) {
        }
        if (write(it->wfd, "x", 1) != 1)
            FAILF("%s: write", it->what);
        struct timespec two = {2, 0};
        if (sigtimedwait(&set, &si, &two) != sig)
            FAILF("%s (fd %d): no signal %d for a byte written into it", it->what, it->fd, sig);
        if (it->sig && si.si_fd != it->fd)
            FAILF("%s: signal %d names fd %d, expected %d", it->what, sig, si.si_fd, it->fd);
        char c;
        if (read(it->fd, &c, 1) != 1 || c != 'x')
            FAILF("%s: the byte did not arrive", it->what);
    }
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *dir = getenv("CR_TEST_DIR");
    if (!go || !dir)
        fail("CR_TEST_GO and CR_TEST_DIR must be set");
    /* Async signals stay pending until checked (a blocked SIGIO/RT signal is queued). */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGIO);
    sigaddset(&block, SIGRTMIN + 3);
    sigaddset(&block, SIGRTMIN + 4);
    sigprocmask(SIG_BLOCK, &block, NULL);

    struct { const char *name; int flags; int unlink_it; } files[] = {
        {"sync.dat", O_WRONLY | O_SYNC, 0},
        {"dsync.dat", O_RDWR | O_DSYNC, 0},
        {"noatime.dat", O_RDONLY | O_NOATIME, 0},
        {"append.dat", O_WRONLY | O_APPEND | O_NONBLOCK, 0},
        {"direct.dat", O_RDWR | O_DIRECT, 0},
        {"unlinked.dat", O_RDWR | O_SYNC | O_APPEND, 1},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        int fd = open_file(dir, files[i].name, files[i].flags, files[i].unlink_it);
        if (fd < 0 && (files[i].flags & O_DIRECT) && errno == EINVAL) {
            fprintf(stderr, "info %s: %s: O_DIRECT refused by this file system, not checked\n", NAME, dir);
            continue;
        }
        if (fd < 0)
            FAILF("open %s: %s", files[i].name, strerror(errno));
        add(files[i].name, fd, fcntl(fd, F_GETFL), 0, 0, -1);
    }

    int p1[2], p2[2];
    if (pipe(p1) != 0 || pipe(p2) != 0)
        fail("pipe");
    async_pipe("pipe O_ASYNC, F_SETSIG SIGRTMIN+3, 128 KiB", p1[0], p1[1], SIGRTMIN + 3, 128 << 10);
    async_pipe("pipe O_ASYNC (SIGIO)", p2[0], p2[1], 0, 0);
    add("pipe write end, 128 KiB", p1[1], fcntl(p1[1], F_GETFL), 0, fcntl(p1[1], F_GETPIPE_SZ), -1);

    char fifo[4096];
    snprintf(fifo, sizeof fifo, "%s/flags.fifo", dir);
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0)
        fail("mkfifo");
    int f = open(fifo, O_RDWR);
    if (f < 0)
        fail("open FIFO");
    async_pipe("FIFO O_RDWR O_ASYNC, F_SETSIG SIGRTMIN+4, 256 KiB", f, f, SIGRTMIN + 4, 256 << 10);

    printf("READY\n");
    fflush(stdout);
    struct timespec ms = {0, 1000000};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
    for (int i = 0; i < nitems; i++)
        check(&items[i]);
    printf("PASS %s\n", NAME);
    fflush(stdout);
    return 0;
}
