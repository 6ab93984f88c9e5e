/*
 * tmpfs_map.c - files mapped from tmpfs (the JVM's /tmp/hsperfdata_USER/PID) across a restart.
 *
 * Build: gcc -O2 -Wall -o tmpfs_map tmpfs_map.c
 * Run:   CR_TEST_GO=... CR_TEST_TMPFS=/dev/shm/x cr_run ./tmpfs_map deleted|shared-deleted|kept
 *
 * In $CR_TEST_TMPFS (a directory on tmpfs):
 *   S  shared.dat, 5 pages + 100 bytes, mapped MAP_SHARED over 6 pages (the last one partly
 *      past the end of the file); written through the mapping, page 2 left a hole
 *   P  private.dat, 4 pages written with write(2), mapped MAP_PRIVATE; page 1 rewritten and
 *      page 3 zeroed through the mapping (copy-on-write)
 * `deleted`: a SIGTERM handler unlinks both files and dies of SIGTERM (as a JVM removes its perf
 * file when it exits: `cr_checkpoint --term` leaves an image whose files are gone);
 * `shared-deleted`: the handler unlinks only S; `dir-deleted`: it unlinks both and removes DIR
 * and DIR's parent (as Open MPI removes its session directory; both must be re-created, with
 * their modes); `kept`: they stay. (DIR on a disk under a temporary directory: both mappings are
 * saved by content.) Work loop: a counter, also stored in page 4 of S.
 * After GO: every byte of S and P; S's file exists at its path (re-created when it was gone),
 * is the mapped one (inode in /proc/self/maps), has the original size and the mapping's bytes,
 * and a write through S reaches it (pread). The files are removed at the end.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME "tmpfs_map"
#include "fail.h"

#define PG 4096
#define S_SIZE (5 * PG + 100)
#define S_MAP (6 * PG)
#define P_SIZE (4 * PG)

static unsigned char s_byte(size_t i) { return (i / PG == 2) ? 0 : (unsigned char)(i * 7 + 1); }
static unsigned char p_file(size_t i) { return (unsigned char)(i * 13 + 5); }
static unsigned char p_byte(size_t i)
{
    if (i / PG == 1)
        return (unsigned char)(i * 3 + 9);
    if (i / PG == 3)
        return 0;
    return p_file(i);
}

static volatile uint64_t counter;
static char spath[4096], ppath[4096];

static int only_shared, with_dirs;
static char dpath[4096], parent[4096];

static void on_term(int sig)
{
    unlink(spath);
    if (!only_shared)
        unlink(ppath);
    if (with_dirs) {
        rmdir(dpath);
        rmdir(parent);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO"), *dir = getenv("CR_TEST_TMPFS");
    only_shared = argc > 1 && strcmp(argv[1], "shared-deleted") == 0;
    with_dirs = argc > 1 && strcmp(argv[1], "dir-deleted") == 0;
    int deleted = argc > 1 && (strcmp(argv[1], "deleted") == 0 || only_shared || with_dirs);
    if (!go || !dir || argc < 2)
        fail("usage: CR_TEST_GO=... CR_TEST_TMPFS=DIR tmpfs_map "
             "deleted|shared-deleted|dir-deleted|kept");
    snprintf(dpath, sizeof dpath, "%s", dir);
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = 0;
    snprintf(spath, sizeof spath, "%s/shared.dat", dir);
    snprintf(ppath, sizeof ppath, "%s/private.dat", dir);

    int fd = open(spath, O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (fd < 0 || ftruncate(fd, S_SIZE) != 0)
        failf("create %s: %m", spath);
    unsigned char *s = mmap(NULL, S_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED)
        fail("mmap shared");
    close(fd);
    for (size_t i = 0; i < S_SIZE; i++)
        if (s_byte(i))
            s[i] = s_byte(i);

    fd = open(ppath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char buf[P_SIZE];
    for (size_t i = 0; i < P_SIZE; i++)
        buf[i] = p_file(i);
    if (fd < 0 || write(fd, buf, P_SIZE) != P_SIZE)
        failf("create %s: %m", ppath);
    unsigned char *p = mmap(NULL, P_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        fail("mmap private");
    close(fd);
    for (size_t i = PG; i < 2 * PG; i++)
        p[i] = p_byte(i);
    memset(p + 3 * PG, 0, PG);
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < P_SIZE; i += PG)
        sink ^= p[i]; /* every page of P present */
    (void)sink;

    if (deleted)
        signal(SIGTERM, on_term);
    uint64_t *slot = (uint64_t *)(s + 4 * PG);
    *slot = counter;
    printf("READY\n");
    fflush(stdout);

    while (access(go, F_OK) != 0) {
        counter++;
        *slot = counter;
        usleep(1000);
    }

    if (*slot != counter)
        failf("counter in the shared file %llu, in memory %llu", (unsigned long long)*slot,
              (unsigned long long)counter);
    for (size_t i = 0; i < S_SIZE; i++) {
        if (i >= 4 * PG && i < 4 * PG + 8)
            continue;
        if (s[i] != s_byte(i))
            failf("shared byte %zu is %u, want %u", i, s[i], s_byte(i));
    }
    for (size_t i = S_SIZE; i < S_MAP; i++)
        if (s[i] != 0)
            failf("shared byte %zu past the end of the file is %u", i, s[i]);
    for (size_t i = 0; i < P_SIZE; i++)
        if (p[i] != p_byte(i))
            failf("private byte %zu is %u, want %u", i, p[i], p_byte(i));

    /* S is a mapping of the file at its path again. */
    struct stat st;
    if (stat(spath, &st) != 0)
        failf("%s is gone after the restart: %m", spath);
    if (st.st_size != S_SIZE)
        failf("%s has %lld bytes, want %d", spath, (long long)st.st_size, S_SIZE);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[8192];
    int found = 0;
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long lo, ino;
        char path[4096] = "";
        if (sscanf(line, "%lx-%*x %*s %*x %*x:%*x %lu %4095[^\n]", &lo, &ino, path) < 2)
            continue;
        if (lo != (unsigned long)s)
            continue;
        found = 1;
        if (strcmp(path, spath) != 0)
            failf("shared mapping shows %s, want %s", path, spath);
        if (ino != st.st_ino)
            failf("shared mapping is inode %lu, %s is %lu", ino, spath, (unsigned long)st.st_ino);
    }
    if (maps)
        fclose(maps);
    if (!found)
        fail("shared mapping missing from /proc/self/maps");
    fd = open(spath, O_RDWR);
    unsigned char fbuf[S_SIZE];
    if (fd < 0 || pread(fd, fbuf, S_SIZE, 0) != S_SIZE)
        failf("read %s: %m", spath);
    if (memcmp(fbuf, s, S_SIZE) != 0)
        fail("the file's bytes differ from the shared mapping");
    s[2 * PG + 5] = 0xab;
    unsigned char b = 0;
    if (pread(fd, &b, 1, 2 * PG + 5) != 1 || b != 0xab)
        fail("a write through the shared mapping does not reach the file");
    close(fd);
    unlink(spath);
    unlink(ppath);
    printf("PASS %s %s\n", NAME, argv[1]);
    return 0;
}
