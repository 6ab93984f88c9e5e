/*
 * sigurg.c - SIGURG belongs to the program as before, although the agent binds its control
 * socket only when a requester wakes it with SIGURG (issue 11, idle cost; docs/ARCHITECTURE.md
 * "Start-up"): a program's own SIGURG (out-of-band TCP data, raise, sigqueue, a child's kill)
 * reaches the program's disposition exactly as without the agent, a wake-up never does, and
 * checkpoints work however the program set SIGURG up.
 *
 * Build: gcc -O2 -Wall -pthread -o sigurg sigurg.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./sigurg [handler|dfl|ign|blocked|masked|rawblock]
 *
 * Before READY: the initial disposition reads SIG_DFL and a SIGURG is ignored; an SA_SIGINFO
 * handler with sa_mask {SIGUSR2} gets raise() (SI_TKILL), sigqueue() (value 42), a child's kill()
 * (SI_USER) and the kernel's SIGURG for out-of-band data on a TCP connection whose owner we are,
 * with SIGURG and SIGUSR2 blocked inside; without SA_RESTART a SIGURG interrupts a blocking read
 * (EINTR), with SA_RESTART the read goes on. Then per mode:
 *   handler  the handler stays installed across the checkpoint;
 *   dfl      SIG_DFL again;
 *   ign      the program execs itself with SIGURG ignored (SIG_IGN survives exec): the new
 *            image reads SIG_IGN and ignores SIGURG, and forks a child (which the checkpoint
 *            of the tree must reach: nobody can wake it);
 *   blocked  the program execs itself with SIGURG blocked (the mask survives exec);
 *   masked   the program blocks SIGURG with sigprocmask, and forks a child (as for ign);
 *   rawblock the program blocks SIGURG with a raw rt_sigprocmask system call (no wrapper sees
 *            it): a requester's wake-up never arrives, and cr_checkpoint must fail clearly
 *            instead of waiting.
 * After GO: the disposition reads back unchanged and behaves; the handler never ran for a
 * wake-up.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "sigurg"
#include "fail.h"
#define SIG SIGURG

static volatile sig_atomic_t runs, last_code, last_value, last_pid, blocked_self, blocked_usr2;

static void on_info(int sig, siginfo_t *si, void *uc)
{
    sigset_t cur;
    (void)uc;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    blocked_self = sigismember(&cur, SIG);
    blocked_usr2 = sigismember(&cur, SIGUSR2);
    last_code = si->si_signo == sig ? si->si_code : -999;
    last_value = si->si_value.sival_int;
    last_pid = si->si_pid;
    runs++;
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
        fail("sigaction(SIGURG) to install failed");
}

static void expect(const char *when, void *h)
{
    struct sigaction o;
    if (sigaction(SIG, NULL, &o) != 0)
        failf("%s: sigaction(SIGURG, NULL, &old) failed", when);
    if ((void *)o.sa_sigaction != h)
        failf("%s: disposition %p, expected %p", when, (void *)o.sa_sigaction, h);
}

static void wait_child(pid_t c)
{
    int st, r;
    while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR) {
    }
    if (r != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failf("child %d ended with status %#x", (int)c, st);
}

/* How a SIGURG of each kind reaches the handler (kind 0 raise, 1 sigqueue, 2 a child's kill). */
static void expect_handler(const char *when, int kind)
{
    int before = runs, code = kind == 0 ? SI_TKILL : kind == 1 ? SI_QUEUE : SI_USER;
    pid_t from = getpid();
    if (kind == 0) {
        raise(SIG);
    } else if (kind == 1) {
        sigqueue(getpid(), SIG, (union sigval){.sival_int = 42});
    } else {
        pid_t c = fork();
        if (c == 0) {
            kill(getppid(), SIG);
            _exit(0);
        }
        from = c;
        for (int i = 0; i < 2000 && runs == before; i++)
            usleep(1000);
        wait_child(c);
    }
    if (runs != before + 1 || last_code != code || (kind == 1 && last_value != 42) ||
        last_pid != from || blocked_self != 1 || blocked_usr2 != 1)
        failf("%s: handler runs %d->%d code %d value %d pid %d, SIGURG blocked %d, SIGUSR2 "
              "blocked %d (expected one run, code %d)", when, before, (int)runs, (int)last_code,
              (int)last_value, (int)last_pid, (int)blocked_self, (int)blocked_usr2, code);
}

/* Out-of-band data on a loopback TCP connection whose receiving socket we own (F_SETOWN): the
 * kernel sends SIGURG (SI_KERNEL); the byte is read with MSG_OOB. */
static void expect_oob(void)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &alen))
        fail("loopback listener");
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        fail("loopback connect");
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0 || fcntl(s, F_SETOWN, getpid()))
        fail("accept / F_SETOWN");
    int before = runs;
    if (send(c, "!", 1, MSG_OOB) != 1)
        fail("send MSG_OOB");
    for (int i = 0; i < 2000 && runs == before; i++)
        usleep(1000);
    char b = 0;
    if (runs != before + 1 || last_code != SI_KERNEL || recv(s, &b, 1, MSG_OOB) != 1 || b != '!')
        failf("out-of-band data: handler runs %d->%d code %d, byte %c", before, (int)runs,
              (int)last_code, b ? b : '0');
    close(s);
    close(c);
    close(l);
}

