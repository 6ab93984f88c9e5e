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
 * Prints "info uids R E S dumpable D" on stderr, READY, sleeps until GO, then checks that its
 * secret (a buffer filled before READY) is intact and that its ids and dumpable setting did not
 * change, prints PASS secure and exits 0.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
    } else if (strcmp(mode, "suid") == 0) {
        if (geteuid() != 0 || getuid() == 0)
            fail("not running set-uid root by another user");
    } else if (strcmp(mode, "plain") != 0) {
        fail("unknown mode");
    }
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    int dump = prctl(PR_GET_DUMPABLE);
    fprintf(stderr, "info uids %d %d %d dumpable %d\n", (int)r, (int)e, (int)s, dump);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    uid_t r2, e2, s2;
    getresuid(&r2, &e2, &s2);
    if (r2 != r || e2 != e || s2 != s || prctl(PR_GET_DUMPABLE) != dump)
        fail("ids or dumpable setting changed");
    for (size_t i = 0; i < sizeof secret; i++)
        if (secret[i] != (char)(i * 7 + 3))
            fail("secret changed");
    printf("PASS secure\n");
    fflush(stdout);
    return 0;
}
