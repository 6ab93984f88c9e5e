/* socket00.c - internet sockets: a TCP listener on 127.0.0.1 (port chosen by the kernel,
 * SO_REUSEADDR, TCP_NODELAY, SO_SNDBUF) watched by an epoll, two UDP sockets bound on loopback
 * (one with SO_REUSEPORT and SO_RCVBUF) with one connected to the other, a TCP connection between two of its own sockets with unread bytes
 * both ways, and one to a child that is not checkpointed (it exits when the connection
 * closes).  After GO: the listener has its port and options and accepts a new connection
 * (epoll reports it), UDP datagrams flow both ways, the connection inside the job is connected
 * again with its unread bytes, the one to the outside reports ECONNRESET (it cannot be kept
 * without privileges).  PASS socket00. */
/* cr-test: cflags= */
#define NAME "socket00"
#include "kobj.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    check(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    return ntohs(a.sin_port);
}

static int opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    check(getsockopt(fd, level, name, &v, &len) == 0);
    return v;
}

int main(void)
{
    int one = 1;
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    check(lst >= 0);
    check(setsockopt(lst, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    check(setsockopt(lst, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
    int sndbuf = 32768, rcvbuf = 65536;
    check(setsockopt(lst, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    sndbuf = opt(lst, SOL_SOCKET, SO_SNDBUF); /* as the kernel keeps it (doubled) */
    struct sockaddr_in a = loopback(0);
    check(bind(lst, (struct sockaddr *)&a, sizeof a) == 0 && listen(lst, 16) == 0);
    int port = port_of(lst);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    check(epoll_ctl(ep, EPOLL_CTL_ADD, lst, &ev) == 0);

    int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
    check(u1 >= 0 && u2 >= 0);
    check(setsockopt(u2, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0);
    check(setsockopt(u2, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
    rcvbuf = opt(u2, SOL_SOCKET, SO_RCVBUF);
    check(opt(u1, SOL_SOCKET, SO_REUSEPORT) == 0);
    a = loopback(0);
    check(bind(u1, (struct sockaddr *)&a, sizeof a) == 0);
    check(bind(u2, (struct sockaddr *)&a, sizeof a) == 0);
    int p1 = port_of(u1), p2 = port_of(u2);
    a = loopback(p2);
    check(connect(u1, (struct sockaddr *)&a, sizeof a) == 0);

    int cli = socket(AF_INET, SOCK_STREAM, 0);
    a = loopback(port);
    check(connect(cli, (struct sockaddr *)&a, sizeof a) == 0);
    int srv = accept(lst, NULL, NULL);
    check(srv >= 0);
    check(write(cli, "abc", 3) == 3 && write(srv, "wxyz", 4) == 4);

    /* A connection to a process outside the checkpointed tree: a grandchild whose parent
     * exited at once (it is reparented away), waiting for its end to close. */
    pid_t child = fork();
    check(child >= 0);
    if (child == 0 && fork() != 0)
        _exit(0);
    if (child == 0) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        char b;
        if (connect(c, (struct sockaddr *)&a, sizeof a) != 0)
            _exit(1);
        while (read(c, &b, 1) > 0)
            ;
        _exit(0);
    }
    check(waitpid(child, NULL, 0) == child);
    int out = accept(lst, NULL, NULL);
    check(out >= 0);

    ready_then_wait_go();

    check(port_of(lst) == port);
    check(opt(lst, SOL_SOCKET, SO_ACCEPTCONN) == 1);
    check(opt(lst, SOL_SOCKET, SO_REUSEADDR) == 1);
    check(opt(lst, IPPROTO_TCP, TCP_NODELAY) == 1);
    check(opt(lst, SOL_SOCKET, SO_SNDBUF) == sndbuf);
    check(opt(u2, SOL_SOCKET, SO_REUSEPORT) == 1 && opt(u1, SOL_SOCKET, SO_REUSEPORT) == 0);
    check(opt(u2, SOL_SOCKET, SO_RCVBUF) == rcvbuf);
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    a = loopback(port);
    check(connect(c2, (struct sockaddr *)&a, sizeof a) == 0);
    struct epoll_event got;
    check(epoll_wait(ep, &got, 1, 2000) == 1 && got.data.u64 == 42);
    int s2 = accept(lst, NULL, NULL);
    check(s2 >= 0);
    check(write(c2, "ping", 4) == 4);
    char buf[16];
    check(read(s2, buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0);

    check(port_of(u1) == p1 && port_of(u2) == p2);
    check(send(u1, "dgram", 5, 0) == 5);
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    check(recvfrom(u2, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) == 5);
    check(ntohs(from.sin_port) == p1);
    check(sendto(u2, "back", 4, 0, (struct sockaddr *)&from, flen) == 4);
    check(recv(u1, buf, sizeof buf, 0) == 4 && memcmp(buf, "back", 4) == 0);

    check(recv(srv, buf, sizeof buf, MSG_DONTWAIT) == 3 && memcmp(buf, "abc", 3) == 0);
    check(recv(cli, buf, sizeof buf, MSG_DONTWAIT) == 4 && memcmp(buf, "wxyz", 4) == 0);
    check(write(cli, "more", 4) == 4 && read(srv, buf, sizeof buf) == 4);
    check(opt(cli, SOL_SOCKET, SO_ERROR) == 0);
    check(recv(out, buf, sizeof buf, MSG_DONTWAIT) == -1 && errno == ECONNRESET);
    pass();
}
