/*
 * pidns_fork.c - a fork child its parent moved into a new pid namespace.
 *
 * Build: gcc -O2 -Wall -o pidns_fork pidns_fork.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./pidns_fork
 *
 * The parent calls unshare(CLONE_NEWPID) (with CLONE_NEWUSER and a one-id map when it is not
 * privileged), then forks without exec: the child is pid 1 of the new namespace. The child
 * prints "child pid N" and READY, waits (1 ms sleeps) for the GO file, prints PASS pidns_fork
 * and exits; the parent exits with the child's status. Where no namespace can be made it
 * prints "NOPIDNS reason" and READY, then waits for GO like the child. The agent in the child
 * must bind its control socket for the namespace it is in (issue 11: a fork child otherwise
 * reuses its parent's namespace identity).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void wait_go(void)
{
    const char *go = getenv("CR_TEST_GO");
    struct timespec ms = {0, 1000000};
    while (go && access(go, F_OK) != 0)
        nanosleep(&ms, NULL);
}

int main(void)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWPID) != 0) {
        int first = errno;
        char map[64];
        if (unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0) {
            printf("NOPIDNS unshare: %s / %s\nREADY\n", strerror(first), strerror(errno));
            fflush(stdout);
            wait_go();
            return 0;
        }
        snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
        write_file("/proc/self/setgroups", "deny");
        if (write_file("/proc/self/uid_map", map) != 0) {
            printf("FAIL pidns_fork: uid_map: %s\n", strerror(errno));
            return 1;
        }
        snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
        if (write_file("/proc/self/gid_map", map) != 0) {
            printf("FAIL pidns_fork: gid_map: %s\n", strerror(errno));
            return 1;
        }
    }
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) {
        printf("FAIL pidns_fork: fork: %s\n", strerror(errno));
        return 1;
    }
    if (p == 0) {
        printf("child pid %d\nREADY\n", (int)getpid());
        fflush(stdout);
        wait_go();
        printf("PASS pidns_fork\n");
        fflush(stdout);
        _exit(0);
    }
    int st;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st))
        return 1;
    return WEXITSTATUS(st);
}
