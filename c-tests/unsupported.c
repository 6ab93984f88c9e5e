/*
 * unsupported.c - resources BLCR did not restore either: the checkpoint must name them in a
 * warning (never a silent surprise at restart), and the rest of the program must come back.
 *
 * Build: gcc -O2 -Wall -o unsupported unsupported.c
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run ./unsupported
 *
 * Before READY: two netlink sockets at fds 40 and 41, a pidfd (of itself) at fd 42, and a 64 KiB SysV shared
 * memory segment (IPC_PRIVATE, removed with IPC_RMID once attached) filled with a pattern.
 * After GO: the segment's contents are still there (a SysV segment again, since issue 12) and
 * writable. Prints `PASS unsupported`. (The test checks the checkpoint's warnings.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <unistd.h>

#define NAME "unsupported"
#include "fail.h"

#define SEG (64 << 10)

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO is not set");
    int sv[2] = {socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)};
    if (sv[0] < 0 || sv[1] < 0 || dup2(sv[0], 40) != 40 || dup2(sv[1], 41) != 41)
        fail("netlink sockets at 40/41");
    close(sv[0]);
    close(sv[1]);
    int efd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (efd < 0 || dup2(efd, 42) != 42)
        fail("pidfd at 42");
    close(efd);
    int id = shmget(IPC_PRIVATE, SEG, IPC_CREAT | 0600);
    if (id < 0)
        failf("shmget: %s", strerror(errno));
    unsigned char *seg = shmat(id, NULL, 0);
    if (seg == (void *)-1)
        failf("shmat: %s", strerror(errno));
    shmctl(id, IPC_RMID, NULL); /* gone once we detach or exit: nothing left behind */
    for (size_t i = 0; i < SEG; i++)
        seg[i] = (unsigned char)(i * 7 + 3);

    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(2000);

    for (size_t i = 0; i < SEG; i++)
        if (seg[i] != (unsigned char)(i * 7 + 3))
            failf("SysV segment byte %zu is %u after restart", i, seg[i]);
    seg[0] = 0x55;
    if (seg[0] != 0x55)
        fail("the SysV segment's memory is not writable");
    printf("PASS %s\n", NAME);
    fflush(stdout);
    return 0;
}
