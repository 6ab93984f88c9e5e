/* unix04.c - megabytes waiting in connections between two processes of the job (a parent and
 * its child): the child fills a unix stream pair (its send buffer raised to 4 MiB) and a TCP
 * connection on loopback (default buffers) with up to 3 MiB each, and a seqpacket and a
 * datagram pair with 8 messages of 200 KiB and 100 KiB, while the parent does not read; the
 * parent queues a few bytes the other way on the stream and TCP.  Every byte is from a
 * per-connection xorshift sequence; the child tells the parent the counts and an FNV-1a
 * checksum of each.  After GO (after restart): the parent reads everything, checks every byte,
 * the counts and the checksums, then that nothing more is waiting; the child checks its few
 * bytes.  Needs at least 1 MiB queued on the stream and TCP (256 KiB on the stream where
 * net.core.wmem_max keeps it below that).  PASS unix04. */
/* cr-test: cflags= */
#define NAME "unix04"
#include "kobj.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define STREAM_BYTES (3u << 20)
#define TCP_BYTES (3u << 20)
#define MESSAGES 8
#define SQ_MSG (200u << 10)
#define SD_MSG (100u << 10)

static void wait_go(void)
{
    const char *go = getenv("CR_TEST_GO");
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* A connection's byte sequence and the checksum of what went through it. */
struct seq {
    uint64_t x;
    uint64_t fnv;
};

static void seq_init(struct seq *s, uint64_t seed)
{
    s->x = seed * 0x9e3779b97f4a7c15ull + 1;
    s->fnv = 0xcbf29ce484222325ull;
}

static uint8_t seq_next(struct seq *s)
{
    s->x ^= s->x << 13;
    s->x ^= s->x >> 7;
    s->x ^= s->x << 17;
    uint8_t b = (uint8_t)(s->x >> 24);
    s->fnv = (s->fnv ^ b) * 0x100000001b3ull;
    return b;
}

static void fill(struct seq *s, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = seq_next(s);
}

/* What the child queued. */
struct report {
    uint64_t stream, tcp, sq, sd;             /* bytes (messages for sq and sd) */
    uint64_t stream_sum, tcp_sum, sq_sum, sd_sum; /* FNV-1a of the bytes */
};

static uint8_t buf[1 << 20];

/* Writes up to `want` bytes of `s` on non-blocking `fd` until it would block; the count. */
static uint64_t fill_stream(int fd, struct seq *s, uint64_t want)
{
    uint64_t done = 0;
    uint8_t chunk[65536];
    size_t have = 0, off = 0;
    while (done < want) {
        if (off == have) {
            have = want - done < sizeof chunk ? (size_t)(want - done) : sizeof chunk;
            fill(s, chunk, have);
            off = 0;
        }
        ssize_t n = send(fd, chunk + off, have - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            /* Give loopback a moment, then stop at a chunk boundary we can account for. */
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, 200) == 1)
                continue;
            break;
        }
        if (n <= 0)
            _exit(10);
        off += (size_t)n;
        done += (uint64_t)n;
    }
    /* Bytes generated but not sent are not counted in the checksum: regenerate exactly. */
    return done;
}

/* The checksum of the first `n` bytes of sequence `seed`. */
static uint64_t sum_of(uint64_t seed, uint64_t n)
{
    struct seq s;
    seq_init(&s, seed);
    for (uint64_t i = 0; i < n; i++)
        seq_next(&s);
    return s.fnv;
}

/* Reads exactly `n` bytes of stream `fd` (waiting up to 20 s for each part), checking each
 * against sequence `seed`; the checksum of what was read, or 0 on a mismatch or short read. */
static uint64_t read_stream(int fd, uint64_t seed, uint64_t n)
{
    struct seq s;
    seq_init(&s, seed);
    uint64_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20000) != 1) {
            fprintf(stderr, "info: %llu of %llu bytes, then nothing\n",
                    (unsigned long long)got, (unsigned long long)n);
            return 0;
        }
        size_t want = n - got < sizeof buf ? (size_t)(n - got) : sizeof buf;
        ssize_t r = recv(fd, buf, want, MSG_DONTWAIT);
        if (r <= 0) {
            fprintf(stderr, "info: read %zd after %llu bytes\n", r, (unsigned long long)got);
            return 0;
        }
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != seq_next(&s)) {
                fprintf(stderr, "info: byte %llu differs\n", (unsigned long long)(got + i));
                return 0;
            }
        got += (uint64_t)r;
    }
    return s.fnv;
}

/* Reads `count` messages of `size` bytes from `fd`, each checked against sequence `seed`;
 * the checksum, or 0. */
static uint64_t read_messages(int fd, uint64_t seed, uint64_t count, size_t size)
{
    struct seq s;
    seq_init(&s, seed);
    for (uint64_t m = 0; m < count; m++) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r != (ssize_t)size) {
            fprintf(stderr, "info: message %llu: %zd bytes\n", (unsigned long long)m, r);
            return 0;
        }
        for (size_t i = 0; i < size; i++)
            if (buf[i] != seq_next(&s)) {
                fprintf(stderr, "info: message %llu byte %zu differs\n",
                        (unsigned long long)m, i);
                return 0;
            }
    }
    return s.fnv;
}

