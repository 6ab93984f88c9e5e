/*
 * tree.c - a process tree across checkpoint/restart (cr_checkpoint's tree scope).
 *
 * Build: gcc -O2 -Wall -o tree tree.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./tree NCHILD [deep] [fifo|fifo-unlinked] [bigpipe]
 *
 * The root (node 0) forks NCHILD (1-4) children, nodes 1..NCHILD; with `deep`
 * child 1 forks a grandchild (node NCHILD+1): three levels.  Every link
 * between a parent and its child has its own pipes.
 *
 * Set up before READY (files in $CR_TEST_DIR):
 *   - every node records getpid(), getppid(), getpgid(0), getsid(0); the
 *     parent records each child's pid as fork() returned it
 *   - "down" pipe parent -> child, 20000 pattern bytes written, read by the
 *     child only after GO; "up" pipe child -> parent likewise (in flight
 *     across the checkpoint)
 *   - "stream" pipe child -> parent: the child writes 4-byte counters
 *     0,1,2,... (little endian, 256-byte writes; a leaf blocks when the
 *     pipe is full), the parent reads ~1 KiB per millisecond and checks
 *     every byte (no gap, no duplicate); runs until GO, then the child sends
 *     10000 more counters and closes; the parent reads to EOF and compares
 *     the total with what the child reports in shared memory
 *   - 1 MiB MAP_SHARED|MAP_ANONYMOUS region made by the root before any
 *     fork, filled with a pattern (checked by every node before READY)
 *   - shared.dat opened once by the root (1000 bytes read) before any fork:
 *     one open file, one offset, inherited by every node
 *   - dup.dat opened by every node itself, dup()ed, offset 1000+100*node
 *   - `bigpipe`: one more pipe per link, F_SETPIPE_SZ 256 KiB on the write
 *     end, 100 KiB buffered, read end O_NONBLOCK (set by the child)
 *   - `fifo` / `fifo-unlinked`: $CR_TEST_DIR/tree.fifo, the root opens the
 *     write end, child 1 the read end, 30000 bytes buffered; with
 *     `fifo-unlinked` the path is unlinked once both ends are open; with
 *     `fifo-nonblock` the read end is O_NONBLOCK (checked after GO)
 *   - `mmaps`: file mappings made by the root before any fork, inherited by
 *     every node: maps.dat (64 KiB pattern) MAP_SHARED from offset 16 KiB,
 *     and again PROT_READ only; priv.dat MAP_PRIVATE with its first page
 *     changed before the fork (copy-on-write); unl.dat MAP_SHARED, then
 *     unlinked; a MAP_PRIVATE|MAP_ANONYMOUS region. After GO every node
 *     checks them all and writes its mark into page `me` of the shared file
 *     and unlinked mappings and of its private copies; the root waits until
 *     it sees every node's marks in both shared ones (still shared) and
 *     none in its private ones (still private)
 * Environment:
 *   CR_TEST_MIB=N      every node maps N MiB of private memory of its own and,
 *                      until GO, rewrites it 64 KiB per turn of its loop (a
 *                      new generation of values each pass; its position, one
 *                      word, is stored after each 64 KiB): after GO, first of
 *                      all, every word must hold the value of the position
 *                      (an image whose pages were taken at different
 *                      instants fails). The node also writes the last 1024
 *                      times over 5 ms between two turns of its loop before
 *                      GO into $CR_TEST_DIR/gap.NODE, one a line: when the
 *                      gap began (CLOCK_MONOTONIC, ns) and how long it was
 *                      (ns): how long a checkpoint stopped it, for one
 *   CR_TEST_DONTFORK=K node K marks its CR_TEST_MIB memory MADV_DONTFORK (a
 *                      --cow checkpoint of it is written stopped)
 *   CR_TEST_SETSID=1   the program forks at once; the parent (a "launcher"
 *                      that only waits and passes the status on) stays
 *                      behind, the child calls setsid() and is the root
 *   CR_TEST_SETPGID=1  child 1 makes its own process group, child 2 joins
 *                      it (needs NCHILD >= 2)
 *   CR_TEST_SAME_PIDS=1  after GO getpid()/getppid() must equal the values
 *                      recorded before READY (the root's parent only with
 *                      CR_TEST_SETSID: the launcher), and every child pid
 *                      recorded by its parent must be the child's pid
 *   CR_TEST_SAME_PGID=1 / CR_TEST_SAME_SID=1  getpgid(0) / getsid(0) too
 * After GO, in this order (every node; a parent waits for its children):
 *   a child finishes its stream and closes its up/stream write ends; a
 *   parent closes its down write ends, reads every child's stream to EOF
 *   and every up pipe (exactly 20000 bytes, then EOF); ids are checked; a
 *   child reads its down pipe (20000 bytes, then EOF); `bigpipe`:
 *   F_GETPIPE_SZ >= 256 KiB on both ends, O_NONBLOCK still set, reading
 *   until EAGAIN gives exactly the 100 KiB; the dup()ed pair still shares
 *   its offset (lseek on one moves the other); the shared region still has
 *   its pattern, every child writes its slot, getpid() and getppid() there,
 *   the root waits (max 10 s) until it sees every slot and answers with a
 *   word every child must see (still shared, both directions); shared.dat
 *   is read in turns (a token with the expected offset walks the tree
 *   depth first, twice): whoever holds the token finds the offset where
 *   the previous reader left it and reads the next 64 bytes; the FIFO:
 *   the root writes 5000 more bytes and closes, child 1 reads exactly
 *   35000 bytes then EOF, the FIFO is still at its path (same inode) or,
 *   unlinked, not back at its path; each parent checks that every child's
 *   getppid() is its getpid() and that waitpid() on the child's pid returns
 *   it with exit status 0.  The root prints `PASS tree` after all that.
 * A node that finds a mismatch prints `FAIL tree: node N: what` and exits 1
 * (its parent then fails too).  alarm(30) after GO bounds every wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "tree"
#define MAXNODES 8
#define DATA_BYTES 20000          /* down / up pipes */
#define BIG_PIPE (256 * 1024)     /* F_SETPIPE_SZ of the `bigpipe` pipes */
#define BIG_BYTES (100 * 1024)    /* buffered in them */
#define FIFO_BYTES 30000          /* written into the FIFO before READY */
#define FIFO_AFTER 5000           /* and after GO */
#define SHM_SIZE (1 << 20)
#define SHM_HDR 4096              /* struct shared; the pattern follows */
#define STREAM_CHUNK 64           /* counters per write: 256 bytes, atomic */
#define STREAM_READ 1024          /* bytes a parent reads per child and ms */
#define STREAM_AFTER 10000        /* counters sent after GO */
#define FILE_SIZE 65536
#define FILE_START 1000           /* bytes of shared.dat the root reads first */
#define REC 64                    /* bytes per turn on shared.dat */
#define ROUNDS 2
#define SLOT_MAGIC 0x51000u
#define ROOT_WORD 0xc0ffee42u
#define SEED_DOWN 0x40
#define SEED_UP 0x80
#define SEED_BIG 0xb0
#define SEED_FIFO 0x1f
#define SEED_FILE 0x5f
#define SEED_DUP 0x3d
#define SEED_SHM 0x5a

