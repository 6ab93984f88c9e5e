/* fail.h: FAIL reporting shared by the PASS-protocol programs (fds.c, mappings.c, signals.c).
 * Define NAME (the program's name) before including; needs <stdio.h>, <stdlib.h>, <stdarg.h>.
 * fail()/failf() print "FAIL NAME: what" on stdout and stderr and exit 1. */
#ifndef CTESTS_FAIL_H
#define CTESTS_FAIL_H

static void fail(const char *what)
{
    printf("FAIL %s: %s\n", NAME, what);
    fflush(stdout);
    fprintf(stderr, "FAIL %s: %s\n", NAME, what);
    exit(1);
}

static void failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void failf(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail(msg);
}

#endif /* CTESTS_FAIL_H */
