/* churn: a program that forks and creates threads all the time, for checkpoints that land while
 * a child is being created or is exiting, or a thread is being created or is exiting.
 *   CR_TEST_GO=PATH churn [exec]
 * The main thread forks children that exit at once with status 7 (with `exec`, each child
 * first runs this program again, `churn --exit7`, which exits 7 at once, as a shell script's
 * children exec their commands; with CR_TEST_VFORK=1 too, it makes them with vfork(), whose
 * child shares its memory and execs at once) and reaps each (any other status, e.g. a child killed by a
 * signal while it exec'd, is a FAIL); a second thread creates and joins short-lived threads that add 1 to a
 * counter (the count must equal the joins). Prints READY after the first of each, runs until
 * the GO file exists, then checks and prints PASS churn. With CR_TEST_CHURN_FDS=1 each child
 * first looks whether it holds a descriptor of a path with "/img/" in it (a checkpoint's image,
 * inherited from the parent's agent) and exits 9 if so. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_long ran;
static atomic_int stop;
static long joined;
static int thread_fail;

static void *short_lived(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return NULL;
}

static void *thread_churner(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) != 0 || pthread_join(t, NULL) != 0) {
            thread_fail = 1;
            break;
        }
        joined++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--exit7") == 0) return 7;
    int exec_children = argc > 1 && strcmp(argv[1], "exec") == 0;
    const char *v = getenv("CR_TEST_VFORK");
    int use_vfork = exec_children && v && strcmp(v, "1") == 0;
    /* CR_TEST_EXEC_DELAY_US: each forked child waits up to that long before its exec. */
    const char *d = getenv("CR_TEST_EXEC_DELAY_US");
    int delay = d ? atoi(d) : 0;
    char *child_args[] = {argv[0], "--exit7", NULL};
    /* CR_TEST_CHURN_FDS=1: each child checks it holds no checkpoint image (exit 9 if so). */
    const char *cf = getenv("CR_TEST_CHURN_FDS");
    int check_fds = cf && strcmp(cf, "1") == 0;
    /* CR_TEST_IGNORE_URG=1: SIGURG ignored (inherited by the children, kept across exec): the
     * agent then binds its control socket at once, raising signal 64 on a connection. */
    const char *u = getenv("CR_TEST_IGNORE_URG");
    if (u && strcmp(u, "1") == 0) signal(SIGURG, SIG_IGN);
    const char *go = getenv("CR_TEST_GO");
    if (!go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH churn [exec]\n");
        return 2;
    }
    pthread_t churner;
    if (pthread_create(&churner, NULL, thread_churner, NULL) != 0) return 2;
    long forks = 0;
    int ready = 0;
    for (;;) {
        pid_t p = use_vfork ? vfork() : fork();
        if (p < 0) {
            printf("FAIL churn: fork\n");
            return 1;
        }
        if (p == 0) {
            if (check_fds) {
                /* A child must not hold a checkpoint's image (the parent's agent receives it
                 * from cr_checkpoint while we fork): exit 9 if a descriptor is one. */
                char link[64], target[512];
                for (int fd = 3; fd < 1024; fd++) {
                    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
                    ssize_t n = readlink(link, target, sizeof target - 1);
                    if (n <= 0) continue;
                    target[n] = 0;
                    if (strstr(target, "/img/")) _exit(9);
                }
            }
            if (exec_children) {
                if (delay > 0 && !use_vfork) usleep((unsigned)(forks * 7919 % delay));
                execv("/proc/self/exe", child_args);
            }
            _exit(7);
        }
        int st;
        pid_t r;
        do {
            r = waitpid(p, &st, 0);
        } while (r < 0);
        if (r != p || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
            printf("FAIL churn: child %d ended with status %#x (waitpid %d)\n", p, st, r);
            return 1;
        }
        forks++;
        if (!ready && atomic_load(&ran) > 0) {
            printf("READY\n");
            fflush(stdout);
            ready = 1;
        }
        if (ready && forks % 16 == 0 && access(go, F_OK) == 0) break;
    }
    atomic_store(&stop, 1);
    pthread_join(churner, NULL);
    if (thread_fail || atomic_load(&ran) != joined) {
        printf("FAIL churn: %ld threads ran, %ld joined, failure %d\n", atomic_load(&ran), joined,
               thread_fail);
        return 1;
    }
    printf("PASS churn (%ld %s%s, %ld threads)\n", forks, use_vfork ? "vforks" : "forks",
           exec_children ? " with exec" : "", joined);
    return 0;
}
