/* api_cs (BLCR's critical_sections, stage0002 and the CS rules of §1.5): critical sections
 * postpone checkpoints of the whole process, whoever requests them.
 * One thread-context callback (it also checks that cr_enter_cs/cr_tryenter_cs/cr_leave_cs with
 * CR_ID_CALLBACK return 0 at once inside a callback, and fork()+waitpid() work there).
 *  A. the main thread, inside a CS, requests its own checkpoint: postponed (PENDING, callback not
 *     run after 300 ms); cr_leave_cs lets it run; poll 1; file non-empty;
 *  B. a second thread requests while main holds a CS: postponed; a nested enter/leave in main keeps
 *     it postponed; a third thread's cr_tryenter_cs returns 1 (would block) and its cr_status() is
 *     PENDING; main's outermost leave lets it run; the requester's poll reports success;
 *  C. the real cr_checkpoint tool ($CR_CHECKPOINT) on our pid while main holds a CS: the tool does
 *     not finish before main leaves; then it exits 0 and the callback has run.
 * The callback must never run while main is inside its critical section, and runs exactly once per
 * checkpoint.
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

static volatile int tcb_count;          /* thread-context callback runs */
static volatile int main_in_cs;         /* main is between its outermost enter and leave */
static volatile int cb_in_cs_violation; /* the callback ran while main_in_cs */
static volatile int cb_idcb_errors;     /* CR_ID_CALLBACK calls that did not return 0 */
static volatile int cb_ckpt_rc = -12345;
static volatile int cb_fork_status = -1;

