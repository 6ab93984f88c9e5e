/* api_failed (BLCR's failed_cb and failed_cb2): a callback that passes a failure flag to
 * cr_checkpoint() cancels (TEMP, TEMP_CODE), omits (OMIT) or kills (PERM) the checkpoint.
 * Usage: api_failed {sig|thr}-{temp|omit|tempcode|perm}   (signal or thread context)
 * Three callbacks of the given context, registered cb0, cb1, cb2; they run cb2, cb1, cb0 (LIFO):
 *  - cb1 passes the flag; cb0 (registered earlier, runs later) must be skipped;
 *  - cr_checkpoint() returns -CR_ETEMPFAIL / -CR_EOMITTED / -911 in cb1 and in cb2 (which called it
 *    with 0 and gets the same result as the nesting unwinds);
 *  - the requester's poll gives CR_POLL_CHKPT_ERR_POST with errno CR_ETEMPFAIL / ESRCH (every
 *    process omitted) / 911; cr_status() is IDLE again; a following checkpoint without the flag
 *    succeeds and runs all three callbacks;
 *  - PERM: the process is killed with SIGKILL (#ST_SIGNAL:9); "DONE" is printed just before.
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

static volatile int flag;               /* what cb1 passes to cr_checkpoint() */
static volatile int perm;               /* PERM variant: cb1 prints DONE first */
static volatile int n0, n1, n2;         /* runs of cb0, cb1, cb2 */
static volatile int rc1 = -12345, rc2 = -12345;
static volatile int cb2_done;

static int cb0(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&n0, 1, __ATOMIC_SEQ_CST);
    if (flag != CR_CHECKPOINT_READY)
        FAIL("cb0 (registered before the failing callback) ran although cb1 passed flag %#x", flag);
    (void)cr_checkpoint(CR_CHECKPOINT_READY);
    return 0;
}

static int cb1(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&n1, 1, __ATOMIC_SEQ_CST);
    if (perm) {
        say("cb1: calling cr_checkpoint(CR_CHECKPOINT_PERM_FAILURE); the process must be killed");
        say("DONE");
    }
    rc1 = cr_checkpoint(flag);
    if (perm) FAIL("cr_checkpoint(CR_CHECKPOINT_PERM_FAILURE) returned %d", rc1);
    return 0;
}

