/* msg00.c - a SysV message queue survives with its queued messages: a keyed queue (mode 0640,
 * capacity lowered to 4000 bytes) gets six messages of types 1, 2, 3 and 7 (one empty, one of
 * 1000 binary bytes with NULs), then one of type 3 is received (so this process operated on it
 * last: the rule for saving a queue).  After GO: msgget(key) finds it with its mode, capacity,
 * five messages and their byte count; receiving by type gives each type's messages in their
 * order with their exact text, then the queue is empty (ENOMSG); send and receive still work.
 * PASS msg00. */
/* cr-test: cflags= */
#define NAME "msg00"
#include "kobj.h"
#include <sys/ipc.h>
#include <sys/msg.h>

struct m {
    long type;
    char text[1024];
};

static void put(int id, long type, const void *text, size_t len)
{
    struct m m = {.type = type};
    memcpy(m.text, text, len);
    check(msgsnd(id, &m, len, IPC_NOWAIT) == 0);
}

/* Receives the next message of `type` (0: any) and checks its type, length and text. */
static void get(int id, long type, long want_type, const void *text, size_t len)
{
    struct m m;
    ssize_t n = msgrcv(id, &m, sizeof m.text, type, IPC_NOWAIT);
    if (n != (ssize_t)len || m.type != want_type || memcmp(m.text, text, len) != 0)
        printf("got type %ld, %zd bytes; wanted type %ld, %zu bytes\n", m.type, n, want_type,
               len);
    check(n == (ssize_t)len && m.type == want_type && memcmp(m.text, text, len) == 0);
}

int main(void)
{
    static char big[1000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7 % 251); /* NULs included */
    key_t key = 0x6c6b0000 | (getpid() & 0xffff);
    int id = msgget(key, IPC_CREAT | IPC_EXCL | 0640);
    check(id >= 0);
    struct msqid_ds ds;
    check(msgctl(id, IPC_STAT, &ds) == 0);
    ds.msg_qbytes = 4000;
    check(msgctl(id, IPC_SET, &ds) == 0);
    put(id, 2, "two-a", 5);
    put(id, 1, "one", 3);
    put(id, 3, "three-gone", 10);
    put(id, 7, big, sizeof big);
    put(id, 2, "two-b", 5);
    put(id, 1, "", 0);
    get(id, 3, 3, "three-gone", 10);

    ready_then_wait_go();

    int id2 = msgget(key, 0);
    check(id2 >= 0);
    check(msgctl(id2, IPC_STAT, &ds) == 0);
    check((ds.msg_perm.mode & 0777) == 0640 && ds.msg_perm.uid == getuid());
    check(ds.msg_qbytes == 4000);
    check(ds.msg_qnum == 5 && ds.__msg_cbytes == 5 + 3 + 1000 + 5 + 0);
    get(id2, 2, 2, "two-a", 5);
    get(id2, 2, 2, "two-b", 5);
    get(id2, 0, 1, "one", 3);
    get(id2, -6, 1, "", 0);
    get(id2, 0, 7, big, sizeof big);
    struct m m;
    check(msgrcv(id2, &m, sizeof m.text, 0, IPC_NOWAIT) == -1 && errno == ENOMSG);
    put(id2, 9, "after", 5);
    get(id2, 9, 9, "after", 5);
    check(msgctl(id2, IPC_RMID, NULL) == 0);
    pass();
}
