/* api_cs_stress (BLCR's cs_enter_leave, cs_enter_leave2 and cr_tryenter_cs):
 * for DURATION seconds a second thread checkpoints the process into /dev/null over and over
 * (request + poll, waiting for the main thread to get through at least one critical section
 * between two requests), while the main thread loops entering and leaving a critical section.
 * Usage: api_cs_stress [DURATION [thread|signal|tryenter]]
 *   thread:   a thread-context callback (cs_enter_leave), main uses cr_enter_cs;
 *   signal:   a signal-context callback registered by the requesting thread (cs_enter_leave2);
 *   tryenter: thread-context callback, main retries cr_tryenter_cs while it returns 1.
 * Checks: checkpoints complete (> 0), every one ran the callback exactly once with
 * cr_checkpoint() == 0, no checkpoint while main was inside its critical section, no error,
 * no deadlock (#ST_ALARM).  Output is deterministic: results only at the end.
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
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

static int duration = 30;
static const char *mode = "thread";
static volatile int main_in_cs;
static volatile int dummy;
static volatile int done;
static int cb_runs, cb_in_cs, cb_bad_rc, completed, would_block;
static int req_errors;
static char req_error_msg[256];

static int callback(void *arg)
{
    int rc;
    (void)arg;
    if (__atomic_load_n(&main_in_cs, __ATOMIC_SEQ_CST)) __atomic_fetch_add(&cb_in_cs, 1, __ATOMIC_SEQ_CST);
    rc = cr_checkpoint(CR_CHECKPOINT_READY);
    if (rc != 0) __atomic_fetch_add(&cb_bad_rc, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&cb_runs, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void *requester(void *arg)
{
    cr_checkpoint_handle_t h;
    long end, deadline;
    int fd, rc;
    (void)arg;

    if (cr_init() < 0) {
        snprintf(req_error_msg, sizeof req_error_msg, "cr_init() in the requester failed (errno %s)", ename(errno));
        req_errors++;
        goto out;
    }
    if (strcmp(mode, "signal") == 0 && cr_register_callback(callback, NULL, CR_SIGNAL_CONTEXT) < 0) {
        snprintf(req_error_msg, sizeof req_error_msg, "cr_register_callback failed (errno %s)", ename(errno));
        req_errors++;
        goto out;
    }
    fd = open("/dev/null", O_WRONLY);
    end = now_ms() + duration * 1000L;
    while (now_ms() < end) {
        int prev = dummy;
        rc = request_self(fd, 0, &h);
        if (rc != 0) {
            snprintf(req_error_msg, sizeof req_error_msg, "request %d: cr_request_checkpoint returned %d (errno %s)",
                     completed, rc, ename(errno));
            req_errors++;
            break;
        }
        rc = poll_done(&h);
        if (rc != 1) {
            snprintf(req_error_msg, sizeof req_error_msg, "request %d: cr_poll_checkpoint returned %d (errno %s)",
                     completed, rc, ename(errno));
            req_errors++;
            break;
        }
        completed++;
        deadline = now_ms() + 10000;
        while (dummy == prev && now_ms() < deadline) sched_yield();
        if (dummy == prev) {
            snprintf(req_error_msg, sizeof req_error_msg, "after request %d the main thread made no progress for 10 s",
                     completed);
            req_errors++;
            break;
        }
    }
    close(fd);
out:
    __atomic_store_n(&done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;
    int id, rc;

    if (argc > 1) duration = atoi(argv[1]);
    if (argc > 2) mode = argv[2];
    if (duration <= 0) duration = 30;
    note("ST_ALARM:%d", duration + 30);
    CHECK(strcmp(mode, "thread") == 0 || strcmp(mode, "signal") == 0 || strcmp(mode, "tryenter") == 0,
          "bad mode %s", mode);
    say("api_cs_stress (%s) started", mode);

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    if (strcmp(mode, "signal") != 0)
        CHECK(cr_register_callback(callback, NULL, CR_THREAD_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    CHECK(pthread_create(&t, NULL, requester, NULL) == 0, "pthread_create");
    say("requester thread started");

    while (!__atomic_load_n(&done, __ATOMIC_SEQ_CST)) {
        if (strcmp(mode, "tryenter") == 0) {
            while ((rc = cr_tryenter_cs(id)) == 1) {
                would_block++;
                sched_yield();
            }
            CHECK(rc == 0, "cr_tryenter_cs returned %d (errno %s)", rc, ename(errno));
        } else {
            rc = cr_enter_cs(id);
            CHECK(rc == 0, "cr_enter_cs returned %d (errno %s)", rc, ename(errno));
        }
        __atomic_store_n(&main_in_cs, 1, __ATOMIC_SEQ_CST);
        dummy = dummy + 1;
        __atomic_store_n(&main_in_cs, 0, __ATOMIC_SEQ_CST);
        rc = cr_leave_cs(id);
        CHECK(rc == 0, "cr_leave_cs returned %d (errno %s)", rc, ename(errno));
    }
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    for (rc = 0; rc < 5000 && __atomic_load_n(&cb_runs, __ATOMIC_SEQ_CST) < completed; rc++) sleep_ms(1);
    note("%d checkpoints completed in %d s; %d callback runs; %d critical sections; tryenter would-block %d",
         completed, duration, cb_runs, dummy, would_block);

    CHECK(req_errors == 0, "%s", req_error_msg);
    say("no request or poll failed, the main thread never stalled");
    CHECK(completed > 0, "no checkpoint completed in %d s", duration);
    say("checkpoints completed: OK");
    CHECK(cb_runs == completed, "the callback ran %d times for %d checkpoints", cb_runs, completed);
    CHECK(cb_bad_rc == 0, "cr_checkpoint() in the callback returned non-zero %d times", cb_bad_rc);
    say("the callback ran once per checkpoint and cr_checkpoint() returned 0: OK");
    CHECK(cb_in_cs == 0, "%d checkpoints ran while the main thread was inside its critical section", cb_in_cs);
    say("no checkpoint while the main thread was inside a critical section: OK");
    say("DONE");
    return 0;
}
