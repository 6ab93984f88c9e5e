/*
 * sig64.c - signal 64 (the checkpoint signal) belongs to the program too, as under BLCR
 * (its bug2003 and cr_signal tests): a program may query, install and ignore its own
 * disposition for it, and checkpoints still work.
 *
 * Build: gcc -O2 -Wall -pthread -o sig64 sig64.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./sig64 [handler|ign|dfl]
 *
 * Before READY: the initial disposition reads SIG_DFL; under SIG_DFL a forked child that raises
 * 64 dies of signal 64; under SIG_IGN raise/sigqueue do nothing; an SA_SIGINFO handler with
 * sa_mask {SIGUSR2} gets raise() (the tgkill si_code), sigqueue() from us (value 42) and from a
 * child (value 7, the child's pid), with 64 and SIGUSR2 blocked inside; a plain handler with
 * SA_RESETHAND|SA_NODEFER runs once with 64 unblocked and is then SIG_DFL; a disposition
 * re-installed with a garbage sa_restorer still works; a child's kill() reaches the handler
 * (SI_USER); signal, __sysv_signal (signal() under -std=c99), sysv_signal, bsd_signal, ssignal,
 * sigset, sighold, sigrelse, sigignore and siginterrupt work on the program's disposition (glibc
 * implements them with its internal sigaction, which no wrapper sees). Then the mode's disposition is left
 * installed (handler: the SA_SIGINFO one; ign; dfl) across the checkpoint. After GO: it reads
 * back unchanged and behaves (handler runs / ignored / a child dies of 64); the handler never
 * ran for a checkpoint request; SIGRTMAX is 63.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "sig64"
#include "fail.h"
#define SIG 64

static volatile sig_atomic_t runs, last_code, last_value, last_pid, blocked64, blocked_usr2, plain_runs;

static void on_info(int sig, siginfo_t *si, void *uc)
{
    sigset_t cur;
    (void)uc;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    blocked64 = sigismember(&cur, SIG);
    blocked_usr2 = sigismember(&cur, SIGUSR2);
    last_code = si->si_signo == sig ? si->si_code : -999;
    last_value = si->si_value.sival_int;
    last_pid = si->si_pid;
    runs++;
}

static void on_plain(int sig)
{
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    blocked64 = sigismember(&cur, sig);
    plain_runs++;
}

static void install(void *h, int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (h == (void *)on_info)
        sigaddset(&sa.sa_mask, SIGUSR2);
    sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))h;
    sa.sa_flags = flags;
    if (sigaction(SIG, &sa, NULL) != 0)
        fail("sigaction(64) to install failed");
}

static void expect(const char *when, void *h, int flags)
{
    struct sigaction o;
    if (sigaction(SIG, NULL, &o) != 0)
        failf("%s: sigaction(64, NULL, &old) failed", when);
    int f = o.sa_flags & (SA_SIGINFO | SA_RESETHAND | SA_NODEFER);
    int usr2 = sigismember(&o.sa_mask, SIGUSR2);
    if ((void *)o.sa_sigaction != h || f != flags || usr2 != (h == (void *)on_info))
        failf("%s: disposition %p flags %#x (SIGUSR2 in mask %d), expected %p %#x", when,
              (void *)o.sa_sigaction, f, usr2, h, flags);
}

static pid_t last_child;

/* A child raises 64 (or sends it to us: kind 1 sigqueue with value 7, kind 2 kill); returns
 * its wait status. */
static int child(int kind)
{
    pid_t c = fork();
    if (c == 0) {
        if (kind == 1) {
            union sigval v = {.sival_int = 7};
            sigqueue(getppid(), SIG, v);
            _exit(0);
        }
        if (kind == 2) {
            kill(getppid(), SIG);
            _exit(0);
        }
        raise(SIG);
        _exit(0);
    }
    int st, r;
    while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR) {
    }
    if (c < 0 || r != c)
        fail("fork/waitpid");
    last_child = c;
    return st;
}

static void expect_dies(const char *when)
{
    int st = child(0);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIG)
        failf("%s: under SIG_DFL a child raising 64 ended with status %#x, expected death by 64", when, st);
}

static void expect_handler(const char *when, int code, int value, int from_child)
{
    int before = runs;
    if (from_child) {
        child(from_child);
        for (int i = 0; i < 2000 && runs == before; i++)
            usleep(1000);
    } else if (code == SI_QUEUE) {
        sigqueue(getpid(), SIG, (union sigval){.sival_int = value});
    } else {
        raise(SIG);
    }
    if (runs != before + 1 || last_code != code || (value && last_value != value) ||
        last_pid != (from_child ? last_child : getpid()) || blocked64 != 1 || blocked_usr2 != 1)
        failf("%s: handler runs %d->%d code %d value %d pid %d, 64 blocked %d, SIGUSR2 blocked %d "
              "(expected one run, code %d value %d)", when, before, (int)runs, (int)last_code,
              (int)last_value, (int)last_pid, (int)blocked64, (int)blocked_usr2, code, value);
}

/* glibc no longer declares it; it still exports it. */
extern __sighandler_t bsd_signal(int, __sighandler_t);

static void expect_ret(const char *call, void *got, void *want)
{
    if (got != want)
        failf("%s returned %p, expected the previous handler %p", call, got, want);
}
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* sigset, sighold, ... */

/* The older calls on signal 64: glibc implements them with its internal sigaction and
 * sigprocmask, which a wrapper of those never sees; each must still work on the program's own
 * disposition and leave the checkpoint signal working (the checkpoint comes after READY). */
