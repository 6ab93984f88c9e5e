/* mqueue00.c - POSIX message queue descriptors survive: a queue (5 messages of 64 bytes at
 * most, mode 0640) open read-write non-blocking holding two messages of different priorities,
 * and a second, read-only descriptor of it.  The queue outlives the process (--term leaves it
 * with its messages); the restart opens it again by name.  After GO: both messages arrive,
 * highest priority first, then EAGAIN; attributes, O_NONBLOCK and the read-only descriptor's
 * access mode are kept; a message sent through one descriptor is read through the other.
 * PASS mqueue00. */
/* cr-test: cflags=-lrt */
#define NAME "mqueue00"
#include "kobj.h"
#include <fcntl.h>
#include <mqueue.h>
#include <sys/stat.h>

int main(void)
{
    char name[64], buf[64];
    unsigned prio;
    snprintf(name, sizeof name, "/mqueue00-%d", (int)getpid());
    struct mq_attr a = {.mq_maxmsg = 5, .mq_msgsize = 64};
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0640, &a);
    check(q != (mqd_t)-1);
    mqd_t r = mq_open(name, O_RDONLY);
    check(r != (mqd_t)-1);
    check(mq_send(q, "low", 3, 1) == 0);
    check(mq_send(q, "high", 4, 7) == 0);

    ready_then_wait_go();

    struct mq_attr g;
    check(mq_getattr(q, &g) == 0);
    check(g.mq_maxmsg == 5 && g.mq_msgsize == 64 && g.mq_curmsgs == 2);
    check(g.mq_flags & O_NONBLOCK);
    check(mq_getattr(r, &g) == 0 && !(g.mq_flags & O_NONBLOCK));
    check(mq_receive(q, buf, sizeof buf, &prio) == 4 && prio == 7 && !memcmp(buf, "high", 4));
    check(mq_receive(q, buf, sizeof buf, &prio) == 3 && prio == 1 && !memcmp(buf, "low", 3));
    check(mq_receive(q, buf, sizeof buf, &prio) == -1 && errno == EAGAIN);
    check(mq_send(r, "x", 1, 0) == -1 && errno == EBADF);
    check(mq_send(q, "again", 5, 2) == 0);
    check(mq_receive(r, buf, sizeof buf, &prio) == 5 && prio == 2 && !memcmp(buf, "again", 5));
    struct stat st;
    check(fstat(q, &st) == 0 && (st.st_mode & 0777) == 0640);
    mq_close(r);
    mq_close(q);
    check(mq_unlink(name) == 0);
    pass();
}
