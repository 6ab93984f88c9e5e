/*
 * mask_wait.c - a program that waits with every signal but SIGUSR1 blocked (BLCR's checkpoints
 * did not depend on the signal mask): a checkpoint must still reach it while it waits.
 *
 * Build: gcc -O2 -Wall -o mask_wait mask_wait.c
 * Run:   cr_run ./mask_wait sigsuspend|ppoll|pselect|epoll_pwait
 *
 * Prints READY, then waits in the named call with a mask of every signal but SIGUSR1 (which
 * has a handler) until SIGUSR1 arrives; a wait that returns for another reason (a checkpoint
 * request taken meanwhile: EINTR) is entered again. Then `PASS mask_wait MODE`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <unistd.h>

#define NAME "mask_wait"
#include "fail.h"

static volatile sig_atomic_t woken;
static void on_usr1(int sig) { (void)sig; woken = 1; }

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, SIGUSR1);
    /* SIGUSR1 blocked outside the waits: it can only arrive inside one. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, on_usr1);
    int ep = epoll_create1(0);
    if (ep < 0)
        fail("epoll_create1");
    printf("READY\n");
    while (!woken) {
        int r;
        if (!strcmp(mode, "sigsuspend"))
            r = sigsuspend(&mask);
        else if (!strcmp(mode, "ppoll"))
            r = ppoll(NULL, 0, NULL, &mask);
        else if (!strcmp(mode, "pselect"))
            r = pselect(0, NULL, NULL, NULL, NULL, &mask);
        else if (!strcmp(mode, "epoll_pwait")) {
            struct epoll_event ev;
            r = epoll_pwait(ep, &ev, 1, -1, &mask);
        } else
            failf("unknown mode %s", mode);
        if (r != -1 || errno != EINTR)
            failf("%s returned %d (%s)", mode, r, strerror(errno));
    }
    printf("PASS %s %s\n", NAME, mode);
    return 0;
}
