/* api_requests: the request-handle calls (§1.5) on requests whose completion we control.
 * A child calls cr_init() and holds a critical section, so a checkpoint of it stays unfinished
 * until we tell it to leave:
 *  - cr_wait_checkpoint with a 200 ms timeout returns 0 (and writes the remaining time back, 0);
 *    cr_poll_checkpoint with a zero timeout returns 0; cr_reap_checkpoint fails with EAGAIN and
 *    keeps the handle;
 *  - after the child leaves its CS: cr_wait_checkpoint(NULL) > 0, cr_log_checkpoint(len 0) >= 0,
 *    cr_reap_checkpoint > 0 and the handle is freed; cr_poll_checkpoint_msg on a second request
 *    returns 1 (the message, if any, is a malloc'ed string);
 *  - CR_CHKPT_ASYNC_ERR defers errors to the reap: PROHIBIT_SELF on ourselves and a pid that
 *    does not exist both return 0 from the request and CR_POLL_CHKPT_ERR_POST with EDEADLK /
 *    ESRCH from the poll;
 *  - restart requests: cr_fd -1 fails with EBADF (at once, or at the poll with ASYNC_ERR);
 *    a file that is not an image fails at the request or at the poll, without leaving a child.
 * Usage: api_requests [all|basic|async]   (basic: all but the CR_CHKPT_ASYNC_ERR part; async: only
 * that part; default all).
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
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

static int to_child[2], from_child[2];

static void child_main(void)
{
    char c;
    int id = cr_init();
    if (id < 0) FAIL("child: cr_init() failed (errno %s)", ename(errno));
    for (;;) {
        if (cr_enter_cs(id) != 0) FAIL("child: cr_enter_cs failed");
        if (write(from_child[1], "e", 1) != 1) _exit(2);
        for (;;) {
            ssize_t n = read(to_child[0], &c, 1);
            if (n == 1) break;
            if (n == 0 || errno != EINTR) _exit(0);
        }
        if (c == 'x') _exit(0);
        if (cr_leave_cs(id) != 0) FAIL("child: cr_leave_cs failed");
    }
}

static void expect_child(char want)
{
    char c;
    for (;;) {
        ssize_t n = read(from_child[0], &c, 1);
        if (n == 1) break;
        CHECK(n < 0 && errno == EINTR, "read from the child: %s", n == 0 ? "EOF" : strerror(errno));
    }
    CHECK(c == want, "child said %c, expected %c", c, want);
}

static int request(pid_t target, unsigned flags, int fd, cr_checkpoint_handle_t *h)
{
    cr_checkpoint_args_t a;
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_target = target;
    a.cr_fd = fd;
    a.cr_flags = flags;
    return cr_request_checkpoint(&a, h);
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

/* A restart request that must fail; returns the errno it failed with. */
static int failing_restart(int fd, unsigned flags)
{
    cr_restart_args_t ra;
    cr_restart_handle_t h;
    int rc;

    cr_initialize_restart_args_t(&ra);
    ra.cr_fd = fd;
    ra.cr_flags = flags;
    errno = 0;
    rc = cr_request_restart(&ra, &h);
    if (rc < 0) {
        CHECK(rc == -1 && errno != 0, "cr_request_restart returned %d with errno %d", rc, errno);
        return errno;
    }
    CHECK(rc == 0, "cr_request_restart returned %d", rc);
    for (;;) {
        struct timeval tv = { 30, 0 };
        errno = 0;
        rc = cr_poll_restart(&h, &tv);
        if (rc == CR_POLL_RSTRT_ERR_PRE && errno == EINTR) continue;
        break;
    }
    if (rc > 0) {
        kill(rc, SIGKILL);
        waitpid(rc, NULL, 0);
        FAIL("a restart that should fail returned pid %d", rc);
    }
    CHECK(rc == CR_POLL_RSTRT_ERR_POST && errno != 0, "cr_poll_restart of a bad restart returned %d errno %s, "
          "expected CR_POLL_RSTRT_ERR_POST with an errno", rc, ename(errno));
    return errno;
}

