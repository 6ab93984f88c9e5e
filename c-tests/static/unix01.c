/* unix01.c - Unix datagram and seqpacket sockets with messages queued: a seqpacket pair (three
 * messages one way, one of 3000 bytes; one back), a datagram pair (three messages, one empty;
 * one back), a datagram pair whose sender is closed (its message stays), datagram sockets bound
 * to a path in $CR_TEST_DIR and to an abstract name with messages from an unnamed sender.
 * After GO: every message in order with its exact length (boundaries kept), then EAGAIN; the
 * bound sockets have their addresses and receive again; the pairs talk both ways.
 * PASS unix01. */
/* cr-test: cflags= */
#define NAME "unix01"
#include "kobj.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t addr(struct sockaddr_un *a, const char *path, int abstract)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    strncpy(a->sun_path + abstract, path, sizeof a->sun_path - 2);
    return offsetof(struct sockaddr_un, sun_path) + abstract + strlen(path) + !abstract;
}

static int bound(const char *path, int abstract)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, path, abstract);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    check(fd >= 0 && bind(fd, (struct sockaddr *)&a, len) == 0);
    return fd;
}

static void send_to(const char *path, int abstract, const char *m)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, path, abstract);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    check(fd >= 0 && sendto(fd, m, strlen(m), 0, (struct sockaddr *)&a, len) == (ssize_t)strlen(m));
    close(fd);
}

/* The next message at `fd` is exactly `len` bytes of `want`. */
static void expect(int fd, const void *want, size_t len)
{
    char b[4096];
    struct iovec v = {b, sizeof b};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
    if (n != (ssize_t)len || memcmp(b, want, len) != 0 || (m.msg_flags & MSG_TRUNC)) {
        fprintf(stderr, "info: fd %d: got %zd bytes, want %zu\n", fd, n, len);
        fail("a queued message differs");
    }
}

static void empty(int fd)
{
    char b[8];
    check(recv(fd, b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN);
}

static void has_name(int fd, const char *path, int abstract)
{
    struct sockaddr_un a, want;
    socklen_t len = sizeof a, wlen = addr(&want, path, abstract);
    check(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    check(len == wlen && memcmp(&a, &want, len) == 0);
}

int main(void)
{
    const char *dir = getenv("CR_TEST_DIR");
    char path[200], abs_name[64], big[3000];
    check(dir != NULL);
    snprintf(path, sizeof path, "%s/unix01.dgram", dir);
    snprintf(abs_name, sizeof abs_name, "libcr-unix01-%d", (int)getpid());
    unlink(path);
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7 + 3);
    int sp[2], dg[2], gone[2];
    check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0);
    check(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0);
    check(socketpair(AF_UNIX, SOCK_DGRAM, 0, gone) == 0);
    check(send(sp[0], "one", 3, 0) == 3 && send(sp[0], big, sizeof big, 0) == sizeof big);
    check(send(sp[0], "three", 5, 0) == 5 && send(sp[1], "back", 4, 0) == 4);
    check(send(dg[0], "alpha", 5, 0) == 5 && send(dg[0], "", 0, 0) == 0);
    check(send(dg[0], "gamma-gamma", 11, 0) == 11 && send(dg[1], "z", 1, 0) == 1);
    check(send(gone[0], "orphan", 6, 0) == 6);
    close(gone[0]);
    int bp = bound(path, 0), ba = bound(abs_name, 1);
    send_to(path, 0, "first");
    send_to(path, 0, "second!");
    send_to(abs_name, 1, "abs");

    ready_then_wait_go();

    expect(sp[1], "one", 3);
    expect(sp[1], big, sizeof big);
    expect(sp[1], "three", 5);
    empty(sp[1]);
    expect(sp[0], "back", 4);
    empty(sp[0]);
    expect(dg[1], "alpha", 5);
    expect(dg[1], "", 0);
    expect(dg[1], "gamma-gamma", 11);
    empty(dg[1]);
    expect(dg[0], "z", 1);
    empty(dg[0]);
    expect(gone[1], "orphan", 6);
    empty(gone[1]);
    expect(bp, "first", 5);
    expect(bp, "second!", 7);
    empty(bp);
    expect(ba, "abs", 3);
    empty(ba);
    has_name(bp, path, 0);
    has_name(ba, abs_name, 1);
    send_to(path, 0, "new");
    expect(bp, "new", 3);
    send_to(abs_name, 1, "new2");
    expect(ba, "new2", 4);
    check(send(sp[1], "x", 1, 0) == 1 && send(sp[1], "yy", 2, 0) == 2);
    expect(sp[0], "x", 1);
    expect(sp[0], "yy", 2);
    check(send(dg[0], "q", 1, 0) == 1);
    expect(dg[1], "q", 1);
    unlink(path);
    pass();
}