static int cb2(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&n2, 1, __ATOMIC_SEQ_CST);
    rc2 = cr_checkpoint(CR_CHECKPOINT_READY);
    if (perm) FAIL("cb2: cr_checkpoint returned %d after a PERM failure", rc2);
    __atomic_store_n(&cb2_done, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static int checkpoint_once(const char *fname, int *err)
{
    cr_checkpoint_handle_t h;
    int fd, rc;
    long deadline;

    cb2_done = 0;
    fd = open_ctx(fname);
    rc = request_self(fd, 0, &h);
    CHECK(rc == 0, "cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    if (perm) {
        /* the request must kill us; do not race the SIGKILL with output */
        sleep_ms(30000);
        FAIL("not killed within 30 s of a PERM failure");
    }
    rc = poll_done(&h);
    *err = errno;
    close(fd);
    /* with thread-context callbacks the requester may see the failure before they unwind */
    deadline = now_ms() + 10000;
    while (!__atomic_load_n(&cb2_done, __ATOMIC_SEQ_CST) && now_ms() < deadline) sleep_ms(2);
    CHECK(cb2_done, "cb2 did not finish within 10 s of the poll");
    deadline = now_ms() + 10000;
    while (cr_status() == CR_STATE_PENDING && now_ms() < deadline) sleep_ms(2);
    return rc;
}

int main(int argc, char **argv)
{
    char fname[64], mode[32];
    int ctx, want_rc, want_errno, id, rc, err, i;
    const char *kind;
    cr_callback_t cbs[3] = { cb0, cb1, cb2 };

    if (argc < 2) {
        say("usage: api_failed {sig|thr}-{temp|omit|tempcode|perm}");
        FAIL("no variant given");
    }
    snprintf(mode, sizeof mode, "%s", argv[1]);
    if (strncmp(mode, "sig-", 4) == 0) ctx = CR_SIGNAL_CONTEXT;
    else if (strncmp(mode, "thr-", 4) == 0) ctx = CR_THREAD_CONTEXT;
    else FAIL("bad variant %s", mode);
    kind = mode + 4;
    if (strcmp(kind, "temp") == 0) {
        flag = CR_CHECKPOINT_TEMP_FAILURE; want_rc = -CR_ETEMPFAIL; want_errno = CR_ETEMPFAIL;
    } else if (strcmp(kind, "omit") == 0) {
        flag = CR_CHECKPOINT_OMIT; want_rc = -CR_EOMITTED; want_errno = ESRCH;
    } else if (strcmp(kind, "tempcode") == 0) {
        flag = CR_CHECKPOINT_TEMP_FAILURE_CODE(911); want_rc = -911; want_errno = 911;
    } else if (strcmp(kind, "perm") == 0) {
        flag = CR_CHECKPOINT_PERM_FAILURE; want_rc = 0; want_errno = 0; perm = 1;
    } else {
        FAIL("bad variant %s", mode);
    }

    note("ST_ALARM:90");
    if (perm) note("ST_SIGNAL:9");
    say("api_failed %s started", mode);
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    for (i = 0; i < 3; i++) {
        rc = cr_register_callback(cbs[i], NULL, ctx);
        CHECK(rc == (ctx | i), "cr_register_callback #%d returned %#x (errno %s)", i, rc, ename(errno));
    }
    rc = cr_status();
    CHECK(rc == CR_STATE_IDLE, "cr_status() is %d", rc);
    say("three %s-context callbacks registered; cr_status() is CR_STATE_IDLE", ctx == CR_SIGNAL_CONTEXT ? "signal" : "thread");

    rc = checkpoint_once(fname, &err);   /* PERM never returns */
    CHECK(n2 == 1 && n1 == 1 && n0 == 0, "callback runs cb2 %d, cb1 %d, cb0 %d; expected 1, 1, 0", n2, n1, n0);
    say("cb2 and cb1 ran once, cb0 was skipped");
    CHECK(rc1 == want_rc, "cr_checkpoint(%#x) in cb1 returned %d, expected %d", flag, rc1, want_rc);
    CHECK(rc2 == want_rc, "cr_checkpoint(0) in cb2 returned %d, expected %d", rc2, want_rc);
    say("cr_checkpoint() returned %d in cb1 (flag %#x) and in cb2", want_rc, flag);
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && err == want_errno,
          "cr_poll_checkpoint returned %d errno %s, expected CR_POLL_CHKPT_ERR_POST with %s", rc, ename(err),
          ename(want_errno));
    say("cr_poll_checkpoint returned CR_POLL_CHKPT_ERR_POST with errno %s", ename(want_errno));
    rc = cr_status();
    CHECK(rc == CR_STATE_IDLE, "cr_status() after the failed checkpoint is %d", rc);
    say("cr_status() is CR_STATE_IDLE again");

    flag = CR_CHECKPOINT_READY;
    rc = checkpoint_once(fname, &err);
    CHECK(rc == 1, "the next checkpoint: cr_poll_checkpoint returned %d (errno %s), expected 1", rc, ename(err));
    CHECK(n2 == 2 && n1 == 2 && n0 == 1, "next checkpoint: runs cb2 %d, cb1 %d, cb0 %d; expected 2, 2, 1", n2, n1, n0);
    CHECK(rc1 == 0 && rc2 == 0, "next checkpoint: cr_checkpoint returned %d (cb1) and %d (cb2)", rc1, rc2);
    say("a checkpoint without the flag then succeeds and runs all three callbacks");
    unlink(fname);
    say("DONE");
    return 0;
}
