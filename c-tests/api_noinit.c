/* api_noinit (BLCR's stage0004 and more): what libcr does before cr_init() in the calling thread,
 * and the argument checking of the calls that need no checkpoint.
 *  - without cr_init: cr_status, cr_enter_cs, cr_leave_cs, cr_tryenter_cs, cr_register_callback,
 *    cr_replace_callback, cr_inc_persist, cr_dec_persist, cr_hold_ctrl fail with -1/CR_ENOINIT and
 *    cr_register_hook with CR_HOOK_FN_ERROR/CR_ENOINIT; the info getters return NULL;
 *  - cr_init returns 0, then 1 in the same thread;
 *  - outside callbacks: cr_checkpoint returns -CR_ENOTCB, cr_replace_self and
 *    cr_forward_checkpoint fail with CR_ENOTCB, both info getters return NULL, status IDLE;
 *  - argument initialisers, request argument errors, callback/hook registration errors, critical
 *    section calls, persist counts, hold control, spinlocks, cr_strerror, foreign handles.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libcr.h>

/* ---- SEQ output protocol helpers (the same block is in every c-tests/api_*.c) ----------------
 * say():  the next numbered line "NNN text"; note(): a "#..." line (directives and comments);
 * FAIL(): an "XXX ..." line, then _exit(1).  Everything goes through write(2) (no stdio buffer to
 * duplicate at fork(), usable from callbacks running in signal context); one write per line. */
#include "api_seq.h"
/* ---- end of the common block ------------------------------------------------------------------ */

static int dummy_cb(void *arg)
{
    (void)arg;
    return 0;
}

static void dummy_hook(cr_hook_event_t ev)
{
    (void)ev;
}

static void other_hook(cr_hook_event_t ev)
{
    (void)ev;
}

/* A pid no process has right now: a reaped child's. */
static pid_t unused_pid(void)
{
    pid_t p = fork();
    CHECK(p >= 0, "fork: %s", strerror(errno));
    if (p == 0) _exit(0);
    CHECK(waitpid(p, NULL, 0) == p, "waitpid: %s", strerror(errno));
    return p;
}

