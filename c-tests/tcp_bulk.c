/* tcp_bulk.c - two programs joined by one TCP connection, each its own job (two halves of a
 * job across nodes; tests/mpi_nodes.rs), with megabytes in flight between them at the
 * checkpoint, as a large MPI message waits at a rank that is not reading.
 *
 * Usage: tcp_bulk server PORTFILE [ADDR]   listens on ADDR (default 127.0.0.1; port written
 *                                           to PORTFILE), accepts one connection
 *        tcp_bulk client PORTFILE [ADDR]   waits for PORTFILE, connects to ADDR
 * Each then queues a block without reading (its SO_SNDBUF set to 4 MiB first): the client
 * 3 MiB, the server 1 MiB (a 16-byte header: length and FNV-1a checksum, then bytes of a
 * per-side xorshift sequence), waiting
 * up to 10 s for the kernel to take it all (a peer that does not read: its receive buffer and
 * our send buffer hold it), prints READY and waits for $CR_TEST_GO without reading. Then each
 * reads the other's block, checks every byte, the length and the checksum, sends "done" and
 * reads the other's "done". PASS tcp_bulk N (N: the bytes it read); any mismatch: FAIL. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "tcp_bulk"

static void fail(const char *what)
{
    printf("FAIL " NAME ": %s\n", what);
    fprintf(stderr, "FAIL " NAME ": %s (errno %d %s)\n", what, errno, strerror(errno));
    fflush(stdout);
    exit(1);
}

struct seq {
    uint64_t x, fnv;
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

static uint8_t block[(3 << 20) + 16];

/* Sends all of `b` (non-blocking socket), waiting for room up to `ms` in all. */
static void send_all(int fd, const uint8_t *b, size_t n, int ms)
{
    size_t done = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (done < n) {
        ssize_t w = send(fd, b + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            fail("send");
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > ms) {
            fprintf(stderr, "info: %zu of %zu bytes taken\n", done, n);
            fail("the kernel did not take the whole block");
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 100);
    }
}

/* Reads exactly `n` bytes (waiting up to 30 s for each part). */
static void recv_all(int fd, uint8_t *b, size_t n)
{
    size_t done = 0;
    while (done < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 30000) != 1) {
            fprintf(stderr, "info: %zu of %zu bytes, then nothing\n", done, n);
            fail("the rest did not come");
        }
        ssize_t r = recv(fd, b + done, n - done, MSG_DONTWAIT);
        if (r == 0)
            fail("end of file");
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            fail("recv");
        if (r > 0)
            done += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        fail("usage: tcp_bulk server|client PORTFILE [ADDR]");
    int server = strcmp(argv[1], "server") == 0;
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (argc == 4 && inet_pton(AF_INET, argv[3], &a.sin_addr) != 1)
        fail("ADDR is not an IPv4 address");
    int fd;
    if (server) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        socklen_t len = sizeof a;
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
            getsockname(l, (struct sockaddr *)&a, &len) != 0)
            fail("listen");
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%u\n", ntohs(a.sin_port)) < 0 || fclose(f) != 0 ||
            rename(tmp, argv[2]) != 0)
            fail("write the port file");
        fd = accept(l, NULL, NULL);
        if (fd < 0)
            fail("accept");
        /* The listener stays open (as MPI's do): `cr_restart --reconnect` accepts the
         * connection again on it. */
    } else {
        unsigned port = 0;
        for (int i = 0; i < 30000 && port == 0; i++) {
            FILE *f = fopen(argv[2], "r");
            if (f) {
                if (fscanf(f, "%u", &port) != 1)
                    port = 0;
                fclose(f);
            }
            if (port == 0)
                usleep(1000);
        }
        if (port == 0)
            fail("no port file");
        a.sin_port = htons((uint16_t)port);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
            fail("connect");
    }
    /* Room for our whole block in the send buffer (as an MPI library sizes its sockets'
     * buffers): between namespaces, the default auto-tuned one took 0.8 MiB. */
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    /* Our block: header (length, checksum), then the bytes. */
    uint64_t mine = server ? (1u << 20) : (3u << 20);
    struct seq s;
    seq_init(&s, server ? 1 : 2);
    for (uint64_t i = 0; i < mine; i++)
        block[16 + i] = seq_next(&s);
    memcpy(block, &mine, 8);
    memcpy(block + 8, &s.fnv, 8);
    send_all(fd, block, 16 + mine, 10000);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    /* Theirs. */
    uint8_t head[16];
    recv_all(fd, head, 16);
    uint64_t n, sum;
    memcpy(&n, head, 8);
    memcpy(&sum, head + 8, 8);
    if (n != (server ? (3u << 20) : (1u << 20)))
        fail("the block's length is wrong");
    recv_all(fd, block, n);
    seq_init(&s, server ? 2 : 1);
    for (uint64_t i = 0; i < n; i++)
        if (block[i] != seq_next(&s)) {
            fprintf(stderr, "info: byte %llu differs\n", (unsigned long long)i);
            fail("a byte differs");
        }
    if (s.fnv != sum)
        fail("the checksum differs");
    send_all(fd, (const uint8_t *)"done", 4, 10000);
    uint8_t d[4];
    recv_all(fd, d, 4);
    if (memcmp(d, "done", 4) != 0)
        fail("no done");
    printf("PASS " NAME " %llu\n", (unsigned long long)n);
    fflush(stdout);
    return 0;
}
