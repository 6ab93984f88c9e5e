/*
 * fault_target.c - the program tests/faults.rs hurts checkpoints of (issue 13's fault suite).
 *
 * Build: gcc -O2 -Wall -pthread -o fault_target fault_target.c
 * Run:   CR_TEST_GO=... CR_TEST_DIR=... cr_run ./fault_target MB [plain|cb|cs|vfork|tree]
 *
 * Fills MB MiB with a pattern, then the main thread prints a tick "T SEQ NS ST" (NS: its
 * CLOCK_MONOTONIC time, ST: cr_status() in modes cb and cs, else 0) every millisecond on stdout, so a test sees exactly when and for how
 * long the program was stopped, and that it runs on without a gap or a repeat. At GO it checks
 * the pattern and the tick sequence and prints "PASS fault_target".
 *
 * The libcr calls are looked up in the libcr.so.0 cr_run's stub loaded, so nothing links it:
 *   cb     a thread-context callback prints "CALLBACK" and waits until $CR_TEST_DIR/release
 *          exists, then calls cr_checkpoint(0) and prints "CB_RESULT rc"; if
 *          $CR_TEST_DIR/exec exists it execs "fault_target 8 plain" instead (new READY); if
 *          $CR_TEST_DIR/fork exists it first forks a child that prints "FORKED PID" and
 *          "F SEQ NS 0" ticks until GO, then exits (nobody waits for it).
 *   cs     whenever $CR_TEST_DIR/hold exists (and release does not), a thread enters a critical
 *          section ("IN_CS"), prints "PENDING" once cr_status() says a checkpoint waits for it,
 *          waits for $CR_TEST_DIR/release, leaves it, waits for hold to go away ("LEFT_CS");
 *          if $CR_TEST_DIR/exit appears while it waits for release, the program prints
 *          "EXITING" and calls exit(3) from inside the critical section.
 *   vfork  a thread calls vfork(); the child waits for $CR_TEST_DIR/release and _exits, so the
 *          thread sits in the kernel (uninterruptible, as in D state) and cannot stop for a
 *          checkpoint meanwhile; it prints "VFORKED" first (from the child, on stdout).
 *   tree   a child is forked before READY; it prints ticks "C SEQ NS 0" until GO and exits 0,
 *          which the parent checks.
 *   treecb both: the callback of cb (in the parent; the child inherits it), then the child of tree.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "fault_target"
#include "fail.h"

static char release_path[4096], hold_path[4096], exec_path[4096], fork_path[4096], go_path[4096],
    exit_path[4096];
static int client_id = -1;

static void say(const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(STDOUT_FILENO, buf, n) != n)
        _exit(9);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void *sym(const char *name)
{
    /* cr_run's stub loads libcr.so.0 locally: find it by its soname. */
    void *h = dlopen("libcr.so.0", RTLD_NOW | RTLD_NOLOAD);
    void *p = h ? dlsym(h, name) : NULL;
    if (!p)
        failf("%s not found (run under cr_run)", name);
    return p;
}

static int callback(void *arg)
{
    (void)arg;
    int (*ckpt)(int) = sym("cr_checkpoint");
    say("CALLBACK\n");
    if (access(fork_path, F_OK) == 0) {
        pid_t pid = fork();
        if (pid < 0)
            fail("fork in the callback");
        if (pid == 0) {
            uint64_t seq = 0;
            say("FORKED %d\n", (int)getpid());
            while (access(go_path, F_OK) != 0) {
                say("F %llu %llu 0\n", (unsigned long long)++seq, (unsigned long long)now_ns());
                usleep(1000);
            }
            _exit(0);
        }
    }
    if (access(exec_path, F_OK) == 0) {
        sigset_t none;
        sigemptyset(&none); /* this thread (libcr's) blocks every signal: not the new program */
        pthread_sigmask(SIG_SETMASK, &none, NULL);
        execl("/proc/self/exe", "fault_target", "8", "plain", (char *)NULL);
        fail("execl");
    }
    while (access(release_path, F_OK) != 0)
        usleep(1000);
    int rc = ckpt(0);
    say("CB_RESULT %d\n", rc);
    return 0;
}

