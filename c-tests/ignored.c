/*
 * ignored.c - a thread blocked in epoll_wait(-1) while ignored signals arrive (issue 13).
 *
 * Build: gcc -O2 -Wall -pthread -o ignored ignored.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./ignored
 *
 * Two threads of the program: the main thread waits for GO (1 ms sleeps), a worker sits in
 * epoll_wait(-1) on a pipe that nobody writes before GO. The test sends the process SIGCONT
 * without pause (ignored by default: the kernel drops it when it is sent, unless the thread it
 * is sent to blocks it) while it checkpoints and restarts it. The kernel never restarts
 * epoll_wait after a signal: if one of those SIGCONTs is queued (the main thread blocking every
 * signal inside a checkpoint or a restart while the worker already runs), the worker is the
 * only thread that takes it, and its epoll_wait returns EINTR with nothing delivered. The
 * worker counts every EINTR and waits again.
 * After GO: the main thread writes one byte, the worker's epoll_wait returns it, and no EINTR
 * may have happened: "PASS ignored" ("info eintr N, signals sent to nothing" on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define NAME "ignored"
#include "fail.h"

static int pipefd[2], epfd;
static atomic_long eintrs, waits;
static atomic_int got_byte;

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        struct epoll_event ev;
        atomic_fetch_add(&waits, 1);
        int r = epoll_wait(epfd, &ev, 1, -1);
        if (r < 0 && errno == EINTR) {
            atomic_fetch_add(&eintrs, 1);
            continue;
        }
        if (r != 1)
            fail("epoll_wait failed");
        char c;
        if (read(pipefd[0], &c, 1) != 1 || c != 'g')
            fail("wrong byte after epoll_wait");
        atomic_store(&got_byte, 1);
        return NULL;
    }
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    if (pipe(pipefd) != 0)
        fail("pipe");
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pipefd[0]};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, pipefd[0], &ev) != 0)
        fail("epoll");
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0)
        fail("pthread_create");
    while (atomic_load(&waits) == 0)
        usleep(1000);
    printf("READY\n");
    fflush(stdout);
    struct timespec ms = {0, 1000000L};
    while (access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
    if (write(pipefd[1], "g", 1) != 1)
        fail("write");
    pthread_join(th, NULL);
    long n = atomic_load(&eintrs);
    fprintf(stderr, "info eintr %ld, epoll_wait calls %ld\n", n, atomic_load(&waits));
    if (!atomic_load(&got_byte))
        fail("the worker did not get its byte");
    if (n)
        failf("epoll_wait returned EINTR %ld times (an ignored signal woke it)", n);
    printf("PASS ignored\n");
    return 0;
}
