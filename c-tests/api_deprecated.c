/* api_deprecated: the three legacy self-checkpoint calls (declared _CR_DEPRECATED in libcr.h;
 * build with -Wno-deprecated-declarations).  They return once the request is pending or complete;
 * with no critical section held it is complete, so the file is non-empty right away.
 *  - cr_request_file("ctx.dep") creates ctx.dep (mode 0600);
 *  - cr_request_fd(fd) writes into an fd we opened;
 *  - cr_request() writes ./context.<pid>;
 *  - a signal-context callback runs once per call with cr_checkpoint() == 0.
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libcr.h>

/* ---- SEQ output protocol helpers (the same block is in every c-tests/api_*.c) ----------------
 * say():  the next numbered line "NNN text"; note(): a "#..." line (directives and comments);
 * FAIL(): an "XXX ..." line, then _exit(1).  Everything goes through write(2) (no stdio buffer to
 * duplicate at fork(), usable from callbacks running in signal context); one write per line. */
#include "api_seq.h"
/* ---- end of the common block ------------------------------------------------------------------ */

static volatile int runs, bad_rc;

static int cb(void *arg)
{
    int rc;
    (void)arg;
    runs++;
    rc = cr_checkpoint(CR_CHECKPOINT_READY);
    if (rc != 0) bad_rc++;
    return 0;
}

static void check_file(const char *name, int want_runs)
{
    struct stat st;
    CHECK(stat(name, &st) == 0, "%s does not exist: %s", name, strerror(errno));
    CHECK(st.st_size > 0, "%s is empty when the call returned", name);
    CHECK(runs == want_runs, "the callback ran %d times, expected %d", runs, want_runs);
    CHECK(bad_rc == 0, "cr_checkpoint() in the callback returned non-zero");
}

int main(void)
{
    char name[64];
    struct stat st;
    int id, fd;

    note("ST_ALARM:120");
    say("api_deprecated started");
    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(cr_register_callback(cb, NULL, CR_SIGNAL_CONTEXT) >= 0, "register (errno %s)", ename(errno));

    unlink("ctx.dep");
    cr_request_file("ctx.dep");
    check_file("ctx.dep", 1);
    CHECK(stat("ctx.dep", &st) == 0 && (st.st_mode & 0777) == 0600, "ctx.dep has mode %o, expected 600",
          st.st_mode & 0777);
    say("cr_request_file(\"ctx.dep\"): the callback ran, ctx.dep (0600) is non-empty");

    fd = open_ctx("ctx.fd");
    cr_request_fd(fd);
    CHECK(fd_size(fd) > 0, "ctx.fd is empty after cr_request_fd returned");
    check_file("ctx.fd", 2);
    close(fd);
    say("cr_request_fd(fd): the callback ran, the file is non-empty");

    snprintf(name, sizeof name, "context.%d", (int)getpid());
    unlink(name);
    cr_request();
    check_file(name, 3);
    say("cr_request(): the callback ran, ./context.<pid> is non-empty");

    unlink("ctx.dep");
    unlink("ctx.fd");
    unlink(name);
    say("DONE");
    return 0;
}
