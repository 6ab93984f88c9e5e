/* api_edeadlk (BLCR's edeadlk and overlap via the API):
 *  - plain self and child checkpoints succeed;
 *  - CR_CHKPT_PROHIBIT_SELF: a request that includes the requester fails with EDEADLK at once,
 *    one for a child (which called cr_init and waits for commands) succeeds;
 *  - the child's callback forwards the checkpoint to us (cr_forward_checkpoint(PROC, parent)):
 *    allowed without the flag (returns 0), EDEADLK with PROHIBIT_SELF (the request itself still
 *    succeeds);
 *  - overlap: inside our own signal-context callback, another cr_request_checkpoint of ourselves
 *    fails with EBUSY (we are already being checkpointed).
 * Usage: api_edeadlk [all|basic|forward]   (basic: everything but the forwarding part; forward:
 * the plain checkpoints and the forwarding part; default all).
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
static pid_t parent_pid;
static volatile int fwd_result = 255;   /* child: errno of cr_forward_checkpoint, 0 = ok */

static void put(int fd, char c)
{
    while (write(fd, &c, 1) != 1)
        if (errno != EINTR) FAIL("pipe write: %s", strerror(errno));
}

static char get(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) != 1) {
        if (n == 0) FAIL("pipe closed");
        if (errno != EINTR) FAIL("pipe read: %s", strerror(errno));
    }
    return c;
}

static int child_fwd_cb(void *arg)
{
    int rc;
    (void)arg;
    errno = 0;
    rc = cr_forward_checkpoint(CR_SCOPE_PROC, parent_pid);
    fwd_result = rc == 0 ? 0 : (errno ? errno : 254);
    (void)cr_checkpoint(CR_CHECKPOINT_READY);
    return 0;
}

static void child_main(void)
{
    if (cr_init() < 0) FAIL("child: cr_init() failed (errno %s)", ename(errno));
    put(from_child[1], 'k');
    for (;;) {
        char c = get(to_child[0]);
        switch (c) {
        case 'R':
            if (cr_register_callback(child_fwd_cb, NULL, CR_SIGNAL_CONTEXT) < 0)
                FAIL("child: cr_register_callback failed (errno %s)", ename(errno));
            put(from_child[1], 'r');
            break;
        case 'Q':
            put(from_child[1], (char)(fwd_result & 0xff));
            fwd_result = 255;
            break;
        case 'X':
            _exit(0);
        default:
            FAIL("child: bad command %d", c);
        }
    }
}

/* Request a checkpoint of target (0 = self) into fname, poll it; returns 0 or the errno. */
static int checkpoint_to(const char *fname, pid_t target, unsigned flags)
{
    cr_checkpoint_args_t a;
    cr_checkpoint_handle_t h;
    int fd, rc;

    fd = open_ctx(fname);
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_target = target;
    a.cr_fd = fd;
    a.cr_flags = flags;
    rc = cr_request_checkpoint(&a, &h);
    if (rc < 0) {
        rc = errno;
        close(fd);
        return rc ? rc : -1;
    }
    rc = poll_done(&h);
    if (rc == 1 || (rc == CR_POLL_CHKPT_ERR_POST && errno == CR_ERESTARTED)) rc = 0;
    else rc = errno ? errno : -1;
    close(fd);
    return rc;
}

static volatile int ov_ran, ov_rc = -99, ov_errno, ov_ckpt_rc = -99;
static cr_checkpoint_handle_t ov_handle;

static int overlap_cb(void *arg)
{
    int fd;
    (void)arg;
    ov_ran++;
    fd = open("/dev/null", O_WRONLY);
    errno = 0;
    ov_rc = request_self(fd, 0, &ov_handle);
    ov_errno = errno;
    close(fd);
    ov_ckpt_rc = cr_checkpoint(CR_CHECKPOINT_READY);
    return 0;
}

