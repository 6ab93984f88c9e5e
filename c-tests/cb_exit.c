/*
 * cb_exit.c - a program linked with libcr whose checkpoint callback calls exit() (BLCR's
 * cb_exit): the process ends while its callbacks run, and cr_checkpoint must say so with
 * ESRCH (exit 3), as BLCR did.
 *
 * Build: gcc -O2 -Wall -I include -o cb_exit cb_exit.c -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR
 * Run:   cb_exit signal|thread
 *
 * cr_init(), one callback of the given context that prints "EXITING" on stderr and calls
 * exit(7) instead of cr_checkpoint(); READY; then 1 ms sleeps until GO (PASS cb_exit: no
 * checkpoint came).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libcr.h>

#define NAME "cb_exit"
#include "fail.h"

static int callback(void *arg)
{
    (void)arg;
    static const char msg[] = "EXITING\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0)
        _exit(8);
    exit(7);
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc != 2 || (strcmp(argv[1], "signal") && strcmp(argv[1], "thread")) || !go)
        fail("usage: CR_TEST_GO=... cb_exit signal|thread");
    if (cr_init() < 0)
        fail("cr_init failed");
    int ctx = argv[1][0] == 's' ? CR_SIGNAL_CONTEXT : CR_THREAD_CONTEXT;
    if (cr_register_callback(callback, NULL, ctx) < 0)
        fail("cr_register_callback failed");
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    printf("PASS cb_exit\n");
    return 0;
}
