/*
 * tmp_created.c - a temporary file made with mkstemps and closed, which the program still needs
 * and its SIGTERM handler deletes (as gcc's /tmp/cc*.s between cc1 and as): it must come back
 * from the image although nobody had it open at checkpoint time.
 *
 * Build: gcc -O2 -Wall -o tmp_created tmp_created.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_SCRATCH=/tmp/unique/dir [CR_TEST_KEEP=K]
 *        [CR_TEST_CHURN=C] cr_run ./tmp_created
 *
 * Setup: K (default 1, at most 64) times mkstemps("$CR_TEST_SCRATCH/ccXXXXXX.s", 2), 100 KiB
 * of a pattern written, chmod 0640, closed, its name printed; then C (default 0) more made,
 * closed and deleted at once (as gcc's many compiles do). SIGTERM handler: unlink the K kept
 * ones, die of SIGTERM. After GO: each at its path again, mode 0640, 100 KiB of the pattern.
 * `PASS tmp_created`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME "tmp_created"
#include "fail.h"

#define SIZE (100u << 10)

#define MAX_KEEP 64

static char path[MAX_KEEP][4096];
static int keep = 1;

static unsigned char pattern(size_t i) { return (unsigned char)(i * 31 + 7); }

static void on_term(int sig)
{
    for (int k = 0; k < keep; k++)
        unlink(path[k]);
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO"), *dir = getenv("CR_TEST_SCRATCH");
    if (!go || !dir)
        fail("CR_TEST_GO / CR_TEST_SCRATCH not set");
    if (getenv("CR_TEST_KEEP"))
        keep = atoi(getenv("CR_TEST_KEEP"));
    int churn = getenv("CR_TEST_CHURN") ? atoi(getenv("CR_TEST_CHURN")) : 0;
    if (keep < 1 || keep > MAX_KEEP || churn < 0)
        fail("bad CR_TEST_KEEP / CR_TEST_CHURN");
    static unsigned char buf[SIZE];
    for (size_t i = 0; i < SIZE; i++)
        buf[i] = pattern(i);
    for (int k = 0; k < keep; k++) {
        snprintf(path[k], sizeof path[k], "%s/ccXXXXXX.s", dir);
        int fd = mkstemps(path[k], 2);
        if (fd < 0)
            failf("mkstemps %s: %m", path[k]);
        if (write(fd, buf, SIZE) != (ssize_t)SIZE || fchmod(fd, 0640) != 0 || close(fd) != 0)
            failf("write %s: %m", path[k]);
        printf("FILE %s\n", path[k]);
    }
    for (int c = 0; c < churn; c++) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s/chXXXXXX", dir);
        int fd = mkstemp(tmp);
        if (fd < 0 || close(fd) != 0 || unlink(tmp) != 0)
            failf("churn file %s: %m", tmp);
    }
    signal(SIGTERM, on_term);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    for (int k = 0; k < keep; k++) {
        struct stat st;
        if (stat(path[k], &st) != 0)
            failf("%s is gone after the restart: %m", path[k]);
        if ((st.st_mode & 07777) != 0640)
            failf("%s has mode %o, want 640", path[k], st.st_mode & 07777);
        if (st.st_size != SIZE)
            failf("%s has %lld bytes, want %u", path[k], (long long)st.st_size, SIZE);
        int fd = open(path[k], O_RDONLY);
        memset(buf, 0, SIZE);
        if (fd < 0 || read(fd, buf, SIZE) != (ssize_t)SIZE)
            failf("read %s: %m", path[k]);
        for (size_t i = 0; i < SIZE; i++)
            if (buf[i] != pattern(i))
                failf("byte %zu of %s is %u, want %u", i, path[k], buf[i], pattern(i));
        close(fd);
        unlink(path[k]);
    }
    printf("PASS %s\n", NAME);
    return 0;
}
