/*
 * sleeper.c - blocking-syscall checkpoint/restart test.
 *
 * Build: gcc -O2 -Wall -pthread -o sleeper sleeper.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./sleeper
 *
 * Four threads sit in blocking calls:
 *   A: read() on a pipe (data written only after GO)
 *   B: poll(timeout -1) on another pipe, then read()
 *   C: pthread_cond_wait() until a flag is set after GO
 *   D: usleep(2000000) in a loop, each call must return 0 and last >= 1.99 s
 * READY is printed once all four are in (or about to enter) their blocking
 * call: each sets a flag right before it, main waits for the flags, 50 ms,
 * and until /proc/self/task/TID/stat shows A, B and C sleeping ('S').
 * Main then calls nanosleep(4 s, &rem) which must return 0 (no EINTR) with
 * >= 3.9 s of CLOCK_MONOTONIC elapsed -- THE CHECKPOINT IS EXPECTED TO HIT
 * DURING THIS NANOSLEEP.  Afterwards main polls for GO (1 ms nanosleeps,
 * each must return 0), writes to the pipes, signals the condvar, stops D,
 * joins everything and checks that no call returned -1/EINTR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what)
{
    printf("FAIL sleeper: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL sleeper: %s\n", what);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int pa[2], pb[2];
static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_value; /* protected by mtx */
static atomic_int flag_a, flag_b, flag_c, flag_d, stop_d;
static pid_t tid_a, tid_b, tid_c, tid_d;

static const char msg_a[] = "data-for-thread-A";
static const char msg_b[] = "data-for-thread-B";

struct result {
    long ret;    /* return value of the blocking call */
    int err;     /* errno if ret == -1 */
    char buf[64];
    long ret2;   /* B: read() after poll */
    int revents; /* B */
    long iters;  /* C: wakeups, D: usleep calls */
    double min_elapsed, max_elapsed; /* D */
    int bad;     /* D: count of usleep != 0 */
};
static struct result ra, rb, rc, rd;

static void *thr_a(void *arg)
{
    (void)arg;
    tid_a = gettid();
    atomic_store(&flag_a, 1);
    ra.ret = read(pa[0], ra.buf, sizeof ra.buf - 1);
    ra.err = errno;
    return NULL;
}

static void *thr_b(void *arg)
{
    (void)arg;
    struct pollfd pfd = {.fd = pb[0], .events = POLLIN};
    tid_b = gettid();
    atomic_store(&flag_b, 1);
    rb.ret = poll(&pfd, 1, -1);
    rb.err = errno;
    rb.revents = pfd.revents;
    if (rb.ret == 1)
        rb.ret2 = read(pb[0], rb.buf, sizeof rb.buf - 1);
    return NULL;
}

static void *thr_c(void *arg)
{
    (void)arg;
    tid_c = gettid();
    pthread_mutex_lock(&mtx);
    atomic_store(&flag_c, 1);
    while (cond_value == 0) {
        int e = pthread_cond_wait(&cond, &mtx);
        rc.iters++;
        if (e != 0) {
            rc.ret = -1;
            rc.err = e;
            break;
        }
    }
    snprintf(rc.buf, sizeof rc.buf, "%d", cond_value);
    pthread_mutex_unlock(&mtx);
    return NULL;
}

static void *thr_d(void *arg)
{
    (void)arg;
    tid_d = gettid();
    rd.min_elapsed = 1e9;
    while (!atomic_load(&stop_d)) {
        atomic_store(&flag_d, 1);
        double t0 = now();
        int r = usleep(2000000);
        double el = now() - t0;
        if (r != 0) {
            rd.bad++;
            rd.err = errno;
        }
        if (el < rd.min_elapsed)
            rd.min_elapsed = el;
        if (el > rd.max_elapsed)
            rd.max_elapsed = el;
        rd.iters++;
    }
    return NULL;
}

static char task_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return (p && p[1] == ' ') ? p[2] : '?';
}

