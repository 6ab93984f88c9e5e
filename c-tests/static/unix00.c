/* unix00.c - Unix sockets: a stream socketpair with bytes queued in both directions, a
 * seqpacket pair, a listener bound to a path in $CR_TEST_DIR and one with an abstract name.
 * After GO: each end reads exactly what was queued for it, the pairs still talk both ways
 * (message boundaries kept for seqpacket), and both listeners accept new connections.
 * PASS unix00. */
/* cr-test: cflags= */
#define NAME "unix00"
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

static int listener(const char *path, int abstract)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, path, abstract);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    check(fd >= 0 && bind(fd, (struct sockaddr *)&a, len) == 0 && listen(fd, 8) == 0);
    return fd;
}

static void connects(int lst, const char *path, int abstract)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, path, abstract);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    check(c >= 0 && connect(c, (struct sockaddr *)&a, len) == 0);
    int s = accept(lst, NULL, NULL);
    char b[8];
    check(s >= 0 && write(c, "hi", 2) == 2 && read(s, b, sizeof b) == 2);
    close(c);
    close(s);
}

int main(void)
{
    const char *dir = getenv("CR_TEST_DIR");
    char path[200], abs_name[64];
    check(dir != NULL);
    snprintf(path, sizeof path, "%s/unix00.sock", dir);
    snprintf(abs_name, sizeof abs_name, "libcr-unix00-%d", (int)getpid());
    unlink(path);
    int st[2], sp[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0);
    check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0);
    check(write(st[0], "to one", 6) == 6 && write(st[1], "to zero!", 8) == 8);
    int lp = listener(path, 0), la = listener(abs_name, 1);

    ready_then_wait_go();

    char b[32];
    check(recv(st[1], b, sizeof b, MSG_DONTWAIT) == 6 && memcmp(b, "to one", 6) == 0);
    check(recv(st[0], b, sizeof b, MSG_DONTWAIT) == 8 && memcmp(b, "to zero!", 8) == 0);
    check(recv(st[0], b, sizeof b, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    check(write(st[1], "again", 5) == 5 && read(st[0], b, sizeof b) == 5);
    check(write(sp[0], "one", 3) == 3 && write(sp[0], "two", 3) == 3);
    check(read(sp[1], b, sizeof b) == 3 && memcmp(b, "one", 3) == 0);
    check(read(sp[1], b, sizeof b) == 3 && memcmp(b, "two", 3) == 0);
    check(write(sp[1], "back", 4) == 4 && read(sp[0], b, sizeof b) == 4);
    connects(lp, path, 0);
    connects(la, abs_name, 1);
    unlink(path);
    pass();
}
