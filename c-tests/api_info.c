/* api_info (BLCR's get_info, continue half): cr_get_checkpoint_info() / cr_get_restart_info().
 *  - outside callbacks both return NULL;
 *  - in a signal-context and in a thread-context callback, before cr_checkpoint():
 *    info->dest is the absolute path of the destination ("/dev/null" for /dev/null),
 *    ->signal is args.cr_signal (0, then SIGUSR1 — which is then delivered after the checkpoint),
 *    ->requester and ->target are our pid, ->scope is CR_SCOPE_PROC;
 *  - after cr_checkpoint() returned 0 (continue), cr_get_restart_info() is NULL;
 *  - requested by the cr_checkpoint tool ($CR_CHECKPOINT, default tree scope, --clobber -f FILE):
 *    ->scope is CR_SCOPE_TREE, ->target our pid, ->requester another process, ->dest FILE.
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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

struct seen {
    int ran;
    int info_null;
    int signal;
    char dest[PATH_MAX];
    pid_t requester, target;
    int scope;
    int ckpt_rc;
    int rinfo_null_after;
};
static struct seen s_sig, s_thr;

static void capture(struct seen *s)
{
    const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
    s->ran++;
    s->info_null = ci == NULL;
    if (ci) {
        s->signal = ci->signal;
        snprintf(s->dest, sizeof s->dest, "%s", ci->dest ? ci->dest : "(null)");
        s->requester = ci->requester;
        s->target = ci->target;
        s->scope = (int)ci->scope;
    }
    s->ckpt_rc = cr_checkpoint(CR_CHECKPOINT_READY);
    s->rinfo_null_after = cr_get_restart_info() == NULL;
}

static int sig_cb(void *arg) { (void)arg; capture(&s_sig); return 0; }
static int thr_cb(void *arg) { (void)arg; capture(&s_thr); return 0; }

static volatile sig_atomic_t usr1_count;
static void on_usr1(int sig) { (void)sig; usr1_count++; }

static void verify(const char *what, const struct seen *s, const char *dest, int signal, pid_t requester,
                   int scope)
{
    CHECK(s->ran == 1, "%s: the callback ran %d times", what, s->ran);
    CHECK(!s->info_null, "%s: cr_get_checkpoint_info() returned NULL inside the callback", what);
    CHECK(strcmp(s->dest, dest) == 0, "%s: dest is \"%s\", expected \"%s\"", what, s->dest, dest);
    CHECK(s->signal == signal, "%s: signal is %d, expected %d", what, s->signal, signal);
    if (requester > 0)
        CHECK(s->requester == requester, "%s: requester is %d, expected %d", what, (int)s->requester, (int)requester);
    else
        CHECK(s->requester > 0 && s->requester != getpid(), "%s: requester is %d, expected another process", what,
              (int)s->requester);
    CHECK(s->target == getpid(), "%s: target is %d, expected %d", what, (int)s->target, (int)getpid());
    CHECK(s->scope == scope, "%s: scope is %d, expected %d", what, s->scope, scope);
    CHECK(s->ckpt_rc == 0, "%s: cr_checkpoint returned %d", what, s->ckpt_rc);
    CHECK(s->rinfo_null_after, "%s: cr_get_restart_info() is not NULL after cr_checkpoint() returned 0", what);
}

static void self_checkpoint(const char *path, int signal)
{
    cr_checkpoint_args_t a;
    cr_checkpoint_handle_t h;
    int fd, rc;

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_target = 0;
    a.cr_fd = fd;
    a.cr_signal = signal;
    memset(&s_sig, 0, sizeof s_sig);
    memset(&s_thr, 0, sizeof s_thr);
    rc = cr_request_checkpoint(&a, &h);
    CHECK(rc == 0, "cr_request_checkpoint(%s) returned %d (errno %s)", path, rc, ename(errno));
    rc = poll_done(&h);
    CHECK(rc == 1, "cr_poll_checkpoint(%s) returned %d (errno %s)", path, rc, ename(errno));
    close(fd);
    CHECK(cr_get_checkpoint_info() == NULL && cr_get_restart_info() == NULL,
          "an info getter is not NULL after the checkpoint, outside callbacks");
}

int main(void)
{
    char fname[64], abs_path[PATH_MAX], cwd[PATH_MAX - 64], tool_file[PATH_MAX], pidstr[32];
    const char *tool;
    pid_t me = getpid(), child;
    int id, rc, st;
    long deadline;
    struct sigaction sa;

    note("ST_ALARM:120");
    say("api_info started");
    snprintf(fname, sizeof fname, "context.%d", (int)me);
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd: %s", strerror(errno));

    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(cr_get_checkpoint_info() == NULL, "cr_get_checkpoint_info() outside a callback is not NULL");
    CHECK(cr_get_restart_info() == NULL, "cr_get_restart_info() outside a callback is not NULL");
    say("outside callbacks both info getters return NULL");
    CHECK(cr_register_callback(sig_cb, NULL, CR_SIGNAL_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    CHECK(cr_register_callback(thr_cb, NULL, CR_THREAD_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    say("a signal-context and a thread-context callback are registered");

    /* 1: a file in the cwd */
    close(open_ctx(fname));
    CHECK(realpath(fname, abs_path) != NULL, "realpath(%s): %s", fname, strerror(errno));
    self_checkpoint(fname, 0);
    verify("signal callback, file", &s_sig, abs_path, 0, me, CR_SCOPE_PROC);
    say("signal-context callback: dest = absolute path, signal 0, requester = target = us, scope PROC");
    verify("thread callback, file", &s_thr, abs_path, 0, me, CR_SCOPE_PROC);
    say("thread-context callback: the same values");
    say("after cr_checkpoint() returned 0, cr_get_restart_info() is NULL in both");

    /* 2: /dev/null */
    self_checkpoint("/dev/null", 0);
    verify("signal callback, /dev/null", &s_sig, "/dev/null", 0, me, CR_SCOPE_PROC);
    verify("thread callback, /dev/null", &s_thr, "/dev/null", 0, me, CR_SCOPE_PROC);
    say("destination /dev/null: dest is \"/dev/null\"");

    /* 3: cr_signal = SIGUSR1 */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
    self_checkpoint(fname, SIGUSR1);
    verify("signal callback, cr_signal", &s_sig, abs_path, SIGUSR1, me, CR_SCOPE_PROC);
    verify("thread callback, cr_signal", &s_thr, abs_path, SIGUSR1, me, CR_SCOPE_PROC);
    say("with cr_signal = SIGUSR1, info->signal is SIGUSR1");
    deadline = now_ms() + 5000;
    while (usr1_count == 0 && now_ms() < deadline) sleep_ms(2);
    sleep_ms(100);
    CHECK(usr1_count == 1, "SIGUSR1 was delivered %d times after the checkpoint, expected 1", (int)usr1_count);
    say("SIGUSR1 was delivered once after the checkpoint");

    /* 4: requested by the cr_checkpoint tool */
    tool = getenv("CR_CHECKPOINT");
    CHECK(tool && *tool, "CR_CHECKPOINT (path of the cr_checkpoint tool) is not set");
    snprintf(tool_file, sizeof tool_file, "%s/context.%d.tool", cwd, (int)me);
    snprintf(pidstr, sizeof pidstr, "%d", (int)me);
    memset(&s_sig, 0, sizeof s_sig);
    memset(&s_thr, 0, sizeof s_thr);
    child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        dup2(2, 1);
        execl(tool, "cr_checkpoint", "--clobber", "-f", tool_file, pidstr, (char *)NULL);
        _exit(127);
    }
    deadline = now_ms() + 60000;
    while ((rc = waitpid(child, &st, WNOHANG)) == 0 && now_ms() < deadline) sleep_ms(5);
    CHECK(rc == child, "cr_checkpoint did not finish within 60 s");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cr_checkpoint --clobber -f FILE PID exited with status %#x", st);
    CHECK(realpath(tool_file, abs_path) != NULL, "realpath(%s): %s", tool_file, strerror(errno));
    verify("signal callback, tool", &s_sig, abs_path, 0, 0, CR_SCOPE_TREE);
    verify("thread callback, tool", &s_thr, abs_path, 0, 0, CR_SCOPE_TREE);
    say("requested by cr_checkpoint: scope TREE, target us, requester another process, dest FILE");

    unlink(fname);
    unlink(tool_file);
    say("DONE");
    return 0;
}
