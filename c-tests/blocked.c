/*
 * blocked.c - threads blocked in system calls while checkpoints (and a signal storm) hit
 * (issue 13, load). Every call must come back as if no checkpoint had happened: never EINTR,
 * no byte lost, duplicated or reordered, sleeps never short.
 *
 * Build: gcc -O2 -Wall -pthread -o blocked blocked.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./blocked
 *
 * One worker thread per call, each blocked in it most of the time, each with a partner thread
 * that wakes it now and then (every 1-5 ms) with numbered data:
 *   read         a pipe; the partner writes one 8-byte sequence number at a time
 *   write        64 KiB blocks of a numbered pattern into a pipe kept full; the partner drains
 *                it slowly and checks every byte (partial writes are continued, as a program
 *                must)
 *   poll         poll(-1) on a pipe, then read the numbered byte
 *   epoll_wait   epoll_wait(-1) on a pipe, then read the numbered byte
 *   futex        FUTEX_WAIT on a word the partner increments and wakes
 *   accept       a unix listener; the partner connects, sends a number and waits for it
 *                back (a connection lost in the listener's backlog at a restart is made
 *                again: "info accept reconnects N")
 *   waitpid      a forked child sleeps 10 ms and exits with a numbered status
 *   nanosleep    2 ms sleeps: each must last at least 2 ms (CLOCK_MONOTONIC)
 *   flock        LOCK_EX on a file the partner holds locked through another open file
 *                description for 2 ms at a time
 * SIGUSR1 and SIGUSR2 (the storm another process sends) are blocked in all of these threads;
 * the main thread takes them (an SA_RESTART handler counting them) so only the checkpoint
 * signal interrupts the calls above. Any EINTR, short sleep or wrong number is counted as a
 * failure for that call.
 * After GO: every worker finishes its current call, the counts are printed on stderr
 * ("info CALL: N calls"), each call must have completed at least once since READY and no
 * failure may have happened: "PASS blocked". SIGUSR1s received are printed as
 * "info signals N".
 * SIGRTMIN+1 is part of the storm too, queued (sigqueue) with a sequence number in si_value
 * (1, 2, 3, ...; a restored program's storm starts again at 1000000000): each number must arrive
 * exactly once, and none below the highest seen may be missing (in each of the two ranges) -
 * any duplicate, missing, foreign or out-of-order number is a failure ("rt": a checkpoint takes
 * the queued signals out and queues them again; one arriving meanwhile must not get ahead of
 * them). Printed as "info rt signals N, out of order K".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { READ, WRITE, POLL, EPOLL, FUTEX, ACCEPT, WAITPID, NANOSLEEP, FLOCK, NCALLS };
static const char *names[NCALLS] = {"read",  "write",   "poll",      "epoll_wait", "futex",
                                    "accept", "waitpid", "nanosleep", "flock"};
static atomic_long done_calls[NCALLS], failures[NCALLS];
static char first_failure[256];
static atomic_int stop, finished[NCALLS];
static atomic_long signals_seen;
#define RT_RESTART_BASE 1000000000L
#define RT_SPAN (1L << 20)
/* Numbers seen, below and from RT_RESTART_BASE; one past the highest seen in each. */
static unsigned char rt_bits[2][RT_SPAN / 8];
static long rt_top[2];
static atomic_long rt_seen, rt_expect = 1, rt_reordered, rt_dup, rt_foreign;

static void failure(int call, const char *what, long a, long b)
{
    if (atomic_fetch_add(&failures[call], 1) == 0)
        snprintf(first_failure, sizeof first_failure, "%s: %s (%ld, %ld)", names[call], what, a,
                 b);
}

static void fail(const char *what)
{
    printf("FAIL blocked: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL blocked: %s (errno %d)\n", what, errno);
    exit(1);
}

static void pause_ms(int ms)
{
    struct timespec t = {0, ms * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

/* Reads exactly n bytes (the partner side; EINTR there is not under test but counted too). */
static int read_full(int fd, void *buf, size_t n, int call)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            failure(call, "EINTR in the partner's read", 0, 0);
            continue;
        }
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n, int call)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, (const char *)buf + put, n - put);
        if (r < 0 && errno == EINTR) {
            failure(call, "EINTR in write", 0, 0);
            continue;
        }
        if (r <= 0)
            return -1;
        put += (size_t)r;
    }
    return 0;
}

