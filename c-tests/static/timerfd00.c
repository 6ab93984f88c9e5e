/* timerfd00.c - timerfds keep clock, interval, time left and unread expirations:
 * a monotonic timer first due in 30 s then every 50 ms; a CLOCK_REALTIME TFD_TIMER_ABSTIME
 * deadline an hour away; a one-shot that fired 1 ms after start and was never read (1 unread
 * expiration); a CLOCK_BOOTTIME timer running every 20 ms; one never armed.  After GO each is
 * checked with timerfd_gettime and read, and the kernel's fdinfo says the deadline was set
 * absolute (TFD_TIMER_ABSTIME) and the monotonic one relative.  PASS timerfd00. */
/* cr-test: cflags= */
#define NAME "timerfd00"
#include "kobj.h"
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/timerfd.h>

/* The "settime flags" the kernel shows for timerfd `fd` (-1: none). */
static int settime_flags(int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    int flags = -1;
    check(f != NULL);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "settime flags: %o", (unsigned *)&flags) == 1)
            break;
    fclose(f);
    return flags;
}

static struct itimerspec spec(time_t vs, long vns, time_t is, long ins)
{
    struct itimerspec s = {{is, ins}, {vs, vns}};
    return s;
}

int main(void)
{
    int periodic = timerfd_create(CLOCK_MONOTONIC, 0);
    int deadline = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    int fired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int running = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC);
    int idle = timerfd_create(CLOCK_MONOTONIC, 0);
    check(periodic >= 0 && deadline >= 0 && fired >= 0 && running >= 0 && idle >= 0);
    struct itimerspec s = spec(30, 0, 0, 50000000), cur;
    check(timerfd_settime(periodic, 0, &s, NULL) == 0);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    time_t due = now.tv_sec + 3600;
    s = spec(due, 0, 0, 0);
    check(timerfd_settime(deadline, TFD_TIMER_ABSTIME, &s, NULL) == 0);
    s = spec(0, 1000000, 0, 0);
    check(timerfd_settime(fired, 0, &s, NULL) == 0);
    struct pollfd p = {.fd = fired, .events = POLLIN};
    check(poll(&p, 1, 5000) == 1); /* fired, not read */
    s = spec(0, 20000000, 0, 20000000);
    check(timerfd_settime(running, 0, &s, NULL) == 0);

    ready_then_wait_go();

    check(timerfd_gettime(periodic, &cur) == 0);
    check(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 50000000);
    check(cur.it_value.tv_sec < 30 || (cur.it_value.tv_sec == 30 && cur.it_value.tv_nsec == 0));
    check(cur.it_value.tv_sec > 0 || cur.it_value.tv_nsec > 0);

    check(timerfd_gettime(deadline, &cur) == 0);
    clock_gettime(CLOCK_REALTIME, &now);
    long left = (long)(due - now.tv_sec);
    check(cur.it_value.tv_sec >= left - 2 && cur.it_value.tv_sec <= left + 1);
    check(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 0);
    check(fcntl(deadline, F_GETFL) & O_NONBLOCK);
    check(settime_flags(deadline) & TFD_TIMER_ABSTIME);
    check(settime_flags(periodic) == 0);

    uint64_t n = 0;
    check(read(fired, &n, 8) == 8);
    check(n == 1);
    check(read(fired, &n, 8) == -1 && errno == EAGAIN);

    p.fd = running;
    check(poll(&p, 1, 2000) == 1);
    check(read(running, &n, 8) == 8 && n >= 1);
    check(fcntl(running, F_GETFD) & FD_CLOEXEC);

    check(timerfd_gettime(idle, &cur) == 0);
    check(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0);
    pass();
}