#include "fail.h"


struct edge {             /* the link between node `id` and its parent */
    pid_t pid;            /* the child's pid, as fork() returned it */
    int down[2], up[2], stream[2], tok_down[2], tok_up[2], big[2];
    uint64_t got;         /* stream bytes the parent has checked */
};

struct shared {           /* at the start of the shared region */
    uint32_t slot[MAXNODES];         /* node k writes SLOT_MAGIC + k after GO */
    int32_t now_pid[MAXNODES];       /* node k's getpid() after GO */
    int32_t now_ppid[MAXNODES];      /* node k's getppid() after GO */
    uint32_t stream_total[MAXNODES]; /* counters node k sent on its stream */
    uint32_t root_word;              /* written by the root after GO */
    uint32_t ack;                    /* 1 once the root saw every slot */
};

static const char *go_path;
static char dir[PATH_MAX], fifo_path[PATH_MAX];
static int nchild, deep, fifo_mode, bigpipe, mmaps; /* fifo_mode: 0 none, 1 fifo, 2 fifo-unlinked,
                                                      3 fifo-nonblock */
static int launched, do_setpgid, same_pids, same_pgid, same_sid;
static int nnodes;

/* This node. */
static int me;
static pid_t my_pid, my_ppid, my_pgid, my_sid;
static struct edge edges[MAXNODES]; /* edges[k]: node k and its parent */
static int kids[MAXNODES], nkids;
static struct shared *shm;
static unsigned char *shm_pattern;
static int shared_fd = -1;          /* shared.dat, one open file for every node */
static int dup_a = -1, dup_b = -1;  /* dup.dat and its dup(), per node */
static int fifo_fd = -1;            /* root: write end; node 1: read end */
static uint32_t stream_next;        /* next counter this node sends */
static unsigned char buf[BIG_BYTES];
/* CR_TEST_MIB: this node's memory, `mem_words` words; `mem_pos` counts the words rewritten
 * (generation mem_pos / mem_words, next word mem_pos % mem_words); the longest turn. */
#define MEM_STEP 8192             /* words per turn: 64 KiB */
static uint64_t *mem;
static size_t mem_words;
static uint64_t mem_pos;
#define GAPS 1024
#define GAP_MIN 5e-3
static double turn_last;
static struct { double at, len; } gaps[GAPS];
static unsigned ngaps;

static void nfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void nfail(const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    failf("node %d: %s", me, msg);
}

static inline unsigned char pat(uint64_t o, unsigned seed)
{
    return (unsigned char)((o * 131) ^ (o >> 8) ^ ((o >> 16) * 7) ^ seed);
}

static void fill(unsigned char *b, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        b[i] = pat(off + i, seed);
}

/* Index of the first byte that differs from the pattern, or -1. */
static long mismatch(const unsigned char *b, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        if (b[i] != pat(off + i, seed))
            return (long)i;
    return -1;
}