int main(int argc, char **argv)
{
    cr_checkpoint_handle_t h;
    struct timeval tv;
    pid_t child;
    char *msg = NULL;
    int id, rc, st, devnull, fd, basic = 1, async = 1;

    if (argc > 1 && strcmp(argv[1], "basic") == 0) async = 0;
    else if (argc > 1 && strcmp(argv[1], "async") == 0) basic = 0;
    else if (argc > 1 && strcmp(argv[1], "all") != 0) FAIL("usage: api_requests [all|basic|async]");

    note("ST_ALARM:120");
    say("api_requests started");
    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    devnull = open("/dev/null", O_WRONLY);
    CHECK(devnull >= 0, "open /dev/null");
    if (!basic) goto async_part;
    CHECK(pipe(to_child) == 0 && pipe(from_child) == 0, "pipe");
    child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        close(to_child[1]);
        close(from_child[0]);
        child_main();
    }
    close(to_child[0]);
    close(from_child[1]);
    expect_child('e');
    say("child started and holds a critical section");

    /* ---- an unfinished request ---- */
    rc = request(child, 0, devnull, &h);
    CHECK(rc == 0, "cr_request_checkpoint(child) returned %d (errno %s)", rc, ename(errno));
    tv.tv_sec = 0;
    tv.tv_usec = 200000;
    rc = cr_wait_checkpoint(&h, &tv);
    CHECK(rc == 0, "cr_wait_checkpoint(200 ms) on an unfinished request returned %d (errno %s)", rc, ename(errno));
    CHECK(tv.tv_sec == 0 && tv.tv_usec == 0, "the remaining time after the timeout is %ld.%06ld",
          (long)tv.tv_sec, (long)tv.tv_usec);
    say("cr_wait_checkpoint with a 200 ms timeout returned 0 and left 0 time");
    tv.tv_sec = 0;
    tv.tv_usec = 0;
    rc = cr_poll_checkpoint(&h, &tv);
    CHECK(rc == 0, "cr_poll_checkpoint(0 s) on an unfinished request returned %d (errno %s)", rc, ename(errno));
    say("cr_poll_checkpoint with a zero timeout returned 0");
    errno = 0;
    rc = cr_reap_checkpoint(&h);
    CHECK(rc == -1 && errno == EAGAIN, "cr_reap_checkpoint on an unfinished request returned %d errno %s, "
          "expected -1 EAGAIN", rc, ename(errno));
    say("cr_reap_checkpoint on an unfinished request failed with EAGAIN");

    CHECK(write(to_child[1], "l", 1) == 1, "write");
    rc = cr_wait_checkpoint(&h, NULL);
    CHECK(rc > 0, "cr_wait_checkpoint(NULL) returned %d (errno %s)", rc, ename(errno));
    say("after the child left its critical section, cr_wait_checkpoint returned > 0");
    rc = cr_log_checkpoint(&h, 0, NULL);
    CHECK(rc >= 0, "cr_log_checkpoint(len 0) returned %d (errno %s)", rc, ename(errno));
    rc = cr_reap_checkpoint(&h);
    CHECK(rc > 0, "cr_reap_checkpoint returned %d (errno %s), expected > 0", rc, ename(errno));
    say("cr_log_checkpoint(len 0) returned a size >= 0; cr_reap_checkpoint returned > 0");
    expect_child('e');

    /* ---- cr_poll_checkpoint_msg ---- */
    rc = request(child, 0, devnull, &h);
    CHECK(rc == 0, "second cr_request_checkpoint(child) returned %d (errno %s)", rc, ename(errno));
    CHECK(write(to_child[1], "l", 1) == 1, "write");
    for (;;) {
        struct timeval t30 = { 30, 0 };
        msg = (char *)1;
        rc = cr_poll_checkpoint_msg(&h, &t30, &msg);
        if (rc == CR_POLL_CHKPT_ERR_PRE && errno == EINTR) continue;
        break;
    }
    CHECK(rc == 1, "cr_poll_checkpoint_msg returned %d (errno %s)", rc, ename(errno));
    CHECK(msg != (char *)1, "cr_poll_checkpoint_msg did not set *msg_p");
    if (msg) {
        note("checkpoint message: %s", msg);
        free(msg);
    }
    say("cr_poll_checkpoint_msg returned 1 and set the message pointer");
    expect_child('e');
    CHECK(write(to_child[1], "x", 1) == 1, "write");
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    say("child exited 0");

    /* ---- CR_CHKPT_ASYNC_ERR ---- */
async_part:
    if (!async) goto restarts;
    rc = request(0, CR_CHKPT_PROHIBIT_SELF | CR_CHKPT_ASYNC_ERR, devnull, &h);
    CHECK(rc == 0, "PROHIBIT_SELF|ASYNC_ERR on ourselves: the request returned %d (errno %s), expected 0", rc,
          ename(errno));
    rc = poll_done(&h);
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && errno == EDEADLK, "PROHIBIT_SELF|ASYNC_ERR: poll returned %d errno %s, "
          "expected CR_POLL_CHKPT_ERR_POST EDEADLK", rc, ename(errno));
    say("with CR_CHKPT_ASYNC_ERR, EDEADLK (PROHIBIT_SELF) is reported by the poll");
    rc = request(unused_pid(), CR_CHKPT_ASYNC_ERR, devnull, &h);
    CHECK(rc == 0, "ASYNC_ERR on a missing pid: the request returned %d (errno %s), expected 0", rc, ename(errno));
    rc = poll_done(&h);
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && errno == ESRCH, "ASYNC_ERR on a missing pid: poll returned %d errno %s, "
          "expected CR_POLL_CHKPT_ERR_POST ESRCH", rc, ename(errno));
    say("with CR_CHKPT_ASYNC_ERR, ESRCH (no such pid) is reported by the poll");

    if (!basic) goto out;

    /* ---- failing restarts ---- */
restarts:
    rc = failing_restart(-1, 0);
    CHECK(rc == EBADF, "restart from fd -1 failed with %s, expected EBADF", ename(rc));
    rc = failing_restart(-1, CR_RSTRT_ASYNC_ERR);
    CHECK(rc == EBADF, "restart from fd -1 with ASYNC_ERR failed with %s, expected EBADF", ename(rc));
    say("a restart from fd -1 fails with EBADF (with and without CR_RSTRT_ASYNC_ERR)");
    fd = open("not-an-image", O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && write(fd, "this is not a checkpoint image\n", 31) == 31, "write not-an-image");
    CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek");
    rc = failing_restart(fd, 0);
    note("restart of a non-image failed with %s", ename(rc));
    close(fd);
    unlink("not-an-image");
    CHECK(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD, "a child is left after the failed restart");
    say("a restart from a file that is not an image fails and leaves no child");

out:
    close(devnull);
    say("DONE");
    return 0;
}