static void older_calls(void)
{
    int before = plain_runs;
    expect_ret("signal", (void *)signal(SIG, on_plain), (void *)on_info);
    expect("signal", (void *)on_plain, 0);
    raise(SIG);
    if (plain_runs != before + 1 || blocked64 != 1)
        failf("signal() handler: %d runs, 64 blocked inside %d", plain_runs - before, (int)blocked64);
    expect_ret("__sysv_signal", (void *)__sysv_signal(SIG, on_plain), (void *)on_plain);
    expect("__sysv_signal", (void *)on_plain, SA_RESETHAND | SA_NODEFER);
    raise(SIG);
    if (plain_runs != before + 2 || blocked64 != 0)
        failf("__sysv_signal() handler: %d runs, 64 blocked inside %d", plain_runs - before, (int)blocked64);
    expect("after the one-shot __sysv_signal handler", SIG_DFL, SA_RESETHAND | SA_NODEFER);
    expect_ret("sysv_signal", (void *)sysv_signal(SIG, SIG_IGN), (void *)SIG_DFL);
    raise(SIG);
    expect_ret("bsd_signal", (void *)bsd_signal(SIG, on_plain), (void *)SIG_IGN);
    expect_ret("ssignal", (void *)ssignal(SIG, SIG_IGN), (void *)on_plain);
    expect_ret("sigset", (void *)sigset(SIG, on_plain), (void *)SIG_IGN);
    expect("sigset", (void *)on_plain, 0);
    expect_ret("sigset(SIG_HOLD)", (void *)sigset(SIG, SIG_HOLD), (void *)on_plain);
    if (sighold(SIG) != 0 || sigrelse(SIG) != 0 || sighold(SIG) != 0)
        fail("sighold/sigrelse(64) failed");
    if (sigignore(SIG) != 0)
        fail("sigignore(64) failed");
    expect("sigignore", SIG_IGN, 0);
    raise(SIG);
    struct sigaction o;
    if (siginterrupt(SIG, 1) != 0 || sigaction(SIG, NULL, &o) != 0 || (o.sa_flags & SA_RESTART) ||
        siginterrupt(SIG, 0) != 0 || sigaction(SIG, NULL, &o) != 0 || !(o.sa_flags & SA_RESTART))
        fail("siginterrupt(64) did not clear and set SA_RESTART of the program's disposition");
    expect("siginterrupt", SIG_IGN, 0);
    if (plain_runs != before + 2)
        failf("ignored signal 64 ran the handler (%d runs)", plain_runs - before);
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO"), *mode = argc > 1 ? argv[1] : "handler";
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (SIGRTMAX != 63)
        failf("SIGRTMAX is %d, expected 63", SIGRTMAX);
    expect("initially", SIG_DFL, 0);
    expect_dies("initially");
    install(SIG_IGN, 0);
    raise(SIG);
    sigqueue(getpid(), SIG, (union sigval){.sival_int = 1});
    expect("SIG_IGN", SIG_IGN, 0);
    install(on_info, SA_SIGINFO);
    expect("handler", on_info, SA_SIGINFO);
    expect_handler("raise", SI_TKILL, 0, 0);
    expect_handler("sigqueue", SI_QUEUE, 42, 0);
    expect_handler("sigqueue from a child", SI_QUEUE, 7, 1);
    install(on_plain, SA_RESETHAND | SA_NODEFER);
    raise(SIG);
    if (plain_runs != 1 || blocked64 != 0)
        failf("SA_RESETHAND|SA_NODEFER handler: %d runs, 64 blocked inside %d", (int)plain_runs, (int)blocked64);
    expect("after SA_RESETHAND", SIG_DFL, SA_RESETHAND | SA_NODEFER);
    install(on_info, SA_SIGINFO);
    struct sigaction o;
    sigaction(SIG, NULL, &o);
    o.sa_restorer = (void (*)(void))0x1234; /* bug2003: a program saving/restoring it badly */
    sigaction(SIG, &o, NULL);
    expect_handler("after a garbage sa_restorer", SI_TKILL, 0, 0);
    expect_handler("kill from a child", SI_USER, 0, 2);
    older_calls();
    install(on_info, SA_SIGINFO);
    if (!strcmp(mode, "ign"))
        install(SIG_IGN, 0);
    else if (!strcmp(mode, "dfl"))
        install(SIG_DFL, 0);
    int runs_at_ready = runs;
    printf("READY\n");

    while (access(go, F_OK) != 0)
        usleep(1000);

    if (runs != runs_at_ready)
        failf("the program's handler ran %d times for checkpoint requests", (int)(runs - runs_at_ready));
    if (SIGRTMAX != 63)
        failf("SIGRTMAX is %d after restart, expected 63", SIGRTMAX);
    if (!strcmp(mode, "ign")) {
        expect("after GO", SIG_IGN, 0);
        raise(SIG);
        sigqueue(getpid(), SIG, (union sigval){.sival_int = 3});
    } else if (!strcmp(mode, "dfl")) {
        expect("after GO", SIG_DFL, 0);
        expect_dies("after GO");
    } else {
        expect("after GO", on_info, SA_SIGINFO);
        expect_handler("raise after GO", SI_TKILL, 0, 0);
        expect_handler("sigqueue after GO", SI_QUEUE, 43, 0);
        expect_handler("sigqueue from a child after GO", SI_QUEUE, 7, 1);
    }
    printf("PASS %s %s\n", NAME, mode);
    return 0;
}
