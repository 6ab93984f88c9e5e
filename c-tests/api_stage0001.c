/* api_stage0001 (BLCR's stage0001): a signal-context callback and self-checkpoints.
 *  1. in a critical section, a self-request returns 0 but is postponed: status PENDING, the
 *     callback has not run; cr_leave_cs() runs it before returning (cr_status() is ACTIVE inside,
 *     cr_checkpoint(0) returns 0); the poll reports success; the context file is non-empty;
 *  2. without a critical section the callback runs before cr_request_checkpoint() returns and the
 *     file is non-empty as soon as the request returned;
 *  3. a callback passing CR_CHECKPOINT_TEMP_FAILURE gets -CR_ETEMPFAIL from cr_checkpoint() and
 *     the poll reports CR_POLL_CHKPT_ERR_POST with errno CR_ETEMPFAIL.
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

static volatile int cb_count = 0;
static volatile int cb_flags = CR_CHECKPOINT_READY;   /* what the callback passes to cr_checkpoint */
static volatile int cb_expect = 0;                    /* what cr_checkpoint must return */
static volatile int ctx_fd = -1;

static int my_callback(void *arg)
{
    int rc, st;

    CHECK(arg == (void *)&cb_count, "callback got arg %p, registered %p", arg, (void *)&cb_count);
    cb_count++;
    st = cr_status();
    CHECK(st == CR_STATE_ACTIVE, "cr_status() in the callback is %d, expected CR_STATE_ACTIVE", st);
    say("callback %d entered: cr_status() is CR_STATE_ACTIVE", cb_count);
    rc = cr_checkpoint(cb_flags);
    CHECK(rc == cb_expect, "cr_checkpoint(%#x) returned %d (%s), expected %d", cb_flags, rc,
          rc < 0 ? ename(-rc) : "", cb_expect);
    if (rc == 0) {
        CHECK(fd_size(ctx_fd) > 0, "the context file is still empty when cr_checkpoint() returned 0");
        say("callback %d: cr_checkpoint() returned 0 (continue), the context file is non-empty", cb_count);
    } else {
        say("callback %d: cr_checkpoint() returned -%s", cb_count, ename(-rc));
    }
    return 0;
}

int main(void)
{
    char filename[64];
    cr_checkpoint_handle_t h;
    cr_client_id_t id;
    cr_callback_id_t cb;
    int rc, st;

    note("ST_ALARM:120");
    snprintf(filename, sizeof filename, "context.%d", (int)getpid());
    say("api_stage0001 started");

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    cb = cr_register_callback(my_callback, (void *)&cb_count, CR_SIGNAL_CONTEXT);
    CHECK(cb == CR_SIGNAL_CONTEXT, "cr_register_callback returned %#x (errno %s), expected %#x", cb,
          ename(errno), CR_SIGNAL_CONTEXT);
    say("cr_init() and cr_register_callback(CR_SIGNAL_CONTEXT) succeeded");

    /* ---- 1: postponed by a critical section ---- */
    EXPECT_RET(cr_enter_cs(id), 0);
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "cr_status() in the critical section is %d, expected IDLE", st);
    say("in a critical section, cr_status() is CR_STATE_IDLE");
    ctx_fd = open_ctx(filename);
    rc = request_self(ctx_fd, 0, &h);
    CHECK(rc == 0, "cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    CHECK(cb_count == 0, "the callback ran although the requester is in a critical section");
    st = cr_status();
    CHECK(st == CR_STATE_PENDING, "cr_status() after the request is %d, expected CR_STATE_PENDING", st);
    say("the request returned 0, cr_status() is CR_STATE_PENDING, the callback has not run");
    sleep_ms(300);
    CHECK(cb_count == 0, "the callback ran within 300 ms although we are in a critical section");
    st = cr_status();
    CHECK(st == CR_STATE_PENDING, "cr_status() 300 ms later is %d, expected CR_STATE_PENDING", st);
    say("300 ms later: still pending, the callback has not run");
    EXPECT_RET(cr_leave_cs(id), 0);
    CHECK(cb_count == 1, "after cr_leave_cs() the callback ran %d times, expected 1", cb_count);
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "cr_status() after cr_leave_cs() is %d, expected IDLE", st);
    say("cr_leave_cs() ran the callback before returning; cr_status() is CR_STATE_IDLE");
    rc = poll_done(&h);
    CHECK(rc == 1, "cr_poll_checkpoint returned %d (errno %s), expected 1", rc, ename(errno));
    CHECK(fd_size(ctx_fd) > 0, "%s is empty after a successful checkpoint", filename);
    close(ctx_fd);
    say("cr_poll_checkpoint() returned 1; the context file is non-empty");

    /* ---- 2: immediate ---- */
    ctx_fd = open_ctx(filename);
    rc = request_self(ctx_fd, 0, &h);
    CHECK(rc == 0, "second cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    CHECK(cb_count == 2, "the callback ran %d times by the time the second request returned, expected 2",
          cb_count);
    CHECK(fd_size(ctx_fd) > 0, "%s is empty right after the second request returned", filename);
    say("second request: the callback ran before cr_request_checkpoint() returned; file non-empty");
    rc = poll_done(&h);
    CHECK(rc == 1, "second cr_poll_checkpoint returned %d (errno %s), expected 1", rc, ename(errno));
    close(ctx_fd);
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "cr_status() after the second checkpoint is %d", st);
    say("second poll returned 1; cr_status() is CR_STATE_IDLE");

    /* ---- 3: cancelled with TEMP_FAILURE ---- */
    cb_flags = CR_CHECKPOINT_TEMP_FAILURE;
    cb_expect = -CR_ETEMPFAIL;
    ctx_fd = open_ctx(filename);
    rc = request_self(ctx_fd, 0, &h);
    CHECK(rc == 0, "third cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    CHECK(cb_count == 3, "the callback ran %d times by the time the third request returned, expected 3",
          cb_count);
    rc = poll_done(&h);
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && errno == CR_ETEMPFAIL,
          "cancelled checkpoint: cr_poll_checkpoint returned %d errno %s, expected %d with CR_ETEMPFAIL",
          rc, ename(errno), CR_POLL_CHKPT_ERR_POST);
    say("third poll returned CR_POLL_CHKPT_ERR_POST with errno CR_ETEMPFAIL");
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "cr_status() after the cancelled checkpoint is %d", st);
    close(ctx_fd);
    unlink(filename);
    say("DONE");
    return 0;
}
