/* kobj.h - the test protocol for the one-feature programs of c-tests/static
 * (see c-tests/README.md): READY, wait for $CR_TEST_GO, check, PASS/FAIL. */
#ifndef KOBJ_H
#define KOBJ_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void fail_(const char *name, const char *what, int line)
{
    printf("FAIL %s: %s (line %d, errno %d %s)\n", name, what, line, errno, strerror(errno));
    fprintf(stderr, "FAIL %s: %s (line %d, errno %d %s)\n", name, what, line, errno,
            strerror(errno));
    fflush(stdout);
    exit(1);
}
#define fail(what) fail_(NAME, what, __LINE__)
#define check(cond) ((cond) ? (void)0 : fail(#cond))

static void ready_then_wait_go(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO is not set");
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static void pass(void)
{
    printf("PASS %s\n", NAME);
    fflush(stdout);
    exit(0);
}
#endif