/* Sends up to `count` messages of `size` bytes of sequence `s`; how many went. */
static uint64_t fill_messages(int fd, struct seq *s, uint64_t count, size_t size)
{
    uint64_t m;
    for (m = 0; m < count; m++) {
        struct seq save = *s;
        fill(s, buf, size);
        if (send(fd, buf, size, MSG_DONTWAIT) != (ssize_t)size) {
            *s = save;
            break;
        }
    }
    return m;
}

static int empty(int fd)
{
    char b[8];
    return recv(fd, b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN;
}

static int got(int fd, const char *want)
{
    char b[64];
    size_t len = strlen(want);
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == (ssize_t)len && memcmp(b, want, len) == 0;
}

static long wmem_max(void)
{
    long v = 0;
    FILE *f = fopen("/proc/sys/net/core/wmem_max", "r");
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v;
}

int main(void)
{
    int st[2], sq[2], sd[2], sync[2], ack[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0);
    check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0);
    check(socketpair(AF_UNIX, SOCK_DGRAM, 0, sd) == 0);
    check(pipe(sync) == 0 && pipe(ack) == 0);
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    check(lst >= 0 && bind(lst, (struct sockaddr *)&a, sizeof a) == 0 && listen(lst, 4) == 0);
    check(getsockname(lst, (struct sockaddr *)&a, &alen) == 0);
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    check(cli >= 0 && connect(cli, (struct sockaddr *)&a, sizeof a) == 0);
    int srv = accept(lst, NULL, NULL);
    check(srv >= 0);
    close(lst);

    pid_t child = fork();
    check(child >= 0);
    if (child == 0) {
        close(st[0]), close(sq[0]), close(sd[0]), close(srv), close(sync[0]), close(ack[1]);
        int big = 4 << 20;
        setsockopt(st[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sq[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sd[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        struct report r;
        struct seq s;
        seq_init(&s, 1);
        r.stream = fill_stream(st[1], &s, STREAM_BYTES);
        r.stream_sum = sum_of(1, r.stream);
        seq_init(&s, 2);
        r.tcp = fill_stream(cli, &s, TCP_BYTES);
        r.tcp_sum = sum_of(2, r.tcp);
        seq_init(&s, 3);
        r.sq = fill_messages(sq[1], &s, MESSAGES, SQ_MSG);
        r.sq_sum = s.fnv;
        seq_init(&s, 4);
        r.sd = fill_messages(sd[1], &s, MESSAGES, SD_MSG);
        r.sd_sum = s.fnv;
        if (write(sync[1], &r, sizeof r) != sizeof r)
            _exit(2);
        wait_go();
        if (!got(st[1], "p2c-stream") || !empty(st[1]) || !got(cli, "p2c-tcp") || !empty(cli))
            _exit(3);
        char c;
        /* Stay (the ends open) until the parent read everything. */
        if (read(ack[0], &c, 1) != 1)
            _exit(4);
        _exit(0);
    }
    close(st[1]), close(sq[1]), close(sd[1]), close(cli), close(sync[1]), close(ack[0]);
    check(write(st[0], "p2c-stream", 10) == 10 && write(srv, "p2c-tcp", 7) == 7);
    struct report r;
    check(read(sync[0], &r, sizeof r) == sizeof r);
    fprintf(stderr, "info: queued stream %llu tcp %llu bytes, seqpacket %llu x %u, datagram %llu x %u\n",
            (unsigned long long)r.stream, (unsigned long long)r.tcp, (unsigned long long)r.sq,
            SQ_MSG, (unsigned long long)r.sd, SD_MSG);
    uint64_t min_stream = wmem_max() >= (1 << 20) ? (1u << 20) : (256u << 10);
    check(r.stream >= min_stream && r.tcp >= (1u << 20) && r.sq >= 2 && r.sd >= 2);

    ready_then_wait_go();

    check(read_stream(st[0], 1, r.stream) == r.stream_sum && empty(st[0]));
    check(read_stream(srv, 2, r.tcp) == r.tcp_sum && empty(srv));
    check(read_messages(sq[0], 3, r.sq, SQ_MSG) == r.sq_sum && empty(sq[0]));
    check(read_messages(sd[0], 4, r.sd, SD_MSG) == r.sd_sum && empty(sd[0]));
    check(write(ack[1], "1", 1) == 1);
    int status;
    check(waitpid(child, &status, 0) == child);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "info: child status %#x\n", status);
        fail("the child's checks failed");
    }
    printf("info: read back stream %llu tcp %llu bytes, seqpacket %llu, datagram %llu messages\n",
           (unsigned long long)r.stream, (unsigned long long)r.tcp, (unsigned long long)r.sq,
           (unsigned long long)r.sd);
    pass();
}
