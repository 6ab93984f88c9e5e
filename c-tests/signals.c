/*
 * signals.c - signal state across checkpoint/restart.
 *
 * Build: gcc -O2 -Wall -pthread -o signals signals.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./signals
 *
 * Set up before READY:
 *   SIGUSR1    SA_SIGINFO handler, SA_RESTART|SA_ONSTACK, sa_mask {SIGUSR2}
 *   SIGALRM    plain handler, no flags
 *   SIGINT     plain handler, SA_RESETHAND|SA_NODEFER, sa_mask {SIGQUIT, SIGRTMIN+2}
 *   SIGRTMIN+3 SA_SIGINFO handler, sa_mask {SIGTERM}
 *   SIGRTMAX   (63 under cr_run: the agent reserves 64) SA_SIGINFO handler
 *   SIGPIPE, SIGQUIT ignored
 *   main thread: SIGUSR2 blocked, a malloc'd 64 KiB sigaltstack
 *   a second thread: SIGHUP blocked, its own 32 KiB sigaltstack
 *   ITIMER_REAL 30 s (interval 7 s), ITIMER_VIRTUAL 1000 s
 * SIGUSR1 is raised once before READY (and once per thread after GO) to
 * check the handler runs on the alternate stack with the right siginfo and
 * with SIGUSR2 added to its mask.  Under cr_run SIGRTMAX must be 63 and a
 * sigfillset() mask must not block signal 64 (the agent's).
 * Work loop: spins until GO.  After GO: every disposition read back with
 * sigaction(sig, NULL, &old) (handler, flags, mask), SIGPIPE ignored
 * (write to a pipe without reader -> EPIPE), both threads' masks and
 * alternate stacks, the timers' time left (ITIMER_REAL in (20, 30] s,
 * interval 7 s; ITIMER_VIRTUAL in (990, 1000] s, give or take a few
 * scheduler ticks), nothing pending.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define NAME "signals"
#define MAIN_ALT (64 * 1024)
#define THR_ALT (32 * 1024)
#define CR_SIG 64

#include "fail.h"

/* ---------------- handlers ---------------- */
struct usr1_report {
    int ran;
    int signo, code;
    pid_t pid;
    uintptr_t local;   /* address of a local of the handler */
    int usr2_blocked;  /* sa_mask applied */
    int usr1_blocked;  /* the signal itself blocked (no SA_NODEFER) */
    int ss_onstack;    /* sigaltstack() said SS_ONSTACK */
};
static _Thread_local struct usr1_report usr1;
static volatile sig_atomic_t other_ran;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    volatile char here = 0;
    sigset_t cur;
    stack_t ss;
    (void)uc;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    sigaltstack(NULL, &ss);
    usr1.signo = si->si_signo == sig ? sig : -si->si_signo;
    usr1.code = si->si_code;
    usr1.pid = si->si_pid;
    usr1.local = (uintptr_t)&here;
    usr1.usr2_blocked = sigismember(&cur, SIGUSR2);
    usr1.usr1_blocked = sigismember(&cur, SIGUSR1);
    usr1.ss_onstack = !!(ss.ss_flags & SS_ONSTACK);
    usr1.ran = 1;
}

static void on_alrm(int sig)
{
    (void)sig;
    other_ran = SIGALRM;
}
static void on_int(int sig)
{
    (void)sig;
    other_ran = SIGINT;
}
static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)si;
    (void)uc;
    other_ran = sig;
}

/* Raises SIGUSR1 in the calling thread; its handler must run on [alt, alt+len). */
static void check_usr1(const char *who, const unsigned char *alt, size_t len)
{
    memset(&usr1, 0, sizeof usr1);
    if (raise(SIGUSR1) != 0)
        failf("%s: raise(SIGUSR1)", who);
    if (!usr1.ran)
        failf("%s: the SIGUSR1 handler did not run", who);
    if (usr1.signo != SIGUSR1 || usr1.code != SI_TKILL || usr1.pid != getpid())
        failf("%s: SIGUSR1 siginfo: signo %d code %d pid %d, expected %d %d %d", who, usr1.signo,
              usr1.code, (int)usr1.pid, SIGUSR1, SI_TKILL, (int)getpid());
    if (usr1.local < (uintptr_t)alt || usr1.local >= (uintptr_t)alt + len || !usr1.ss_onstack)
        failf("%s: the SA_ONSTACK handler ran at %#lx (SS_ONSTACK %d), not on the alternate stack %p-%p",
              who, (unsigned long)usr1.local, usr1.ss_onstack, (const void *)alt,
              (const void *)(alt + len));
    if (usr1.usr2_blocked != 1 || usr1.usr1_blocked != 1)
        failf("%s: mask in the SIGUSR1 handler: SIGUSR2 %d SIGUSR1 %d, expected both blocked", who,
              usr1.usr2_blocked, usr1.usr1_blocked);
}

