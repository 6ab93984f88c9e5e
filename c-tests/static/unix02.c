/* unix02.c - what a Unix socket cannot keep, said and handled, and descriptors in flight: a
 * listener on a path in $CR_TEST_DIR with a connection waiting to be accepted (the checkpoint
 * warns, tests/kinds.rs checks the text); a stream pair with a descriptor in flight (a pipe's
 * read end, closed by the sender, sent with SCM_RIGHTS with "data", then "more" without; the
 * pipe holds "piped"); a seqpacket pair holding "m1" with an eventfd (count 7, closed by the
 * sender), "m2" with the same pipe end and the stream pair's own other end, then an empty
 * message.  After GO: the waiting connection is gone (accept: EAGAIN) and its client reads end
 * of file; the listener accepts a new one; "data" arrives with one descriptor, the pipe's read
 * end (it reads "piped", then what the program writes to the pipe now), "more" without; "m1"
 * with the eventfd (7), "m2" with the pipe end (one pipe: what is written comes out of either)
 * and the stream end (it talks to st[1]), the empty message (0 bytes), then EAGAIN; the pair
 * still talks both ways.
 * PASS unix02. */
/* cr-test: cflags= */
#define NAME "unix02"
#include "kobj.h"
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    strncpy(a->sun_path, path, sizeof a->sun_path - 1);
    return offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1;
}

/* Sends `len` bytes of `text` through `s` with the `n` descriptors of `fds`. */
static void send_fds(int s, const char *text, size_t len, const int *fds, int n)
{
    char cb[CMSG_SPACE(4 * sizeof(int))];
    memset(cb, 0, sizeof cb);
    struct iovec v = {(void *)text, len};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1, .msg_control = cb,
                       .msg_controllen = CMSG_SPACE(n * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    check(sendmsg(s, &m, 0) == (ssize_t)len);
}

/* One recvmsg on `s` (non-blocking) into `b`: its length; its descriptors in `fds` (*n). */
static ssize_t recv_fds(int s, char *b, size_t size, int *fds, int *n)
{
    char cb[CMSG_SPACE(4 * sizeof(int))];
    struct iovec rv = {b, size};
    struct msghdr r = {.msg_iov = &rv, .msg_iovlen = 1, .msg_control = cb,
                       .msg_controllen = sizeof cb};
    ssize_t got = recvmsg(s, &r, MSG_DONTWAIT);
    *n = 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&r); got >= 0 && h; h = CMSG_NXTHDR(&r, h))
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int) && *n < 4; i++)
                memcpy(&fds[(*n)++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
    return got;
}

static int client(const char *path)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, path);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    check(c >= 0 && connect(c, (struct sockaddr *)&a, len) == 0);
    return c;
}

int main(void)
{
    const char *dir = getenv("CR_TEST_DIR");
    char path[200];
    check(dir != NULL);
    snprintf(path, sizeof path, "%s/unix02.sock", dir);
    unlink(path);
    struct sockaddr_un a;
    socklen_t len = addr(&a, path);
    int lst = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    check(lst >= 0 && bind(lst, (struct sockaddr *)&a, len) == 0 && listen(lst, 8) == 0);
    int waiting = client(path);
    check(write(waiting, "hello", 5) == 5);

    int st[2], p[2], sq[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0 && pipe(p) == 0);
    check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0);
    send_fds(st[0], "data", 4, &p[0], 1);
    check(write(st[0], "more", 4) == 4 && write(p[1], "piped", 5) == 5);
    int efd = eventfd(7, EFD_NONBLOCK);
    check(efd >= 0);
    send_fds(sq[0], "m1", 2, &efd, 1);
    int two[2] = {p[0], st[0]};
    send_fds(sq[0], "m2", 2, two, 2);
    check(send(sq[0], "", 0, 0) == 0);
    close(p[0]);
    close(efd);

    ready_then_wait_go();

    check(accept(lst, NULL, NULL) == -1 && errno == EAGAIN);
    char b[32];
    check(read(waiting, b, sizeof b) == 0);
    int fresh = client(path), got = accept(lst, NULL, NULL);
    check(got >= 0 && write(fresh, "hi", 2) == 2 && read(got, b, sizeof b) == 2);

    int fds[4], n;
    /* "data" with the pipe's read end (a read stops after the bytes that carried it). */
    check(recv_fds(st[1], b, sizeof b, fds, &n) == 4 && memcmp(b, "data", 4) == 0);
    check(n == 1);
    int rd = fds[0];
    check(read(rd, b, sizeof b) == 5 && memcmp(b, "piped", 5) == 0);
    check(write(p[1], "x", 1) == 1 && read(rd, b, sizeof b) == 1 && b[0] == 'x');
    check(recv_fds(st[1], b, sizeof b, fds, &n) == 4 && memcmp(b, "more", 4) == 0 && n == 0);
    check(recv(st[1], b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    /* The seqpacket messages with theirs, the empty one last. */
    check(recv_fds(sq[1], b, sizeof b, fds, &n) == 2 && memcmp(b, "m1", 2) == 0 && n == 1);
    uint64_t v;
    check(read(fds[0], &v, 8) == 8 && v == 7);
    check(recv_fds(sq[1], b, sizeof b, fds, &n) == 2 && memcmp(b, "m2", 2) == 0 && n == 2);
    check(write(p[1], "y", 1) == 1 && read(fds[0], b, sizeof b) == 1 && b[0] == 'y');
    check(write(fds[1], "via", 3) == 3 && read(st[1], b, sizeof b) == 3);
    check(recv_fds(sq[1], b, sizeof b, fds, &n) == 0 && n == 0);
    check(recv(sq[1], b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    check(write(st[1], "back", 4) == 4 && read(st[0], b, sizeof b) == 4);
    unlink(path);
    pass();
}