int main(int argc, char **argv)
{
    char fname[64];
    pid_t child;
    int id, rc, st, basic = 1, forward = 1;

    if (argc > 1 && strcmp(argv[1], "basic") == 0) forward = 0;
    else if (argc > 1 && strcmp(argv[1], "forward") == 0) basic = 0;
    else if (argc > 1 && strcmp(argv[1], "all") != 0) FAIL("usage: api_edeadlk [all|basic|forward]");

    note("ST_ALARM:120");
    parent_pid = getpid();
    snprintf(fname, sizeof fname, "context.%d", (int)parent_pid);
    say("api_edeadlk started");

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(pipe(to_child) == 0 && pipe(from_child) == 0, "pipe: %s", strerror(errno));
    child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        close(to_child[1]);
        close(from_child[0]);
        child_main();
    }
    close(to_child[0]);
    close(from_child[1]);
    CHECK(get(from_child[0]) == 'k', "child did not start");
    say("child started and called cr_init()");

    rc = checkpoint_to(fname, 0, 0);
    CHECK(rc == 0, "plain self checkpoint failed: %s", ename(rc));
    say("plain self checkpoint succeeded");
    rc = checkpoint_to(fname, child, 0);
    CHECK(rc == 0, "plain child checkpoint failed: %s", ename(rc));
    say("plain child checkpoint succeeded");
    if (basic) {
        rc = checkpoint_to(fname, 0, CR_CHKPT_PROHIBIT_SELF);
        CHECK(rc == EDEADLK, "PROHIBIT_SELF self checkpoint gave %s, expected EDEADLK", ename(rc));
        say("PROHIBIT_SELF self checkpoint failed with EDEADLK");
        rc = checkpoint_to(fname, child, CR_CHKPT_PROHIBIT_SELF);
        CHECK(rc == 0, "PROHIBIT_SELF child checkpoint failed: %s", ename(rc));
        say("PROHIBIT_SELF child checkpoint succeeded");
    }
    if (!forward) goto no_forward;

    put(to_child[1], 'R');
    CHECK(get(from_child[0]) == 'r', "child did not register its callback");
    say("child registered a callback that forwards the checkpoint to us");
    rc = checkpoint_to(fname, child, 0);
    CHECK(rc == 0, "child+forward checkpoint failed: %s", ename(rc));
    put(to_child[1], 'Q');
    rc = (unsigned char)get(from_child[0]);
    CHECK(rc == 0, "cr_forward_checkpoint(PROC, parent) in the child failed: errno %s", ename(rc));
    say("child+forward checkpoint succeeded; cr_forward_checkpoint to the requester returned 0");
    rc = checkpoint_to(fname, child, CR_CHKPT_PROHIBIT_SELF);
    CHECK(rc == 0, "PROHIBIT_SELF child+forward checkpoint failed: %s", ename(rc));
    put(to_child[1], 'Q');
    rc = (unsigned char)get(from_child[0]);
    CHECK(rc == EDEADLK, "with PROHIBIT_SELF cr_forward_checkpoint to the requester gave errno %s, expected EDEADLK",
          ename(rc));
    say("PROHIBIT_SELF child+forward: the request succeeded, the forward failed with EDEADLK");

no_forward:
    put(to_child[1], 'X');
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %#x", st);
    say("child exited 0");
    if (!basic) goto out;

    CHECK(cr_register_callback(overlap_cb, NULL, CR_SIGNAL_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    rc = checkpoint_to(fname, 0, 0);
    CHECK(rc == 0, "self checkpoint with the overlap callback failed: %s", ename(rc));
    CHECK(ov_ran == 1, "the callback ran %d times", ov_ran);
    if (ov_rc == 0) {
        (void)poll_done(&ov_handle);
        FAIL("a second request of ourselves from inside our callback was accepted (expected EBUSY)");
    }
    CHECK(ov_rc == -1 && ov_errno == EBUSY, "the overlapping request returned %d errno %s, expected -1 EBUSY", ov_rc,
          ename(ov_errno));
    CHECK(ov_ckpt_rc == 0, "cr_checkpoint in the callback returned %d", ov_ckpt_rc);
    say("inside our callback, another request of ourselves failed with EBUSY; the checkpoint completed");

out:
    unlink(fname);
    say("DONE");
    return 0;
}
