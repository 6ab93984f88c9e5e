/* signalfd00.c - a signalfd keeps its mask and flags: SIGUSR1 and SIGRTMIN+1 blocked and read
 * through a non-blocking signalfd; a second signalfd for SIGUSR2 only.  SIGUSR1 is pending at
 * checkpoint time.  After GO: the first signalfd yields the pending SIGUSR1, then EAGAIN;
 * a queued SIGRTMIN+1 with a value arrives through it; SIGUSR2 goes to the second one only.
 * PASS signalfd00. */
/* cr-test: cflags= */
#define NAME "signalfd00"
#include "kobj.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/signalfd.h>

int main(void)
{
    sigset_t m, m2;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGRTMIN + 1);
    sigemptyset(&m2);
    sigaddset(&m2, SIGUSR2);
    sigset_t all = m;
    sigaddset(&all, SIGUSR2);
    check(sigprocmask(SIG_BLOCK, &all, NULL) == 0);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int sfd2 = signalfd(-1, &m2, SFD_NONBLOCK | SFD_CLOEXEC);
    check(sfd >= 0 && sfd2 >= 0);
    check(kill(getpid(), SIGUSR1) == 0);

    ready_then_wait_go();

    struct signalfd_siginfo si;
    check(read(sfd, &si, sizeof si) == sizeof si);
    check(si.ssi_signo == SIGUSR1);
    check(read(sfd, &si, sizeof si) == -1 && errno == EAGAIN);
    check(read(sfd2, &si, sizeof si) == -1 && errno == EAGAIN);
    union sigval val = {.sival_int = 4242};
    check(sigqueue(getpid(), SIGRTMIN + 1, val) == 0);
    check(read(sfd, &si, sizeof si) == sizeof si);
    check(si.ssi_signo == (unsigned)(SIGRTMIN + 1) && si.ssi_int == 4242);
    check(kill(getpid(), SIGUSR2) == 0);
    check(read(sfd, &si, sizeof si) == -1 && errno == EAGAIN);
    check(read(sfd2, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2);
    check(fcntl(sfd2, F_GETFD) & FD_CLOEXEC);
    pass();
}
