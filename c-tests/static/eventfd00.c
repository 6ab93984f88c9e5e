/* eventfd00.c - eventfd counters survive: a semaphore eventfd (EFD_SEMAPHORE|EFD_NONBLOCK)
 * holding 5, a counter eventfd holding 2^40 (more than eventfd()'s initial value can say), a
 * dup of it, and an empty non-blocking one.  After GO: the semaphore gives 1 five times then
 * EAGAIN; the counter gives 2^40 once, through the dup too (one object); the empty one EAGAIN;
 * flags as set; all still work.  PASS eventfd00. */
/* cr-test: cflags= */
#define NAME "eventfd00"
#include "kobj.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/eventfd.h>

int main(void)
{
    int sem = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
    int cnt = eventfd(0, 0);
    int empty = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    check(sem >= 0 && cnt >= 0 && empty >= 0);
    uint64_t big = 1ULL << 40, v;
    check(write(cnt, &big, 8) == 8);
    int dupd = dup(cnt);
    check(dupd >= 0);

    ready_then_wait_go();

    check(fcntl(sem, F_GETFL) & O_NONBLOCK);
    check(!(fcntl(cnt, F_GETFL) & O_NONBLOCK));
    check(fcntl(empty, F_GETFD) & FD_CLOEXEC);
    for (int i = 0; i < 5; i++) {
        check(read(sem, &v, 8) == 8);
        check(v == 1);
    }
    check(read(sem, &v, 8) == -1 && errno == EAGAIN);
    check(read(empty, &v, 8) == -1 && errno == EAGAIN);
    /* One object behind cnt and its dup: what one writes, the other reads. */
    int fl = fcntl(dupd, F_GETFL);
    check(fcntl(dupd, F_SETFL, fl | O_NONBLOCK) == 0);
    check(fcntl(cnt, F_GETFL) & O_NONBLOCK);
    check(read(dupd, &v, 8) == 8);
    check(v == big);
    check(read(cnt, &v, 8) == -1 && errno == EAGAIN);
    v = 7;
    check(write(cnt, &v, 8) == 8);
    check(read(dupd, &v, 8) == 8 && v == 7);
    pass();
}
