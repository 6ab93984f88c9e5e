/* all00.c - the kernel objects together, as an event loop holds them: one epoll watching an
 * eventfd (EPOLLET), a periodic timerfd, a signalfd (SIGUSR1 pending), a TCP listener, both
 * ends of a TCP connection inside the process (bytes waiting), one end of a unix socketpair
 * (bytes waiting), an inotify instance watching a file in $CR_TEST_DIR, a UDP socket bound
 * and watched (another one connected to it), a unix listener on a path in $CR_TEST_DIR, a seqpacket pair holding a
 * message with an eventfd in flight (SCM_RIGHTS), a POSIX message queue holding a message;
 * besides, a keyed SysV shared memory segment (attached, with contents), semaphore set and
 * message queue (with a message), and a POSIX named semaphore (/dev/shm).  After GO every
 * object is checked field by field, those in the epoll through it: each reports with its own
 * data and its state.  PASS all00. */
/* cr-test: cflags=-lrt -pthread */
#define NAME "all00"
#include "kobj.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <mqueue.h>
#include <semaphore.h>
#include <stddef.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>

enum { EFD = 1, TFD, SFD, LST, SRV, CLI, UNX, INO, UDP, ULS, SEQ, MQ };

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct msg {
    long type;
    char text[32];
};

static void add(int ep, int fd, uint32_t ev, uint64_t tag)
{
    struct epoll_event e = {.events = ev, .data.u64 = tag};
    check(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == 0);
}

/* Every tag epoll reports within 200 ms, as a bit set. */
static unsigned ready(int ep)
{
    struct epoll_event evs[16];
    unsigned set = 0;
    int n = epoll_wait(ep, evs, 16, 200);
    for (int i = 0; i < n; i++)
        set |= 1u << evs[i].data.u64;
    return set;
}

/* Whether /proc/self/maps shows the mapping at `p` as a mapping of file `path` (its inode;
 * glibc maps a named semaphore through a temporary name it then removes). */
static int mapped_as(const void *p, const char *path)
{
    char line[512];
    struct stat st;
    FILE *f = fopen("/proc/self/maps", "r");
    int found = 0;
    check(f != NULL && stat(path, &st) == 0);
    while (fgets(line, sizeof line, f)) {
        unsigned long s, ino;
        if (sscanf(line, "%lx-%*x %*s %*s %*s %lu", &s, &ino) == 2 && s == (unsigned long)p)
            found = ino == (unsigned long)st.st_ino;
    }
    fclose(f);
    return found;
}

static socklen_t unix_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(path);
    check(n < sizeof a->sun_path);
    memcpy(a->sun_path, path, n + 1);
    return offsetof(struct sockaddr_un, sun_path) + n + 1;
}