/* A read on a pipe that a child interrupts with SIGURG after a moment (and writes a byte to
 * 300 ms later): without SA_RESTART the read fails with EINTR, with SA_RESTART it returns the
 * byte. */
static void expect_restart(int restart)
{
    install(on_info, SA_SIGINFO | (restart ? SA_RESTART : 0));
    int p[2];
    if (pipe(p))
        fail("pipe");
    int before = runs;
    pid_t c = fork();
    if (c == 0) {
        usleep(50000);
        kill(getppid(), SIG);
        usleep(300000);
        write(p[1], "x", 1);
        _exit(0);
    }
    char b;
    ssize_t n = read(p[0], &b, 1);
    int e = errno;
    wait_child(c);
    if (runs != before + 1)
        failf("SA_RESTART %d: handler runs %d->%d", restart, before, (int)runs);
    if (restart ? n != 1 : !(n < 0 && e == EINTR))
        failf("SA_RESTART %d: read returned %zd (errno %d), expected %s", restart, n, e,
              restart ? "the byte" : "EINTR");
    close(p[0]);
    close(p[1]);
}

static int blocked_now(void)
{
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    return sigismember(&cur, SIG);
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO"), *mode = argc > 1 ? argv[1] : "handler";
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    int again = argc > 2 && !strcmp(argv[2], "again");
    if (again) {
        /* The image exec'd by the first one. */
        if (!strcmp(mode, "ign")) {
            expect("after exec with SIG_IGN", SIG_IGN);
            raise(SIG);
        } else if (!blocked_now()) {
            fail("the blocked SIGURG was unblocked across exec");
        }
    } else {
        expect("initially", SIG_DFL);
        raise(SIG);
        install(on_info, SA_SIGINFO);
        expect("handler", on_info);
        expect_handler("raise", 0);
        expect_handler("sigqueue", 1);
        expect_handler("kill from a child", 2);
        expect_oob();
        expect_restart(0);
        expect_restart(1);
        install(on_info, SA_SIGINFO);
        if (!strcmp(mode, "ign") || !strcmp(mode, "blocked")) {
            install(!strcmp(mode, "ign") ? SIG_IGN : SIG_DFL, 0);
            if (!strcmp(mode, "blocked")) {
                sigset_t s;
                sigemptyset(&s);
                sigaddset(&s, SIG);
                sigprocmask(SIG_BLOCK, &s, NULL);
            }
            char *args[] = {argv[0], (char *)mode, "again", NULL};
            execv("/proc/self/exe", args);
            fail("execv");
        }
        if (!strcmp(mode, "dfl"))
            install(SIG_DFL, 0);
        if (!strcmp(mode, "masked")) {
            sigset_t s;
            sigemptyset(&s);
            sigaddset(&s, SIG);
            sigprocmask(SIG_BLOCK, &s, NULL);
        }
        if (!strcmp(mode, "rawblock")) {
            unsigned long s = 1UL << (SIG - 1);
            syscall(SYS_rt_sigprocmask, SIG_BLOCK, &s, NULL, 8);
        }
    }
    pid_t kid = 0;
    if ((again && !strcmp(mode, "ign")) || !strcmp(mode, "masked")) {
        kid = fork();
        if (kid == 0) {
            while (access(go, F_OK) != 0)
                usleep(1000);
            _exit(0);
        }
    }
    int runs_at_ready = runs;
    printf("READY\n");

    while (access(go, F_OK) != 0)
        usleep(1000);

    if (runs != runs_at_ready)
        failf("the program's handler ran %d times for wake-ups", (int)(runs - runs_at_ready));
    if (!strcmp(mode, "handler")) {
        expect("after GO", on_info);
        expect_handler("raise after GO", 0);
        expect_handler("sigqueue after GO", 1);
        expect_handler("kill from a child after GO", 2);
        expect_oob();
    } else if (!strcmp(mode, "ign")) {
        expect("after GO", SIG_IGN);
        raise(SIG);
    } else if (!strcmp(mode, "masked") || !strcmp(mode, "rawblock")) {
        /* A wake-up still pending (rawblock) goes to the agent once unblocked, not to us. */
        expect("after GO", on_info);
        if (!blocked_now())
            fail("SIGURG no longer blocked after GO");
        unsigned long s = 1UL << (SIG - 1);
        if (!strcmp(mode, "masked")) {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIG);
            sigprocmask(SIG_UNBLOCK, &set, NULL);
        } else {
            syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, &s, NULL, 8);
        }
        if (runs != runs_at_ready)
            failf("unblocking SIGURG ran the program's handler %d times", (int)(runs - runs_at_ready));
        expect_handler("raise after GO", 0);
    } else {
        expect("after GO", SIG_DFL);
        if (!strcmp(mode, "blocked") && !blocked_now())
            fail("SIGURG no longer blocked after GO");
        raise(SIG);
    }
    if (kid > 0)
        wait_child(kid);
    printf("PASS %s %s\n", NAME, mode);
    return 0;
}