static int go_seen(void)
{
    return access(go_path, F_OK) == 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline uint64_t mem_val(size_t i, uint64_t gen)
{
    return (gen << 40) ^ (((uint64_t)i * 0x9E3779B97F4A7C15ull) >> 24) ^ (uint64_t)me;
}

/* One turn: the next 64 KiB get the next generation's values, then the position moves. */
static void mem_step(void)
{
    if (!mem)
        return;
    uint64_t pos = mem_pos;
    size_t at = pos % mem_words;
    uint64_t gen = pos / mem_words + 1;
    for (size_t i = at; i < at + MEM_STEP; i++)
        ((volatile uint64_t *)mem)[i] = mem_val(i, gen);
    __atomic_store_n(&mem_pos, pos + MEM_STEP, __ATOMIC_RELEASE);
}

static void mem_check(void)
{
    if (!mem)
        return;
    uint64_t pos = mem_pos;
    size_t at = pos % mem_words;
    uint64_t gen = pos / mem_words;
    for (size_t i = 0; i < mem_words; i++) {
        uint64_t v = mem[i];
        int ok;
        if (i < at)
            ok = v == mem_val(i, gen + 1);
        else if (i < at + MEM_STEP) /* a turn the checkpoint interrupted */
            ok = v == mem_val(i, gen + 1) || v == mem_val(i, gen);
        else
            ok = v == mem_val(i, gen);
        if (!ok)
            nfail("memory word %zu of %zu is %#llx, position %llu (generation %llu, word %zu) "
                  "expects %#llx", i, mem_words, (unsigned long long)v, (unsigned long long)pos,
                  (unsigned long long)gen, at,
                  (unsigned long long)mem_val(i, i < at ? gen + 1 : gen));
    }
}

static void path_of(char *out, const char *name)
{
    if (snprintf(out, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX)
        fail("path too long");
}

static void write_all(int fd, const void *b, size_t len, const char *what)
{
    const unsigned char *p = b;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            nfail("write %s: %s", what, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Read up to len bytes (less only at EOF). */
static size_t read_full(int fd, void *b, size_t len, const char *what)
{
    unsigned char *p = b;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            nfail("read %s: %s", what, strerror(errno));
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void xpipe(int p[2])
{
    if (pipe(p) != 0)
        nfail("pipe: %s", strerror(errno));
}

static void xclose(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void write_pattern(int fd, size_t len, unsigned seed, const char *what)
{
    fill(buf, len, 0, seed);
    write_all(fd, buf, len, what);
}

/* Read fd to EOF: exactly `total` bytes of pattern `seed`. */
static void expect_to_eof(int fd, size_t total, unsigned seed, const char *what)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            nfail("read %s: %s", what, strerror(errno));
        }
        if (n == 0)
            break;
        if (got + (size_t)n > total)
            nfail("%s: more than the %zu bytes written (%zu so far)", what, total, got + (size_t)n);
        long bad = mismatch(buf, (size_t)n, got, seed);
        if (bad >= 0)
            nfail("%s: byte %zu is %u, expected %u", what, got + (size_t)bad, buf[bad],
                  pat(got + (size_t)bad, seed));
        got += (size_t)n;
    }
    if (got != total)
        nfail("%s: %zu bytes before EOF, expected %zu", what, got, total);
}

static void file_with_pattern(const char *name, unsigned seed)
{
    char p[PATH_MAX];
    path_of(p, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        nfail("create %s: %s", p, strerror(errno));
    write_pattern(fd, FILE_SIZE, seed, name);
    close(fd);
}

/* ---- the counter stream (child -> parent) ---- */

static void stream_send(int n)
{
    unsigned char b[STREAM_CHUNK * 4];
    for (int i = 0; i < n; i++, stream_next++)
        for (int j = 0; j < 4; j++)
            b[4 * i + j] = (unsigned char)(stream_next >> (8 * j));
    write_all(edges[me].stream[1], b, (size_t)n * 4, "stream");
}

/* Check bytes just read from child k's stream. */
static void stream_check(int k, const unsigned char *b, size_t n)
{
    struct edge *e = &edges[k];
    for (size_t i = 0; i < n; i++, e->got++) {
        uint32_t v = (uint32_t)(e->got / 4);
        unsigned char want = (unsigned char)(v >> (8 * (e->got % 4)));
        if (b[i] != want)
            nfail("stream from node %d: byte %llu is %u, expected %u (counter %u): gap or duplicate",
                  k, (unsigned long long)e->got, b[i], want, v);
    }
}

/* One read from child k's stream; 0 at EOF. */
static ssize_t stream_read(int k, size_t max)
{
    unsigned char b[65536];
    if (max > sizeof b)
        max = sizeof b;
    ssize_t n = read(edges[k].stream[0], b, max);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN)
            return -1;
        nfail("read stream from node %d: %s", k, strerror(errno));
    }
    stream_check(k, b, (size_t)n);
    return n;
}

/* ---- before READY ---- */

static void run_node(void);

/* Fork node `id` as a child of this node. */
static void spawn(int id)
{
    struct edge *e = &edges[id];
    xpipe(e->down);
    xpipe(e->up);
    xpipe(e->stream);
    xpipe(e->tok_down);
    xpipe(e->tok_up);
    e->big[0] = e->big[1] = -1;
    if (bigpipe) {
        xpipe(e->big);
        int sz = fcntl(e->big[1], F_SETPIPE_SZ, BIG_PIPE);
        if (sz < BIG_PIPE)
            nfail("F_SETPIPE_SZ %d: %d (%s)", BIG_PIPE, sz, strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0)
        nfail("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Keep only this link's child ends: drop the parent's own link upwards, its ends
         * of every link to a child (earlier siblings and this one), and its files. */
        if (me != 0) {
            struct edge *upward = &edges[me];
            xclose(&upward->down[0]);
            xclose(&upward->up[1]);
            xclose(&upward->stream[1]);
            xclose(&upward->tok_down[0]);
            xclose(&upward->tok_up[1]);
            xclose(&upward->big[0]);
        }
        for (int i = 0; i <= nkids; i++) {
            struct edge *k = i < nkids ? &edges[kids[i]] : e;
            xclose(&k->down[1]);
            xclose(&k->up[0]);
            xclose(&k->stream[0]);
            xclose(&k->tok_down[1]);
            xclose(&k->tok_up[0]);
            xclose(&k->big[1]);
        }
        xclose(&fifo_fd);
        xclose(&dup_a);
        xclose(&dup_b);
        me = id;
        nkids = 0;
        run_node();
        exit(0); /* not reached */
    }
    close(e->down[0]);
    close(e->up[1]);
    close(e->stream[1]);
    close(e->tok_down[0]);
    close(e->tok_up[1]);
    if (bigpipe)
        close(e->big[0]);
    e->pid = pid;
    e->got = 0;
    kids[nkids++] = id;

    if (do_setpgid && me == 0 && id == 1 && setpgid(pid, pid) != 0)
        nfail("setpgid(child 1): %s", strerror(errno));
    if (do_setpgid && me == 0 && id == 2 && setpgid(pid, edges[1].pid) != 0)
        nfail("setpgid(child 2 into child 1's group): %s", strerror(errno));

    write_pattern(e->down[1], DATA_BYTES, SEED_DOWN + id, "down pipe");
    if (bigpipe)
        write_pattern(e->big[1], BIG_BYTES, SEED_BIG + id, "big pipe");

    if (fifo_mode && id == 1) {
        /* Blocks until child 1 has opened the read end. */
        fifo_fd = open(fifo_path, O_WRONLY);
        if (fifo_fd < 0)
            nfail("open %s for writing: %s", fifo_path, strerror(errno));
        if (fifo_mode == 2 && unlink(fifo_path) != 0)
            nfail("unlink %s: %s", fifo_path, strerror(errno));
        write_pattern(fifo_fd, FIFO_BYTES, SEED_FIFO, "fifo");
    }
}

static void check_shm_pattern(const char *when)
{
    long bad = mismatch(shm_pattern, SHM_SIZE - SHM_HDR, 0, SEED_SHM);
    if (bad >= 0)
        nfail("shared region byte %ld is %u %s, expected %u", bad, shm_pattern[bad], when,
              pat((uint64_t)bad, SEED_SHM));
}

static void setup(void)
{
    char p[PATH_MAX];
    my_pid = getpid();
    my_ppid = getppid();
    if (me != 0) {
        check_shm_pattern("in a child before READY");
        off_t cur = lseek(shared_fd, 0, SEEK_CUR);
        if (cur != FILE_START)
            nfail("inherited shared.dat offset %lld, expected %d", (long long)cur, FILE_START);
        write_pattern(edges[me].up[1], DATA_BYTES, SEED_UP + me, "up pipe");
        if (bigpipe) {
            int fl = fcntl(edges[me].big[0], F_GETFL);
            if (fl < 0 || fcntl(edges[me].big[0], F_SETFL, fl | O_NONBLOCK) != 0)
                nfail("set O_NONBLOCK on the big pipe: %s", strerror(errno));
        }
        if (do_setpgid && me == 1 && setpgid(0, 0) != 0)
            nfail("setpgid(0, 0): %s", strerror(errno));
        if (do_setpgid && me == 2 && setpgid(0, edges[1].pid) != 0)
            nfail("setpgid(0, %d): %s", (int)edges[1].pid, strerror(errno));
        if (fifo_mode && me == 1) {
            /* Blocks until the root has opened the write end. */
            fifo_fd = open(fifo_path, O_RDONLY);
            if (fifo_fd < 0)
                nfail("open %s for reading: %s", fifo_path, strerror(errno));
            if (fifo_mode == 3 && fcntl(fifo_fd, F_SETFL, O_NONBLOCK) != 0)
                nfail("O_NONBLOCK on the FIFO: %s", strerror(errno));
        }
    }

    path_of(p, "dup.dat");
    dup_a = open(p, O_RDONLY);
    if (dup_a < 0)
        nfail("open %s: %s", p, strerror(errno));
    dup_b = dup(dup_a);
    if (dup_b < 0 || lseek(dup_a, 1000 + 100 * me, SEEK_SET) != 1000 + 100 * me)
        nfail("dup/lseek dup.dat: %s", strerror(errno));

    if (me == 0)
        for (int k = 1; k <= nchild; k++)
            spawn(k);
    else if (me == 1 && deep)
        spawn(nchild + 1);

    /* Every child reports (one byte) once its whole subtree is set up. */
    for (int i = 0; i < nkids; i++) {
        char c;
        if (read_full(edges[kids[i]].tok_up[0], &c, 1, "ready byte") != 1 || c != 'R')
            nfail("child node %d did not get ready", kids[i]);
    }
    my_pgid = getpgid(0);
    my_sid = getsid(0);
    const char *mib = getenv("CR_TEST_MIB");
    if (mib && atoi(mib) > 0) {
        mem_words = (size_t)atoi(mib) << 17;
        void *m = mmap(NULL, mem_words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED)
            nfail("mmap %s MiB: %s", mib, strerror(errno));
        mem = m;
        for (size_t i = 0; i < mem_words; i++)
            mem[i] = mem_val(i, 0);
        const char *df = getenv("CR_TEST_DONTFORK");
        if (df && atoi(df) == me && madvise(m, mem_words * 8, MADV_DONTFORK) != 0)
            nfail("madvise MADV_DONTFORK: %s", strerror(errno));
    }
    if (me != 0)
        write_all(edges[me].tok_up[1], "R", 1, "ready byte");
}

/* Until GO: send my stream (a child), check my children's streams (a parent). */
static void work_until_go(void)
{
    turn_last = now();
    while (!go_seen()) {
        double t = now();
        if (t - turn_last > GAP_MIN) {
            gaps[ngaps % GAPS].at = turn_last;
            gaps[ngaps % GAPS].len = t - turn_last;
            ngaps++;
        }
        turn_last = t;
        mem_step();
        if (nkids == 0) {
            /* A leaf: plain blocking writes, paced by the parent's reading. */
            stream_send(STREAM_CHUNK);
            continue;
        }
        struct pollfd pf[MAXNODES + 1];
        int n = 0;
        for (int i = 0; i < nkids; i++)
            pf[n++] = (struct pollfd){.fd = edges[kids[i]].stream[0], .events = POLLIN};
        if (me != 0)
            pf[n++] = (struct pollfd){.fd = edges[me].stream[1], .events = POLLOUT};
        if (poll(pf, (nfds_t)n, 1) < 0) {
            if (errno != EINTR)
                nfail("poll: %s", strerror(errno));
            continue;
        }
        for (int i = 0; i < nkids; i++)
            if (pf[i].revents && stream_read(kids[i], STREAM_READ) == 0)
                nfail("stream from node %d ended before GO", kids[i]);
        if (me != 0 && (pf[nkids].revents & POLLOUT))
            stream_send(STREAM_CHUNK);
        usleep(1000);
    }
}

/* ---- after GO ---- */

/* A parent: every child's stream to EOF (bounded), then its up pipe. */
static void drain_children(void)
{
    int open_streams = nkids;
    int eof[MAXNODES] = {0};
    double deadline = now() + 10;
    while (open_streams > 0) {
        struct pollfd pf[MAXNODES];
        for (int i = 0; i < nkids; i++)
            pf[i] = (struct pollfd){.fd = eof[i] ? -1 : edges[kids[i]].stream[0], .events = POLLIN};
        if (now() > deadline)
            nfail("a child's stream did not end within 10 s after GO");
        if (poll(pf, (nfds_t)nkids, 100) < 0 && errno != EINTR)
            nfail("poll: %s", strerror(errno));
        for (int i = 0; i < nkids; i++) {
            if (eof[i] || !pf[i].revents || stream_read(kids[i], 65536) != 0)
                continue;
            int k = kids[i];
            eof[i] = 1;
            open_streams--;
            uint32_t total = __atomic_load_n(&shm->stream_total[k], __ATOMIC_SEQ_CST);
            if (edges[k].got != (uint64_t)total * 4)
                nfail("stream from node %d: %llu bytes, the child sent %u counters", k,
                      (unsigned long long)edges[k].got, total);
            if (total < STREAM_AFTER)
                nfail("stream from node %d: only %u counters", k, total);
        }
    }
    for (int i = 0; i < nkids; i++) {
        char what[64];
        snprintf(what, sizeof what, "up pipe from node %d", kids[i]);
        expect_to_eof(edges[kids[i]].up[0], DATA_BYTES, SEED_UP + kids[i], what);
    }
}

static void check_ids(void)
{
    if (same_pids) {
        if (getpid() != my_pid)
            nfail("getpid() %d, was %d before the checkpoint", (int)getpid(), (int)my_pid);
        if ((me != 0 || launched) && getppid() != my_ppid)
            nfail("getppid() %d, was %d before the checkpoint", (int)getppid(), (int)my_ppid);
        for (int i = 0; i < nkids; i++)
            if (kill(edges[kids[i]].pid, 0) != 0)
                nfail("kill(%d, 0) (child node %d): %s", (int)edges[kids[i]].pid, kids[i],
                      strerror(errno));
    }
    if (same_pgid && getpgid(0) != my_pgid)
        nfail("getpgid(0) %d, was %d before the checkpoint", (int)getpgid(0), (int)my_pgid);
    if (same_sid && getsid(0) != my_sid)
        nfail("getsid(0) %d, was %d before the checkpoint", (int)getsid(0), (int)my_sid);
}

static void check_big_pipe_end(int fd, const char *which)
{
    int sz = fcntl(fd, F_GETPIPE_SZ);
    if (sz < BIG_PIPE)
        nfail("big pipe %s: F_GETPIPE_SZ %d, expected >= %d", which, sz, BIG_PIPE);
}

static void check_big_pipe(void)
{
    int fd = edges[me].big[0];
    check_big_pipe_end(fd, "read end");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || !(fl & O_NONBLOCK))
        nfail("big pipe read end lost O_NONBLOCK (flags %#x)", fl);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0)
            nfail("read big pipe: %s", strerror(errno));
        if (n == 0)
            nfail("big pipe: EOF after %zu bytes (the parent still holds the write end)", got);
        if (got + (size_t)n > BIG_BYTES)
            nfail("big pipe: more than the %d bytes written", BIG_BYTES);
        long bad = mismatch(buf, (size_t)n, got, SEED_BIG + me);
        if (bad >= 0)
            nfail("big pipe: byte %zu wrong", got + (size_t)bad);
        got += (size_t)n;
    }
    if (got != BIG_BYTES)
        nfail("big pipe: %zu bytes until EAGAIN, expected %d", got, BIG_BYTES);
}

