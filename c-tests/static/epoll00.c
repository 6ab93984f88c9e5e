/* epoll00.c - an epoll instance keeps its interest list: an eventfd (EPOLLIN|EPOLLET, 64-bit
 * data), a pipe's read end (EPOLLIN, data = fd), a timerfd watched EPOLLONESHOT that already
 * fired (disarmed), a nested epoll watching an eventfd, an eventfd watched EPOLLEXCLUSIVE, and
 * a target added as fd X that lives on only as its dup Y (X closed).  After GO: pipe data and eventfd writes are reported with
 * the right data, the disarmed one-shot stays silent until EPOLL_CTL_MOD re-arms it, the
 * nested epoll reports its eventfd, the exclusive target is reported and still refuses
 * EPOLL_CTL_MOD (EINVAL: only an exclusive one does), the moved target is reported through Y.
 * PASS epoll00. */
/* cr-test: cflags= */
#define NAME "epoll00"
#include "kobj.h"
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#define EV_DATA 0x1234567890abcdefULL

static int add(int ep, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* The events of one epoll_wait (100 ms), as a count; the first one in *out. */
static int wait1(int ep, struct epoll_event *out)
{
    struct epoll_event evs[8];
    int n = epoll_wait(ep, evs, 8, 100);
    if (n > 0)
        *out = evs[0];
    return n;
}

int main(void)
{
    int ep = epoll_create1(0), inner = epoll_create1(EPOLL_CLOEXEC);
    int efd = eventfd(0, EFD_NONBLOCK), efd2 = eventfd(0, EFD_NONBLOCK);
    int moved = eventfd(0, EFD_NONBLOCK), ex = eventfd(0, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    int pp[2];
    check(ep >= 0 && inner >= 0 && efd >= 0 && efd2 >= 0 && moved >= 0 && tfd >= 0);
    check(pipe(pp) == 0);
    check(add(ep, efd, EPOLLIN | EPOLLET, EV_DATA) == 0);
    check(add(ep, pp[0], EPOLLIN, (uint64_t)pp[0]) == 0);
    check(add(ep, tfd, EPOLLIN | EPOLLONESHOT, 77) == 0);
    check(add(inner, efd2, EPOLLIN, 5) == 0);
    check(add(ep, inner, EPOLLIN, 99) == 0);
    check(add(ep, moved, EPOLLIN, 1000) == 0);
    check(ex >= 0 && add(ep, ex, EPOLLIN | EPOLLEXCLUSIVE, 555) == 0);
    int y = dup2(moved, 60);
    check(y == 60 && close(moved) == 0);
    struct itimerspec s = {{0, 0}, {0, 1000000}};
    check(timerfd_settime(tfd, 0, &s, NULL) == 0);
    struct epoll_event ev;
    check(wait1(ep, &ev) == 1 && ev.data.u64 == 77); /* the one-shot fired: now disarmed */

    ready_then_wait_go();

    check(wait1(ep, &ev) == 0); /* nothing ready; the fired timer is disarmed */
    check(write(pp[1], "x", 1) == 1);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == (uint64_t)pp[0] && (ev.events & EPOLLIN));
    char c;
    check(read(pp[0], &c, 1) == 1);
    uint64_t one = 1;
    check(write(efd, &one, 8) == 8);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == EV_DATA);
    check(wait1(ep, &ev) == 0); /* edge-triggered: reported once */
    check(read(efd, &one, 8) == 8);
    struct epoll_event mod = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 78};
    check(epoll_ctl(ep, EPOLL_CTL_MOD, tfd, &mod) == 0);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == 78); /* re-armed: its expiration shows */
    uint64_t n;
    check(read(tfd, &n, 8) == 8);
    check(write(efd2, &one, 8) == 8);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == 99);
    check(wait1(inner, &ev) == 1 && ev.data.u64 == 5);
    check(read(efd2, &one, 8) == 8);
    check(write(y, &one, 8) == 8);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == 1000);
    check(read(y, &one, 8) == 8);
    struct epoll_event exm = {.events = EPOLLIN, .data.u64 = 556};
    check(epoll_ctl(ep, EPOLL_CTL_MOD, ex, &exm) == -1 && errno == EINVAL);
    one = 1;
    check(write(ex, &one, 8) == 8);
    check(wait1(ep, &ev) == 1 && ev.data.u64 == 555);
    pass();
}
