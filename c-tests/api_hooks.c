/* api_hooks (BLCR's hooks test, continue half; the restart half is in api_restart):
 * cr_register_hook() installs process-wide hooks that run in each thread after its callbacks,
 * with the event as argument:
 *  - CR_HOOK_CONT_SIGNAL_CONTEXT in threads that called cr_init() (the main thread, which has a
 *    signal-context callback, and a second initialised thread without callbacks: in BLCR such a
 *    thread runs the signal-context path with an empty list);
 *  - CR_HOOK_CONT_THREAD_CONTEXT in libcr's thread that runs the thread-context callbacks;
 *  - CR_HOOK_CONT_NO_CALLBACKS in a thread that never called cr_init();
 *  - no RSTRT hook on the continue path; no hook at all when the checkpoint failed (TEMP);
 *  - registration returns the previous hook (NULL at first); bad events give
 *    CR_HOOK_FN_ERROR/EINVAL; a hook reset to NULL no longer runs.
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
#include <sys/syscall.h>
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

struct hook_ev {
    int slot;       /* which hook function ran (the event it was registered for) */
    int arg;        /* the event it was called with */
    pid_t tid;
};
#define MAX_EV 64
static struct hook_ev evs[MAX_EV];
static int nev;

static pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static void rec(int slot, cr_hook_event_t ev)
{
    int i = __atomic_fetch_add(&nev, 1, __ATOMIC_SEQ_CST);
    if (i < MAX_EV) {
        evs[i].slot = slot;
        evs[i].arg = (int)ev;
        evs[i].tid = my_tid();
    }
}

static void h_cont_sig(cr_hook_event_t ev) { rec(CR_HOOK_CONT_SIGNAL_CONTEXT, ev); }
static void h_cont_thr(cr_hook_event_t ev) { rec(CR_HOOK_CONT_THREAD_CONTEXT, ev); }
static void h_cont_nocb(cr_hook_event_t ev) { rec(CR_HOOK_CONT_NO_CALLBACKS, ev); }
static void h_rstrt_sig(cr_hook_event_t ev) { rec(CR_HOOK_RSTRT_SIGNAL_CONTEXT, ev); }
static void h_rstrt_thr(cr_hook_event_t ev) { rec(CR_HOOK_RSTRT_THREAD_CONTEXT, ev); }
static void h_rstrt_nocb(cr_hook_event_t ev) { rec(CR_HOOK_RSTRT_NO_CALLBACKS, ev); }
static void h_tmp(cr_hook_event_t ev) { (void)ev; FAIL("a replaced hook ran"); }

static volatile int cb_flag = CR_CHECKPOINT_READY;
static volatile pid_t helper_tid;       /* thread that ran the thread-context callback */

static int sig_cb(void *arg)
{
    (void)arg;
    (void)cr_checkpoint(cb_flag);
    return 0;
}

static int thr_cb(void *arg)
{
    (void)arg;
    helper_tid = my_tid();
    (void)cr_checkpoint(CR_CHECKPOINT_READY);
    return 0;
}

static volatile int stop_threads;
static volatile pid_t tid_uninit, tid_init;

static void *uninit_thread(void *arg)
{
    (void)arg;
    tid_uninit = my_tid();
    while (!stop_threads) sleep_ms(1);
    return NULL;
}

static void *init_thread(void *arg)
{
    (void)arg;
    if (cr_init() < 0) FAIL("cr_init() in the second thread failed (errno %s)", ename(errno));
    tid_init = my_tid();
    while (!stop_threads) sleep_ms(1);
    return NULL;
}