int main(void)
{
    cr_checkpoint_args_t a;
    cr_restart_args_t r;
    cr_checkpoint_handle_t h;
    cr_spinlock_t lock = CR_SPINLOCK_INITIALIZER;
    cr_callback_id_t cb;
    int id, rc, e, devnull;

    note("ST_ALARM:60");
    say("api_noinit started");

    /* ---- before cr_init() ---- */
    EXPECT_ERR(cr_status(), -1, CR_ENOINIT);
    EXPECT_ERR(cr_enter_cs(0), -1, CR_ENOINIT);
    EXPECT_ERR(cr_leave_cs(0), -1, CR_ENOINIT);
    EXPECT_ERR(cr_tryenter_cs(0), -1, CR_ENOINIT);
    say("without cr_init: cr_status, cr_enter_cs, cr_leave_cs, cr_tryenter_cs fail with CR_ENOINIT");
    EXPECT_ERR(cr_register_callback(dummy_cb, NULL, CR_SIGNAL_CONTEXT), -1, CR_ENOINIT);
    EXPECT_ERR(cr_register_callback(dummy_cb, NULL, CR_THREAD_CONTEXT), -1, CR_ENOINIT);
    EXPECT_ERR(cr_replace_callback(CR_SIGNAL_CONTEXT, dummy_cb, NULL, CR_SIGNAL_CONTEXT), -1, CR_ENOINIT);
    EXPECT_ERR(cr_replace_callback(CR_THREAD_CONTEXT, dummy_cb, NULL, CR_THREAD_CONTEXT), -1, CR_ENOINIT);
    say("without cr_init: cr_register_callback, cr_replace_callback fail with CR_ENOINIT");
    EXPECT_ERR(cr_inc_persist(), -1, CR_ENOINIT);
    EXPECT_ERR(cr_dec_persist(), -1, CR_ENOINIT);
    EXPECT_ERR(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, CR_HOLD_READ), -1, CR_ENOINIT);
    say("without cr_init: cr_inc_persist, cr_dec_persist, cr_hold_ctrl fail with CR_ENOINIT");
    errno = 0;
    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, dummy_hook) == CR_HOOK_FN_ERROR && errno == CR_ENOINIT,
          "cr_register_hook without cr_init: want CR_HOOK_FN_ERROR with CR_ENOINIT (errno %s)", ename(errno));
    say("without cr_init: cr_register_hook returns CR_HOOK_FN_ERROR with CR_ENOINIT");
    CHECK(cr_get_checkpoint_info() == NULL, "cr_get_checkpoint_info() without cr_init is not NULL");
    CHECK(cr_get_restart_info() == NULL, "cr_get_restart_info() without cr_init is not NULL");
    say("without cr_init: both info getters return NULL");

    /* ---- cr_init() ---- */
    id = cr_init();
    CHECK(id == 0, "first cr_init() returned %d (errno %s), expected 0", id, ename(errno));
    id = cr_init();
    CHECK(id == 1, "second cr_init() in the same thread returned %d, expected 1", id);
    say("cr_init() returned 0, then 1");

    rc = cr_checkpoint(CR_CHECKPOINT_READY);
    CHECK(rc == -CR_ENOTCB, "cr_checkpoint(0) outside a callback returned %d, expected -CR_ENOTCB (%d)",
          rc, -CR_ENOTCB);
    say("cr_checkpoint() outside a callback returns -CR_ENOTCB");
    EXPECT_ERR(cr_replace_self(dummy_cb, NULL, CR_SIGNAL_CONTEXT), -1, CR_ENOTCB);
    EXPECT_ERR(cr_forward_checkpoint(CR_SCOPE_PROC, getpid()), -1, CR_ENOTCB);
    say("cr_replace_self() and cr_forward_checkpoint() outside a callback fail with CR_ENOTCB");
    CHECK(cr_get_checkpoint_info() == NULL, "cr_get_checkpoint_info() outside a callback is not NULL");
    CHECK(cr_get_restart_info() == NULL, "cr_get_restart_info() outside a callback is not NULL");
    say("cr_get_checkpoint_info() and cr_get_restart_info() return NULL outside callbacks");
    rc = cr_status();
    CHECK(rc == CR_STATE_IDLE, "cr_status() returned %d (errno %s), expected CR_STATE_IDLE", rc, ename(errno));
    say("cr_status() is CR_STATE_IDLE");

    /* ---- cr_strerror ---- */
    for (e = CR_ETEMPFAIL; e <= CR_ENOINIT; e++) {
        const char *s = cr_strerror(e);
        CHECK(s != NULL && s[0] != '\0', "cr_strerror(%d) is empty", e);
        CHECK(strncmp(s, "Unknown error", 13) != 0, "cr_strerror(%d) is \"%s\"", e, s);
    }
    {
        char want[256];
        snprintf(want, sizeof want, "%s", strerror(ENOENT));
        CHECK(strcmp(cr_strerror(ENOENT), want) == 0, "cr_strerror(ENOENT) is \"%s\", strerror says \"%s\"",
              cr_strerror(ENOENT), want);
    }
    say("cr_strerror() has a text for every libcr code and falls back to strerror()");

    /* ---- argument initialisers ---- */
    memset(&a, 0x5a, sizeof a);
    rc = cr_initialize_checkpoint_args_t(&a);
    CHECK(rc == 0, "cr_initialize_checkpoint_args_t returned %d", rc);
    CHECK(a.cr_version == CR_CHECKPOINT_ARGS_VERSION && (int)a.cr_scope == -1 && a.cr_target == 0 &&
          a.cr_fd == -1 && a.cr_signal == 0 && a.cr_timeout == 0 && a.cr_flags == 0,
          "checkpoint args defaults: version %d scope %d target %d fd %d signal %d timeout %u flags %#x",
          a.cr_version, (int)a.cr_scope, (int)a.cr_target, a.cr_fd, a.cr_signal, a.cr_timeout, a.cr_flags);
    EXPECT_ERR(cri_init_checkpoint_args_t(2, &a), -1, EINVAL);
    EXPECT_ERR(cri_init_checkpoint_args_t(0, &a), -1, EINVAL);
    say("cr_initialize_checkpoint_args_t: BLCR defaults; version 2 or 0 gives EINVAL");
    memset(&r, 0x5a, sizeof r);
    rc = cr_initialize_restart_args_t(&r);
    CHECK(rc == 0, "cr_initialize_restart_args_t returned %d", rc);
    CHECK(r.cr_version == CR_RESTART_ARGS_VERSION && r.cr_fd == -1 && r.cr_signal == 0 &&
          r.cr_flags == CR_RSTRT_RESTORE_PID && r.cr_relocate == NULL,
          "restart args defaults: version %d fd %d signal %d flags %#x relocate %p", r.cr_version, r.cr_fd,
          r.cr_signal, r.cr_flags, (void *)r.cr_relocate);
    EXPECT_ERR(cri_init_restart_args_t(2, &r), -1, EINVAL);
    say("cr_initialize_restart_args_t: BLCR defaults (RESTORE_PID); version 2 gives EINVAL");

    /* ---- request argument errors (none of these may start a checkpoint) ---- */
    devnull = open("/dev/null", O_WRONLY);
    CHECK(devnull >= 0, "open /dev/null: %s", strerror(errno));
    errno = 0;
    rc = cr_request_checkpoint(NULL, &h);
    CHECK(rc == -1 && (errno == EINVAL || errno == EFAULT),
          "cr_request_checkpoint(NULL, &h) returned %d errno %s, expected -1 EINVAL/EFAULT", rc, ename(errno));
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_fd = devnull;
    errno = 0;
    rc = cr_request_checkpoint(&a, NULL);
    CHECK(rc == -1 && (errno == EINVAL || errno == EFAULT),
          "cr_request_checkpoint(&a, NULL) returned %d errno %s, expected -1 EINVAL/EFAULT", rc, ename(errno));
    say("cr_request_checkpoint with a NULL args or handle pointer fails with EINVAL/EFAULT");
    cr_initialize_checkpoint_args_t(&a);
    a.cr_fd = devnull;          /* scope left at the default -1 */
    EXPECT_ERR(cr_request_checkpoint(&a, &h), -1, EINVAL);
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_fd = devnull;
    a.cr_version = 2;
    EXPECT_ERR(cr_request_checkpoint(&a, &h), -1, EINVAL);
    say("cr_request_checkpoint with an unset scope or a wrong version fails with EINVAL");
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_fd = -1;
    EXPECT_ERR(cr_request_checkpoint(&a, &h), -1, EBADF);
    say("cr_request_checkpoint with cr_fd -1 fails with EBADF");
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_fd = devnull;
    a.cr_target = unused_pid();
    EXPECT_ERR(cr_request_checkpoint(&a, &h), -1, ESRCH);
    say("cr_request_checkpoint of a pid that does not exist fails with ESRCH");

    /* ---- a handle that is not libcr's ---- */
    h = (cr_checkpoint_handle_t)devnull;
    errno = 0;
    rc = cr_reap_checkpoint(&h);
    e = errno;
    CHECK(rc == -1 && (e == ENOTTY || e == EINVAL),
          "cr_reap_checkpoint on a /dev/null fd returned %d errno %s, expected -1 ENOTTY (or EINVAL)", rc, ename(e));
    if (e == ENOTTY) {
        CHECK(h == (cr_checkpoint_handle_t)devnull, "handle changed after ENOTTY (not our fd): %lu", h);
        CHECK(fcntl(devnull, F_GETFD) >= 0, "the foreign fd was closed after ENOTTY");
    }
    say("cr_reap_checkpoint on a foreign fd fails with %s", ename(e));

    /* ---- callbacks: registration errors, ids ---- */
    EXPECT_ERR(cr_register_callback(dummy_cb, NULL, 0), -1, EINVAL);
    EXPECT_ERR(cr_register_callback(dummy_cb, NULL, CR_SIGNAL_CONTEXT | CR_THREAD_CONTEXT), -1, EINVAL);
    say("cr_register_callback with no context or both contexts fails with EINVAL");
    cb = cr_register_callback(dummy_cb, NULL, CR_SIGNAL_CONTEXT);
    CHECK(cb == CR_SIGNAL_CONTEXT, "first signal callback id is %#x, expected %#x", cb, CR_SIGNAL_CONTEXT);
    EXPECT_ERR(cr_replace_callback(cb, dummy_cb, NULL, CR_THREAD_CONTEXT), -1, EINVAL);
    EXPECT_ERR(cr_replace_callback(cb + 5, dummy_cb, NULL, CR_SIGNAL_CONTEXT), -1, EINVAL);
    rc = cr_replace_callback(cb, NULL, NULL, CR_SIGNAL_CONTEXT);
    CHECK(rc == 0, "cr_replace_callback(id, NULL) returned %d (%s)", rc, ename(errno));
    say("callback id %#x; cr_replace_callback: other context or unknown id EINVAL, NULL accepted", cb);

    /* ---- hooks ---- */
    errno = 0;
    CHECK(cr_register_hook(CR_NUM_HOOKS, dummy_hook) == CR_HOOK_FN_ERROR && errno == EINVAL,
          "cr_register_hook(CR_NUM_HOOKS): want CR_HOOK_FN_ERROR/EINVAL (errno %s)", ename(errno));
    errno = 0;
    CHECK(cr_register_hook((cr_hook_event_t)-1, dummy_hook) == CR_HOOK_FN_ERROR && errno == EINVAL,
          "cr_register_hook(-1): want CR_HOOK_FN_ERROR/EINVAL (errno %s)", ename(errno));
    errno = 0;
    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, CR_HOOK_FN_ERROR) == CR_HOOK_FN_ERROR && errno == EINVAL,
          "cr_register_hook(fn = CR_HOOK_FN_ERROR): want CR_HOOK_FN_ERROR/EINVAL (errno %s)", ename(errno));
    CHECK(cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, dummy_hook) == NULL, "first hook: previous is not NULL");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, other_hook) == dummy_hook, "second hook: previous is wrong");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, NULL) == other_hook, "third hook: previous is wrong");
    say("cr_register_hook: bad event or fn EINVAL; returns the previous hook");

    /* ---- critical sections without a checkpoint ---- */
    EXPECT_RET(cr_enter_cs(id), 0);
    EXPECT_RET(cr_enter_cs(id), 0);
    rc = cr_status();
    CHECK(rc == CR_STATE_IDLE, "cr_status() in a critical section without a request is %d", rc);
    EXPECT_RET(cr_leave_cs(id), 0);
    EXPECT_RET(cr_leave_cs(id), 0);
    EXPECT_RET(cr_tryenter_cs(id), 0);
    EXPECT_RET(cr_leave_cs(id), 0);
    EXPECT_RET(cr_enter_cs(CR_ID_CALLBACK), 0);
    EXPECT_RET(cr_leave_cs(CR_ID_CALLBACK), 0);
    say("cr_enter_cs/cr_tryenter_cs/cr_leave_cs return 0 when nothing is pending");

    /* ---- persist counts ---- */
    EXPECT_RET(cr_inc_persist(), 0);
    EXPECT_RET(cr_inc_persist(), 1);
    EXPECT_RET(cr_dec_persist(), 2);
    EXPECT_RET(cr_dec_persist(), 1);
    EXPECT_ERR(cr_dec_persist(), -1, ERANGE);
    say("cr_inc_persist/cr_dec_persist return the previous count; underflow is ERANGE");

    /* ---- hold control ---- */
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, CR_HOLD_READ), CR_HOLD_DFLT);
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_INIT, CR_HOLD_READ), CR_HOLD_BOTH);
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_UNINIT, CR_HOLD_READ), CR_HOLD_BOTH);
    EXPECT_ERR(cr_hold_ctrl(CR_HOLD_SCOPE_INIT, CR_HOLD_DFLT), -1, EINVAL);
    EXPECT_ERR(cr_hold_ctrl(3, CR_HOLD_READ), -1, EINVAL);
    EXPECT_ERR(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, 8), -1, EINVAL);
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, CR_HOLD_NONE), CR_HOLD_DFLT);
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, CR_HOLD_DFLT), CR_HOLD_NONE);
    EXPECT_RET(cr_hold_ctrl(CR_HOLD_SCOPE_THREAD, CR_HOLD_READ), CR_HOLD_DFLT);
    say("cr_hold_ctrl: defaults DFLT/BOTH/BOTH, returns the previous value, bad scope/flags EINVAL");

    /* ---- spinlocks ---- */
    CHECK(cr_spinlock_trylock(&lock) != 0, "trylock of an unlocked spinlock failed");
    CHECK(cr_spinlock_trylock(&lock) == 0, "trylock of a locked spinlock succeeded");
    cr_spinlock_unlock(&lock);
    cr_spinlock_lock(&lock);
    CHECK(cr_spinlock_trylock(&lock) == 0, "trylock after lock succeeded");
    cr_spinlock_unlock(&lock);
    cr_spinlock_init(&lock);
    CHECK(lock == CR_SPINLOCK_INITIALIZER, "cr_spinlock_init left %#x", lock);
    CHECK(cr_spinlock_trylock(&lock) != 0, "trylock after init failed");
    cr_spinlock_unlock(&lock);
    say("cr_spinlock_*: trylock/lock/unlock/init behave");

    close(devnull);
    say("DONE");
    return 0;
}
