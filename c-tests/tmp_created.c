/*
 * tmp_created.c - a temporary file made with mkstemps and closed, which the program still needs
 * and its SIGTERM handler deletes (as gcc's /tmp/cc*.s between cc1 and as): it must come back
 * from the image although nobody had it open at checkpoint time.
 *
 * Build: gcc -O2 -Wall -o tmp_created tmp_created.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_SCRATCH=/tmp/unique/dir cr_run ./tmp_created
 *
 * Setup: mkstemps("$CR_TEST_SCRATCH/ccXXXXXX.s", 2), 100 KiB of a pattern written, chmod 0640,
 * closed; its name printed. SIGTERM handler: unlink it, die of SIGTERM. After GO: the file at
 * its path again, mode 0640, 100 KiB of the pattern. `PASS tmp_created`.
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

static char path[4096];

static unsigned char pattern(size_t i) { return (unsigned char)(i * 31 + 7); }

static void on_term(int sig)
{
    unlink(path);
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO"), *dir = getenv("CR_TEST_SCRATCH");
    if (!go || !dir)
        fail("CR_TEST_GO / CR_TEST_SCRATCH not set");
    snprintf(path, sizeof path, "%s/ccXXXXXX.s", dir);
    int fd = mkstemps(path, 2);
    if (fd < 0)
        failf("mkstemps %s: %m", path);
    static unsigned char buf[SIZE];
    for (size_t i = 0; i < SIZE; i++)
        buf[i] = pattern(i);
    if (write(fd, buf, SIZE) != (ssize_t)SIZE || fchmod(fd, 0640) != 0 || close(fd) != 0)
        failf("write %s: %m", path);
    signal(SIGTERM, on_term);
    printf("FILE %s\nREADY\n", path);
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    struct stat st;
    if (stat(path, &st) != 0)
        failf("%s is gone after the restart: %m", path);
    if ((st.st_mode & 07777) != 0640)
        failf("%s has mode %o, want 640", path, st.st_mode & 07777);
    if (st.st_size != SIZE)
        failf("%s has %lld bytes, want %u", path, (long long)st.st_size, SIZE);
    fd = open(path, O_RDONLY);
    memset(buf, 0, SIZE);
    if (fd < 0 || read(fd, buf, SIZE) != (ssize_t)SIZE)
        failf("read %s: %m", path);
    for (size_t i = 0; i < SIZE; i++)
        if (buf[i] != pattern(i))
            failf("byte %zu of %s is %u, want %u", i, path, buf[i], pattern(i));
    close(fd);
    unlink(path);
    printf("PASS %s\n", NAME);
    return 0;
}