static void check_dup(void)
{
    off_t want = 1000 + 100 * me;
    off_t a = lseek(dup_a, 0, SEEK_CUR), b = lseek(dup_b, 0, SEEK_CUR);
    if (a != want || b != want)
        nfail("dup.dat offsets %lld/%lld, expected %lld for both", (long long)a, (long long)b,
              (long long)want);
    want = 5000 + me;
    if (lseek(dup_b, want, SEEK_SET) != want)
        nfail("lseek dup.dat: %s", strerror(errno));
    a = lseek(dup_a, 0, SEEK_CUR);
    if (a != want)
        nfail("lseek on the dup() moved it to %lld, the original is at %lld: not shared",
              (long long)want, (long long)a);
    unsigned char b16[16];
    if (read_full(dup_a, b16, sizeof b16, "dup.dat") != sizeof b16 ||
        mismatch(b16, sizeof b16, (uint64_t)want, SEED_DUP) >= 0)
        nfail("dup.dat: wrong bytes at %lld", (long long)want);
    if (lseek(dup_b, 0, SEEK_CUR) != want + 16)
        nfail("read on one fd did not move the dup()");
}

/* ---- `mmaps`: file mappings shared and private across the tree ---- */

#define MAP_FILE_SIZE (64 << 10)
#define MAP_OFF (16 << 10)
#define MAP_LEN (32 << 10)
#define SEED_MAPS 0x3c
#define SEED_PRIV 0x4d
#define SEED_UNL 0x6e
#define SEED_ANON 0x1f
#define MARK 0x4d41524bu /* "MARK" */

