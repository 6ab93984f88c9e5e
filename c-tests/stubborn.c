/* stubborn.c: a thread that blocks every signal behind libcr's back (a raw rt_sigprocmask,
 * which the agent cannot see) and spins. A checkpoint cannot stop it: cr_checkpoint must fail
 * with a message naming the thread, write nothing, and leave the program running normally.
 * Protocol: READY, then work until $CR_TEST_GO exists, then verify and print PASS stubborn.
 * Build: gcc -O2 -Wall -pthread -o stubborn stubborn.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile int stop;
static volatile long spins, ticks;

static void *spinner(void *arg) {
    (void)arg;
    unsigned long all = ~0UL;
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, 8); /* raw: bypasses the agent */
    while (!stop)
        spins++;
    return NULL;
}

int main(void) {
    const char *go = getenv("CR_TEST_GO");
    if (!go) {
        printf("FAIL stubborn: CR_TEST_GO not set\n");
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, spinner, NULL) != 0) {
        printf("FAIL stubborn: pthread_create\n");
        return 1;
    }
    while (spins == 0)
        usleep(100);
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0) {
        ticks++;
        usleep(1000);
    }
    /* The spinner must advance again; on a loaded machine it may wait tens of milliseconds
     * for a CPU, so allow it up to 5 s (a stopped thread never advances). */
    long before = spins;
    int waited_ms = 0;
    while (spins == before && waited_ms < 5000) {
        usleep(1000);
        waited_ms++;
    }
    if (spins == before) {
        printf("FAIL stubborn: the spinning thread stopped\n");
        return 1;
    }
    stop = 1;
    pthread_join(t, NULL);
    if (ticks == 0) {
        printf("FAIL stubborn: main thread made no progress\n");
        return 1;
    }
    printf("PASS stubborn\n");
    return 0;
}