static int tcb(void *arg)
{
    int rc;
    (void)arg;
    if (main_in_cs) cb_in_cs_violation++;
    if (cr_enter_cs(CR_ID_CALLBACK) != 0) cb_idcb_errors++;
    if (cr_tryenter_cs(CR_ID_CALLBACK) != 0) cb_idcb_errors++;
    if (cr_leave_cs(CR_ID_CALLBACK) != 0) cb_idcb_errors++;
    if (cr_leave_cs(CR_ID_CALLBACK) != 0) cb_idcb_errors++;
    if (tcb_count == 0) {
        /* stage0002: fork() and waitpid() from a thread-context callback */
        pid_t p = fork();
        if (p == 0) _exit(7);
        if (p > 0) {
            int st;
            if (waitpid(p, &st, 0) == p && WIFEXITED(st)) cb_fork_status = WEXITSTATUS(st);
        }
    }
    rc = cr_checkpoint(CR_CHECKPOINT_READY);
    cb_ckpt_rc = rc;
    __atomic_fetch_add(&tcb_count, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static int wait_count(int want, long ms)
{
    long deadline = now_ms() + ms;
    while (__atomic_load_n(&tcb_count, __ATOMIC_SEQ_CST) < want && now_ms() < deadline) sleep_ms(2);
    return tcb_count;
}

static void wait_pending(const char *what)
{
    long deadline = now_ms() + 10000;
    int st;
    while ((st = cr_status()) != CR_STATE_PENDING && now_ms() < deadline) sleep_ms(2);
    CHECK(st == CR_STATE_PENDING, "%s: cr_status() in main never became PENDING (last %d)", what, st);
}

static void check_callback(const char *what, int want_count)
{
    CHECK(tcb_count == want_count, "%s: the callback ran %d times in all, expected %d", what, tcb_count, want_count);
    CHECK(cb_in_cs_violation == 0, "%s: the callback ran while main held its critical section", what);
    CHECK(cb_idcb_errors == 0, "%s: cr_*_cs(CR_ID_CALLBACK) inside the callback did not return 0", what);
    CHECK(cb_ckpt_rc == 0, "%s: cr_checkpoint() in the callback returned %d", what, cb_ckpt_rc);
}

/* ---- part B threads ---- */
static char fname_b[64];
static volatile int req_rc = -99, req_errno, poll_rc = -99, poll_errno, req_done;

static void *requester(void *arg)
{
    cr_checkpoint_handle_t h;
    int fd;
    (void)arg;
    if (cr_init() < 0) FAIL("cr_init() in the requester thread failed (errno %s)", ename(errno));
    fd = open_ctx(fname_b);
    req_rc = request_self(fd, 0, &h);
    req_errno = errno;
    if (req_rc == 0) {
        poll_rc = poll_done(&h);
        poll_errno = errno;
    }
    close(fd);
    req_done = 1;
    return NULL;
}

static volatile int try_rc = -99, try_errno, try_status = -99;

static void *tryer(void *arg)
{
    int id;
    (void)arg;
    id = cr_init();
    if (id < 0) FAIL("cr_init() in the tryenter thread failed (errno %s)", ename(errno));
    errno = 0;
    try_rc = cr_tryenter_cs(id);
    try_errno = errno;
    if (try_rc == 0) cr_leave_cs(id);   /* entered: leave again (and report it) */
    try_status = cr_status();
    return NULL;
}

static void timed_join(pthread_t t, long ms, const char *what)
{
    struct timespec ts;
    int rc;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    rc = pthread_timedjoin_np(t, NULL, &ts);
    CHECK(rc == 0, "%s did not finish within %ld ms (%s)", what, ms, strerror(rc));
}

int main(void)
{
    char fname[64], fname_c[64], pidstr[32];
    cr_checkpoint_handle_t h;
    pthread_t t_req, t_try;
    const char *tool;
    int id, rc, fd, st, n;
    pid_t child;
    long deadline;

    note("ST_ALARM:120");
    say("api_cs started");
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());
    snprintf(fname_b, sizeof fname_b, "context.%d.b", (int)getpid());
    snprintf(fname_c, sizeof fname_c, "context.%d.tool", (int)getpid());

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    rc = cr_register_callback(tcb, NULL, CR_THREAD_CONTEXT);
    CHECK(rc == CR_THREAD_CONTEXT, "cr_register_callback(CR_THREAD_CONTEXT) returned %#x (errno %s)", rc, ename(errno));
    say("cr_init() and cr_register_callback(CR_THREAD_CONTEXT) succeeded");

    /* ---- A: self-request from inside the critical section ---- */
    main_in_cs = 1;
    EXPECT_RET(cr_enter_cs(id), 0);
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "A: cr_status() in the critical section is %d, expected IDLE", st);
    fd = open_ctx(fname);
    rc = request_self(fd, 0, &h);
    CHECK(rc == 0, "A: cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    say("A: inside a critical section, cr_request_checkpoint() of ourselves returned 0");
    wait_pending("A");
    sleep_ms(300);
    CHECK(tcb_count == 0, "A: the thread-context callback ran while main held a critical section");
    st = cr_status();
    CHECK(st == CR_STATE_PENDING, "A: cr_status() is %d, expected CR_STATE_PENDING", st);
    say("A: cr_status() is CR_STATE_PENDING and after 300 ms the callback has not run");
    main_in_cs = 0;
    EXPECT_RET(cr_leave_cs(id), 0);
    n = wait_count(1, 10000);
    CHECK(n == 1, "A: the callback ran %d times within 10 s of cr_leave_cs()", n);
    rc = poll_done(&h);
    CHECK(rc == 1, "A: cr_poll_checkpoint returned %d (errno %s)", rc, ename(errno));
    CHECK(fd_size(fd) > 0, "A: %s is empty", fname);
    close(fd);
    check_callback("A", 1);
    CHECK(cb_fork_status == 7, "A: fork()+waitpid() in the thread-context callback gave %d, expected exit 7",
          cb_fork_status);
    say("A: after cr_leave_cs() the callback ran once (fork+waitpid worked in it); poll 1; file non-empty");
    st = cr_status();
    CHECK(st == CR_STATE_IDLE, "A: cr_status() afterwards is %d", st);

    /* ---- B: request from another thread; nesting; tryenter elsewhere ---- */
    main_in_cs = 1;
    EXPECT_RET(cr_enter_cs(id), 0);
    CHECK(pthread_create(&t_req, NULL, requester, NULL) == 0, "pthread_create");
    wait_pending("B");
    sleep_ms(300);
    CHECK(tcb_count == 1, "B: the callback ran while main held a critical section");
    say("B: request from a second thread is pending; the callback has not run after 300 ms");
    EXPECT_RET(cr_enter_cs(id), 0);
    sleep_ms(100);
    EXPECT_RET(cr_leave_cs(id), 0);
    sleep_ms(300);
    CHECK(tcb_count == 1, "B: the callback ran after the inner (nested) cr_leave_cs()");
    st = cr_status();
    CHECK(st == CR_STATE_PENDING, "B: cr_status() after the nested leave is %d, expected PENDING", st);
    say("B: a nested cr_enter_cs/cr_leave_cs did not let it run (still PENDING)");
    CHECK(pthread_create(&t_try, NULL, tryer, NULL) == 0, "pthread_create");
    timed_join(t_try, 10000, "B: the tryenter thread");
    CHECK(try_rc == 1, "B: cr_tryenter_cs() in another thread returned %d (errno %s), expected 1 (would block)",
          try_rc, ename(try_errno));
    CHECK(try_status == CR_STATE_PENDING, "B: cr_status() in the other thread is %d, expected PENDING", try_status);
    CHECK(tcb_count == 1, "B: the callback ran before main left its critical section");
    say("B: cr_tryenter_cs() in a third thread returned 1 and its cr_status() is CR_STATE_PENDING");
    main_in_cs = 0;
    EXPECT_RET(cr_leave_cs(id), 0);
    n = wait_count(2, 10000);
    CHECK(n == 2, "B: the callback ran %d times in all within 10 s of the outermost leave, expected 2", n);
    timed_join(t_req, 30000, "B: the requester thread");
    CHECK(req_rc == 0, "B: cr_request_checkpoint in the second thread returned %d (errno %s)", req_rc,
          ename(req_errno));
    CHECK(poll_rc == 1, "B: cr_poll_checkpoint in the second thread returned %d (errno %s)", poll_rc,
          ename(poll_errno));
    check_callback("B", 2);
    say("B: the outermost cr_leave_cs() let it run; the requester's poll returned 1");

    /* ---- C: the cr_checkpoint tool while main holds a critical section ---- */
    tool = getenv("CR_CHECKPOINT");
    CHECK(tool && *tool, "CR_CHECKPOINT (path of the cr_checkpoint tool) is not set");
    snprintf(pidstr, sizeof pidstr, "%d", (int)getpid());
    unlink(fname_c);
    main_in_cs = 1;
    EXPECT_RET(cr_enter_cs(id), 0);
    child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        dup2(2, 1);   /* keep our stdout (the SEQ stream) clean */
        execl(tool, "cr_checkpoint", "-f", fname_c, pidstr, (char *)NULL);
        _exit(127);
    }
    wait_pending("C");
    sleep_ms(300);
    rc = waitpid(child, &st, WNOHANG);
    CHECK(rc == 0, "C: cr_checkpoint finished (status %#x) while we held a critical section", st);
    CHECK(tcb_count == 2, "C: the callback ran while main held a critical section");
    say("C: cr_checkpoint on our pid is pending and has not finished after 300 ms");
    main_in_cs = 0;
    EXPECT_RET(cr_leave_cs(id), 0);
    deadline = now_ms() + 60000;
    while ((rc = waitpid(child, &st, WNOHANG)) == 0 && now_ms() < deadline) sleep_ms(5);
    CHECK(rc == child, "C: cr_checkpoint did not finish within 60 s of cr_leave_cs()");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "C: cr_checkpoint exited with status %#x, expected 0", st);
    n = wait_count(3, 10000);
    check_callback("C", 3);
    fd = open(fname_c, O_RDONLY);
    CHECK(fd >= 0 && fd_size(fd) > 0, "C: %s is missing or empty after cr_checkpoint succeeded", fname_c);
    close(fd);
    say("C: after cr_leave_cs() cr_checkpoint exited 0, the callback ran, the file is non-empty");

    unlink(fname);
    unlink(fname_b);
    unlink(fname_c);
    say("DONE");
    return 0;
}