/* ---- read: one 8-byte number at a time ---- */
static int rd_pipe[2];
static void *read_worker(void *arg)
{
    (void)arg;
    for (uint64_t want = 0;; want++) {
        uint64_t v;
        ssize_t r = read(rd_pipe[0], &v, sizeof v);
        if (r < 0 && errno == EINTR) {
            failure(READ, "EINTR", 0, 0);
            want--;
            continue;
        }
        if (r != sizeof v) {
            failure(READ, "short read", r, errno);
            break;
        }
        if (v == UINT64_MAX)
            break;
        if (v != want)
            failure(READ, "wrong number", (long)v, (long)want);
        atomic_fetch_add(&done_calls[READ], 1);
    }
    atomic_store(&finished[READ], 1);
    return NULL;
}
static void *read_partner(void *arg)
{
    (void)arg;
    uint64_t n = 0;
    while (!atomic_load(&stop)) {
        write_full(rd_pipe[1], &n, sizeof n, READ);
        n++;
        pause_ms(2);
    }
    n = UINT64_MAX;
    write_full(rd_pipe[1], &n, sizeof n, READ);
    return NULL;
}

/* ---- write: 64 KiB blocks into a full pipe ---- */
static int wr_pipe[2];
#define BLOCK 65536
static void *write_worker(void *arg)
{
    (void)arg;
    static unsigned char buf[BLOCK];
    for (uint32_t blk = 0; !atomic_load(&stop); blk++) {
        for (size_t i = 0; i < BLOCK; i++)
            buf[i] = (unsigned char)(blk * 131 + i);
        if (write_full(wr_pipe[1], buf, BLOCK, WRITE) != 0) {
            failure(WRITE, "write failed", errno, 0);
            break;
        }
        atomic_fetch_add(&done_calls[WRITE], 1);
    }
    close(wr_pipe[1]);
    atomic_store(&finished[WRITE], 1);
    return NULL;
}
static void *write_partner(void *arg)
{
    (void)arg;
    static unsigned char buf[BLOCK];
    for (uint32_t blk = 0;; blk++) {
        /* Drain slowly (4 KiB per ms): the writer stays blocked on the full pipe. */
        size_t got = 0;
        while (got < BLOCK) {
            ssize_t r = read(wr_pipe[0], buf + got, 4096 < BLOCK - got ? 4096 : BLOCK - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                if (got != 0)
                    failure(WRITE, "partial block at end", (long)got, blk);
                return NULL;
            }
            got += (size_t)r;
            if (!atomic_load(&stop))
                pause_ms(1);
        }
        for (size_t i = 0; i < BLOCK; i++)
            if (buf[i] != (unsigned char)(blk * 131 + i)) {
                failure(WRITE, "wrong byte", (long)blk, (long)i);
                break;
            }
    }
}

/* ---- poll and epoll_wait: one numbered byte at a time ---- */
static int poll_pipe[2], epoll_pipe[2], epfd;
static void *poll_worker(void *arg)
{
    int ep = arg != NULL, call = ep ? EPOLL : POLL, fd = ep ? epoll_pipe[0] : poll_pipe[0];
    for (unsigned char want = 0;;) {
        int r;
        if (ep) {
            struct epoll_event ev;
            r = epoll_wait(epfd, &ev, 1, -1);
        } else {
            struct pollfd p = {fd, POLLIN, 0};
            r = poll(&p, 1, -1);
        }
        if (r < 0 && errno == EINTR) {
            failure(call, "EINTR", 0, 0);
            continue;
        }
        if (r != 1) {
            failure(call, "no event", r, errno);
            break;
        }
        unsigned char b;
        if (read(fd, &b, 1) != 1) {
            failure(call, "read after the event", errno, 0);
            break;
        }
        if (b == 0xff && atomic_load(&stop))
            break;
        if (b != want)
            failure(call, "wrong byte", b, want);
        want = (unsigned char)((want + 1) % 0xff);
        atomic_fetch_add(&done_calls[call], 1);
    }
    atomic_store(&finished[call], 1);
    return NULL;
}
static void *poll_partner(void *arg)
{
    int ep = arg != NULL, wfd = ep ? epoll_pipe[1] : poll_pipe[1];
    for (unsigned char n = 0; !atomic_load(&stop); n = (unsigned char)((n + 1) % 0xff)) {
        write_full(wfd, &n, 1, ep ? EPOLL : POLL);
        pause_ms(3);
    }
    unsigned char end = 0xff;
    write_full(wfd, &end, 1, ep ? EPOLL : POLL);
    return NULL;
}

