/* unix02.c - what a Unix socket cannot keep, said and handled: a listener on a path in
 * $CR_TEST_DIR with a connection waiting to be accepted, and a stream pair with a descriptor in
 * flight (a pipe end sent with SCM_RIGHTS with "data", then "more" without).  The checkpoint
 * warns about both (tests/kinds.rs checks the text).  After GO: the waiting connection is
 * gone (accept: EAGAIN) and its client reads end of file; the listener accepts a new one; the
 * pair's bytes arrive, without a descriptor; the pair still talks both ways.
 * PASS unix02. */
/* cr-test: cflags= */
#define NAME "unix02"
#include "kobj.h"
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    strncpy(a->sun_path, path, sizeof a->sun_path - 1);
    return offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1;
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

    int st[2], p[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0 && pipe(p) == 0);
    char cb[CMSG_SPACE(sizeof(int))];
    memset(cb, 0, sizeof cb);
    struct iovec v = {"data", 4};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1, .msg_control = cb,
                       .msg_controllen = sizeof cb};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[0], sizeof(int));
    check(sendmsg(st[0], &m, 0) == 4 && write(st[0], "more", 4) == 4);
    close(p[0]);

    ready_then_wait_go();

    check(accept(lst, NULL, NULL) == -1 && errno == EAGAIN);
    char b[32];
    check(read(waiting, b, sizeof b) == 0);
    int fresh = client(path), got = accept(lst, NULL, NULL);
    check(got >= 0 && write(fresh, "hi", 2) == 2 && read(got, b, sizeof b) == 2);

    size_t have = 0;
    int fds = 0;
    while (have < 8) {
        char cb2[CMSG_SPACE(4 * sizeof(int))];
        struct iovec rv = {b + have, sizeof b - have};
        struct msghdr r = {.msg_iov = &rv, .msg_iovlen = 1, .msg_control = cb2,
                           .msg_controllen = sizeof cb2};
        ssize_t n = recvmsg(st[1], &r, MSG_DONTWAIT);
        check(n > 0);
        have += n;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&r); h; h = CMSG_NXTHDR(&r, h))
            fds += h->cmsg_type == SCM_RIGHTS;
    }
    check(have == 8 && memcmp(b, "datamore", 8) == 0 && fds == 0);
    check(recv(st[1], b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    check(write(st[1], "back", 4) == 4 && read(st[0], b, sizeof b) == 4);
    unlink(path);
    pass();
}