static unsigned char *m_shared, *m_ro, *m_priv, *m_unl, *m_anon;

static void *map_file(const char *name, unsigned seed, size_t len, off_t off, int prot, int flags,
                      int unlink_it)
{
    char p[PATH_MAX];
    path_of(p, name);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        failf("create %s: %s", p, strerror(errno));
    write_pattern(fd, MAP_FILE_SIZE, seed, name);
    void *m = mmap(NULL, len, prot, flags, fd, off);
    if (m == MAP_FAILED)
        failf("mmap %s: %s", p, strerror(errno));
    close(fd);
    if (unlink_it && unlink(p) != 0)
        failf("unlink %s: %s", p, strerror(errno));
    return m;
}

static void mmaps_setup(void)
{
    m_shared = map_file("maps.dat", SEED_MAPS, MAP_LEN, MAP_OFF, PROT_READ | PROT_WRITE,
                        MAP_SHARED, 0);
    char p[PATH_MAX];
    path_of(p, "maps.dat");
    int fd = open(p, O_RDONLY);
    if (fd < 0)
        fail("open maps.dat read-only");
    m_ro = mmap(NULL, MAP_LEN, PROT_READ, MAP_SHARED, fd, MAP_OFF);
    if (m_ro == MAP_FAILED)
        fail("mmap maps.dat read-only");
    close(fd);
    m_priv = map_file("priv.dat", SEED_PRIV, MAP_FILE_SIZE, 0, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE, 0);
    memset(m_priv, 0xa5, 4096); /* copy-on-write before the fork */
    m_unl = map_file("unl.dat", SEED_UNL, MAP_FILE_SIZE, 0, PROT_READ | PROT_WRITE, MAP_SHARED, 1);
    m_anon = mmap(NULL, MAP_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m_anon == MAP_FAILED)
        fail("mmap anonymous private");
    fill(m_anon, MAP_FILE_SIZE, 0, SEED_ANON);
}

