/* api_order (BLCR's replace_cb and the callback model of §1.6): the order in which callbacks run.
 * Three signal-context callbacks A, B, C and two thread-context callbacks X, Y (registered in that
 * order).  Every callback records "before" and "after" events around its cr_checkpoint() call; the
 * checks run after each self-checkpoint:
 *  - every thread-context "before" precedes every signal-context "before" (BLCR's barrier);
 *  - within a list the "before" parts run last-registered first (Y X, C B A), the "after" parts
 *    unwind first-registered first (X Y, A B C); every "before" precedes every "after";
 *  - signal-context callbacks run in the registering (main) thread, thread-context ones elsewhere;
 *  - ids: first signal callback 0x2000000, first thread callback 0x4000000;
 *  - inside a callback cr_register_callback/cr_replace_callback fail with EBUSY;
 *  - round 2: cr_replace_callback(B, NULL) disables B; C and X replaced by callbacks that return
 *    without calling cr_checkpoint(): the next callback of the list still runs;
 *  - round 3: everything restored (B runs at its old position again); A and Y call
 *    cr_replace_self() before their cr_checkpoint(), C after it; cr_replace_self with the other
 *    context fails with EINVAL; round 4 runs the replacements A2, C2, Y2 at the same positions;
 *  - with the default hold (CR_HOLD_BOTH) every callback has finished when the request returns.
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

enum { NORMAL, NOOP };

struct desc {
    const char *name;
    int ctx;                        /* CR_SIGNAL_CONTEXT or CR_THREAD_CONTEXT */
    int mode;                       /* NORMAL or NOOP (returns without cr_checkpoint) */
    struct desc *replace_before;    /* cr_replace_self() before cr_checkpoint() */
    struct desc *replace_after;     /* cr_replace_self() after cr_checkpoint() */
    int try_register;               /* try cr_register_callback/cr_replace_callback (EBUSY) */
    /* results */
    int replace_rc, wrong_rc, wrong_errno, reg_rc, reg_errno, repl_rc, repl_errno;
};

struct event {
    const struct desc *d;
    char phase;                     /* '<' before, '>' after, 'n' noop */
    int rc;                         /* cr_checkpoint() result for '>' */
};

#define MAX_EVENTS 64
static struct event events[MAX_EVENTS];
static int nevents;
static int wrong_thread;            /* a callback ran in the wrong thread */
static pthread_t main_thread;

static void record(const struct desc *d, char phase, int rc)
{
    int i = __atomic_fetch_add(&nevents, 1, __ATOMIC_SEQ_CST);
    if (i < MAX_EVENTS) {
        events[i].d = d;
        events[i].phase = phase;
        events[i].rc = rc;
    }
}

static int other_ctx(int ctx)
{
    return ctx == CR_SIGNAL_CONTEXT ? CR_THREAD_CONTEXT : CR_SIGNAL_CONTEXT;
}

static int generic_cb(void *arg);

static int noop_cb(void *arg)
{
    (void)arg;
    return 0;
}

static int generic_cb(void *arg)
{
    struct desc *d = arg;
    int in_main = pthread_equal(pthread_self(), main_thread);
    int rc;

    if ((d->ctx == CR_SIGNAL_CONTEXT) != (in_main != 0))
        __atomic_fetch_add(&wrong_thread, 1, __ATOMIC_SEQ_CST);
    if (d->mode == NOOP) {
        record(d, 'n', 0);
        return 0;
    }
    if (d->try_register) {
        errno = 0;
        d->reg_rc = cr_register_callback(noop_cb, NULL, d->ctx);
        d->reg_errno = errno;
        errno = 0;
        d->repl_rc = cr_replace_callback(CR_SIGNAL_CONTEXT, noop_cb, NULL, CR_SIGNAL_CONTEXT);
        d->repl_errno = errno;
    }
    if (d->replace_before) {
        errno = 0;
        d->wrong_rc = cr_replace_self(generic_cb, d->replace_before, other_ctx(d->ctx));
        d->wrong_errno = errno;
        d->replace_rc = cr_replace_self(generic_cb, d->replace_before, d->ctx);
    }
    record(d, '<', 0);
    rc = cr_checkpoint(CR_CHECKPOINT_READY);
    record(d, '>', rc);
    if (d->replace_after) {
        errno = 0;
        d->wrong_rc = cr_replace_self(generic_cb, d->replace_after, other_ctx(d->ctx));
        d->wrong_errno = errno;
        d->replace_rc = cr_replace_self(generic_cb, d->replace_after, d->ctx);
    }
    return 0;
}