static void check_altstack(const char *who, const void *sp, size_t len)
{
    stack_t ss;
    if (sigaltstack(NULL, &ss) != 0)
        failf("%s: sigaltstack", who);
    if (ss.ss_sp != sp || ss.ss_size != len || (ss.ss_flags & SS_DISABLE))
        failf("%s: sigaltstack is %p size %zu flags %#x, expected %p size %zu enabled", who,
              ss.ss_sp, ss.ss_size, (unsigned)ss.ss_flags, sp, len);
}

/* ---------------- second thread ---------------- */
static atomic_int thr_phase; /* 0 setting up, 1 ready, 2 go (main says), 3 done */
static unsigned char *thr_alt;
static char thr_err[256];

static void *thread_main(void *arg)
{
    (void)arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    stack_t ss = {.ss_sp = thr_alt, .ss_size = THR_ALT, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        snprintf(thr_err, sizeof thr_err, "thread: sigaltstack failed");
    atomic_store(&thr_phase, 1);
    volatile uint64_t spin = 0;
    while (atomic_load(&thr_phase) != 2) {
        spin++;
        if ((spin & 0xfff) == 0)
            usleep(200);
    }
    /* after GO: this thread's own state */
    sigset_t m;
    pthread_sigmask(SIG_BLOCK, NULL, &m);
    if (!sigismember(&m, SIGHUP))
        snprintf(thr_err, sizeof thr_err, "thread: SIGHUP is no longer blocked");
    else if (sigismember(&m, SIGUSR2) || sigismember(&m, SIGUSR1))
        snprintf(thr_err, sizeof thr_err, "thread: SIGUSR1/SIGUSR2 blocked (main thread's mask?)");
    else if (sigismember(&m, CR_SIG))
        snprintf(thr_err, sizeof thr_err, "thread: signal 64 blocked");
    else {
        stack_t cur;
        sigaltstack(NULL, &cur);
        if (cur.ss_sp != thr_alt || cur.ss_size != THR_ALT || (cur.ss_flags & SS_DISABLE))
            snprintf(thr_err, sizeof thr_err, "thread: sigaltstack is %p size %zu flags %#x, expected %p size %d",
                     cur.ss_sp, cur.ss_size, (unsigned)cur.ss_flags, (void *)thr_alt, THR_ALT);
        else {
            memset(&usr1, 0, sizeof usr1);
            raise(SIGUSR1);
            if (!usr1.ran || usr1.local < (uintptr_t)thr_alt || usr1.local >= (uintptr_t)thr_alt + THR_ALT)
                snprintf(thr_err, sizeof thr_err, "thread: SIGUSR1 handler did not run on the thread's alternate stack");
        }
    }
    atomic_store(&thr_phase, 3);
    return NULL;
}

/* ---------------- dispositions ---------------- */
static void install(int sig, void *handler, int flags, const int *mask_sigs)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    for (const int *m = mask_sigs; m && *m; m++)
        sigaddset(&sa.sa_mask, *m);
    if (flags & SA_SIGINFO)
        sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))handler;
    else
        sa.sa_handler = (void (*)(int))handler;
    sa.sa_flags = flags;
    if (sigaction(sig, &sa, NULL) != 0)
        failf("sigaction(%d): %s", sig, strerror(errno));
}

