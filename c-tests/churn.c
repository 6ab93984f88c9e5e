/* churn: a program that forks and creates threads all the time, for checkpoints that land while
 * a child is being created or is exiting, or a thread is being created or is exiting.
 *   CR_TEST_GO=PATH churn
 * The main thread forks children that exit at once with status 7 and reaps each (any other
 * status is a FAIL); a second thread creates and joins short-lived threads that add 1 to a
 * counter (the count must equal the joins). Prints READY after the first of each, runs until
 * the GO file exists, then checks and prints PASS churn. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH churn\n");
        return 2;
    }
    pthread_t churner;
    if (pthread_create(&churner, NULL, thread_churner, NULL) != 0) return 2;
    long forks = 0;
    int ready = 0;
    for (;;) {
        pid_t p = fork();
        if (p < 0) {
            printf("FAIL churn: fork\n");
            return 1;
        }
        if (p == 0) _exit(7);
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
    printf("PASS churn (%ld forks, %ld threads)\n", forks, joined);
    return 0;
}
