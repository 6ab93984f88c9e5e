/*
 * forward.c - cr_forward_checkpoint from a callback, through the real tools.
 *
 * Build: gcc -O2 -Wall -o forward forward.c -lcr   (links libcr: calls cr_init itself)
 * Run:   CR_TEST_GO=/path/to/go cr_run ./forward [down]   (prints READY, then "child PID")
 *
 * The parent forks a child (its own process group, so a checkpoint of the child's group or
 * tree does not reach the parent by itself) whose signal-context callback forwards every
 * checkpoint to the parent (cr_forward_checkpoint(CR_SCOPE_PROC, parent)). Checkpointing the
 * child therefore saves both; after a restart both must be back: after GO the child writes a
 * mark into memory shared with the parent, the parent waits for it, answers over a pipe made
 * before the checkpoint, and collects the child with waitpid (exit 0). `PASS forward`.
 * With `down` it is the other way round: the parent's callback forwards to its child (and the
 * parent is the one to checkpoint). With `tree` the child forwards to its parent's tree.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libcr.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "forward"
#include "fail.h"

static pid_t parent, fwd_target;
static int fwd_scope = CR_SCOPE_PROC;
static volatile int fwd_rc = -1;

static int forward_cb(void *arg)
{
    (void)arg;
    fwd_rc = cr_forward_checkpoint(fwd_scope, fwd_target);
    (void)cr_checkpoint(CR_CHECKPOINT_READY);
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int down = argc > 1 && strcmp(argv[1], "down") == 0;
    if (argc > 1 && strcmp(argv[1], "tree") == 0)
        fwd_scope = CR_SCOPE_TREE; /* the parent's whole tree (the child is in it already) */
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO is not set");
    parent = getpid();
    volatile long *count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (count == MAP_FAILED)
        fail("mmap");
    int p[2];
    if (pipe(p) != 0)
        fail("pipe");
    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        close(p[1]);
        setpgid(0, 0);
        fwd_target = parent;
        if (cr_init() < 0 ||
            (!down && cr_register_callback(forward_cb, NULL, CR_SIGNAL_CONTEXT) < 0))
            fail("child: cr_init/cr_register_callback");
        for (;;) {
            count[0]++;
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
            if (access(go, F_OK) == 0)
                break;
        }
        count[1] = 0x600d;
        char c;
        if (read(p[0], &c, 1) != 1 || c != 'x')
            fail("child: no word from the parent after GO");
        if (!down && fwd_rc != 0)
            failf("child: cr_forward_checkpoint returned %d", fwd_rc);
        _exit(0);
    }
    close(p[0]);
    fwd_target = child;
    if (cr_init() < 0 ||
        (down && cr_register_callback(forward_cb, NULL, CR_SIGNAL_CONTEXT) < 0))
        fail("cr_init/cr_register_callback");
    printf("READY\nchild %d\n", (int)child);
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(2000);
    double deadline = now() + 10;
    while (count[1] != 0x600d) {
        if (now() > deadline)
            fail("no mark from the child in shared memory after GO: it is not back, or the "
                 "memory is not shared any more");
        usleep(1000);
    }
    if (write(p[1], "x", 1) != 1)
        fail("write to the child");
    if (down && fwd_rc != 0)
        failf("cr_forward_checkpoint to the child returned %d", fwd_rc);
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failf("the child ended with status %#x", st);
    printf("PASS %s\n", NAME);
    fflush(stdout);
    return 0;
}
