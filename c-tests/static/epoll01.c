/* epoll01.c - one epoll instance shared by a parent and its child (forked after epoll_create1):
 * the parent adds an eventfd after the fork, both hold a second eventfd. After GO (after
 * restart): the child sees the parent's target (EPOLL_CTL_ADD: EEXIST), adds the second one and
 * signals it; the parent then finds the child's target in the same instance (EEXIST, and
 * epoll_wait reports it with the child's data), and its own with its data.
 * PASS epoll01. */
/* cr-test: cflags= */
#define NAME "epoll01"
#include "kobj.h"
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static void wait_go(void)
{
    const char *go = getenv("CR_TEST_GO");
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

int main(void)
{
    int ep = epoll_create1(0), e1 = eventfd(0, EFD_NONBLOCK), e2 = eventfd(0, EFD_NONBLOCK);
    int done[2];
    check(ep >= 0 && e1 >= 0 && e2 >= 0 && pipe(done) == 0);
    pid_t child = fork();
    check(child >= 0);
    if (child == 0) {
        close(done[0]);
        wait_go();
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
        /* The parent's target, added after the fork, is in the instance. */
        if (epoll_ctl(ep, EPOLL_CTL_ADD, e1, &ev) != -1 || errno != EEXIST)
            _exit(2);
        ev.data.u64 = 0xc0ffee;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, e2, &ev) != 0)
            _exit(3);
        uint64_t one = 1;
        if (write(e2, &one, 8) != 8 || write(done[1], "x", 1) != 1)
            _exit(4);
        _exit(0);
    }
    close(done[1]);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xabc};
    check(epoll_ctl(ep, EPOLL_CTL_ADD, e1, &ev) == 0);

    ready_then_wait_go();

    char b;
    check(read(done[0], &b, 1) == 1);
    int st;
    check(waitpid(child, &st, 0) == child);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "info: child status %#x\n", st);
        fail("the child's checks failed");
    }
    check(epoll_ctl(ep, EPOLL_CTL_ADD, e2, &ev) == -1 && errno == EEXIST);
    struct epoll_event got[4];
    check(epoll_wait(ep, got, 4, 0) == 1 && got[0].data.u64 == 0xc0ffee);
    uint64_t one = 1;
    check(write(e1, &one, 8) == 8);
    int n = epoll_wait(ep, got, 4, 0), seen = 0;
    for (int i = 0; i < n; i++)
        seen |= (got[i].data.u64 == 0xabc) | (got[i].data.u64 == 0xc0ffee) << 1;
    check(n == 2 && seen == 3);
    pass();
}