static void sleep_ms_checked(long ms, const char *what)
{
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L}, rem;
    if (nanosleep(&req, &rem) != 0) {
        char m[128];
        snprintf(m, sizeof m, "nanosleep(%ld ms) %s returned -1 errno %d", ms, what, errno);
        fail(m);
    }
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    char m[200];
    if (!go)
        fail("CR_TEST_GO not set");
    if (pipe(pa) || pipe(pb))
        fail("pipe");
    pthread_t ta, tb, tc, td;
    if (pthread_create(&ta, NULL, thr_a, NULL) || pthread_create(&tb, NULL, thr_b, NULL) ||
        pthread_create(&tc, NULL, thr_c, NULL) || pthread_create(&td, NULL, thr_d, NULL))
        fail("pthread_create");
    while (!atomic_load(&flag_a) || !atomic_load(&flag_b) || !atomic_load(&flag_c) || !atomic_load(&flag_d))
        sleep_ms_checked(1, "(startup)");
    sleep_ms_checked(50, "(startup)");
    for (int i = 0; i < 2000; i++) {
        if (task_state(tid_a) == 'S' && task_state(tid_b) == 'S' && task_state(tid_c) == 'S')
            break;
        if (i == 1999)
            fail("threads A/B/C never blocked");
        sleep_ms_checked(1, "(startup)");
    }

    printf("READY\n");
    fflush(stdout);

    /* ---- the checkpoint is expected to arrive during this call ---- */
    struct timespec req = {4, 0}, rem = {0, 0};
    double t0 = now();
    int r = nanosleep(&req, &rem);
    int e = errno;
    double el = now() - t0;
    if (r != 0) {
        snprintf(m, sizeof m, "4 s nanosleep returned %d errno %d (%s), rem %ld.%09ld", r, e, strerror(e),
                 (long)rem.tv_sec, rem.tv_nsec);
        fail(m);
    }
    if (el < 3.9) {
        snprintf(m, sizeof m, "4 s nanosleep returned 0 after only %.3f s", el);
        fail(m);
    }

    while (access(go, F_OK) != 0)
        sleep_ms_checked(1, "(GO poll)");
    double t_go = now();

    if (write(pa[1], msg_a, sizeof msg_a - 1) != (ssize_t)(sizeof msg_a - 1))
        fail("write to pipe A");
    if (write(pb[1], msg_b, sizeof msg_b - 1) != (ssize_t)(sizeof msg_b - 1))
        fail("write to pipe B");
    pthread_mutex_lock(&mtx);
    cond_value = 4242;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&mtx);
    atomic_store(&stop_d, 1);

    if (pthread_join(ta, NULL) || pthread_join(tb, NULL) || pthread_join(tc, NULL) || pthread_join(td, NULL))
        fail("pthread_join");

    if (ra.ret != (long)(sizeof msg_a - 1) || strcmp(ra.buf, msg_a) != 0) {
        snprintf(m, sizeof m, "thread A read() returned %ld errno %d (%s) data '%s'", ra.ret,
                 ra.ret < 0 ? ra.err : 0, ra.ret < 0 ? strerror(ra.err) : "-", ra.buf);
        fail(m);
    }
    if (rb.ret != 1 || !(rb.revents & POLLIN)) {
        snprintf(m, sizeof m, "thread B poll() returned %ld errno %d (%s) revents 0x%x", rb.ret,
                 rb.ret < 0 ? rb.err : 0, rb.ret < 0 ? strerror(rb.err) : "-", rb.revents);
        fail(m);
    }
    if (rb.ret2 != (long)(sizeof msg_b - 1) || strcmp(rb.buf, msg_b) != 0)
        fail("thread B read after poll");
    if (rc.ret != 0 || strcmp(rc.buf, "4242") != 0) {
        snprintf(m, sizeof m, "thread C pthread_cond_wait error %d value '%s'", rc.err, rc.buf);
        fail(m);
    }
    if (rd.bad) {
        snprintf(m, sizeof m, "thread D usleep returned -1 %d times (errno %d %s)", rd.bad, rd.err,
                 strerror(rd.err));
        fail(m);
    }
    if (rd.min_elapsed < 1.99) {
        snprintf(m, sizeof m, "thread D usleep(2 s) returned after %.3f s", rd.min_elapsed);
        fail(m);
    }
    if (rd.iters < 1) /* the usleep in progress at GO always completes */
        fail("thread D completed no usleep call");
    fprintf(stderr,
            "info sleeper: main slept %.3f s, D did %ld usleeps (%.3f..%.3f s), C woke %ld times, shutdown %.3f s\n",
            el, rd.iters, rd.min_elapsed, rd.max_elapsed, rc.iters, now() - t_go);
    printf("PASS sleeper\n");
    fflush(stdout);
    return 0;
}
