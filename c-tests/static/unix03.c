/* unix03.c - connections between two processes of the job: a parent and its child share a
 * stream, a seqpacket and a datagram socketpair and a TCP connection on loopback (the child
 * holds one end of each, the parent the other), with data queued in both directions: bytes on
 * the stream and TCP, two messages each way on seqpacket and datagram (one empty).  After GO
 * (after restart): each side reads exactly what was queued for it, in order and with its
 * boundaries, then EAGAIN; then the child answers on every connection and the parent reads the
 * answers (the ends are connected to each other again; a pipe paces the two).  PASS unix03. */
/* cr-test: cflags= */
#define NAME "unix03"
#include "kobj.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

static void wait_go(void)
{
    const char *go = getenv("CR_TEST_GO");
    while (access(go, F_OK) != 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* Whether the next message or bytes waiting on `fd` are exactly `want` (`len` bytes). */
static int got(int fd, const char *want, size_t len)
{
    char b[64];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == (ssize_t)len && memcmp(b, want, len) == 0;
}

static int empty(int fd)
{
    char b[8];
    return recv(fd, b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN;
}

/* Queues `tag` on the stream and TCP ends, and `tag` then an empty message on the others. */
static int queue(int st, int sq, int sd, int tcp, const char *tag)
{
    size_t n = strlen(tag);
    return write(st, tag, n) == (ssize_t)n && send(sq, tag, n, 0) == (ssize_t)n &&
           send(sq, "", 0, 0) == 0 && send(sd, tag, n, 0) == (ssize_t)n &&
           send(sd, "", 0, 0) == 0 && write(tcp, tag, n) == (ssize_t)n;
}

/* Whether what `queue` sent with `tag` is waiting, and nothing more. */
static int queued(int st, int sq, int sd, int tcp, const char *tag)
{
    size_t n = strlen(tag);
    return got(st, tag, n) && empty(st) && got(sq, tag, n) && got(sq, "", 0) && empty(sq) &&
           got(sd, tag, n) && got(sd, "", 0) && empty(sd) && got(tcp, tag, n) && empty(tcp);
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
        if (!queue(st[1], sq[1], sd[1], cli, "c2p") || write(sync[1], "x", 1) != 1)
            _exit(2);
        wait_go();
        char c;
        if (!queued(st[1], sq[1], sd[1], cli, "p2c"))
            _exit(3);
        /* After the parent read what we queued before the checkpoint, answer. */
        if (read(ack[0], &c, 1) != 1 || !queue(st[1], sq[1], sd[1], cli, "again"))
            _exit(4);
        /* Stay (the ends open) until the parent read the answers. */
        if (read(ack[0], &c, 1) != 1)
            _exit(5);
        _exit(0);
    }
    close(st[1]), close(sq[1]), close(sd[1]), close(cli), close(sync[1]), close(ack[0]);
    check(queue(st[0], sq[0], sd[0], srv, "p2c"));
    char b;
    check(read(sync[0], &b, 1) == 1);

    ready_then_wait_go();

    check(queued(st[0], sq[0], sd[0], srv, "c2p"));
    check(write(ack[1], "1", 1) == 1);
    /* The TCP bytes are the answer's last part. */
    struct pollfd p = {.fd = srv, .events = POLLIN};
    int answered = poll(&p, 1, 20000) == 1;
    int again = answered && queued(st[0], sq[0], sd[0], srv, "again");
    check(write(ack[1], "2", 1) == 1);
    int status;
    check(waitpid(child, &status, 0) == child);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "info: child status %#x\n", status);
        fail("the child's checks failed");
    }
    check(answered && again);
    pass();
}
