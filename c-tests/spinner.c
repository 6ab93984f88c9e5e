/*
 * spinner.c - minimal target for bad-input / failed-checkpoint tests.
 *
 * Build: gcc -O2 -Wall -o spinner spinner.c
 * Run:   CR_TEST_GO=/path/to/go cr_run ./spinner
 *
 * Prints READY, then sleeps in 1 ms steps until the GO file exists, then
 * prints "PASS spinner" and exits 0.  It verifies nothing except that it is
 * still alive and responsive (used to check that a target survives
 * checkpoint attempts that fail).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go) {
        printf("FAIL spinner: CR_TEST_GO not set\n");
        fflush(stdout);
        fprintf(stderr, "FAIL spinner: CR_TEST_GO not set\n");
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    while (access(go, F_OK) != 0)
        usleep(1000);
    printf("PASS spinner\n");
    fflush(stdout);
    return 0;
}