static int checkpoint(const char *fname, int *err)
{
    cr_checkpoint_handle_t h;
    int fd = open_ctx(fname), rc;
    nev = 0;
    rc = request_self(fd, 0, &h);
    CHECK(rc == 0, "cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    rc = poll_done(&h);
    *err = errno;
    close(fd);
    return rc;
}

/* Number of recorded events of `slot` in thread `tid` (tid 0: any thread not in `known`). */
static int count(int slot, pid_t tid, const pid_t *known, int nknown)
{
    int i, j, n = 0;
    for (i = 0; i < nev && i < MAX_EV; i++) {
        int other = 1;
        for (j = 0; j < nknown; j++)
            if (evs[i].tid == known[j]) other = 0;
        if (evs[i].slot == slot && (tid ? evs[i].tid == tid : other)) n++;
    }
    return n;
}

int main(void)
{
    char fname[64];
    pthread_t t1, t2;
    pid_t main_tid = my_tid(), known[3];
    int id, rc, err, i, ignored;
    long deadline;

    note("ST_ALARM:120");
    say("api_hooks started");
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(cr_register_callback(sig_cb, NULL, CR_SIGNAL_CONTEXT) >= 0, "register signal callback (errno %s)", ename(errno));
    CHECK(cr_register_callback(thr_cb, NULL, CR_THREAD_CONTEXT) >= 0, "register thread callback (errno %s)", ename(errno));
    say("cr_init(); one signal-context and one thread-context callback");

    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, h_tmp) == NULL, "first cr_register_hook did not return NULL");
    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, h_cont_sig) == h_tmp,
          "cr_register_hook did not return the previous hook");
    CHECK(cr_register_hook(CR_HOOK_CONT_THREAD_CONTEXT, h_cont_thr) == NULL, "CONT_THREAD: previous not NULL");
    CHECK(cr_register_hook(CR_HOOK_CONT_NO_CALLBACKS, h_cont_nocb) == NULL, "CONT_NO_CALLBACKS: previous not NULL");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_SIGNAL_CONTEXT, h_rstrt_sig) == NULL, "RSTRT_SIGNAL: previous not NULL");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_THREAD_CONTEXT, h_rstrt_thr) == NULL, "RSTRT_THREAD: previous not NULL");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, h_rstrt_nocb) == NULL, "RSTRT_NO_CALLBACKS: previous not NULL");
    say("six hooks registered; the first registration returned NULL, the next the previous hook");
    errno = 0;
    CHECK(cr_register_hook(CR_NUM_HOOKS, h_tmp) == CR_HOOK_FN_ERROR && errno == EINVAL,
          "cr_register_hook(CR_NUM_HOOKS) did not fail with EINVAL (errno %s)", ename(errno));
    errno = 0;
    CHECK(cr_register_hook((cr_hook_event_t)-1, h_tmp) == CR_HOOK_FN_ERROR && errno == EINVAL,
          "cr_register_hook(-1) did not fail with EINVAL (errno %s)", ename(errno));
    say("cr_register_hook with an invalid event returns CR_HOOK_FN_ERROR with EINVAL");

    CHECK(pthread_create(&t1, NULL, uninit_thread, NULL) == 0, "pthread_create");
    CHECK(pthread_create(&t2, NULL, init_thread, NULL) == 0, "pthread_create");
    deadline = now_ms() + 10000;
    while ((!tid_uninit || !tid_init) && now_ms() < deadline) sleep_ms(1);
    CHECK(tid_uninit && tid_init, "the threads did not start");
    known[0] = main_tid;
    known[1] = tid_uninit;
    known[2] = tid_init;
    say("a thread without cr_init() and an initialised thread without callbacks are running");

    /* ---- a successful checkpoint ---- */
    rc = checkpoint(fname, &err);
    CHECK(rc == 1, "cr_poll_checkpoint returned %d (errno %s)", rc, ename(err));
    deadline = now_ms() + 5000;
    while (nev < 4 && now_ms() < deadline) sleep_ms(2);
    sleep_ms(200);
    for (i = 0; i < nev && i < MAX_EV; i++)
        CHECK(evs[i].slot == evs[i].arg, "hook for event %d was called with event %d", evs[i].slot, evs[i].arg);
    say("checkpoint done; every hook got its own event as argument");
    CHECK(count(CR_HOOK_CONT_SIGNAL_CONTEXT, main_tid, known, 3) == 1,
          "CONT_SIGNAL_CONTEXT ran %d times in the main thread, expected 1", count(CR_HOOK_CONT_SIGNAL_CONTEXT, main_tid, known, 3));
    CHECK(nev < MAX_EV, "too many hook events: %d", nev);
    for (i = 0; i < nev; i++)
        CHECK(evs[i].tid != main_tid || evs[i].slot == CR_HOOK_CONT_SIGNAL_CONTEXT,
              "hook %d ran in the main thread", evs[i].slot);
    say("main thread: CR_HOOK_CONT_SIGNAL_CONTEXT once, nothing else");
    CHECK(helper_tid != 0 && helper_tid != main_tid && helper_tid != tid_uninit && helper_tid != tid_init,
          "the thread-context callback ran in thread %d (main %d)", (int)helper_tid, (int)main_tid);
    CHECK(count(CR_HOOK_CONT_THREAD_CONTEXT, helper_tid, known, 0) == 1,
          "CONT_THREAD_CONTEXT ran %d times in the callback thread, expected 1",
          count(CR_HOOK_CONT_THREAD_CONTEXT, helper_tid, known, 0));
    CHECK(count(CR_HOOK_CONT_THREAD_CONTEXT, 0, known, 0) == 1, "CONT_THREAD_CONTEXT ran %d times in all, expected 1",
          count(CR_HOOK_CONT_THREAD_CONTEXT, 0, known, 0));
    say("callback thread: CR_HOOK_CONT_THREAD_CONTEXT once");
    CHECK(count(CR_HOOK_CONT_NO_CALLBACKS, tid_uninit, known, 3) == 1,
          "CONT_NO_CALLBACKS ran %d times in the thread without cr_init, expected 1",
          count(CR_HOOK_CONT_NO_CALLBACKS, tid_uninit, known, 3));
    for (i = 0; i < nev; i++)
        CHECK(evs[i].tid != tid_uninit || evs[i].slot == CR_HOOK_CONT_NO_CALLBACKS,
              "hook %d ran in the thread without cr_init", evs[i].slot);
    say("thread without cr_init(): CR_HOOK_CONT_NO_CALLBACKS once, nothing else");
    for (i = CR_HOOK_RSTRT_SIGNAL_CONTEXT; i <= CR_HOOK_RSTRT_NO_CALLBACKS; i++)
        CHECK(count(i, 0, known, 0) == 0, "restart hook %d ran on the continue path", i);
    ignored = count(CR_HOOK_CONT_NO_CALLBACKS, 0, known, 3);
    if (ignored) note("ignored %d CR_HOOK_CONT_NO_CALLBACKS events of other (library) threads", ignored);
    CHECK(count(CR_HOOK_CONT_SIGNAL_CONTEXT, 0, known, 3) == 0, "CONT_SIGNAL_CONTEXT ran in an unknown thread");
    say("no restart hook ran");
    CHECK(count(CR_HOOK_CONT_SIGNAL_CONTEXT, tid_init, known, 3) == 1,
          "initialised thread without callbacks: CONT_SIGNAL_CONTEXT ran %d times (events there: NO_CALLBACKS %d), "
          "expected 1 as in BLCR",
          count(CR_HOOK_CONT_SIGNAL_CONTEXT, tid_init, known, 3), count(CR_HOOK_CONT_NO_CALLBACKS, tid_init, known, 3));
    for (i = 0; i < nev; i++)
        CHECK(evs[i].tid != tid_init || evs[i].slot == CR_HOOK_CONT_SIGNAL_CONTEXT,
              "hook %d ran in the initialised thread without callbacks", evs[i].slot);
    say("initialised thread without callbacks: CR_HOOK_CONT_SIGNAL_CONTEXT once");

    /* ---- a failed checkpoint runs no hook ---- */
    cb_flag = CR_CHECKPOINT_TEMP_FAILURE;
    rc = checkpoint(fname, &err);
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && err == CR_ETEMPFAIL, "TEMP: poll returned %d errno %s", rc, ename(err));
    sleep_ms(300);
    CHECK(nev == 0, "%d hooks ran for a cancelled checkpoint (first: event %d)", nev, evs[0].slot);
    say("a checkpoint cancelled with TEMP_FAILURE ran no hook");
    cb_flag = CR_CHECKPOINT_READY;

    /* ---- a hook reset to NULL no longer runs ---- */
    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, NULL) == h_cont_sig, "resetting the hook returned the wrong previous hook");
    rc = checkpoint(fname, &err);
    CHECK(rc == 1, "cr_poll_checkpoint returned %d (errno %s)", rc, ename(err));
    deadline = now_ms() + 5000;
    while (nev < 2 && now_ms() < deadline) sleep_ms(2);
    sleep_ms(200);
    CHECK(count(CR_HOOK_CONT_SIGNAL_CONTEXT, 0, known, 0) == 0, "CONT_SIGNAL_CONTEXT ran after being reset to NULL");
    CHECK(count(CR_HOOK_CONT_THREAD_CONTEXT, helper_tid, known, 0) == 1, "CONT_THREAD_CONTEXT did not run once");
    CHECK(count(CR_HOOK_CONT_NO_CALLBACKS, tid_uninit, known, 3) == 1, "CONT_NO_CALLBACKS did not run once");
    say("after cr_register_hook(CONT_SIGNAL_CONTEXT, NULL) only the other hooks ran");

    stop_threads = 1;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    unlink(fname);
    say("DONE");
    return 0;
}
