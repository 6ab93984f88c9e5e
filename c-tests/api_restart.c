/* api_restart (BLCR's get_info and hooks, restart halves, and cr_request_restart):
 *   api_restart save              checkpoint ourselves into context.api_restart and go on
 *   api_restart restart [FLAGS]   restart context.api_restart with cr_request_restart (cr_flags =
 *                                 FLAGS, default 0 = fresh pid) and check the restored process
 * save: a signal-context and a thread-context callback record cr_checkpoint()'s result and
 * cr_get_restart_info(); hooks for all six events record (event, thread); a third thread never
 * calls cr_init().  The original process sees poll 1, callbacks 0, the three CONT hooks.
 * The RESTORED process (same program, same memory) sees cr_poll_checkpoint() return
 * CR_POLL_CHKPT_ERR_POST with errno CR_ERESTARTED; it must not write to the restarter's stdout, so
 * it reports into restored.out (own SEQ numbering from 000, "NNN DONE" last) with the comment lines
 * "#requester=N", "#ppid=N", "#src=PATH" for the restarter to check: its callbacks got
 * cr_checkpoint() > 0 == cr_get_restart_info()->requester, the RSTRT hooks ran in the right
 * threads, the thread without cr_init() was restored too, cr_status() is IDLE.
 * restart: cr_poll_restart() returns the restored pid, which is our child (waitpid), exits 0, and
 * restored.out says requester = ppid = our pid and src = the absolute path of the image; with
 * CR_RSTRT_RESTORE_PGID / CR_RSTRT_RESTORE_SID in FLAGS its getpgrp() / getsid(0) are the saved
 * ones ("#pgrp=NOW SAVED", "#sid=NOW SAVED"), also without CR_RSTRT_RESTORE_PID; and we have no
 * other child to wait for (no placeholder leader of a group or session is left to us).
 * SEQ protocol (BLCR's seq_wrapper): numbered lines, "NNN DONE" last, XXX = failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#define IMAGE "context.api_restart"
#define REPORT "restored.out"

/* ---- save side ---- */
struct cbres {
    int ran, rc, rinfo_null;
    pid_t requester;
    char src[PATH_MAX];
    char dest[PATH_MAX];
};
static struct cbres r_sig, r_thr;
static pid_t saved_pgrp, saved_sid;
static pthread_t main_th, helper_th, plain_th;
static volatile int helper_known, stop_plain, plain_started;

struct hook_ev { int slot, arg; pthread_t th; };
#define MAX_EV 32
static struct hook_ev evs[MAX_EV];
static int nev;

static void rec(int slot, cr_hook_event_t ev)
{
    int i = __atomic_fetch_add(&nev, 1, __ATOMIC_SEQ_CST);
    if (i < MAX_EV) {
        evs[i].slot = slot;
        evs[i].arg = (int)ev;
        evs[i].th = pthread_self();
    }
}
static void h0(cr_hook_event_t ev) { rec(0, ev); }
static void h1(cr_hook_event_t ev) { rec(1, ev); }
static void h2(cr_hook_event_t ev) { rec(2, ev); }
static void h3(cr_hook_event_t ev) { rec(3, ev); }
static void h4(cr_hook_event_t ev) { rec(4, ev); }
static void h5(cr_hook_event_t ev) { rec(5, ev); }

static void run_cb(struct cbres *r)
{
    const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
    const struct cr_restart_info *ri;
    r->ran++;
    snprintf(r->dest, sizeof r->dest, "%s", ci && ci->dest ? ci->dest : "(none)");
    r->rc = cr_checkpoint(CR_CHECKPOINT_READY);
    ri = cr_get_restart_info();
    r->rinfo_null = ri == NULL;
    if (ri) {
        r->requester = ri->requester;
        snprintf(r->src, sizeof r->src, "%s", ri->src ? ri->src : "(null)");
    }
}
static int sig_cb(void *arg) { (void)arg; run_cb(&r_sig); return 0; }
static int thr_cb(void *arg)
{
    (void)arg;
    helper_th = pthread_self();
    helper_known = 1;
    run_cb(&r_thr);
    return 0;
}