int main(void)
{
    const char *dir = getenv("CR_TEST_DIR");
    check(dir != NULL);
    int me = getpid() & 0xffff;
    char watched[256], sockpath[256], name[64];
    snprintf(watched, sizeof watched, "%s/all00.watched", dir);
    snprintf(sockpath, sizeof sockpath, "%s/all00.sock", dir);
    snprintf(name, sizeof name, "/all00-%d", getpid());
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int efd = eventfd(3, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    check(sigprocmask(SIG_BLOCK, &m, NULL) == 0);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int lst = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(bind(lst, (struct sockaddr *)&a, sizeof a) == 0 && listen(lst, 4) == 0);
    socklen_t alen = sizeof a;
    check(getsockname(lst, (struct sockaddr *)&a, &alen) == 0);
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    check(connect(cli, (struct sockaddr *)&a, sizeof a) == 0);
    int srv = accept(lst, NULL, NULL);
    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    check(ep >= 0 && efd >= 0 && tfd >= 0 && sfd >= 0 && srv >= 0);
    struct itimerspec its = {{0, 30000000}, {0, 30000000}};
    check(timerfd_settime(tfd, 0, &its, NULL) == 0);
    add(ep, efd, EPOLLIN | EPOLLET, EFD);
    add(ep, tfd, EPOLLIN, TFD);
    add(ep, sfd, EPOLLIN, SFD);
    add(ep, lst, EPOLLIN, LST);
    add(ep, srv, EPOLLIN, SRV);
    add(ep, cli, EPOLLIN, CLI);
    add(ep, sv[0], EPOLLIN, UNX);
    check(kill(getpid(), SIGUSR1) == 0);
    check(write(cli, "to-srv", 6) == 6 && write(sv[1], "to-unx", 6) == 6);

    /* inotify: a file in $CR_TEST_DIR watched for changes. */
    int wf = open(watched, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    int ino = inotify_init1(IN_NONBLOCK);
    check(wf >= 0 && ino >= 0);
    int wd = inotify_add_watch(ino, watched, IN_MODIFY);
    check(wd >= 0);
    add(ep, ino, EPOLLIN, INO);
    /* UDP: u1 connected to u2 (datagrams waiting at a UDP socket are not saved). */
    int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ua = {.sin_family = AF_INET}, ub;
    ua.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ub = ua;
    socklen_t ulen = sizeof ua;
    check(bind(u1, (struct sockaddr *)&ua, sizeof ua) == 0);
    check(bind(u2, (struct sockaddr *)&ub, sizeof ub) == 0);
    check(getsockname(u1, (struct sockaddr *)&ua, &ulen) == 0);
    ulen = sizeof ub;
    check(getsockname(u2, (struct sockaddr *)&ub, &ulen) == 0);
    check(connect(u1, (struct sockaddr *)&ub, sizeof ub) == 0);
    add(ep, u2, EPOLLIN, UDP);
    /* A unix listener on a path. */
    struct sockaddr_un sa;
    socklen_t salen = unix_addr(&sa, sockpath);
    unlink(sockpath);
    int uls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    check(uls >= 0 && bind(uls, (struct sockaddr *)&sa, salen) == 0 && listen(uls, 4) == 0);
    add(ep, uls, EPOLLIN, ULS);
    /* A seqpacket pair holding "seq" with an eventfd (count 9) in flight, its sender's copy
     * closed. */
    int sq[2];
    check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0);
    int flying = eventfd(9, 0);
    char cb[CMSG_SPACE(sizeof(int))];
    memset(cb, 0, sizeof cb);
    struct iovec iov = {"seq", 3};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb,
                        .msg_controllen = sizeof cb};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &flying, sizeof(int));
    check(flying >= 0 && sendmsg(sq[0], &mh, 0) == 3);
    close(flying);
    add(ep, sq[1], EPOLLIN, SEQ);
    /* A POSIX message queue holding one message. */
    struct mq_attr qa = {.mq_maxmsg = 4, .mq_msgsize = 32};
    mqd_t mq = mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &qa);
    check(mq >= 0 && mq_send(mq, "mq-text", 7, 2) == 0);
    add(ep, mq, EPOLLIN, MQ);
    /* SysV: a segment with contents, a semaphore set, a message queue with a message. */
    int shm = shmget(0x6c6c0000 | me, 4096, IPC_CREAT | IPC_EXCL | 0640);
    check(shm >= 0);
    char *seg = shmat(shm, NULL, 0);
    check(seg != (void *)-1);
    strcpy(seg, "shm-data");
    int sem = semget(0x6c6d0000 | me, 2, IPC_CREAT | IPC_EXCL | 0640);
    unsigned short vals[2] = {5, 1};
    check(sem >= 0 && semctl(sem, 0, SETALL, (union semun){.array = vals}) == 0);
    struct sembuf up = {0, 1, IPC_NOWAIT};
    check(semop(sem, &up, 1) == 0); /* 6 1, and we operated last */
    int msq = msgget(0x6c6e0000 | me, IPC_CREAT | IPC_EXCL | 0640);
    struct msg qm = {.type = 3};
    strcpy(qm.text, "msg-text");
    check(msq >= 0 && msgsnd(msq, &qm, 8, IPC_NOWAIT) == 0);
    /* A POSIX named semaphore (a file in /dev/shm) at 3. */
    sem_t *ns = sem_open(name, O_CREAT | O_EXCL, 0600, 3);
    check(ns != SEM_FAILED);

    ready_then_wait_go();

    unsigned set = ready(ep);
    check(set & (1u << EFD)); /* count 3, edge not yet reported in this process */
    check(set & (1u << SFD) && set & (1u << SRV) && set & (1u << UNX));
    if (!(set & (1u << SEQ)) || !(set & (1u << MQ)))
        fprintf(stderr, "info: ready set %#x\n", set);
    check(set & (1u << SEQ) && set & (1u << MQ));
    check(!(set & (1u << CLI)) && !(set & (1u << LST)));
    check(!(set & (1u << INO)) && !(set & (1u << ULS)) && !(set & (1u << UDP)));
    uint64_t v;
    check(read(efd, &v, 8) == 8 && v == 3);
    struct signalfd_siginfo si;
    check(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1);
    char b[16];
    check(read(srv, b, sizeof b) == 6 && memcmp(b, "to-srv", 6) == 0);
    check(read(sv[0], b, sizeof b) == 6 && memcmp(b, "to-unx", 6) == 0);
    check(timerfd_gettime(tfd, &its) == 0 && its.it_interval.tv_nsec == 30000000);
    /* Other descriptors are still ready (level-triggered), so epoll_wait returns at once:
     * wait between looks until the 30 ms timer has expired (up to about 4 s). */
    int ticks = 0;
    for (int i = 0; i < 400 && !ticks; i++) {
        if (ready(ep) & (1u << TFD))
            ticks = read(tfd, &v, 8) == 8 && v >= 1;
        else
            usleep(10000);
    }
    check(ticks);
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    check(connect(c2, (struct sockaddr *)&a, sizeof a) == 0);
    check(ready(ep) & (1u << LST));
    check(write(srv, "back", 4) == 4 && (ready(ep) & (1u << CLI)));
    check(read(cli, b, sizeof b) == 4);

    /* UDP: both bound to their ports, u1 still connected to u2, reported by the epoll. */
    check(send(u1, "udp", 3, 0) == 3 && (ready(ep) & (1u << UDP)));
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    check(recvfrom(u2, b, sizeof b, MSG_DONTWAIT, (struct sockaddr *)&from, &flen) == 3);
    check(memcmp(b, "udp", 3) == 0 && from.sin_port == ua.sin_port);
    check(send(u1, "again", 5, 0) == 5 && recv(u2, b, sizeof b, 0) == 5);
    /* seqpacket: "seq" with the eventfd at 9, then nothing. */
    char cb2[CMSG_SPACE(sizeof(int))];
    struct msghdr rh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb2,
                        .msg_controllen = sizeof cb2};
    char sb[8];
    iov.iov_base = sb;
    iov.iov_len = sizeof sb;
    check(recvmsg(sq[1], &rh, MSG_DONTWAIT) == 3 && memcmp(sb, "seq", 3) == 0);
    c = CMSG_FIRSTHDR(&rh);
    check(c != NULL && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)));
    int got;
    memcpy(&got, CMSG_DATA(c), sizeof(int));
    check(read(got, &v, 8) == 8 && v == 9);
    check(recv(sq[1], sb, sizeof sb, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    /* POSIX message queue: its message, its attributes. */
    unsigned prio;
    char qb[32];
    check(mq_receive(mq, qb, sizeof qb, &prio) == 7 && memcmp(qb, "mq-text", 7) == 0 && prio == 2);
    check(mq_getattr(mq, &qa) == 0 && qa.mq_maxmsg == 4 && qa.mq_msgsize == 32 &&
          qa.mq_curmsgs == 0 && (qa.mq_flags & O_NONBLOCK));
    /* SysV: contents at the same address, values, the message. */
    struct shmid_ds sds;
    check(strcmp(seg, "shm-data") == 0 && shmget(0x6c6c0000 | me, 0, 0) >= 0);
    shm = shmget(0x6c6c0000 | me, 0, 0);
    check(shmctl(shm, IPC_STAT, &sds) == 0 && sds.shm_segsz == 4096 &&
          (sds.shm_perm.mode & 0777) == 0640 && sds.shm_nattch == 1);
    sem = semget(0x6c6d0000 | me, 0, 0);
    check(sem >= 0 && semctl(sem, 0, GETALL, (union semun){.array = vals}) == 0);
    check(vals[0] == 6 && vals[1] == 1);
    msq = msgget(0x6c6e0000 | me, 0);
    check(msq >= 0 && msgrcv(msq, &qm, sizeof qm.text, 3, IPC_NOWAIT) == 8);
    check(memcmp(qm.text, "msg-text", 8) == 0);
    /* The named semaphore at 3, the file of its name (a new sem_open shares it). */
    char semfile[80];
    snprintf(semfile, sizeof semfile, "/dev/shm/sem.%s", name + 1);
    check(mapped_as(ns, semfile));
    int sv_;
    check(sem_getvalue(ns, &sv_) == 0 && sv_ == 3 && sem_trywait(ns) == 0);
    sem_t *ns2 = sem_open(name, 0);
    check(ns2 != SEM_FAILED && sem_getvalue(ns2, &sv_) == 0 && sv_ == 2);
    check(sem_trywait(ns2) == 0 && sem_getvalue(ns, &sv_) == 0 && sv_ == 1);
    /* inotify: a change to the watched file is reported through the epoll, by its watch. */
    check(write(wf, "x", 1) == 1 && (ready(ep) & (1u << INO)));
    struct inotify_event ie[4];
    check(read(ino, ie, sizeof ie) >= (ssize_t)sizeof ie[0] && ie[0].wd == wd &&
          (ie[0].mask & IN_MODIFY));
    /* The unix listener: a new client is reported through the epoll and accepted. */
    int uc = socket(AF_UNIX, SOCK_STREAM, 0);
    check(uc >= 0 && connect(uc, (struct sockaddr *)&sa, salen) == 0);
    check((ready(ep) & (1u << ULS)) && accept(uls, NULL, NULL) >= 0);

    check(shmdt(seg) == 0 && shmctl(shm, IPC_RMID, NULL) == 0);
    check(semctl(sem, 0, IPC_RMID) == 0 && msgctl(msq, IPC_RMID, NULL) == 0);
    check(mq_unlink(name) == 0 && sem_unlink(name) == 0);
    unlink(watched);
    unlink(sockpath);
    pass();
}
