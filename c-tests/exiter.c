/*
 * exiter.c - target that ends with a chosen exit status (for cr_restart's status mimicking).
 *
 * Build: gcc -O2 -Wall -o exiter exiter.c
 * Run:   EXITER_MODE=code:7 CR_TEST_GO=/path/to/go cr_run ./exiter
 *
 * EXITER_MODE (read and checked before READY, so it is part of the image's environment):
 *   code:N    exit(N)                          (0 <= N <= 255)
 *   signal:N  die of signal N: default disposition, unblocked, raise(N)  (1 <= N <= 31, not
 *             SIGKILL/SIGSTOP/SIGCONT/SIGCHLD and the other ignored-by-default ones)
 * Prints READY, sleeps in 1 ms steps until the GO file exists, prints "DONE exiter <mode>" (it got
 * to the end) and then exits or dies as asked.  Before raising a signal it sets RLIMIT_CORE to 0,
 * so a core-dumping signal leaves no core file of its own.  If the signal does not kill it, it
 * prints FAIL and exits 1.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void fail(const char *what)
{
    printf("FAIL exiter: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL exiter: %s\n", what);
    exit(1);
}

/* A decimal number in [lo, hi], the whole string; -1 otherwise. */
static long number(const char *s, long lo, long hi)
{
    char *end;
    if (!*s)
        return -1;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    return v;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *mode = getenv("EXITER_MODE");
    if (!go || !mode)
        fail("CR_TEST_GO / EXITER_MODE not set");

    long code = -1, sig = -1;
    if (strncmp(mode, "code:", 5) == 0) {
        code = number(mode + 5, 0, 255);
        if (code < 0)
            fail("EXITER_MODE code:N needs 0 <= N <= 255");
    } else if (strncmp(mode, "signal:", 7) == 0) {
        sig = number(mode + 7, 1, 31);
        if (sig < 0 || sig == SIGKILL || sig == SIGSTOP || sig == SIGCONT || sig == SIGCHLD ||
            sig == SIGURG || sig == SIGWINCH || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU)
            fail("EXITER_MODE signal:N needs a signal that terminates by default");
    } else {
        fail("EXITER_MODE must be code:N or signal:N");
    }

    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);

    printf("DONE exiter %s\n", mode);
    fflush(stdout);
    if (code >= 0)
        exit((int)code);

    struct rlimit nocore = {0, 0};
    if (setrlimit(RLIMIT_CORE, &nocore) != 0)
        fail("setrlimit(RLIMIT_CORE, 0)");
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    if (sigaction((int)sig, &dfl, NULL) != 0)
        fail("sigaction(SIG_DFL)");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, (int)sig);
    if (sigprocmask(SIG_UNBLOCK, &set, NULL) != 0)
        fail("sigprocmask(SIG_UNBLOCK)");
    raise((int)sig);
    fail("still alive after raising the signal");
    return 1;
}
