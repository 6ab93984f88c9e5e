/* inotify01.c - inotify watches come back by their path: in its own directory (its working
 * directory), watches added by relative path on ".", "file" and "sub", and one event left queued
 * unread (a file "queued" created: 32 bytes, which the checkpoint says are lost).  tests/kinds.rs
 * also copies the directory elsewhere, removes the original and restarts with --relocate: the
 * watches must follow the paths (new inodes).  After GO: nothing to read (the queued event is
 * lost, as the checkpoint warned); creating "made", appending to "file" and making "sub/inner"
 * give events on the right watches with the right names.  PASS inotify01. */
/* cr-test: cflags= */
#define NAME "inotify01"
#include "kobj.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/stat.h>

/* Reads one event (waiting up to 5 s); checks its watch, mask bit and name. */
static void expect(int fd, int wd, uint32_t bit, const char *name)
{
    static char buf[4096] __attribute__((aligned(8)));
    static int have, at;
    if (at >= have) {
        for (int i = 0; i < 5000; i++) {
            have = read(fd, buf, sizeof buf);
            if (have > 0)
                break;
            check(errno == EAGAIN);
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        check(have > 0);
        at = 0;
    }
    struct inotify_event *e = (struct inotify_event *)(buf + at);
    at += sizeof *e + e->len;
    if (e->wd != wd || !(e->mask & bit) || strcmp(name, e->len ? e->name : "") != 0) {
        printf("event wd %d mask %x name '%s', wanted wd %d bit %x '%s'\n", e->wd, e->mask,
               e->len ? e->name : "", wd, bit, name);
        fail("unexpected event");
    }
}

static void touch(const char *path)
{
    int f = open(path, O_CREAT | O_WRONLY, 0644);
    check(f >= 0);
    close(f);
}

int main(void)
{
    char dir[] = "/tmp/inotify01.XXXXXX";
    check(mkdtemp(dir) != NULL);
    check(chdir(dir) == 0);
    touch("file");
    check(mkdir("sub", 0755) == 0);
    int in = inotify_init1(IN_NONBLOCK);
    check(in >= 0);
    int wd = inotify_add_watch(in, ".", IN_CREATE | IN_DELETE);
    int wf = inotify_add_watch(in, "file", IN_MODIFY);
    int ws = inotify_add_watch(in, "sub", IN_CREATE);
    check(wd == 1 && wf == 2 && ws == 3);
    touch("queued"); /* its IN_CREATE stays queued */
    printf("DIR %s\n", dir);

    ready_then_wait_go();

    char buf[256];
    check(read(in, buf, sizeof buf) == -1 && errno == EAGAIN);
    touch("made");
    expect(in, wd, IN_CREATE, "made");
    int f = open("file", O_WRONLY | O_APPEND);
    check(f >= 0 && write(f, "x", 1) == 1);
    close(f);
    expect(in, wf, IN_MODIFY, "");
    check(mkdir("sub/inner", 0755) == 0);
    expect(in, ws, IN_CREATE, "inner");
    check(read(in, buf, sizeof buf) == -1 && errno == EAGAIN);

    close(in);
    char here[256];
    check(getcwd(here, sizeof here) != NULL);
    rmdir("sub/inner");
    rmdir("sub");
    unlink("file");
    unlink("made");
    unlink("queued");
    check(chdir("/") == 0);
    rmdir(here);
    pass();
}