/* The bytes of page `pg` of a mapping: the pattern, except for the first word of the pages that
 * carry marks. */
static void check_pages(const unsigned char *m, size_t len, uint64_t off, unsigned seed,
                        const char *what)
{
    for (size_t pg = 0; pg < len / 4096; pg++) {
        size_t from = pg * 4096 + (pg < 8 ? 4 : 0);
        long bad = mismatch(m + from, 4096 - (from - pg * 4096), off + from, seed);
        if (bad >= 0)
            nfail("%s: byte %zu differs from the file's pattern", what, from + (size_t)bad);
    }
}

static uint32_t word_at(const unsigned char *m, int pg)
{
    return __atomic_load_n((const uint32_t *)(m + (size_t)pg * 4096), __ATOMIC_SEQ_CST);
}

static void put_word(unsigned char *m, int pg, uint32_t v)
{
    __atomic_store_n((uint32_t *)(m + (size_t)pg * 4096), v, __ATOMIC_SEQ_CST);
}

static void mmaps_stage(void)
{
    check_pages(m_shared, MAP_LEN, MAP_OFF, SEED_MAPS, "maps.dat (shared, offset 16 KiB)");
    check_pages(m_ro, MAP_LEN, MAP_OFF, SEED_MAPS, "maps.dat (read-only)");
    check_pages(m_unl, MAP_FILE_SIZE, 0, SEED_UNL, "unl.dat (shared, unlinked)");
    for (size_t i = 0; i < 4096; i++)
        if (m_priv[i] != 0xa5)
            nfail("priv.dat: the copy-on-write page lost its change at byte %zu", i);
    if (mismatch(m_priv + 4096, MAP_FILE_SIZE - 4096, 4096, SEED_PRIV) >= 0)
        nfail("priv.dat: an unchanged page differs from the file");
    check_pages(m_anon, MAP_FILE_SIZE, 0, SEED_ANON, "private anonymous memory");
    put_word(m_shared, me, MARK + me);
    put_word(m_unl, me, MARK + me);
    put_word(m_priv, 1 + me, MARK + me);
    put_word(m_anon, me, MARK + me);
    if (me != 0)
        return;
    double deadline = now() + 10;
    for (int k = 1; k < nnodes; k++) {
        while (word_at(m_shared, k) != MARK + k || word_at(m_unl, k) != MARK + k ||
               word_at(m_ro, k) != MARK + k) {
            if (now() > deadline)
                nfail("node %d's marks in the shared file mappings are not visible after 10 s: "
                      "maps.dat %#x, read-only view %#x, unlinked %#x",
                      k, word_at(m_shared, k), word_at(m_ro, k), word_at(m_unl, k));
            usleep(1000);
        }
        if (word_at(m_priv, 1 + k) == MARK + k || word_at(m_anon, k) == MARK + k)
            nfail("node %d's write to its private mapping shows in the root's", k);
    }
}