static void *plain_thread(void *arg)
{
    (void)arg;
    plain_started = 1;
    while (!stop_plain) sleep_ms(1);
    return NULL;
}

static int count_ev(int slot, pthread_t th)
{
    int i, n = 0;
    for (i = 0; i < nev && i < MAX_EV; i++)
        if (evs[i].slot == slot && pthread_equal(evs[i].th, th)) n++;
    return n;
}

/* The hooks of one path (base 0 = CONT_*, 3 = RSTRT_*) ran once each in the right thread. */
static void check_hooks(int base, const char *what)
{
    int i;
    long deadline = now_ms() + 5000;
    while (nev < 3 && now_ms() < deadline) sleep_ms(2);
    sleep_ms(100);
    for (i = 0; i < nev && i < MAX_EV; i++) {
        CHECK(evs[i].slot == evs[i].arg, "%s: hook %d called with event %d", what, evs[i].slot, evs[i].arg);
        CHECK(evs[i].slot >= base && evs[i].slot < base + 3, "%s: hook for event %d ran", what, evs[i].slot);
    }
    CHECK(count_ev(base + 0, main_th) == 1, "%s: SIGNAL_CONTEXT hook ran %d times in the main thread", what,
          count_ev(base + 0, main_th));
    CHECK(count_ev(base + 1, helper_th) == 1, "%s: THREAD_CONTEXT hook ran %d times in the callback thread", what,
          count_ev(base + 1, helper_th));
    CHECK(count_ev(base + 2, plain_th) == 1, "%s: NO_CALLBACKS hook ran %d times in the thread without cr_init", what,
          count_ev(base + 2, plain_th));
}

