/*
 * pending.c - pending signals across checkpoint/restart.
 *
 * Build: gcc -O2 -Wall -pthread -o pending pending.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./pending
 *
 * SIGUSR1, SIGUSR2, SIGCHLD, SIGRTMIN+1 and SIGRTMIN+2 are blocked in every thread. Before READY:
 *   process-wide: a child sends SIGUSR1 with kill() (SI_USER) and SIGRTMIN+1 three times with
 *     sigqueue() (values 100, 101, 102), then exits with status 7 (SIGCHLD, CLD_EXITED; reaped);
 *   main thread: SIGUSR2 raised twice (standard signals coalesce: one instance, SI_TKILL);
 *   second thread: SIGUSR1 (tgkill from main) and, with pthread_sigqueue, SIGRTMIN+1 twice
 *     (200, 201) and SIGRTMIN+2 three times (1, 2, 3).
 * The pending sets (/proc/thread-self/status SigPnd = private, ShdPnd = shared) are checked
 * before READY and after GO; after GO each thread takes every signal with a zero-timeout
 * rt_sigtimedwait (the system call: glibc's sigtimedwait reports SI_TKILL as SI_USER) (private
 * ones first, the second thread before main) and compares signal,
 * si_code, si_pid, si_uid, si_value and si_status, in order; then nothing is left.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "pending"
#include "fail.h"

static pid_t self, child;
static uid_t uid;
static atomic_int phase; /* 1 thread set up, 2 thread checks, 3 thread done */
static pthread_t th;

static uint64_t bit(int sig) { return 1ull << (sig - 1); }

/* SigPnd (private) or ShdPnd (shared) of the calling thread. */
static uint64_t pnd(const char *field)
{
    char buf[4096], *p;
    FILE *f = fopen("/proc/thread-self/status", "r");
    if (!f)
        fail("open /proc/thread-self/status");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (!(p = strstr(buf, field)))
        failf("no %s in status", field);
    return strtoull(p + strlen(field) + 1, NULL, 16);
}

static void expect_sets(const char *who, uint64_t priv, uint64_t shd)
{
    uint64_t p = pnd("SigPnd:"), s = pnd("ShdPnd:");
    if (p != priv || s != shd)
        failf("%s: pending private %#llx shared %#llx, expected %#llx %#llx", who,
              (unsigned long long)p, (unsigned long long)s, (unsigned long long)priv,
              (unsigned long long)shd);
}

/* Takes one instance of sig; compares it (value/status -1: not compared). */
static void take(const char *who, int sig, int code, pid_t pid, int value, int status)
{
    sigset_t s;
    siginfo_t si;
    struct timespec zero = {0, 0};
    sigemptyset(&s);
    sigaddset(&s, sig);
    memset(&si, 0, sizeof si);
    int r = (int)syscall(SYS_rt_sigtimedwait, &s, &si, &zero, 8);
    if (r != sig)
        failf("%s: signal %d (value %d) is not pending (sigtimedwait %d)", who, sig, value, r);
    if (si.si_code != code || si.si_pid != pid || si.si_uid != uid ||
        (value >= 0 && si.si_value.sival_int != value) || (status >= 0 && si.si_status != status))
        failf("%s: signal %d: code %d pid %d uid %d value %d status %d, expected %d %d %d %d %d",
              who, sig, si.si_code, (int)si.si_pid, (int)si.si_uid, si.si_value.sival_int,
              si.si_status, code, (int)pid, (int)uid, value, status);
}

static void *thread_main(void *arg)
{
    (void)arg;
    union sigval v;
    for (int i = 0; i < 2; i++) {
        v.sival_int = 200 + i;
        pthread_sigqueue(pthread_self(), SIGRTMIN + 1, v);
    }
    for (int i = 1; i <= 3; i++) {
        v.sival_int = i;
        pthread_sigqueue(pthread_self(), SIGRTMIN + 2, v);
    }
    atomic_store(&phase, 1);
    while (atomic_load(&phase) != 2)
        usleep(500);
    expect_sets("thread", bit(SIGUSR1) | bit(SIGRTMIN + 1) | bit(SIGRTMIN + 2),
                bit(SIGUSR1) | bit(SIGCHLD) | bit(SIGRTMIN + 1));
    take("thread", SIGUSR1, SI_TKILL, self, -1, -1);
    take("thread", SIGRTMIN + 1, SI_QUEUE, self, 200, -1);
    take("thread", SIGRTMIN + 1, SI_QUEUE, self, 201, -1);
    for (int i = 1; i <= 3; i++)
        take("thread", SIGRTMIN + 2, SI_QUEUE, self, i, -1);
    expect_sets("thread after taking its own", 0, bit(SIGUSR1) | bit(SIGCHLD) | bit(SIGRTMIN + 1));
    atomic_store(&phase, 3);
    return NULL;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    self = getpid();
    uid = getuid();
    sigset_t s;
    sigemptyset(&s);
    for (int sig = 1; sig < 65; sig++)
        if (sig == SIGUSR1 || sig == SIGUSR2 || sig == SIGCHLD || sig == SIGRTMIN + 1 || sig == SIGRTMIN + 2)
            sigaddset(&s, sig);
    if (pthread_sigmask(SIG_BLOCK, &s, NULL) != 0)
        fail("pthread_sigmask");
    if (pthread_create(&th, NULL, thread_main, NULL) != 0)
        fail("pthread_create");
    while (atomic_load(&phase) != 1)
        usleep(100);
    pthread_kill(th, SIGUSR1);
    raise(SIGUSR2);
    raise(SIGUSR2);
    if ((child = fork()) == 0) {
        union sigval v;
        kill(getppid(), SIGUSR1);
        for (int i = 0; i < 3; i++) {
            v.sival_int = 100 + i;
            sigqueue(getppid(), SIGRTMIN + 1, v);
        }
        _exit(7);
    }
    int st;
    if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 7)
        fail("child");
    const uint64_t shared = bit(SIGUSR1) | bit(SIGCHLD) | bit(SIGRTMIN + 1);
    expect_sets("main before READY", bit(SIGUSR2), shared);
    printf("READY\n");

    while (access(go, F_OK) != 0)
        usleep(1000);

    expect_sets("main after GO", bit(SIGUSR2), shared);
    atomic_store(&phase, 2);
    pthread_join(th, NULL);
    if (atomic_load(&phase) != 3)
        fail("the second thread did not finish");
    take("main", SIGUSR2, SI_TKILL, self, -1, -1);
    take("main", SIGUSR1, SI_USER, child, -1, -1);
    for (int i = 0; i < 3; i++)
        take("main", SIGRTMIN + 1, SI_QUEUE, child, 100 + i, -1);
    take("main", SIGCHLD, CLD_EXITED, child, -1, 7);
    expect_sets("main at the end", 0, 0);
    printf("PASS %s\n", NAME);
    return 0;
}
