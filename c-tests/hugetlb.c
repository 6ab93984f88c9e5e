/*
 * hugetlb.c - huge page memory across checkpoint/restart.
 *
 * Build: gcc -O2 -Wall -o hugetlb hugetlb.c
 * Run:   CR_TEST_GO=... [CR_TEST_HUGETLBFS=/mnt/huge] cr_run ./hugetlb
 * Needs free 2 MiB huge pages (vm.nr_hugepages): 4, and 3 more with CR_TEST_HUGETLBFS.
 *
 *   A  MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, 2 huge pages: a pattern, the second half of the
 *      second page left zero
 *   B  MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB, 1 huge page: a pattern
 *   E  memfd_create(MFD_HUGETLB), 1 huge page mapped MAP_SHARED: a pattern
 * With CR_TEST_HUGETLBFS (a hugetlbfs mount):
 *   C  $CR_TEST_HUGETLBFS/huge.dat, 2 huge pages, MAP_SHARED: a pattern
 *   D  the same file MAP_PRIVATE, its first page rewritten (copy-on-write)
 * Work loop: a counter, also stored in A and B.
 * After GO: every byte; each region still uses huge pages (smaps KernelPageSize 2048 kB and
 * VmFlags ht); a child forked now writes B, E and C and the parent sees it; the write to C
 * reaches the file (read(2)); D's copy-on-write page is not in the file. The file is removed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "hugetlb"
#include "fail.h"

#define HP (2ul << 20)

static unsigned char pat(int region, size_t i)
{
    return (unsigned char)(i * (2 * region + 1) + region * 17 + (i >> 12));
}

static unsigned char a_byte(size_t i) { return (i >= HP + HP / 2) ? 0 : pat(1, i); }
static unsigned char d_byte(size_t i) { return i < HP ? pat(4, i) : pat(3, i); }

static void *map(size_t len, int flags, int fd, const char *what)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED)
        failf("mmap %s: %m (free huge pages? vm.nr_hugepages)", what);
    return p;
}

/* The smaps entry at `addr` uses 2 MiB pages and has the ht flag. */
static void check_huge(void *addr, const char *what)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[1024];
    int in = 0, size_ok = 0, ht = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = lo == (unsigned long)addr;
            continue;
        }
        if (!in)
            continue;
        if (strncmp(line, "KernelPageSize:", 15) == 0 && strstr(line, " 2048 kB"))
            size_ok = 1;
        if (strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " ht"))
            ht = 1;
    }
    if (f)
        fclose(f);
    if (!size_ok || !ht)
        failf("%s at %p does not use huge pages (KernelPageSize 2048 kB %d, ht %d)", what, addr,
              size_ok, ht);
}

static void check(const unsigned char *p, size_t len, unsigned char (*want)(size_t), size_t skip,
                  const char *what)
{
    for (size_t i = 0; i < len; i++) {
        if (i >= skip && i < skip + 8)
            continue;
        if (p[i] != want(i))
            failf("%s byte %zu is %u, want %u", what, i, p[i], want(i));
    }
}

static unsigned char b_byte(size_t i) { return pat(2, i); }
static unsigned char c_byte(size_t i) { return pat(3, i); }
static unsigned char e_byte(size_t i) { return pat(5, i); }

static volatile uint64_t counter;

int main(void)
{
    const char *go = getenv("CR_TEST_GO"), *dir = getenv("CR_TEST_HUGETLBFS");
    if (!go)
        fail("CR_TEST_GO not set");
    unsigned char *a = map(2 * HP, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, "A");
    unsigned char *b = map(HP, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, "B");
    int mfd = memfd_create("huge-memfd", MFD_HUGETLB | MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, HP) != 0)
        fail("memfd_create MFD_HUGETLB");
    unsigned char *e = map(HP, MAP_SHARED, mfd, "E");
    close(mfd);
    for (size_t i = 0; i < 2 * HP; i++)
        a[i] = a_byte(i);
    for (size_t i = 0; i < HP; i++) {
        b[i] = b_byte(i);
        e[i] = e_byte(i);
    }
    unsigned char *c = NULL, *d = NULL;
    char path[4096] = "";
    if (dir && *dir) {
        snprintf(path, sizeof path, "%s/huge.dat", dir);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || ftruncate(fd, 2 * HP) != 0)
            failf("create %s: %m", path);
        c = map(2 * HP, MAP_SHARED, fd, "C");
        for (size_t i = 0; i < 2 * HP; i++)
            c[i] = c_byte(i);
        d = map(2 * HP, MAP_PRIVATE, fd, "D");
        close(fd);
        for (size_t i = 0; i < HP; i++)
            d[i] = d_byte(i);
    }
    memcpy(a + 4096, (const void *)&counter, 8);
    memcpy(b + 4096, (const void *)&counter, 8);
    printf("READY\n");
    fflush(stdout);

    while (access(go, F_OK) != 0) {
        counter++;
        memcpy(a + 4096, (const void *)&counter, 8);
        memcpy(b + 4096, (const void *)&counter, 8);
        usleep(1000);
    }
    uint64_t ca, cb;
    memcpy(&ca, a + 4096, 8);
    memcpy(&cb, b + 4096, 8);
    if (ca != counter || cb != counter)
        failf("counters %llu/%llu, want %llu", (unsigned long long)ca, (unsigned long long)cb,
              (unsigned long long)counter);
    check(a, 2 * HP, a_byte, 4096, "A");
    check(b, HP, b_byte, 4096, "B");
    check(e, HP, e_byte, HP, "E");
    check_huge(a, "A");
    check_huge(b, "B");
    check_huge(e, "E");
    if (c) {
        check(c, 2 * HP, c_byte, 2 * HP, "C");
        check(d, 2 * HP, d_byte, 2 * HP, "D");
        check_huge(c, "C");
        check_huge(d, "D");
    }

    /* Still shared with a child forked now. */
    pid_t pid = fork();
    if (pid == 0) {
        b[7] = 0xb7;
        e[7] = 0xe7;
        if (c)
            c[HP + 7] = 0xc7;
        _exit(0);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("child");
    if (b[7] != 0xb7 || e[7] != 0xe7 || (c && c[HP + 7] != 0xc7))
        fail("a child's write to shared huge page memory is not seen by its parent");
    if (c) {
        int fd = open(path, O_RDONLY);
        unsigned char x = 0, y = 0;
        if (fd < 0 || pread(fd, &x, 1, HP + 7) != 1 || pread(fd, &y, 1, 5) != 1)
            failf("read %s: %m", path);
        close(fd);
        if (x != 0xc7)
            fail("a write through the shared mapping does not reach the hugetlbfs file");
        if (y != c_byte(5))
            fail("the private mapping's copy-on-write page reached the file");
        unlink(path);
    }
    printf("PASS %s%s\n", NAME, c ? " hugetlbfs" : "");
    return 0;
}