static int do_save(void)
{
    char abs_img[PATH_MAX];
    cr_checkpoint_handle_t h;
    int id, fd, rc, err;

    note("ST_ALARM:120");
    say("api_restart save started");
    main_th = pthread_self();
    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    CHECK(cr_register_callback(sig_cb, NULL, CR_SIGNAL_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    CHECK(cr_register_callback(thr_cb, NULL, CR_THREAD_CONTEXT) >= 0, "register (errno %s)", ename(errno));
    CHECK(cr_register_hook(CR_HOOK_CONT_SIGNAL_CONTEXT, h0) == NULL, "hook 0");
    CHECK(cr_register_hook(CR_HOOK_CONT_THREAD_CONTEXT, h1) == NULL, "hook 1");
    CHECK(cr_register_hook(CR_HOOK_CONT_NO_CALLBACKS, h2) == NULL, "hook 2");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_SIGNAL_CONTEXT, h3) == NULL, "hook 3");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_THREAD_CONTEXT, h4) == NULL, "hook 4");
    CHECK(cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, h5) == NULL, "hook 5");
    CHECK(pthread_create(&plain_th, NULL, plain_thread, NULL) == 0, "pthread_create");
    while (!plain_started) sleep_ms(1);
    say("callbacks, six hooks and a thread without cr_init() are set up");

    fd = open_ctx(IMAGE);
    CHECK(realpath(IMAGE, abs_img) != NULL, "realpath: %s", strerror(errno));
    nev = 0;
    saved_pgrp = getpgrp();
    saved_sid = getsid(0);
    rc = request_self(fd, 0, &h);
    CHECK(rc == 0, "cr_request_checkpoint returned %d (errno %s)", rc, ename(errno));
    rc = poll_done(&h);
    err = errno;

    if (rc == 1) {
        /* ---- the original process ---- */
        close(fd);
        CHECK(r_sig.ran == 1 && r_sig.rc == 0, "signal callback: ran %d, cr_checkpoint %d", r_sig.ran, r_sig.rc);
        CHECK(r_thr.ran == 1 && r_thr.rc == 0, "thread callback: ran %d, cr_checkpoint %d", r_thr.ran, r_thr.rc);
        CHECK(r_sig.rinfo_null && r_thr.rinfo_null, "cr_get_restart_info() is not NULL on the continue path");
        CHECK(strcmp(r_sig.dest, abs_img) == 0, "checkpoint info dest \"%s\", expected \"%s\"", r_sig.dest, abs_img);
        say("original: poll 1; both callbacks got 0 and no restart info; dest is the image path");
        CHECK(helper_known, "the thread-context callback did not run");
        check_hooks(CR_HOOK_CONT_SIGNAL_CONTEXT, "original");
        say("original: the three CONT hooks ran in the main, callback and plain threads");
        stop_plain = 1;
        pthread_join(plain_th, NULL);
        say("DONE");
        return 0;
    }

    /* ---- the restored process: report into restored.out ---- */
    CHECK(rc == CR_POLL_CHKPT_ERR_POST && err == CR_ERESTARTED,
          "cr_poll_checkpoint returned %d errno %s: neither 1 nor CR_POLL_CHKPT_ERR_POST/CR_ERESTARTED", rc, ename(err));
    seq_fd = open(REPORT, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (seq_fd < 0) {
        seq_fd = 1;
        FAIL("restored: cannot create %s: %s", REPORT, strerror(errno));
    }
    seq_no = 0;
    note("requester=%d", (int)r_sig.rc);
    note("ppid=%d", (int)getppid());
    note("src=%s", r_sig.src);
    note("pgrp=%d %d", (int)getpgrp(), (int)saved_pgrp);
    note("sid=%d %d", (int)getsid(0), (int)saved_sid);
    say("restored: cr_poll_checkpoint returned CR_POLL_CHKPT_ERR_POST with errno CR_ERESTARTED");
    CHECK(r_sig.ran == 1 && r_sig.rc > 0, "signal callback: ran %d, cr_checkpoint returned %d (want > 0)", r_sig.ran, r_sig.rc);
    CHECK(!r_sig.rinfo_null, "signal callback: cr_get_restart_info() is NULL after a restart");
    CHECK(r_sig.requester == r_sig.rc, "signal callback: restart info requester %d != cr_checkpoint() %d",
          (int)r_sig.requester, r_sig.rc);
    CHECK(r_sig.src[0] == '/', "signal callback: restart info src \"%s\" is not an absolute path", r_sig.src);
    say("restored: signal callback got cr_checkpoint() > 0 == cr_get_restart_info()->requester");
    CHECK(r_thr.ran == 1 && r_thr.rc > 0, "thread callback: ran %d, cr_checkpoint returned %d (want > 0)", r_thr.ran, r_thr.rc);
    CHECK(!r_thr.rinfo_null && r_thr.requester == r_thr.rc && r_thr.rc == r_sig.rc,
          "thread callback: restart info %s, requester %d, cr_checkpoint %d (signal callback %d)",
          r_thr.rinfo_null ? "NULL" : "set", (int)r_thr.requester, r_thr.rc, r_sig.rc);
    CHECK(strcmp(r_thr.src, r_sig.src) == 0, "thread callback src \"%s\" != signal callback src \"%s\"", r_thr.src, r_sig.src);
    say("restored: thread callback got the same requester and src");
    check_hooks(CR_HOOK_RSTRT_SIGNAL_CONTEXT, "restored");
    say("restored: the three RSTRT hooks ran in the main, callback and plain threads");
    rc = cr_status();
    CHECK(rc == CR_STATE_IDLE, "restored: cr_status() is %d", rc);
    stop_plain = 1;
    CHECK(pthread_join(plain_th, NULL) == 0, "restored: pthread_join of the plain thread");
    say("restored: cr_status() is IDLE; the thread without cr_init() was restored and joined");
    say("DONE");
    close(seq_fd);
    return 0;
}