/* ---- futex ---- */
static atomic_int fword;
static long sys_futex(atomic_int *addr, int op, int val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}
static void *futex_worker(void *arg)
{
    (void)arg;
    int seen = atomic_load(&fword);
    while (!atomic_load(&stop)) {
        long r = sys_futex(&fword, FUTEX_WAIT_PRIVATE, seen);
        if (r < 0 && errno == EINTR) {
            failure(FUTEX, "EINTR", 0, 0);
            continue;
        }
        if (r < 0 && errno != EAGAIN) {
            failure(FUTEX, "futex wait", errno, 0);
            break;
        }
        int now = atomic_load(&fword);
        if (now != seen)
            atomic_fetch_add(&done_calls[FUTEX], 1);
        seen = now;
    }
    atomic_store(&finished[FUTEX], 1);
    return NULL;
}
static void *futex_partner(void *arg)
{
    (void)arg;
    while (!atomic_load(&finished[FUTEX])) {
        pause_ms(2);
        atomic_fetch_add(&fword, 1);
        sys_futex(&fword, FUTEX_WAKE_PRIVATE, 1);
    }
    return NULL;
}

/* ---- accept ---- */
/* Each connection carries one number, and the worker answers with it once counted; the partner
 * connects again with the same number when a connection ends without that answer. That is what
 * a client must do: a restart loses the connections still waiting in the listener's backlog
 * (connected, written, not yet accepted: nothing outside the kernel holds their bytes), and the
 * partner sees end of file instead of the answer (counted as a reconnect, printed). */
static int listener;
static struct sockaddr_un laddr;
static atomic_long reconnects;
static void *accept_worker(void *arg)
{
    (void)arg;
    for (uint32_t want = 0;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0 && errno == EINTR) {
            failure(ACCEPT, "EINTR", 0, 0);
            continue;
        }
        if (c < 0) {
            failure(ACCEPT, "accept", errno, 0);
            break;
        }
        uint32_t v;
        int r = read_full(c, &v, sizeof v, ACCEPT);
        if (r != 0) {
            /* Counted, and go on: the partner connects again (breaking here would leave it
             * waiting for an answer for ever, and the program would hang instead of failing). */
            failure(ACCEPT, "no number from the connection", errno, 0);
            close(c);
            continue;
        }
        if (v == UINT32_MAX) {
            close(c);
            break;
        }
        if (v != want)
            failure(ACCEPT, "wrong number", v, want);
        want = v + 1;
        atomic_fetch_add(&done_calls[ACCEPT], 1);
        if (send(c, &v, sizeof v, MSG_NOSIGNAL) != (ssize_t)sizeof v)
            failure(ACCEPT, "answer", errno, 0);
        close(c);
    }
    atomic_store(&finished[ACCEPT], 1);
    return NULL;
}
static void *accept_partner(void *arg)
{
    (void)arg;
    for (uint32_t n = 0;;) {
        int last = atomic_load(&stop);
        uint32_t v = last ? UINT32_MAX : n;
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int r;
        while ((r = connect(s, (struct sockaddr *)&laddr, sizeof laddr)) != 0 && errno == EINTR)
            ;
        if (r != 0) {
            failure(ACCEPT, "connect", errno, 0);
            close(s);
            return NULL;
        }
        write_full(s, &v, sizeof v, ACCEPT);
        if (last) {
            close(s);
            return NULL;
        }
        uint32_t ack;
        ssize_t got;
        while ((got = read(s, &ack, sizeof ack)) < 0 && errno == EINTR)
            failure(ACCEPT, "EINTR in the partner's read", 0, 0);
        close(s);
        if (got == 0 || (got < 0 && errno == ECONNRESET)) {
            atomic_fetch_add(&reconnects, 1); /* lost before it was accepted: again */
            continue;
        }
        if (got != (ssize_t)sizeof ack || ack != v)
            failure(ACCEPT, "wrong answer", (long)got, (long)ack);
        n++;
        pause_ms(3);
    }
}

