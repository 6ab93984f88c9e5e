/*
 * self_ckpt.c - a program that checkpoints itself through a child cr_checkpoint (BLCR's
 * save_aux/reloc_aux): after a restart from that image its own wait must see the child exit 0.
 *
 * Build: gcc -O2 -Wall -o self_ckpt self_ckpt.c
 * Run:   CR_CHECKPOINT=/path/cr_checkpoint cr_run ./self_ckpt HOW 'ARGS' [ITEM...]
 *   HOW  system: system("CR ARGS $PPID") (dash forks a child for it),
 *        exec:   system("exec CR ARGS PID"), fork: fork, execv(CR, ARGS PID), waitpid.
 *   ITEM child (a forked child released over a pipe after the checkpoint), S / P (a 2-page
 *        file in $CR_TEST_DIR mapped MAP_SHARED / MAP_PRIVATE, page 0 written through the
 *        map), file (an open file), fifo (an open named FIFO), cwd (works in $CR_TEST_DIR/cwd).
 * Setup, READY, the checkpoint, then: the command's status must be 0, exactly one SIGCHLD
 * must have arrived for it, and after GO every item is checked (maps, file contents, FIFO
 * round trip, a marker in the cwd, a heap checksum, the child's exit 0). PASS self_ckpt.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "self_ckpt"
#include "fail.h"

#define PG 4096
static const char msg[] = "This is just fine.";
static volatile sig_atomic_t sigchld;
static void on_chld(int s) { (void)s; sigchld++; }

static int has(int argc, char **argv, const char *item)
{
    for (int i = 3; i < argc; i++)
        if (!strcmp(argv[i], item))
            return 1;
    return 0;
}

static unsigned sum(const unsigned char *p, size_t n)
{
    unsigned h = 2166136261u;
    while (n--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

static char path[4096];
static const char *in_dir(const char *name)
{
    snprintf(path, sizeof path, "%s/%s", getenv("CR_TEST_DIR"), name);
    return path;
}

static char *map_file(char kind)
{
    char fill[PG], name[8] = "map.S";
    name[4] = kind;
    int fd = open(in_dir(name), O_RDWR | O_CREAT | O_TRUNC, 0600);
    memset(fill, 'g', PG);
    char *m = MAP_FAILED;
    if (fd >= 0 && write(fd, fill, PG) == PG && write(fd, fill, PG) == PG)
        m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, kind == 'S' ? MAP_SHARED : MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
        failf("map %s: %s", path, strerror(errno));
    close(fd);
    for (int i = 0; i < PG; i++)
        m[i] = (char)(kind + i % 7);
    return m;
}

/* -1 when the map holds what map_file() left in it, else the first differing offset. */
static int map_differs(const char *m, char kind)
{
    for (int i = 0; m && i < PG; i++)
        if (m[i] != (char)(kind + i % 7) || m[PG + i] != 'g')
            return i;
    return -1;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO"), *cr = getenv("CR_CHECKPOINT");
    if (argc < 3 || !go || !getenv("CR_TEST_DIR") || !cr)
        fail("usage: CR_CHECKPOINT=... self_ckpt system|exec|fork 'ARGS' [ITEM...]");
    setvbuf(stdout, NULL, _IOLBF, 0);
    char *S = has(argc, argv, "S") ? map_file('S') : NULL;
    char *P = has(argc, argv, "P") ? map_file('P') : NULL;
    int file = -1, fifo = -1, rel[2];
    if (has(argc, argv, "file") && ((file = open(in_dir("data"), O_RDWR | O_CREAT, 0600)) < 0 ||
                                    write(file, msg, sizeof msg) != sizeof msg))
        failf("create %s: %s", path, strerror(errno));
    if (has(argc, argv, "fifo") &&
        (mkfifo(in_dir("fifo"), 0600) != 0 || (fifo = open(path, O_RDWR)) < 0))
        failf("fifo %s: %s", path, strerror(errno));
    if (has(argc, argv, "cwd") && (mkdir(in_dir("cwd"), 0700) != 0 || chdir(path) != 0 ||
                                   close(creat("marker", 0600)) != 0))
        failf("cwd %s: %s", path, strerror(errno));
    size_t n = 1 << 20;
    unsigned char *heap = malloc(n);
    for (size_t i = 0; i < n; i++)
        heap[i] = (unsigned char)(i * 2654435761u >> 13);
    unsigned want = sum(heap, n);
    pid_t child = -1;
    if (has(argc, argv, "child")) {
        if (pipe(rel) != 0 || (child = fork()) < 0)
            fail("fork");
        if (child == 0) {
            char b;
            if (read(rel[0], &b, 1) != 1 || b != 'g')
                _exit(2);
            if (map_differs(S, 'S') >= 0 || map_differs(P, 'P') >= 0 || sum(heap, n) != want)
                _exit(3);
            _exit(0);
        }
    }
    struct sigaction sa = { .sa_handler = on_chld };
    sigaction(SIGCHLD, &sa, NULL);
    printf("READY\n");

    char cmd[8192];
    int rc;
    const char *how = argv[1];
    if (!strcmp(how, "fork")) {
        char *av[64], *args = strdup(argv[2]), pid[16];
        int k = 0;
        av[k++] = (char *)cr;
        for (char *t = strtok(args, " "); t && k < 60; t = strtok(NULL, " "))
            av[k++] = t;
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        av[k++] = pid;
        av[k] = NULL;
        pid_t c = fork();
        if (c == 0) {
            execv(cr, av);
            _exit(127);
        }
        if (c < 0 || waitpid(c, &rc, 0) != c)
            failf("waitpid for cr_checkpoint %d: %s", (int)c, strerror(errno));
    } else {
        if (!strcmp(how, "system"))
            snprintf(cmd, sizeof cmd, "%s %s $PPID", cr, argv[2]);
        else
            snprintf(cmd, sizeof cmd, "exec %s %s %d", cr, argv[2], (int)getpid());
        rc = system(cmd);
    }
    if (rc != 0)
        failf("%s: checkpoint command status %d (%s)", how, rc, rc < 0 ? strerror(errno) : "");
    if (sigchld != 1)
        failf("%s: %d SIGCHLD for the checkpoint command, expected 1", how, (int)sigchld);
    if (child > 0 && write(rel[1], "g", 1) != 1)
        fail("release the child");

    while (access(go, F_OK) != 0)
        usleep(1000);
    if (map_differs(S, 'S') >= 0 || map_differs(P, 'P') >= 0)
        failf("a mapped file's pages differ (S at %d, P at %d)", map_differs(S, 'S'),
              map_differs(P, 'P'));
    char buf[sizeof msg];
    if (file >= 0 && (pread(file, buf, sizeof buf, 0) != sizeof buf || memcmp(buf, msg, sizeof buf)))
        fail("the open file's contents changed");
    if (fifo >= 0 && (write(fifo, msg, sizeof msg) != sizeof msg ||
                      read(fifo, buf, sizeof buf) != sizeof buf || memcmp(buf, msg, sizeof buf)))
        fail("FIFO round trip");
    if (has(argc, argv, "cwd") && access("marker", F_OK) != 0)
        fail("the working directory lost its marker");
    if (sum(heap, n) != want)
        fail("heap checksum");
    if (child > 0) {
        int st;
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failf("child %d did not exit 0 (status %#x)", (int)child, st);
    }
    printf("PASS self_ckpt %s\n", how);
    return 0;
}
