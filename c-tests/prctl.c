/*
 * prctl.c - per-process and per-thread prctl settings and the personality across
 * checkpoint/restart.
 *
 * Build: gcc -O2 -Wall -pthread -o prctl prctl.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./prctl
 *
 * Before READY: a second thread is created first (so it inherits nothing of what main sets
 * afterwards); then
 *   main thread:   name "pr-main", timer slack 123457 ns, parent-death signal SIGUSR2,
 *                  no_new_privs 1, keep-caps 1, personality P0|SHORT_INODE;
 *   second thread: name "pr-worker", timer slack 7777 ns, parent-death signal SIGWINCH,
 *                  no_new_privs 0, keep-caps 0, personality P0|WHOLE_SECONDS;
 *   process:       dumpable 0 (when run as root; as another user 1: only root may checkpoint
 *                  a process that is not dumpable), child subreaper 1, THP disabled
 * (P0: the personality the program started with, e.g. ADDR_NO_RANDOMIZE under setarch -R).
 * Each thread checks its own values before READY and after GO (PR_GET_*, personality(~0)),
 * /proc/self/task/<tid>/comm of both threads is checked too, and a parent-death signal must
 * never have arrived.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NAME "prctl"
#include "fail.h"

struct want {
    const char *name;
    unsigned long slack;
    int pdeathsig, nnp, keepcaps;
    int persona;
};
static struct want w_main, w_thr;
static atomic_int phase; /* 1 thread set up, 2 check (after GO), 3 done */
static volatile sig_atomic_t deathsig;

static void on_death(int sig) { deathsig = sig; }

static void apply(const struct want *w)
{
    if (prctl(PR_SET_NAME, w->name) != 0 || prctl(PR_SET_TIMERSLACK, w->slack) != 0 ||
        prctl(PR_SET_PDEATHSIG, w->pdeathsig) != 0 || prctl(PR_SET_KEEPCAPS, w->keepcaps) != 0 ||
        personality(w->persona) == -1 || (w->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0))
        failf("%s: setting up failed", w->name);
}

static void check(const char *when, const struct want *w, pid_t tid)
{
    char name[17] = {0}, path[64], comm[32] = {0};
    int pd = -1;
    prctl(PR_GET_NAME, name);
    prctl(PR_GET_PDEATHSIG, &pd);
    long slack = prctl(PR_GET_TIMERSLACK);
    int nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), kc = prctl(PR_GET_KEEPCAPS);
    int per = personality(0xffffffff);
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(comm, sizeof comm, f))
        failf("%s %s: cannot read %s", when, w->name, path);
    fclose(f);
    comm[strcspn(comm, "\n")] = 0;
    if (strcmp(name, w->name) || strcmp(comm, w->name) || slack != (long)w->slack ||
        pd != w->pdeathsig || nnp != w->nnp || kc != w->keepcaps || per != w->persona)
        failf("%s %s: name %s comm %s slack %ld pdeathsig %d nnp %d keepcaps %d personality %#x, "
              "expected %s %lu %d %d %d %#x",
              when, w->name, name, comm, slack, pd, nnp, kc, per, w->name, w->slack,
              w->pdeathsig, w->nnp, w->keepcaps, w->persona);
}

/* 0 as root; 1 as another user, whose checkpoint of a non-dumpable process is refused. */
static int want_dumpable;

static void check_process(const char *when)
{
    int sub = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &sub);
    int dump = prctl(PR_GET_DUMPABLE), thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    if (dump != want_dumpable || sub != 1 || thp != 1)
        failf("%s: dumpable %d subreaper %d THP disabled %d, expected %d 1 1", when, dump, sub,
              thp, want_dumpable);
    if (deathsig)
        failf("%s: parent-death signal %d arrived", when, (int)deathsig);
}

static void *thread_main(void *arg)
{
    (void)arg;
    apply(&w_thr);
    check("before READY", &w_thr, (pid_t)syscall(SYS_gettid));
    atomic_store(&phase, 1);
    while (atomic_load(&phase) != 2)
        usleep(500);
    check("after GO", &w_thr, (pid_t)syscall(SYS_gettid));
    atomic_store(&phase, 3);
    return NULL;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    int p0 = personality(0xffffffff);
    w_main = (struct want){"pr-main", 123457, SIGUSR2, 1, 1, p0 | SHORT_INODE};
    w_thr = (struct want){"pr-worker", 7777, SIGWINCH, 0, 0, p0 | WHOLE_SECONDS};
    signal(SIGUSR2, on_death);
    signal(SIGWINCH, on_death);
    pthread_t th;
    if (pthread_create(&th, NULL, thread_main, NULL) != 0)
        fail("pthread_create");
    while (atomic_load(&phase) != 1)
        usleep(100);
    apply(&w_main);
    want_dumpable = getuid() != 0;
    if (prctl(PR_SET_DUMPABLE, want_dumpable) != 0 || prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 ||
        prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0)
        fail("setting up the process failed");
    pid_t me = getpid();
    check("before READY", &w_main, me);
    check_process("before READY");
    printf("READY\n");

    while (access(go, F_OK) != 0)
        usleep(1000);

    check("after GO", &w_main, (pid_t)syscall(SYS_gettid));
    check_process("after GO");
    atomic_store(&phase, 2);
    pthread_join(th, NULL);
    if (atomic_load(&phase) != 3)
        fail("the second thread did not finish");
    printf("PASS %s\n", NAME);
    return 0;
}