/* ---- restart side ---- */
static int do_restart(unsigned flags)
{
    char abs_img[PATH_MAX], line[PATH_MAX + 64], src[PATH_MAX + 64] = "";
    cr_restart_args_t ra;
    cr_restart_handle_t h;
    int id, fd, rc, st, requester = -1, ppid = -1, xxx = 0, done = 0, lines = 0;
    int pgrp[2] = { -1, -2 }, sid[2] = { -1, -2 };
    pid_t pid;
    FILE *f;

    note("ST_ALARM:120");
    say("api_restart restart started (cr_flags %#x)", flags);
    unlink(REPORT);
    id = cr_init();
    CHECK(id >= 0, "cr_init() returned %d (errno %s)", id, ename(errno));
    fd = open(IMAGE, O_RDONLY);
    CHECK(fd >= 0, "open %s: %s", IMAGE, strerror(errno));
    CHECK(realpath(IMAGE, abs_img) != NULL, "realpath: %s", strerror(errno));
    rc = cr_initialize_restart_args_t(&ra);
    CHECK(rc == 0, "cr_initialize_restart_args_t returned %d", rc);
    ra.cr_fd = fd;
    ra.cr_flags = flags;
    rc = cr_request_restart(&ra, &h);
    CHECK(rc == 0, "cr_request_restart returned %d (errno %s)", rc, ename(errno));
    say("cr_request_restart returned 0");
    for (;;) {
        struct timeval tv = { 60, 0 };
        rc = cr_poll_restart(&h, &tv);
        if (rc == CR_POLL_RSTRT_ERR_PRE && errno == EINTR) continue;
        break;
    }
    CHECK(rc > 0, "cr_poll_restart returned %d (errno %s), expected the restored pid", rc, ename(errno));
    pid = rc;
    say("cr_poll_restart returned the restored pid");
    close(fd);
    rc = waitpid(pid, &st, 0);
    CHECK(rc == pid, "waitpid(restored pid %d) returned %d (%s): not our child?", (int)pid, rc, strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the restored process ended with status %#x, expected exit 0", st);
    say("the restored process is our child and exited 0");
    rc = waitpid(-1, &st, WNOHANG);
    CHECK(rc < 0 && errno == ECHILD, "waitpid(-1) after the restored process returned %d (%s): another child of ours",
          rc, rc < 0 ? strerror(errno) : "a process");
    say("we have no other child");

    f = fopen(REPORT, "r");
    CHECK(f != NULL, "the restored process wrote no %s", REPORT);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        lines++;
        if (strncmp(line, "#requester=", 11) == 0) requester = atoi(line + 11);
        else if (strncmp(line, "#ppid=", 6) == 0) ppid = atoi(line + 6);
        else if (strncmp(line, "#src=", 5) == 0) snprintf(src, sizeof src, "%s", line + 5);
        else if (strncmp(line, "#pgrp=", 6) == 0) sscanf(line + 6, "%d %d", &pgrp[0], &pgrp[1]);
        else if (strncmp(line, "#sid=", 5) == 0) sscanf(line + 5, "%d %d", &sid[0], &sid[1]);
        else if (strncmp(line, "XXX", 3) == 0) xxx++;
        else if (strlen(line) > 4 && strcmp(line + 3, " DONE") == 0) done = 1;
    }
    fclose(f);
    CHECK(xxx == 0 && done, "%s: %d lines, %d XXX lines, %s", REPORT, lines, xxx, done ? "DONE" : "no DONE line");
    say("%s has no XXX line and ends with DONE", REPORT);
    CHECK(requester == getpid(), "restart info requester %d, expected our pid %d", requester, (int)getpid());
    CHECK(ppid == getpid(), "the restored process's parent is %d, expected us (%d)", ppid, (int)getpid());
    say("restored process: cr_checkpoint() returned our pid (the requester); its parent is us");
    CHECK(strcmp(src, abs_img) == 0, "restart info src \"%s\", expected \"%s\"", src, abs_img);
    say("restored process: restart info src is the absolute path of the image");
    if (flags & CR_RSTRT_RESTORE_PGID) {
        CHECK(pgrp[0] == pgrp[1], "restored process group %d, saved %d (CR_RSTRT_RESTORE_PGID)", pgrp[0], pgrp[1]);
        say("restored process: its process group is the saved one");
    }
    if (flags & CR_RSTRT_RESTORE_SID) {
        CHECK(sid[0] == sid[1], "restored session %d, saved %d (CR_RSTRT_RESTORE_SID)", sid[0], sid[1]);
        say("restored process: its session is the saved one");
    }
    say("DONE");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "save") == 0) return do_save();
    if (argc >= 2 && strcmp(argv[1], "restart") == 0)
        return do_restart(argc >= 3 ? (unsigned)strtoul(argv[2], NULL, 0) : 0);
    say("usage: api_restart save | api_restart restart [FLAGS]");
    FAIL("bad arguments");
}