static void shm_stage(void)
{
    check_shm_pattern("after GO");
    double deadline = now() + 10;
    if (me == 0) {
        for (int k = 1; k < nnodes; k++)
            while (__atomic_load_n(&shm->slot[k], __ATOMIC_SEQ_CST) != SLOT_MAGIC + k) {
                if (now() > deadline)
                    nfail("node %d's write to the shared region is not visible after 10 s "
                          "(slot %#x): not shared any more",
                          k, __atomic_load_n(&shm->slot[k], __ATOMIC_SEQ_CST));
                usleep(1000);
            }
        __atomic_store_n(&shm->root_word, ROOT_WORD, __ATOMIC_SEQ_CST);
        __atomic_store_n(&shm->ack, 1, __ATOMIC_SEQ_CST);
    } else {
        __atomic_store_n(&shm->now_pid[me], (int32_t)getpid(), __ATOMIC_SEQ_CST);
        __atomic_store_n(&shm->now_ppid[me], (int32_t)getppid(), __ATOMIC_SEQ_CST);
        __atomic_store_n(&shm->slot[me], SLOT_MAGIC + me, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&shm->ack, __ATOMIC_SEQ_CST) != 1) {
            if (now() > deadline)
                nfail("the root's write to the shared region is not visible after 10 s");
            usleep(1000);
        }
        if (__atomic_load_n(&shm->root_word, __ATOMIC_SEQ_CST) != ROOT_WORD)
            nfail("shared region: root word %#x, expected %#x", shm->root_word, ROOT_WORD);
    }
}

/* My turn on shared.dat: the offset must be t; read the next REC bytes. */
static off_t file_turn(off_t t, const char *when)
{
    off_t cur = lseek(shared_fd, 0, SEEK_CUR);
    if (cur != t)
        nfail("shared.dat offset %lld %s, expected %lld: the open file is not shared",
              (long long)cur, when, (long long)t);
    unsigned char b[REC];
    if (read_full(shared_fd, b, REC, "shared.dat") != REC || mismatch(b, REC, (uint64_t)t, SEED_FILE) >= 0)
        nfail("shared.dat: wrong bytes at %lld", (long long)t);
    return t + REC;
}

static void send_off(int fd, off_t t)
{
    int64_t v = t;
    write_all(fd, &v, sizeof v, "token");
}

static off_t recv_off(int fd)
{
    int64_t v;
    if (read_full(fd, &v, sizeof v, "token") != sizeof v)
        nfail("token pipe closed");
    return (off_t)v;
}

/* Depth first: my turn, then each child's subtree followed by another turn of mine. */
static off_t traverse(off_t t)
{
    t = file_turn(t, "on my turn");
    for (int i = 0; i < nkids; i++) {
        struct edge *e = &edges[kids[i]];
        send_off(e->tok_down[1], t);
        t = recv_off(e->tok_up[0]);
        t = file_turn(t, "after my child's turn");
    }
    return t;
}

static void token_stage(void)
{
    off_t t = FILE_START;
    for (int r = 0; r < ROUNDS; r++) {
        if (me == 0) {
            t = traverse(t);
        } else {
            t = recv_off(edges[me].tok_down[0]);
            t = traverse(t);
            send_off(edges[me].tok_up[1], t);
        }
    }
}

static void fifo_stage(void)
{
    struct stat st, pst;
    if (fstat(fifo_fd, &st) != 0 || !S_ISFIFO(st.st_mode))
        nfail("the FIFO fd %d is not a FIFO any more", fifo_fd);
    if (fifo_mode != 2) {
        if (stat(fifo_path, &pst) != 0)
            nfail("stat %s: %s", fifo_path, strerror(errno));
        if (pst.st_dev != st.st_dev || pst.st_ino != st.st_ino)
            nfail("the FIFO fd is not the FIFO at %s", fifo_path);
    } else {
        if (stat(fifo_path, &pst) == 0)
            nfail("the unlinked FIFO is back at %s", fifo_path);
        if (st.st_nlink != 0) /* e.g. restored as an anonymous pipe: fine */
            fprintf(stderr, "info tree: node %d: the unlinked FIFO has %lu links now\n", me,
                    (unsigned long)st.st_nlink);
    }
    if (me == 0) {
        fill(buf, FIFO_BYTES + FIFO_AFTER, 0, SEED_FIFO);
        write_all(fifo_fd, buf + FIFO_BYTES, FIFO_AFTER, "fifo");
        xclose(&fifo_fd);
    } else {
        if (fifo_mode == 3) {
            int fl = fcntl(fifo_fd, F_GETFL);
            if (fl < 0 || !(fl & O_NONBLOCK))
                nfail("the FIFO's read end lost O_NONBLOCK (flags %#x)", fl);
            fcntl(fifo_fd, F_SETFL, fl & ~O_NONBLOCK);
        }
        expect_to_eof(fifo_fd, FIFO_BYTES + FIFO_AFTER, SEED_FIFO, "fifo");
    }
}

static void reap_children(void)
{
    for (int i = 0; i < nkids; i++) {
        int k = kids[i];
        pid_t pid = __atomic_load_n(&shm->now_pid[k], __ATOMIC_SEQ_CST);
        pid_t ppid = __atomic_load_n(&shm->now_ppid[k], __ATOMIC_SEQ_CST);
        if (ppid != getpid())
            nfail("child node %d (pid %d) has parent %d, expected me (%d)", k, (int)pid, (int)ppid,
                  (int)getpid());
        if (same_pids && pid != edges[k].pid)
            nfail("child node %d has pid %d, fork() returned %d", k, (int)pid, (int)edges[k].pid);
        int st;
        pid_t r;
        while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
            ;
        if (r != pid)
            nfail("waitpid(%d) (child node %d) returned %d: %s", (int)pid, k, (int)r,
                  r < 0 ? strerror(errno) : "another pid");
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            nfail("child node %d ended with status %#x", k, st);
        if (bigpipe)
            xclose(&edges[k].big[1]);
    }
}