/* ---- waitpid ---- */
static void *waitpid_worker(void *arg)
{
    (void)arg;
    for (int n = 0; !atomic_load(&stop); n++) {
        pid_t c = fork();
        if (c < 0) {
            failure(WAITPID, "fork", errno, 0);
            break;
        }
        if (c == 0) {
            struct timespec t = {0, 10000000L};
            nanosleep(&t, NULL);
            _exit(n % 100);
        }
        int st;
        pid_t r;
        while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR)
            failure(WAITPID, "EINTR", 0, 0);
        if (r != c) {
            failure(WAITPID, "waitpid", r, errno);
            break;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != n % 100)
            failure(WAITPID, "wrong status", st, n % 100);
        atomic_fetch_add(&done_calls[WAITPID], 1);
    }
    atomic_store(&finished[WAITPID], 1);
    return NULL;
}

/* ---- nanosleep ---- */
static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}
static void *nanosleep_worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        struct timespec t = {0, 2000000L};
        long t0 = now_ns();
        int r = nanosleep(&t, &t);
        long slept = now_ns() - t0;
        if (r != 0 && errno == EINTR)
            failure(NANOSLEEP, "EINTR", (long)t.tv_nsec, 0);
        else if (r != 0)
            failure(NANOSLEEP, "nanosleep", errno, 0);
        else if (slept < 2000000L)
            failure(NANOSLEEP, "slept too short (ns)", slept, 2000000L);
        atomic_fetch_add(&done_calls[NANOSLEEP], 1);
    }
    atomic_store(&finished[NANOSLEEP], 1);
    return NULL;
}

