/* api_fork (the fork() rules of §1.6): a fork()ed child starts with clean libcr state.
 *  - the parent (cr_init, a signal- and a thread-context callback) checkpoints itself once;
 *  - child A: cr_status/cr_enter_cs/cr_register_callback fail with CR_ENOINIT until it calls
 *    cr_init() (which returns 0 again); the parent's callbacks never run in the child; the child
 *    registers its own signal- and thread-context callbacks and checkpoints itself: both run once;
 *  - child B never calls cr_init(): the parent checkpoints it by pid (poll 1, file non-empty) and
 *    the parent's callbacks do not run in it;
 *  - the parent can still checkpoint itself afterwards (its callbacks run once more).
 * Child A prints its own numbered lines while the parent waits, then hands the line counter back.
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

static volatile int p_sig_runs, p_thr_runs, c_sig_runs, c_thr_runs;

static int p_sig(void *arg) { (void)arg; p_sig_runs++; (void)cr_checkpoint(0); return 0; }
static int p_thr(void *arg) { (void)arg; __atomic_fetch_add(&p_thr_runs, 1, __ATOMIC_SEQ_CST); (void)cr_checkpoint(0); return 0; }
static int c_sig(void *arg) { (void)arg; c_sig_runs++; (void)cr_checkpoint(0); return 0; }
static int c_thr(void *arg) { (void)arg; __atomic_fetch_add(&c_thr_runs, 1, __ATOMIC_SEQ_CST); (void)cr_checkpoint(0); return 0; }

static int checkpoint(pid_t target, const char *fname, long *size)
{
    cr_checkpoint_args_t a;
    cr_checkpoint_handle_t h;
    int fd = open_ctx(fname), rc;
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_target = target;
    a.cr_fd = fd;
    rc = cr_request_checkpoint(&a, &h);
    CHECK(rc == 0, "cr_request_checkpoint(target %d) returned %d (errno %s)", (int)target, rc, ename(errno));
    rc = poll_done(&h);
    CHECK(rc == 1, "cr_poll_checkpoint(target %d) returned %d (errno %s)", (int)target, rc, ename(errno));
    *size = fd_size(fd);
    close(fd);
    unlink(fname);
    return rc;
}

static void wait_thr(volatile int *counter, int want)
{
    long deadline = now_ms() + 5000;
    while (__atomic_load_n(counter, __ATOMIC_SEQ_CST) < want && now_ms() < deadline) sleep_ms(2);
}

static void child_a(int report_fd)
{
    char fname[64];
    long size;
    int id, n;

    EXPECT_ERR(cr_status(), -1, CR_ENOINIT);
    EXPECT_ERR(cr_enter_cs(0), -1, CR_ENOINIT);
    EXPECT_ERR(cr_register_callback(c_sig, NULL, CR_SIGNAL_CONTEXT), -1, CR_ENOINIT);
    say("child A: before cr_init, cr_status/cr_enter_cs/cr_register_callback fail with CR_ENOINIT");
    id = cr_init();
    CHECK(id == 0, "child A: cr_init() returned %d (errno %s), expected 0 (fresh state)", id, ename(errno));
    CHECK(cr_status() == CR_STATE_IDLE, "child A: cr_status() is %d", cr_status());
    say("child A: cr_init() returned 0; cr_status() is IDLE");
    CHECK(cr_register_callback(c_sig, NULL, CR_SIGNAL_CONTEXT) == CR_SIGNAL_CONTEXT,
          "child A: first signal callback id is not 0x2000000 (the parent's list was inherited?)");
    CHECK(cr_register_callback(c_thr, NULL, CR_THREAD_CONTEXT) == CR_THREAD_CONTEXT,
          "child A: first thread callback id is not 0x4000000 (the parent's list was inherited?)");
    say("child A: its own callbacks got the first ids of both lists");
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());
    checkpoint(0, fname, &size);
    CHECK(size > 0, "child A: the context file is empty");
    wait_thr(&c_thr_runs, 1);
    CHECK(c_sig_runs == 1 && c_thr_runs == 1, "child A: its callbacks ran %d (signal) and %d (thread) times",
          c_sig_runs, c_thr_runs);
    CHECK(p_sig_runs == 1 && p_thr_runs == 1, "child A: the parent's callbacks ran in the child (%d, %d)",
          p_sig_runs - 1, p_thr_runs - 1);
    say("child A: self-checkpoint succeeded; its callbacks ran once, the parent's not at all");
    n = seq_no;
    if (write(report_fd, &n, sizeof n) != (ssize_t)sizeof n) _exit(2);
    _exit(0);
}

int main(void)
{
    char fname[64];
    int pfd[2], go[2], id, st, n;
    pid_t a, b;
    long size;
    char c;

    note("ST_ALARM:120");
    say("api_fork started");
    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(cr_register_callback(p_sig, NULL, CR_SIGNAL_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    CHECK(cr_register_callback(p_thr, NULL, CR_THREAD_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());
    checkpoint(0, fname, &size);
    wait_thr(&p_thr_runs, 1);
    CHECK(p_sig_runs == 1 && p_thr_runs == 1, "parent callbacks ran %d/%d times", p_sig_runs, p_thr_runs);
    say("parent: callbacks registered, first self-checkpoint ran both once");

    /* ---- child A ---- */
    CHECK(pipe(pfd) == 0, "pipe");
    a = fork();
    CHECK(a >= 0, "fork: %s", strerror(errno));
    if (a == 0) {
        close(pfd[0]);
        child_a(pfd[1]);
    }
    close(pfd[1]);
    n = -1;
    if (read(pfd[0], &n, sizeof n) != (ssize_t)sizeof n) n = -1;
    close(pfd[0]);
    CHECK(waitpid(a, &st, 0) == a, "waitpid(child A)");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child A ended with status %#x", st);
    CHECK(n > seq_no, "child A did not report its line count");
    seq_no = n;
    say("parent: child A exited 0");

    /* ---- child B: no cr_init, checkpointed by the parent ---- */
    CHECK(pipe(go) == 0, "pipe");
    b = fork();
    CHECK(b >= 0, "fork: %s", strerror(errno));
    if (b == 0) {
        close(go[1]);
        while (read(go[0], &c, 1) < 0 && errno == EINTR) {}
        _exit(p_sig_runs == 1 && p_thr_runs == 1 ? 0 : 3);
    }
    close(go[0]);
    sleep_ms(100);
    snprintf(fname, sizeof fname, "context.%d", (int)b);
    checkpoint(b, fname, &size);
    CHECK(size > 0, "the context file of child B is empty");
    say("parent: checkpoint of child B (never called cr_init) by pid succeeded, file non-empty");
    CHECK(write(go[1], "x", 1) == 1, "write");
    close(go[1]);
    CHECK(waitpid(b, &st, 0) == b, "waitpid(child B)");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child B ended with status %#x (exit 3: the parent's callbacks ran in it)", st);
    say("parent: child B exited 0: the parent's callbacks did not run in it");

    /* ---- the parent again ---- */
    snprintf(fname, sizeof fname, "context.%d", (int)getpid());
    checkpoint(0, fname, &size);
    wait_thr(&p_thr_runs, 2);
    CHECK(p_sig_runs == 2 && p_thr_runs == 2, "parent callbacks ran %d/%d times in all, expected 2/2", p_sig_runs,
          p_thr_runs);
    CHECK(size > 0, "the parent's context file is empty");
    say("parent: a self-checkpoint after the forks still runs its callbacks once each");
    say("DONE");
    return 0;
}