static void after_go(void)
{
    alarm(30);
    if (me != 0) {
        for (int n = 0; n < STREAM_AFTER; n += STREAM_CHUNK)
            stream_send(STREAM_CHUNK);
        __atomic_store_n(&shm->stream_total[me], stream_next, __ATOMIC_SEQ_CST);
        xclose(&edges[me].stream[1]);
        xclose(&edges[me].up[1]);
    }
    for (int i = 0; i < nkids; i++)
        xclose(&edges[kids[i]].down[1]);
    drain_children();
    check_ids();
    if (me != 0) {
        expect_to_eof(edges[me].down[0], DATA_BYTES, SEED_DOWN + me, "down pipe");
        if (bigpipe)
            check_big_pipe();
    }
    if (bigpipe)
        for (int i = 0; i < nkids; i++)
            check_big_pipe_end(edges[kids[i]].big[1], "write end");
    check_dup();
    shm_stage();
    if (mmaps)
        mmaps_stage();
    token_stage();
    if (fifo_fd >= 0)
        fifo_stage();
    reap_children();
}

static void run_node(void)
{
    setup();
    if (me == 0) {
        printf("READY\n");
        fflush(stdout);
    }
    work_until_go();
    mem_check();
    if (mem) {
        char p[PATH_MAX], name[32];
        snprintf(name, sizeof name, "gap.%d", me);
        path_of(p, name);
        FILE *f = fopen(p, "w");
        if (!f)
            nfail("write %s", p);
        for (unsigned i = ngaps > GAPS ? ngaps - GAPS : 0; i < ngaps; i++)
            fprintf(f, "%.0f %.0f\n", gaps[i % GAPS].at * 1e9, gaps[i % GAPS].len * 1e9);
        if (fclose(f) != 0)
            nfail("write %s", p);
    }
    after_go();
    if (me == 0) {
        printf("PASS tree\n");
        fflush(stdout);
    }
    exit(0);
}

static int env_on(const char *name)
{
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

/* CR_TEST_SETSID: this process only waits for the real root and passes its end on. */
static void launcher(pid_t root)
{
    int st;
    pid_t r;
    (void)root; /* its pid may have changed across a restart: wait for any child */
    while ((r = waitpid(-1, &st, 0)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        failf("launcher: waitpid: %s", strerror(errno));
    if (WIFEXITED(st))
        exit(WEXITSTATUS(st));
    signal(WTERMSIG(st), SIG_DFL);
    raise(WTERMSIG(st));
    exit(128 + WTERMSIG(st));
}

int main(int argc, char **argv)
{
    const char *d = getenv("CR_TEST_DIR");
    go_path = getenv("CR_TEST_GO");
    if (!go_path || !d)
        fail("CR_TEST_GO / CR_TEST_DIR not set");
    if (!realpath(d, dir))
        fail("realpath CR_TEST_DIR");
    setvbuf(stdout, NULL, _IOLBF, 0);

    nchild = argc > 1 ? atoi(argv[1]) : 0;
    if (nchild < 1 || nchild > 4)
        fail("usage: tree NCHILD(1-4) [deep] [fifo|fifo-unlinked|fifo-nonblock] [bigpipe] [mmaps]");
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "deep") == 0)
            deep = 1;
        else if (strcmp(argv[i], "fifo") == 0)
            fifo_mode = 1;
        else if (strcmp(argv[i], "fifo-unlinked") == 0)
            fifo_mode = 2;
        else if (strcmp(argv[i], "fifo-nonblock") == 0)
            fifo_mode = 3;
        else if (strcmp(argv[i], "bigpipe") == 0)
            bigpipe = 1;
        else if (strcmp(argv[i], "mmaps") == 0)
            mmaps = 1;
        else
            failf("unknown argument %s", argv[i]);
    }
    nnodes = 1 + nchild + deep;
    do_setpgid = env_on("CR_TEST_SETPGID");
    same_pids = env_on("CR_TEST_SAME_PIDS");
    same_pgid = env_on("CR_TEST_SAME_PGID");
    same_sid = env_on("CR_TEST_SAME_SID");
    if (do_setpgid && nchild < 2)
        fail("CR_TEST_SETPGID needs 2 children");

    if (env_on("CR_TEST_SETSID")) {
        pid_t root = fork();
        if (root < 0)
            fail("fork");
        if (root > 0)
            launcher(root);
        if (setsid() < 0)
            failf("setsid: %s", strerror(errno));
        launched = 1;
    }

    /* Made by the root before any fork: inherited by every node. */
    void *m = mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        fail("mmap shared region");
    shm = m;
    shm_pattern = (unsigned char *)m + SHM_HDR;
    fill(shm_pattern, SHM_SIZE - SHM_HDR, 0, SEED_SHM);

    char p[PATH_MAX];
    file_with_pattern("shared.dat", SEED_FILE);
    file_with_pattern("dup.dat", SEED_DUP);
    path_of(p, "shared.dat");
    shared_fd = open(p, O_RDONLY);
    if (shared_fd < 0)
        failf("open %s: %s", p, strerror(errno));
    if (read_full(shared_fd, buf, FILE_START, "shared.dat") != FILE_START ||
        mismatch(buf, FILE_START, 0, SEED_FILE) >= 0)
        fail("read shared.dat");
    if (mmaps)
        mmaps_setup();
    if (fifo_mode) {
        path_of(fifo_path, "tree.fifo");
        if (unlink(fifo_path) != 0 && errno != ENOENT)
            failf("unlink %s: %s", fifo_path, strerror(errno));
        if (mkfifo(fifo_path, 0600) != 0)
            failf("mkfifo %s: %s", fifo_path, strerror(errno));
    }

    me = 0;
    run_node();
    return 0;
}