static void *cs_thread(void *arg)
{
    (void)arg;
    int (*enter)(int) = sym("cr_enter_cs");
    int (*leave)(int) = sym("cr_leave_cs");
    int (*status)(void) = sym("cr_status");
    int (*init)(void) = sym("cr_init");
    int id = init();
    if (id < 0)
        fail("cr_init in the cs thread");
    for (;;) {
        if (access(hold_path, F_OK) == 0 && access(release_path, F_OK) != 0) {
            if (enter(id) < 0)
                fail("cr_enter_cs");
            say("IN_CS\n");
            while (status() != 1 && access(release_path, F_OK) != 0)
                usleep(1000);
            say("PENDING\n");
            while (access(release_path, F_OK) != 0) {
                if (access(exit_path, F_OK) == 0) {
                    say("EXITING\n");
                    exit(3);
                }
                usleep(1000);
            }
            leave(id);
            while (access(hold_path, F_OK) == 0)
                usleep(1000);
            say("LEFT_CS\n");
        }
        usleep(1000);
    }
    return NULL;
}

static void *vfork_thread(void *arg)
{
    (void)arg;
    pid_t pid = vfork();
    if (pid == 0) {
        static const char msg[] = "VFORKED\n";
        if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0)
            _exit(1);
        while (access(release_path, F_OK) != 0)
            usleep(1000);
        _exit(0);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    const char *dir = getenv("CR_TEST_DIR");
    if (argc != 3 || !go || !dir)
        fail("usage: CR_TEST_GO=... CR_TEST_DIR=... fault_target MB plain|cb|cs|vfork|tree|treecb");
    snprintf(release_path, sizeof release_path, "%s/release", dir);
    snprintf(hold_path, sizeof hold_path, "%s/hold", dir);
    snprintf(exec_path, sizeof exec_path, "%s/exec", dir);
    snprintf(fork_path, sizeof fork_path, "%s/fork", dir);
    snprintf(exit_path, sizeof exit_path, "%s/exit", dir);
    snprintf(go_path, sizeof go_path, "%s", go);
    size_t len = (size_t)atoi(argv[1]) << 20;
    const char *mode = argv[2];
    int tree = !strcmp(mode, "tree") || !strcmp(mode, "treecb");
    if (!strcmp(mode, "treecb"))
        mode = "cb";
    unsigned char *mem = NULL;
    if (len) {
        mem = malloc(len);
        if (!mem)
            fail("malloc");
        for (size_t i = 0; i < len; i++)
            mem[i] = (unsigned char)(i * 131 + (i >> 12));
    }
    pthread_t th;
    if (!strcmp(mode, "cb") || !strcmp(mode, "cs")) {
        int (*init)(void) = sym("cr_init");
        client_id = init();
        if (client_id < 0)
            fail("cr_init");
    }
    if (!strcmp(mode, "cb")) {
        int (*reg)(int (*)(void *), void *, int) = sym("cr_register_callback");
        if (reg(callback, NULL, 0x4000000 /* CR_THREAD_CONTEXT */) < 0)
            fail("cr_register_callback");
    } else if (!strcmp(mode, "cs")) {
        if (pthread_create(&th, NULL, cs_thread, NULL))
            fail("pthread_create");
    } else if (!strcmp(mode, "vfork")) {
        if (pthread_create(&th, NULL, vfork_thread, NULL))
            fail("pthread_create");
    } else if (strcmp(mode, "plain") && !tree) {
        fail("unknown mode");
    }
    pid_t child = -1;
    if (tree) {
        child = fork();
        if (child < 0)
            fail("fork");
    }
    if (child != 0)
        say("READY\n");
    int (*status)(void) = client_id >= 0 ? sym("cr_status") : NULL;
    uint64_t seq = 0;
    while (access(go, F_OK) != 0) {
        say("%s %llu %llu %d\n", child == 0 ? "C" : "T", (unsigned long long)++seq,
            (unsigned long long)now_ns(), status ? status() : 0);
        usleep(1000);
    }
    if (child == 0)
        _exit(0);
    if (child > 0) {
        int st;
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("the child did not exit 0");
    }
    for (size_t i = 0; i < len; i++)
        if (mem[i] != (unsigned char)(i * 131 + (i >> 12)))
            failf("memory changed at byte %zu", i);
    say("PASS fault_target %llu ticks\n", (unsigned long long)seq);
    return 0;
}
