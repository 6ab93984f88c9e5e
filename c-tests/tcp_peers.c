/* tcp_peers.c - two programs joined by one TCP connection, each its own job (the two halves
 * of a job across nodes, restarted separately with cr_restart --reconnect; tests/mpi_nodes.rs).
 *
 * Usage: tcp_peers server PORTFILE [ADDR]   listens on ADDR (default 127.0.0.1; port chosen by
 *                                     the kernel, written to PORTFILE), accepts one connection
 *        tcp_peers client PORTFILE [ADDR]   waits for PORTFILE, connects to ADDR
 * Then, iteration after iteration: the server sends a 100-byte message (its iteration number,
 * a flag saying whether the GO file exists, a pattern of the number), the client reads and
 * checks it and answers with its own (the same number and flag, another pattern), which the
 * server reads and checks. Messages are read in two pieces with a pause between, so bytes
 * wait in the receive queues at any moment. Each prints READY after 20 iterations. After
 * the flagged iteration comes a late connection, opened with the addresses held in memory
 * since the start (as an MPI library connects lazily to addresses of its start-up exchange):
 * the client connects to ADDR again, the server accepts it on its listener and checks that
 * the peer's address is the one the first connection came from, the client that its own
 * local address is the first connection's (after `cr_restart --map-address` the agent
 * translates), and one message goes each way on it. Then each prints "PASS tcp_peers N" and
 * exits 0; any mismatch: FAIL.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "tcp_peers"
#define LEN 100

static void fail(const char *what, long iter)
{
    printf("FAIL " NAME ": iteration %ld: %s\n", iter, what);
    fprintf(stderr, "FAIL " NAME ": iteration %ld: %s (errno %d)\n", iter, what, errno);
    fflush(stdout);
    exit(1);
}

static unsigned char pattern(uint64_t iter, int i, int who) { return (unsigned char)(iter * 31 + i * 7 + who * 101); }

static void fill(unsigned char *m, uint64_t iter, uint64_t flag, int who)
{
    memcpy(m, &iter, 8);
    memcpy(m + 8, &flag, 8);
    for (int i = 16; i < LEN; i++)
        m[i] = pattern(iter, i, who);
}

static void send_all(int fd, const unsigned char *m, long iter)
{
    size_t done = 0;
    while (done < LEN) {
        ssize_t n = write(fd, m + done, LEN - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("write", iter);
        done += (size_t)n;
    }
}

/* Reads one message in two pieces with a short pause between; checks it; its flag. */
static uint64_t recv_check(int fd, uint64_t iter, int who)
{
    unsigned char m[LEN];
    size_t done = 0;
    while (done < LEN) {
        size_t want = done < LEN / 2 ? LEN / 2 - done : LEN - done;
        ssize_t n = read(fd, m + done, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(n == 0 ? "end of file" : "read", (long)iter);
        done += (size_t)n;
        if (done == LEN / 2) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    uint64_t got, flag;
    memcpy(&got, m, 8);
    memcpy(&flag, m + 8, 8);
    if (got != iter)
        fail("message out of order", (long)iter);
    for (int i = 16; i < LEN; i++)
        if (m[i] != pattern(iter, i, who))
            fail("message corrupted", (long)iter);
    return flag;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        fail("usage: tcp_peers server|client PORTFILE [ADDR]", 0);
    int server = strcmp(argv[1], "server") == 0;
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO not set", 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (argc == 4 && inet_pton(AF_INET, argv[3], &a.sin_addr) != 1)
        fail("ADDR is not an IPv4 address", 0);
    /* The other end's address as the server saw it, the client's own local address. */
    struct sockaddr_in first = {0};
    socklen_t first_len = sizeof first;
    int fd, l = -1;
    if (server) {
        l = socket(AF_INET, SOCK_STREAM, 0);
        socklen_t len = sizeof a;
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
            getsockname(l, (struct sockaddr *)&a, &len) != 0)
            fail("listen", 0);
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%u\n", ntohs(a.sin_port)) < 0 || fclose(f) != 0 || rename(tmp, argv[2]) != 0)
            fail("write the port file", 0);
        fd = accept(l, (struct sockaddr *)&first, &first_len);
        if (fd < 0)
            fail("accept", 0);
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
            fail("no port file", 0);
        a.sin_port = htons((uint16_t)port);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
            getsockname(fd, (struct sockaddr *)&first, &first_len) != 0)
            fail("connect", 0);
    }
    unsigned char m[LEN];
    for (uint64_t iter = 0;; iter++) {
        uint64_t flag;
        if (server) {
            flag = access(go, F_OK) == 0;
            fill(m, iter, flag, 0);
            send_all(fd, m, (long)iter);
            if (recv_check(fd, iter, 1) != flag)
                fail("flag not echoed", (long)iter);
        } else {
            flag = recv_check(fd, iter, 0);
            fill(m, iter, flag, 1);
            send_all(fd, m, (long)iter);
        }
        if (iter == 20) {
            printf("READY\n");
            fflush(stdout);
        }
        if (flag && iter > 20) {
            struct sockaddr_in now = {0};
            socklen_t now_len = sizeof now;
            const uint64_t late = 1000000;
            int fd2;
            if (server) {
                fd2 = accept(l, (struct sockaddr *)&now, &now_len);
                if (fd2 < 0)
                    fail("late accept", (long)late);
            } else {
                fd2 = socket(AF_INET, SOCK_STREAM, 0);
                if (fd2 < 0 || connect(fd2, (struct sockaddr *)&a, sizeof a) != 0)
                    fail("late connect", (long)late);
                if (getsockname(fd2, (struct sockaddr *)&now, &now_len) != 0)
                    fail("late getsockname", (long)late);
            }
            if (now.sin_addr.s_addr != first.sin_addr.s_addr) {
                char was[32], is[32];
                inet_ntop(AF_INET, &first.sin_addr, was, sizeof was);
                inet_ntop(AF_INET, &now.sin_addr, is, sizeof is);
                fprintf(stderr, "%s address was %s, is %s\n", server ? "peer" : "local", was, is);
                fail(server ? "late connection from another address" : "late connection from another local address", (long)late);
            }
            fill(m, late, 0, server ? 0 : 1);
            send_all(fd2, m, (long)late);
            recv_check(fd2, late, server ? 1 : 0);
            close(fd2);
            printf("PASS " NAME " %llu\n", (unsigned long long)iter);
            fflush(stdout);
            return 0;
        }
    }
}
