/* inotify00.c - inotify watches survive: a directory watched for IN_CREATE|IN_DELETE, a file
 * watched IN_MODIFY|IN_ONESHOT and a subdirectory watched IN_CREATE, on a non-blocking
 * instance, with gaps in the watch numbers (watch 1 and a middle one removed before READY).
 * After GO: adding the same paths again gives back the same watch descriptors (the kernel
 * returns the existing watch); creating, modifying and deleting give events on the right
 * watches with the right names; the one-shot watch fires once then IN_IGNORED; a dup shares
 * the instance.  PASS inotify00. */
/* cr-test: cflags= */
#define NAME "inotify00"
#include "kobj.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/stat.h>

static char dir[64], file[96], sub[96], gone[96], made[96], made2[128];

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

int main(void)
{
    strcpy(dir, "/tmp/inotify00.XXXXXX");
    check(mkdtemp(dir) != NULL);
    snprintf(file, sizeof file, "%s/file", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    snprintf(gone, sizeof gone, "%s/gone", dir);
    int f = open(file, O_CREAT | O_WRONLY, 0644);
    check(f >= 0);
    close(f);
    check(mkdir(sub, 0755) == 0 && mkdir(gone, 0755) == 0);

    int in = inotify_init1(IN_NONBLOCK);
    check(in >= 0);
    int w1 = inotify_add_watch(in, "/tmp", IN_CREATE);
    int wd = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE);
    int wg = inotify_add_watch(in, gone, IN_CREATE);
    int wf = inotify_add_watch(in, file, IN_MODIFY | IN_ONESHOT);
    int ws = inotify_add_watch(in, sub, IN_CREATE);
    check(w1 == 1 && wd == 2 && wg == 3 && wf == 4 && ws == 5);
    check(inotify_rm_watch(in, w1) == 0 && inotify_rm_watch(in, wg) == 0);
    expect(in, w1, IN_IGNORED, "");
    expect(in, wg, IN_IGNORED, "");
    int dupd = dup(in);
    check(dupd >= 0);
    printf("DIR %s\n", dir); /* tests/kinds.rs removes sub/ to see the warning */

    ready_then_wait_go();

    check(fcntl(in, F_GETFL) & O_NONBLOCK);
    char buf[256];
    check(read(in, buf, sizeof buf) == -1 && errno == EAGAIN);
    check(inotify_add_watch(in, dir, IN_CREATE | IN_DELETE) == wd);
    check(inotify_add_watch(dupd, sub, IN_CREATE) == ws);
    snprintf(made, sizeof made, "%s/made", dir);
    f = open(made, O_CREAT | O_WRONLY, 0644);
    check(f >= 0);
    close(f);
    expect(in, wd, IN_CREATE, "made");
    f = open(file, O_WRONLY | O_APPEND);
    check(f >= 0 && write(f, "x", 1) == 1);
    close(f);
    expect(dupd, wf, IN_MODIFY, "");
    expect(in, wf, IN_IGNORED, "");
    snprintf(made2, sizeof made2, "%s/inner", sub);
    check(mkdir(made2, 0755) == 0);
    expect(in, ws, IN_CREATE, "inner");
    check(unlink(made) == 0);
    expect(in, wd, IN_DELETE, "made");
    check(read(in, buf, sizeof buf) == -1 && errno == EAGAIN);

    close(in);
    close(dupd);
    rmdir(made2);
    rmdir(sub);
    rmdir(gone);
    unlink(file);
    rmdir(dir);
    pass();
}
