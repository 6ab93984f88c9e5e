/* all00.c - the kernel objects together, as an event loop holds them: one epoll watching an
 * eventfd (EPOLLET), a periodic timerfd, a signalfd (SIGUSR1 pending), a TCP listener, both
 * ends of a TCP connection inside the process (bytes waiting), one end of a unix socketpair
 * (bytes waiting).  After GO every object is
 * checked field by field through the epoll: each reports with its own data and its state.
 * PASS all00. */
/* cr-test: cflags= */
#define NAME "all00"
#include "kobj.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

enum { EFD = 1, TFD, SFD, LST, SRV, CLI, UNX };

static void add(int ep, int fd, uint32_t ev, uint64_t tag)
{
    struct epoll_event e = {.events = ev, .data.u64 = tag};
    check(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == 0);
}

/* Every tag epoll reports within 200 ms, as a bit set. */
static unsigned ready(int ep)
{
    struct epoll_event evs[16];
    unsigned set = 0;
    int n = epoll_wait(ep, evs, 16, 200);
    for (int i = 0; i < n; i++)
        set |= 1u << evs[i].data.u64;
    return set;
}

int main(void)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int efd = eventfd(3, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    check(sigprocmask(SIG_BLOCK, &m, NULL) == 0);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int lst = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(bind(lst, (struct sockaddr *)&a, sizeof a) == 0 && listen(lst, 4) == 0);
    socklen_t alen = sizeof a;
    check(getsockname(lst, (struct sockaddr *)&a, &alen) == 0);
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    check(connect(cli, (struct sockaddr *)&a, sizeof a) == 0);
    int srv = accept(lst, NULL, NULL);
    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    check(ep >= 0 && efd >= 0 && tfd >= 0 && sfd >= 0 && srv >= 0);
    struct itimerspec its = {{0, 30000000}, {0, 30000000}};
    check(timerfd_settime(tfd, 0, &its, NULL) == 0);
    add(ep, efd, EPOLLIN | EPOLLET, EFD);
    add(ep, tfd, EPOLLIN, TFD);
    add(ep, sfd, EPOLLIN, SFD);
    add(ep, lst, EPOLLIN, LST);
    add(ep, srv, EPOLLIN, SRV);
    add(ep, cli, EPOLLIN, CLI);
    add(ep, sv[0], EPOLLIN, UNX);
    check(kill(getpid(), SIGUSR1) == 0);
    check(write(cli, "to-srv", 6) == 6 && write(sv[1], "to-unx", 6) == 6);

    ready_then_wait_go();

    unsigned set = ready(ep);
    check(set & (1u << EFD)); /* count 3, edge not yet reported in this process */
    check(set & (1u << SFD) && set & (1u << SRV) && set & (1u << UNX));
    check(!(set & (1u << CLI)) && !(set & (1u << LST)));
    uint64_t v;
    check(read(efd, &v, 8) == 8 && v == 3);
    struct signalfd_siginfo si;
    check(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1);
    char b[16];
    check(read(srv, b, sizeof b) == 6 && memcmp(b, "to-srv", 6) == 0);
    check(read(sv[0], b, sizeof b) == 6 && memcmp(b, "to-unx", 6) == 0);
    check(timerfd_gettime(tfd, &its) == 0 && its.it_interval.tv_nsec == 30000000);
    int ticks = 0;
    for (int i = 0; i < 20 && !ticks; i++)
        if (ready(ep) & (1u << TFD))
            ticks = read(tfd, &v, 8) == 8 && v >= 1;
    check(ticks);
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    check(connect(c2, (struct sockaddr *)&a, sizeof a) == 0);
    check(ready(ep) & (1u << LST));
    check(write(srv, "back", 4) == 4 && (ready(ep) & (1u << CLI)));
    check(read(cli, b, sizeof b) == 4);
    pass();
}
