/*
 * secure.c - targets whose memory their owner may not read (issue 13, security): only root
 * may checkpoint them. Linked with libcr (the agent comes with the program, so it also runs
 * set-uid, where the dynamic loader ignores cr_run's LD_PRELOAD).
 *
 * Build: gcc -O2 -Wall -I include -o secure secure.c -Wl,--no-as-needed -Lpath -lcr -Wl,-rpath,path
 * Run:   CR_TEST_GO=/path/to/go ./secure MODE
 *   plain    nothing special (the control case)
 *   nodump   prctl(PR_SET_DUMPABLE, 0), as ssh-agent does
 *   dropuid  started as root, switches to nobody (setresgid/setresuid 65534): the kernel makes
 *            it non-dumpable, and its memory may hold what root gave it
 *   suid     installed set-uid root and started by another user: real uid that user, effective
 *            and saved uid 0 (checked: FAIL if the set-uid bit had no effect)
 *   seteuid  started as root, drops its effective uid to nobody for a while (setresuid(0,
 *            65534, 0)): real and saved uid stay root's
 *   tree     forks a child before READY; both check their own ids after GO, the parent
 *            waits for the child and fails unless it passed
 * With CR_TEST_FILE set, the file is opened for reading before READY and kept open.
 * Prints "info uids R E S dumpable D" on stderr, READY, sleeps until GO, then checks that its
 * secret (a buffer filled before READY) is intact and that its uids, gids, supplementary
 * groups and dumpable setting did not change, prints PASS secure and exits 0.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what)
{
    printf("FAIL secure: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL secure: %s\n", what);
    exit(1);
}

static char secret[4096];

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    const char *mode = argc > 1 ? argv[1] : "plain";
    if (!go)
        fail("CR_TEST_GO not set");
    for (size_t i = 0; i < sizeof secret; i++)
        secret[i] = (char)(i * 7 + 3);
    if (strcmp(mode, "nodump") == 0) {
        if (prctl(PR_SET_DUMPABLE, 0) != 0)
            fail("PR_SET_DUMPABLE 0");
    } else if (strcmp(mode, "dropuid") == 0) {
        if (getuid() != 0)
            fail("dropuid must be started as root");
        if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
            fail("setresuid to nobody");
    } else if (strcmp(mode, "seteuid") == 0) {
        if (getuid() != 0)
            fail("seteuid must be started as root");
        if (setresuid(0, 65534, 0) != 0)
            fail("setresuid(0, 65534, 0)");
    } else if (strcmp(mode, "suid") == 0) {
        if (geteuid() != 0 || getuid() == 0)
            fail("not running set-uid root by another user");
    } else if (strcmp(mode, "plain") != 0 && strcmp(mode, "tree") != 0) {
        fail("unknown mode");
    }
    const char *file = getenv("CR_TEST_FILE");
    if (file && open(file, O_RDONLY) < 0)
        fail("open CR_TEST_FILE");
    pid_t child = -1; /* the tree's child: 0 in the child, its pid in the parent */
    if (strcmp(mode, "tree") == 0) {
        child = fork();
        if (child < 0)
            fail("fork");
    }
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    gid_t gr, ge, gs;
    getresgid(&gr, &ge, &gs);
    gid_t groups[256], groups2[256];
    int ng = getgroups(256, groups);
    if (ng < 0)
        fail("getgroups");
    int dump = prctl(PR_GET_DUMPABLE);
    fprintf(stderr, "info uids %d %d %d dumpable %d\n", (int)r, (int)e, (int)s, dump);
    if (child != 0) { /* the tree's child says nothing on stdout */
        printf("READY\n");
        fflush(stdout);
    }
    while (access(go, F_OK) != 0)
        usleep(1000);
    uid_t r2, e2, s2;
    getresuid(&r2, &e2, &s2);
    gid_t gr2, ge2, gs2;
    getresgid(&gr2, &ge2, &gs2);
    int ng2 = getgroups(256, groups2);
    if (r2 != r || e2 != e || s2 != s || prctl(PR_GET_DUMPABLE) != dump)
        fail("ids or dumpable setting changed");
    if (gr2 != gr || ge2 != ge || gs2 != gs)
        fail("gids changed");
    if (ng2 != ng || memcmp(groups, groups2, ng * sizeof(gid_t)) != 0)
        fail("supplementary groups changed");
    for (size_t i = 0; i < sizeof secret; i++)
        if (secret[i] != (char)(i * 7 + 3))
            fail("secret changed");
    if (child == 0)
        exit(0);
    if (child > 0) {
        int st;
        /* waitpid(-1): a restart with fresh pids gives the child another pid */
        if (waitpid(-1, &st, 0) <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("the child failed");
    }
    printf("PASS secure\n");
    fflush(stdout);
    return 0;
}