/* ---- flock ---- */
static char lockpath[4096];
static void *flock_worker(void *arg)
{
    (void)arg;
    int fd = open(lockpath, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("open lock file");
    while (!atomic_load(&stop)) {
        int r = flock(fd, LOCK_EX);
        if (r != 0 && errno == EINTR) {
            failure(FLOCK, "EINTR", 0, 0);
            continue;
        }
        if (r != 0) {
            failure(FLOCK, "flock", errno, 0);
            break;
        }
        flock(fd, LOCK_UN);
        atomic_fetch_add(&done_calls[FLOCK], 1);
        pause_ms(1);
    }
    close(fd);
    atomic_store(&finished[FLOCK], 1);
    return NULL;
}
static void *flock_partner(void *arg)
{
    (void)arg;
    int fd = open(lockpath, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("open lock file");
    while (!atomic_load(&finished[FLOCK])) {
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
            ;
        pause_ms(2);
        flock(fd, LOCK_UN);
        pause_ms(1);
    }
    close(fd);
    return NULL;
}

static void on_storm(int sig)
{
    (void)sig;
    atomic_fetch_add(&signals_seen, 1);
}

/* The main thread only (the others block it): no two of these run at once. */
static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    long v = si->si_value.sival_int, want = atomic_load(&rt_expect);
    atomic_fetch_add(&rt_seen, 1);
    int r = v >= RT_RESTART_BASE;
    long i = v - (r ? RT_RESTART_BASE : 1);
    if (i < 0 || i >= RT_SPAN) {
        atomic_fetch_add(&rt_foreign, 1);
        return;
    }
    if (rt_bits[r][i / 8] & (1 << (i % 8)))
        atomic_fetch_add(&rt_dup, 1);
    rt_bits[r][i / 8] |= 1 << (i % 8);
    if (i + 1 > rt_top[r])
        rt_top[r] = i + 1;
    if (v != want && !(v == RT_RESTART_BASE && want < RT_RESTART_BASE))
        atomic_fetch_add(&rt_reordered, 1);
    atomic_store(&rt_expect, v + 1);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO"), *dir = getenv("CR_TEST_DIR");
    if (!go || !dir)
        fail("CR_TEST_GO or CR_TEST_DIR not set");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_storm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = NULL;
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    /* Every thread created below blocks the storm; main unblocks it afterwards. */
    sigset_t storm;
    sigemptyset(&storm);
    sigaddset(&storm, SIGUSR1);
    sigaddset(&storm, SIGUSR2);
    sigaddset(&storm, SIGRTMIN + 1);
    pthread_sigmask(SIG_BLOCK, &storm, NULL);

    if (pipe2(rd_pipe, O_CLOEXEC) || pipe2(wr_pipe, O_CLOEXEC) || pipe2(poll_pipe, O_CLOEXEC) ||
        pipe2(epoll_pipe, O_CLOEXEC))
        fail("pipe");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = epoll_pipe[0]};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, epoll_pipe[0], &ev) != 0)
        fail("epoll");
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    laddr.sun_family = AF_UNIX;
    /* Abstract name: nothing to clean up, unique per process (restored ones re-bind it). */
    snprintf(laddr.sun_path + 1, sizeof laddr.sun_path - 1, "blocked-%d", (int)getpid());
    if (listener < 0 || bind(listener, (struct sockaddr *)&laddr, sizeof laddr) != 0 ||
        listen(listener, 16) != 0)
        fail("listener");
    snprintf(lockpath, sizeof lockpath, "%s/blocked.lock", dir);
    int lfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0)
        fail("create lock file");
    close(lfd);

    pthread_t th[32];
    int n = 0;
    void *(*workers[])(void *) = {read_worker,  read_partner,   write_worker,   write_partner,
                                  poll_worker,  poll_partner,   futex_worker,   futex_partner,
                                  accept_worker, accept_partner, waitpid_worker, nanosleep_worker,
                                  flock_worker, flock_partner};
    for (size_t i = 0; i < sizeof workers / sizeof workers[0]; i++)
        if (pthread_create(&th[n++], NULL, workers[i], NULL) != 0)
            fail("pthread_create");
    if (pthread_create(&th[n++], NULL, poll_worker, (void *)1) != 0 ||
        pthread_create(&th[n++], NULL, poll_partner, (void *)1) != 0)
        fail("pthread_create");
    pthread_sigmask(SIG_UNBLOCK, &storm, NULL);
    /* Every call completed once before READY. */
    for (int i = 0; i < NCALLS; i++)
        while (atomic_load(&done_calls[i]) == 0)
            pause_ms(1);
    long at_ready[NCALLS];
    for (int i = 0; i < NCALLS; i++)
        at_ready[i] = atomic_load(&done_calls[i]);
    printf("READY\n");
    fflush(stdout);

    while (access(go, F_OK) != 0)
        pause_ms(1);
    atomic_store(&stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    int bad = 0;
    for (int i = 0; i < NCALLS; i++) {
        long d = atomic_load(&done_calls[i]);
        fprintf(stderr, "info %s: %ld calls, %ld failures\n", names[i], d,
                atomic_load(&failures[i]));
        if (atomic_load(&failures[i]))
            bad = 1;
        if (d <= at_ready[i]) {
            printf("FAIL blocked: %s never completed after READY\n", names[i]);
            return 1;
        }
    }
    fprintf(stderr, "info signals %ld\n", atomic_load(&signals_seen));
    long missing = 0, first_missing = -1;
    for (int r = 0; r < 2; r++)
        for (long i = 0; i < rt_top[r]; i++)
            if (!(rt_bits[r][i / 8] & (1 << (i % 8)))) {
                if (!missing++)
                    first_missing = i + (r ? RT_RESTART_BASE : 1);
            }
    fprintf(stderr, "info rt signals %ld, out of order %ld\n", atomic_load(&rt_seen),
            atomic_load(&rt_reordered));
    if (missing || atomic_load(&rt_dup) || atomic_load(&rt_foreign) ||
        atomic_load(&rt_reordered)) {
        if (!bad)
            snprintf(first_failure, sizeof first_failure,
                     "rt: %ld queued signals missing (the first %ld), %ld repeated, %ld foreign, "
                     "%ld out of order",
                     missing, first_missing, atomic_load(&rt_dup), atomic_load(&rt_foreign),
                     atomic_load(&rt_reordered));
        bad = 1;
    }
    fprintf(stderr, "info accept reconnects %ld\n", atomic_load(&reconnects));
    if (bad) {
        printf("FAIL blocked: %s\n", first_failure);
        fprintf(stderr, "FAIL blocked: %s\n", first_failure);
        return 1;
    }
    printf("PASS blocked\n");
    return 0;
}
