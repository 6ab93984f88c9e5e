/*
 * tmp_scratch.c - a scratch file under a temporary directory that the program's own SIGTERM
 * handler deletes (as gcc deletes its /tmp/cc*.s): it must come back from the image.
 *
 * Run: CR_TEST_GO=/path/to/go CR_TEST_SCRATCH=/tmp/unique/dir [CR_TEST_SCRATCH_KIB=N]
 *      [CR_TEST_UNLINKED=1] cr_run ./tmp_scratch
 *
 * Setup: $CR_TEST_SCRATCH/deep/scratch.dat (mode 0640), 200 KiB (or N KiB) of pattern(o), opened O_RDWR at
 * offset 70000; a second descriptor opened O_WRONLY|O_APPEND on the same file. SIGTERM handler:
 * unlink the file, rmdir deep, die of SIGTERM. After GO: the file is at its path again (same
 * inode as the descriptor), mode 0640, 200 KiB of the pattern, offset 70000, and appending
 * through the second descriptor lands at 200 KiB.
 * With CR_TEST_UNLINKED=1 the file and deep are removed before READY (an open unlinked file):
 * after GO the same checks through the descriptors only.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OFFSET 70000

static size_t SIZE = 200u << 10;

static char file_path[4096], deep_path[4096];

static void fail(const char *what)
{
    printf("FAIL tmp_scratch: %s\n", what);
    fflush(stdout);
    fprintf(stderr, "FAIL tmp_scratch: %s\n", what);
    exit(1);
}

static unsigned char pattern(uint32_t o)
{
    return (unsigned char)((o * 31) ^ (o >> 9));
}

static void on_term(int sig)
{
    unlink(file_path);
    rmdir(deep_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *dir = getenv("CR_TEST_SCRATCH");
    const char *kib = getenv("CR_TEST_SCRATCH_KIB");
    if (kib)
        SIZE = (size_t)strtoul(kib, NULL, 10) << 10;
    unsigned char *buf = malloc(SIZE);
    if (!go || !dir)
        fail("CR_TEST_GO / CR_TEST_SCRATCH not set");
    if (!buf || SIZE <= OFFSET)
        fail("bad CR_TEST_SCRATCH_KIB");
    snprintf(deep_path, sizeof deep_path, "%s/deep", dir);
    snprintf(file_path, sizeof file_path, "%s/scratch.dat", deep_path);
    if (mkdir(deep_path, 0755) != 0)
        fail("mkdir deep");
    umask(0);
    int fd = open(file_path, O_RDWR | O_CREAT | O_EXCL, 0640);
    if (fd < 0)
        fail("create scratch file");
    for (uint32_t o = 0; o < SIZE; o++)
        buf[o] = pattern(o);
    if (write(fd, buf, SIZE) != (ssize_t)SIZE)
        fail("write scratch file");
    if (lseek(fd, OFFSET, SEEK_SET) != OFFSET)
        fail("lseek");
    int afd = open(file_path, O_WRONLY | O_APPEND);
    if (afd < 0)
        fail("open for append");
    int unlinked = getenv("CR_TEST_UNLINKED") != NULL;
    if (unlinked && (unlink(file_path) != 0 || rmdir(deep_path) != 0))
        fail("unlink the scratch file");
    signal(SIGTERM, on_term);
    printf("READY\n");
    fflush(stdout);

    volatile unsigned long spins = 0;
    while (access(go, F_OK) != 0) {
        spins++;
        usleep(1000);
    }

    struct stat a, b;
    if (unlinked) {
        if (fstat(fd, &a) != 0 || a.st_nlink != 0)
            fail("the unlinked file has a name");
    } else if (stat(file_path, &a) != 0) {
        fail("scratch file missing at its path");
    }
    if (fstat(fd, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
        fail("path and descriptor are different files");
    if ((a.st_mode & 07777) != 0640)
        fail("mode not 0640");
    if ((size_t)a.st_size != SIZE)
        fail("size changed");
    if (lseek(fd, 0, SEEK_CUR) != OFFSET)
        fail("offset lost");
    memset(buf, 0, SIZE);
    if (pread(fd, buf, SIZE, 0) != (ssize_t)SIZE)
        fail("read back");
    for (uint32_t o = 0; o < SIZE; o++)
        if (buf[o] != pattern(o))
            fail("contents differ");
    if (write(afd, "tail", 4) != 4)
        fail("append");
    if (fstat(fd, &b) != 0 || (size_t)b.st_size != SIZE + 4)
        fail("append did not land at the end");
    unlink(file_path);
    rmdir(deep_path);
    printf("PASS tmp_scratch\n");
    fflush(stdout);
    return 0;
}