static struct desc A = { "A", CR_SIGNAL_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc B = { "B", CR_SIGNAL_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc C = { "C", CR_SIGNAL_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc X = { "X", CR_THREAD_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc Y = { "Y", CR_THREAD_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc Cn = { "Cn", CR_SIGNAL_CONTEXT, NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc Xn = { "Xn", CR_THREAD_CONTEXT, NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc A2 = { "A2", CR_SIGNAL_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc C2 = { "C2", CR_SIGNAL_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
static struct desc Y2 = { "Y2", CR_THREAD_CONTEXT, NORMAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };

static void dump_events(char *buf, size_t len)
{
    int i, n = nevents < MAX_EVENTS ? nevents : MAX_EVENTS;
    size_t used = 0;
    buf[0] = '\0';
    for (i = 0; i < n && used + 16 < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s%c", i ? " " : "", events[i].d->name,
                                 events[i].phase);
}

/* The names of the events selected by `want`, space-separated. */
static void pick(char *buf, size_t len, int (*want)(const struct event *))
{
    int i, n = nevents < MAX_EVENTS ? nevents : MAX_EVENTS;
    size_t used = 0;
    buf[0] = '\0';
    for (i = 0; i < n && used + 8 < len; i++)
        if (want(&events[i]))
            used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? " " : "", events[i].d->name);
}

static int is_before(const struct event *e) { return e->phase == '<' || e->phase == 'n'; }
static int is_sig_after(const struct event *e) { return e->phase == '>' && e->d->ctx == CR_SIGNAL_CONTEXT; }
static int is_thr_after(const struct event *e) { return e->phase == '>' && e->d->ctx == CR_THREAD_CONTEXT; }

static int all_finished_at_return = 1;

/* One self-checkpoint; then the recorded order must match. */
static void round_(int n, const char *before, const char *sig_after, const char *thr_after, int total)
{
    char fname[64], got[512], all[1024];
    cr_checkpoint_handle_t h;
    int fd, rc, i, seen_after;
    long deadline;

    nevents = 0;
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());
    fd = open_ctx(fname);
    rc = request_self(fd, 0, &h);
    CHECK(rc == 0, "round %d: cr_request_checkpoint returned %d (errno %s)", n, rc, ename(errno));
    if (__atomic_load_n(&nevents, __ATOMIC_SEQ_CST) != total) all_finished_at_return = 0;
    rc = poll_done(&h);
    CHECK(rc == 1, "round %d: cr_poll_checkpoint returned %d (errno %s)", n, rc, ename(errno));
    close(fd);
    deadline = now_ms() + 10000;
    while (__atomic_load_n(&nevents, __ATOMIC_SEQ_CST) < total && now_ms() < deadline) sleep_ms(5);
    dump_events(all, sizeof all);
    CHECK(nevents == total, "round %d: %d callback events, expected %d: %s", n, nevents, total, all);
    CHECK(wrong_thread == 0, "round %d: %d callbacks ran in the wrong thread", n, wrong_thread);
    for (i = 0; i < total; i++)
        CHECK(events[i].phase != '>' || events[i].rc == 0, "round %d: %s: cr_checkpoint returned %d", n,
              events[i].d->name, events[i].rc);
    pick(got, sizeof got, is_before);
    CHECK(strcmp(got, before) == 0, "round %d: before parts ran as \"%s\", expected \"%s\" (all: %s)", n, got,
          before, all);
    for (i = 0, seen_after = 0; i < total; i++) {
        CHECK(!(is_before(&events[i]) && seen_after), "round %d: a before part ran after an after part: %s", n, all);
        seen_after |= events[i].phase == '>';
    }
    say("round %d: before parts in order %s (thread context first, LIFO)", n, before);
    pick(got, sizeof got, is_sig_after);
    CHECK(strcmp(got, sig_after) == 0, "round %d: signal-context after parts ran as \"%s\", expected \"%s\" (all: %s)",
          n, got, sig_after, all);
    pick(got, sizeof got, is_thr_after);
    CHECK(strcmp(got, thr_after) == 0, "round %d: thread-context after parts ran as \"%s\", expected \"%s\" (all: %s)",
          n, got, thr_after, all);
    say("round %d: after parts unwind FIFO: signal %s, thread %s; cr_checkpoint() returned 0", n, sig_after,
        thr_after);
    unlink(fname);
}

int main(void)
{
    cr_callback_id_t ida, idb, idc, idx, idy;
    int id;

    note("ST_ALARM:120");
    main_thread = pthread_self();
    say("api_order started");

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    ida = cr_register_callback(generic_cb, &A, CR_SIGNAL_CONTEXT);
    idb = cr_register_callback(generic_cb, &B, CR_SIGNAL_CONTEXT);
    idc = cr_register_callback(generic_cb, &C, CR_SIGNAL_CONTEXT);
    idx = cr_register_callback(generic_cb, &X, CR_THREAD_CONTEXT);
    idy = cr_register_callback(generic_cb, &Y, CR_THREAD_CONTEXT);
    CHECK(ida == 0x2000000 && idb == 0x2000001 && idc == 0x2000002,
          "signal callback ids %#x %#x %#x, expected 0x2000000..2", ida, idb, idc);
    CHECK(idx == 0x4000000 && idy == 0x4000001, "thread callback ids %#x %#x, expected 0x4000000..1", idx, idy);
    say("callback ids: A B C = 0x2000000..0x2000002, X Y = 0x4000000..0x4000001");

    /* round 1: all five; A also tries to register/replace from inside the callback */
    A.try_register = 1;
    round_(1, "Y X C B A", "A B C", "X Y", 10);
    A.try_register = 0;
    CHECK(A.reg_rc == -1 && A.reg_errno == EBUSY, "cr_register_callback inside a callback returned %d errno %s, expected -1 EBUSY",
          A.reg_rc, ename(A.reg_errno));
    CHECK(A.repl_rc == -1 && A.repl_errno == EBUSY, "cr_replace_callback inside a callback returned %d errno %s, expected -1 EBUSY",
          A.repl_rc, ename(A.repl_errno));
    say("inside a callback cr_register_callback and cr_replace_callback fail with EBUSY");

    /* round 2: B disabled; C and X return without calling cr_checkpoint() */
    EXPECT_RET(cr_replace_callback(idb, NULL, NULL, CR_SIGNAL_CONTEXT), 0);
    EXPECT_RET(cr_replace_callback(idc, generic_cb, &Cn, CR_SIGNAL_CONTEXT), 0);
    EXPECT_RET(cr_replace_callback(idx, generic_cb, &Xn, CR_THREAD_CONTEXT), 0);
    say("cr_replace_callback: B -> NULL, C -> no-op, X -> no-op");
    round_(2, "Y Xn Cn A", "A", "Y", 6);
    say("round 2: B did not run; the callbacks after the no-ops still ran");

    /* round 3: back to the originals; replace_self from before and after parts */
    EXPECT_RET(cr_replace_callback(idb, generic_cb, &B, CR_SIGNAL_CONTEXT), 0);
    EXPECT_RET(cr_replace_callback(idc, generic_cb, &C, CR_SIGNAL_CONTEXT), 0);
    EXPECT_RET(cr_replace_callback(idx, generic_cb, &X, CR_THREAD_CONTEXT), 0);
    A.replace_before = &A2;
    Y.replace_before = &Y2;
    C.replace_after = &C2;
    A.replace_rc = Y.replace_rc = C.replace_rc = -2;
    round_(3, "Y X C B A", "A B C", "X Y", 10);
    say("round 3: B runs again at its old position");
    CHECK(A.replace_rc == 0, "cr_replace_self in A (before cr_checkpoint) returned %d", A.replace_rc);
    CHECK(Y.replace_rc == 0, "cr_replace_self in Y (thread context, before cr_checkpoint) returned %d", Y.replace_rc);
    CHECK(C.replace_rc == 0, "cr_replace_self in C (after cr_checkpoint) returned %d", C.replace_rc);
    say("cr_replace_self() returned 0 before (A, Y) and after (C) cr_checkpoint()");
    CHECK(A.wrong_rc == -1 && A.wrong_errno == EINVAL, "cr_replace_self(CR_THREAD_CONTEXT) in a signal callback returned %d errno %s",
          A.wrong_rc, ename(A.wrong_errno));
    CHECK(C.wrong_rc == -1 && C.wrong_errno == EINVAL, "cr_replace_self(CR_THREAD_CONTEXT) in C's after part returned %d errno %s",
          C.wrong_rc, ename(C.wrong_errno));
    CHECK(Y.wrong_rc == -1 && Y.wrong_errno == EINVAL, "cr_replace_self(CR_SIGNAL_CONTEXT) in a thread callback returned %d errno %s",
          Y.wrong_rc, ename(Y.wrong_errno));
    say("cr_replace_self() with the other context fails with EINVAL");

    /* round 4: the replacements run at the same positions */
    round_(4, "Y2 X C2 B A2", "A2 B C2", "X Y2", 10);
    say("round 4: A2, C2, Y2 replaced A, C, Y at their positions");

    CHECK(all_finished_at_return, "with the default hold some callbacks were still running when "
          "cr_request_checkpoint() returned");
    say("every callback had finished when cr_request_checkpoint() returned (default hold)");
    say("DONE");
    return 0;
}
