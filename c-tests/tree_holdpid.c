/*
 * tree_holdpid.c - occupy one given pid (root only), for "pid in use" tests.
 *
 * Build: gcc -O2 -Wall -o tree_holdpid tree_holdpid.c
 * Run:   tree_holdpid [-z|-x] PID
 *
 * Creates a child with exactly that pid (clone3 with set_tid, which needs
 * CAP_SYS_ADMIN), which prints `READY` and pauses until it is killed; the
 * parent waits for it.  If the pid cannot be had (in use: EEXIST) it prints
 * `FAIL tree_holdpid: ...` and exits 1.
 *
 * With -z the child exits at once and stays an unreaped zombie: the parent
 * prints `READY` once it is one, reaps it on SIGUSR1 (printing `REAPED`) and
 * then pauses until it is killed.
 *
 * With -x the child is a process on its way out that cannot be reaped yet: its
 * main thread ends (the pid shows as a zombie) while a second thread runs on;
 * the parent prints `READY` once it is so, lets the thread end on SIGUSR1,
 * reaps the child (printing `REAPED`) and then pauses until it is killed.
 *
 * (A test cannot simply keep one process of a killed tree alive instead: a
 * stopped child gets SIGHUP when its process group becomes orphaned, and a
 * running one dies of SIGPIPE once its parent is gone.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "tree_holdpid"

#include "fail.h"

static int release[2];

/* The -x child's second thread: runs until the parent writes to the pipe, then ends (and with
 * it the process, whose main thread ended before). */
static int worker(void *arg)
{
    char b;
    (void)arg;
    while (read(release[0], &b, 1) < 0 && errno == EINTR) {
    }
    return 0;
}

/* State letter of /proc/PID/stat ('?' when unreadable). */
static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

int main(int argc, char **argv)
{
    int zombie = argc == 3 && strcmp(argv[1], "-z") == 0;
    int exiting = argc == 3 && strcmp(argv[1], "-x") == 0;
    if (argc != 2 + (zombie || exiting) || atoi(argv[argc - 1]) <= 1)
        fail("usage: tree_holdpid [-z|-x] PID");
    pid_t want = (pid_t)atoi(argv[argc - 1]);
    if (exiting && pipe(release) != 0)
        fail("pipe");
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &usr1, NULL) != 0)
        fail("sigprocmask");

    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.exit_signal = SIGCHLD;
    ca.set_tid = (uint64_t)(uintptr_t)&want;
    ca.set_tid_size = 1;
    long r = syscall(SYS_clone3, &ca, sizeof ca);
    if (r < 0)
        failf("clone3 with pid %d: %s", (int)want, strerror(errno));
    if (r == 0 && zombie)
        _exit(0);
    if (r == 0 && exiting) {
        static char stack[64 * 1024];
        if (clone(worker, stack + sizeof stack, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
                  CLONE_THREAD | CLONE_SYSVSEM, NULL) < 0)
            _exit(1);
        syscall(SYS_exit, 0); /* this thread only */
    }
    if (r == 0) {
        static const char ready[] = "READY\n";
        if (write(STDOUT_FILENO, ready, sizeof ready - 1) < 0)
            _exit(1);
        for (;;)
            pause();
    }
    if (r != want)
        failf("clone3 gave pid %ld, not %d", r, (int)want);
    int st;
    if (exiting) {
        for (int i = 0; state_of((pid_t)r) != 'Z'; i++) {
            if (i > 10000)
                fail("the child's main thread did not end");
            usleep(1000);
        }
        printf("READY\n");
        int sig;
        if (sigwait(&usr1, &sig) != 0)
            fail("sigwait");
        if (write(release[1], "x", 1) != 1)
            fail("write");
        while (waitpid((pid_t)r, &st, 0) < 0)
            if (errno != EINTR)
                failf("waitpid: %s", strerror(errno));
        printf("REAPED\n");
        for (;;)
            pause();
    }
    if (zombie) {
        siginfo_t si;
        while (waitid(P_PID, (id_t)r, &si, WEXITED | WNOWAIT) != 0)
            if (errno != EINTR)
                failf("waitid: %s", strerror(errno));
        printf("READY\n");
        int sig;
        if (sigwait(&usr1, &sig) != 0)
            fail("sigwait");
        while (waitpid((pid_t)r, &st, 0) < 0)
            if (errno != EINTR)
                failf("waitpid: %s", strerror(errno));
        printf("REAPED\n");
        for (;;)
            pause();
    }
    while (waitpid((pid_t)r, &st, 0) < 0)
        if (errno != EINTR)
            failf("waitpid: %s", strerror(errno));
    return 0;
}
