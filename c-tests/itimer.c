/*
 * itimer.c - a periodic ITIMER_REAL keeps firing after a restart (issue 13's "lost interval
 * timer").
 *
 * Build: gcc -O2 -Wall -o itimer itimer.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./itimer [running|blocked]
 *
 * ITIMER_REAL every 10 ms with a SIGALRM handler that counts; a SIGUSR1 handler on an
 * alternate stack (raised every 50 ticks, must run on it); SIGUSR2 blocked. The kernel re-arms
 * a periodic ITIMER_REAL only when its SIGALRM is taken, so while the program is stopped for a
 * checkpoint the timer expires and reads 0 with its SIGALRM pending.
 *   running: SIGALRM is handled all along (the expiry may or may not fall into the checkpoint).
 *   blocked: SIGALRM is blocked and pending at checkpoint time (the expired state, always);
 *            after GO it must still be pending, then it is unblocked.
 * After GO: the interval still reads 10 ms, and at least 20 more SIGALRMs arrive within 5 s.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define NAME "itimer"
#include "fail.h"
#define ALT (64 * 1024)

static volatile sig_atomic_t alarms, usr1_ok, usr1_runs;
static unsigned char *alt;

static void on_alrm(int sig)
{
    (void)sig;
    alarms++;
}

static void on_usr1(int sig)
{
    volatile char here = 0;
    (void)sig;
    usr1_ok = (uintptr_t)&here >= (uintptr_t)alt && (uintptr_t)&here < (uintptr_t)alt + ALT;
    usr1_runs++;
}

static void describe(char *buf, size_t len)
{
    struct itimerval it;
    sigset_t p;
    getitimer(ITIMER_REAL, &it);
    sigpending(&p);
    snprintf(buf, len, "ITIMER_REAL value %ld.%06ld interval %ld.%06ld, SIGALRM pending %d",
             (long)it.it_value.tv_sec, (long)it.it_value.tv_usec, (long)it.it_interval.tv_sec,
             (long)it.it_interval.tv_usec, sigismember(&p, SIGALRM));
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO"), *mode = argc > 1 ? argv[1] : "running";
    int blocked = !strcmp(mode, "blocked");
    char what[200];
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    alt = malloc(ALT);
    stack_t ss = {.ss_sp = alt, .ss_size = ALT, .ss_flags = 0};
    if (!alt || sigaltstack(&ss, NULL) != 0)
        fail("sigaltstack");
    sigset_t s, alrm;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &s, NULL);
    if (blocked)
        sigprocmask(SIG_BLOCK, &alrm, NULL);
    struct itimerval it = {.it_interval = {0, 10000}, .it_value = {0, 10000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        fail("setitimer");
    sigset_t p;
    for (int i = 0; i < 500; i++) {
        usleep(2000);
        sigpending(&p);
        if (blocked ? sigismember(&p, SIGALRM) : alarms >= 5)
            break;
    }
    if (blocked ? !sigismember(&p, SIGALRM) : alarms < 5)
        fail("ITIMER_REAL does not fire");
    printf("READY\n");

    int last = alarms;
    while (access(go, F_OK) != 0) {
        usleep(1000);
        if (alarms - last >= 50) {
            last = alarms;
            raise(SIGUSR1);
            if (!usr1_ok)
                fail("the SIGUSR1 handler did not run on the alternate stack");
        }
    }

    describe(what, sizeof what);
    fprintf(stderr, "info %s %s after GO: %d SIGALRMs so far, %s\n", NAME, mode, (int)alarms, what);
    getitimer(ITIMER_REAL, &it);
    if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 10000)
        failf("%s: the interval changed (%s)", mode, what);
    if (blocked) {
        sigpending(&p);
        if (!sigismember(&p, SIGALRM))
            failf("blocked: SIGALRM is no longer pending (%s)", what);
        sigprocmask(SIG_UNBLOCK, &alrm, NULL);
    }
    int start = alarms;
    for (int i = 0; i < 5000 && alarms - start < 20; i++)
        usleep(1000);
    if (alarms - start < 20)
        failf("%s: lost interval timer: %d SIGALRMs in 5 s after GO (at GO: %s)", mode,
              (int)(alarms - start), what);
    raise(SIGUSR1);
    if (!usr1_ok)
        fail("the SIGUSR1 handler did not run on the alternate stack after GO");
    printf("PASS %s %s\n", NAME, mode);
    return 0;
}