static void expect_action(const char *what, int sig, void *handler, int flags, const int *mask_sigs)
{
    struct sigaction old;
    if (sigaction(sig, NULL, &old) != 0)
        failf("%s: sigaction(%d, NULL, &old): %s", what, sig, strerror(errno));
    void *h = (old.sa_flags & SA_SIGINFO) ? (void *)old.sa_sigaction : (void *)old.sa_handler;
    if (h != handler)
        failf("%s: handler %p, expected %p", what, h, handler);
    const int interesting = SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER | SA_RESETHAND | SA_NOCLDSTOP;
    if ((old.sa_flags & interesting) != flags)
        failf("%s: sa_flags %#x, expected %#x", what, (unsigned)(old.sa_flags & interesting), (unsigned)flags);
    for (int s = 1; s < 65; s++) {
        int want = 0;
        for (const int *m = mask_sigs; m && *m; m++)
            want |= *m == s;
        if (sigismember(&old.sa_mask, s) == 1 && !want)
            failf("%s: sa_mask contains signal %d", what, s);
        if (want && sigismember(&old.sa_mask, s) != 1)
            failf("%s: sa_mask lacks signal %d", what, s);
    }
}

static double tv_sec(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* sigfillset + SIG_BLOCK must not block signal 64 (the agent's interposition); then undo. */
static void check_fill_block(const char *when)
{
    sigset_t all, old, now;
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, &old) != 0)
        failf("%s: sigprocmask(SIG_BLOCK, all)", when);
    sigprocmask(SIG_BLOCK, NULL, &now);
    int blocked64 = sigismember(&now, CR_SIG);
    int blocked_usr1 = sigismember(&now, SIGUSR1);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (blocked64 != 0)
        failf("%s: sigprocmask(SIG_BLOCK, sigfillset) blocked signal 64 (sigismember %d)", when, blocked64);
    if (blocked_usr1 != 1)
        failf("%s: sigprocmask(SIG_BLOCK, sigfillset) did not block SIGUSR1", when);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (SIGRTMAX != 63)
        failf("SIGRTMAX is %d, expected 63 under cr_run (signal 64 is the agent's)", SIGRTMAX);

    static const int m_usr1[] = {SIGUSR2, 0};
    static const int m_rt[] = {SIGTERM, 0};
    int m_int2[] = {SIGQUIT, SIGRTMIN + 2, 0};
    const int rt3 = SIGRTMIN + 3, rtmax = SIGRTMAX;
    const int F_USR1 = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    const int F_INT = SA_RESETHAND | SA_NODEFER;
    install(SIGUSR1, (void *)on_usr1, F_USR1, m_usr1);
    install(SIGALRM, (void *)on_alrm, 0, NULL);
    install(SIGINT, (void *)on_int, F_INT, m_int2);
    install(rt3, (void *)on_rt, SA_SIGINFO, m_rt);
    install(rtmax, (void *)on_rt, SA_SIGINFO | SA_RESTART, NULL);
    install(SIGPIPE, (void *)SIG_IGN, 0, NULL);
    install(SIGQUIT, (void *)SIG_IGN, 0, NULL);

    /* alternate stacks */
    unsigned char *alt = malloc(MAIN_ALT);
    thr_alt = malloc(THR_ALT);
    if (!alt || !thr_alt)
        fail("malloc");
    stack_t ss = {.ss_sp = alt, .ss_size = MAIN_ALT, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        fail("sigaltstack");

    /* the second thread (created before SIGUSR2 is blocked: it must not inherit it) */
    pthread_t th;
    if (pthread_create(&th, NULL, thread_main, NULL) != 0)
        fail("pthread_create");
    while (atomic_load(&thr_phase) != 1)
        usleep(100);
    if (thr_err[0])
        fail(thr_err);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    if (pthread_sigmask(SIG_BLOCK, &s, NULL) != 0)
        fail("pthread_sigmask");

    /* timers */
    struct itimerval real = {.it_interval = {7, 0}, .it_value = {30, 0}};
    struct itimerval virt = {.it_interval = {0, 0}, .it_value = {1000, 0}};
    if (setitimer(ITIMER_REAL, &real, NULL) != 0 || setitimer(ITIMER_VIRTUAL, &virt, NULL) != 0)
        fail("setitimer");

    /* the setup works before any checkpoint */
    check_usr1("before READY", alt, MAIN_ALT);
    check_fill_block("before READY");

    printf("READY\n");
    fflush(stdout);

    volatile uint64_t spin = 0;
    while (access(go, F_OK) != 0) {
        for (int k = 0; k < 100000; k++)
            spin++;
    }
    fprintf(stderr, "info %s: %llu spins\n", NAME, (unsigned long long)spin);

    /* ---------------- verification ---------------- */
    struct itimerval r, v;
    if (getitimer(ITIMER_REAL, &r) != 0 || getitimer(ITIMER_VIRTUAL, &v) != 0)
        fail("getitimer");
    fprintf(stderr, "info %s: ITIMER_REAL %.3f s left (interval %.3f), ITIMER_VIRTUAL %.3f s left\n",
            NAME, tv_sec(r.it_value), tv_sec(r.it_interval), tv_sec(v.it_value));
    if (!(tv_sec(r.it_value) > 20.0 && tv_sec(r.it_value) <= 30.0))
        failf("ITIMER_REAL has %.3f s left, expected (20, 30]", tv_sec(r.it_value));
    if (r.it_interval.tv_sec != 7 || r.it_interval.tv_usec != 0)
        failf("ITIMER_REAL interval is %.3f s, expected 7", tv_sec(r.it_interval));
    /* CPU-time timers are sampled with scheduler-tick granularity: allow a few ticks above */
    if (!(tv_sec(v.it_value) > 990.0 && tv_sec(v.it_value) <= 1000.05))
        failf("ITIMER_VIRTUAL has %.3f s left, expected (990, 1000]", tv_sec(v.it_value));

    if (SIGRTMAX != 63)
        failf("SIGRTMAX is %d after restart, expected 63", SIGRTMAX);
    expect_action("SIGUSR1", SIGUSR1, (void *)on_usr1, F_USR1, m_usr1);
    expect_action("SIGALRM", SIGALRM, (void *)on_alrm, 0, NULL);
    expect_action("SIGINT", SIGINT, (void *)on_int, F_INT, m_int2);
    expect_action("SIGRTMIN+3", rt3, (void *)on_rt, SA_SIGINFO, m_rt);
    expect_action("SIGRTMAX", rtmax, (void *)on_rt, SA_SIGINFO | SA_RESTART, NULL);
    expect_action("SIGPIPE", SIGPIPE, (void *)SIG_IGN, 0, NULL);
    expect_action("SIGQUIT", SIGQUIT, (void *)SIG_IGN, 0, NULL);
    expect_action("SIGUSR2", SIGUSR2, (void *)SIG_DFL, 0, NULL);
    expect_action("SIGHUP", SIGHUP, (void *)SIG_DFL, 0, NULL);
    expect_action("SIGTERM", SIGTERM, (void *)SIG_DFL, 0, NULL);

    /* main thread's mask and altstack */
    sigset_t m;
    pthread_sigmask(SIG_BLOCK, NULL, &m);
    if (sigismember(&m, SIGUSR2) != 1)
        fail("main thread: SIGUSR2 is no longer blocked");
    if (sigismember(&m, SIGUSR1) != 0 || sigismember(&m, SIGHUP) != 0 || sigismember(&m, CR_SIG) != 0 ||
        sigismember(&m, SIGALRM) != 0)
        fail("main thread: SIGUSR1, SIGHUP, SIGALRM or signal 64 is blocked");
    sigset_t pend;
    sigpending(&pend);
    for (int i = 1; i < 65; i++)
        if (sigismember(&pend, i) == 1)
            failf("signal %d is pending", i);
    check_altstack("main thread", alt, MAIN_ALT);
    check_usr1("after restart", alt, MAIN_ALT);

    /* SIGPIPE still ignored: EPIPE instead of death */
    {
        int pp[2];
        if (pipe(pp) != 0)
            fail("pipe");
        close(pp[0]);
        errno = 0;
        if (write(pp[1], "x", 1) != -1 || errno != EPIPE)
            fail("write to a pipe without reader did not fail with EPIPE");
        close(pp[1]);
    }

    /* the agent keeps signal 64 unblockable */
    check_fill_block("after restart");

    /* the other handlers still run */
    other_ran = 0;
    raise(rt3);
    if (other_ran != rt3)
        fail("SIGRTMIN+3 handler did not run");
    other_ran = 0;
    raise(SIGALRM);
    if (other_ran != SIGALRM)
        fail("SIGALRM handler did not run");

    /* the second thread checks its own state */
    atomic_store(&thr_phase, 2);
    pthread_join(th, NULL);
    if (atomic_load(&thr_phase) != 3)
        fail("second thread did not finish");
    if (thr_err[0])
        fail(thr_err);

    stack_t off = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&off, NULL);
    free(alt);
    printf("PASS %s\n", NAME);
    fflush(stdout);
    return 0;
}
