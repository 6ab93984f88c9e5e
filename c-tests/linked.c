/*
 * linked.c - like single.c (16 MiB big buffer), but linked against libcr
 * directly instead of being started under cr_run: main() calls cr_init()
 * first (must return >= 0).  The body is single.c, included below.
 *
 * Build (from the repository root, LIBDIR = directory holding libcr.so/.a):
 *   dynamic: gcc -O2 -I include -o linked linked.c -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR
 *   static archive:
 *            gcc -O2 -I include -o linked_static linked.c $LIBDIR/libcr.a \
 *                -lgcc_s -lutil -lrt -lpthread -lm -ldl
 *   (pass the path of linked.c, e.g. c-tests/linked.c; single.c must sit next
 *   to it.)  Compile-only check without the library: gcc -DCR_STUB ...
 * Run:   CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x ./linked   (no cr_run)
 * Prints "PASS linked" on success.
 */
#ifdef CR_STUB
static int cr_init(void) { return 0; }
#else
#include "libcr.h"
#endif
#include <stdio.h>
#include <stdlib.h>

#define TEST_NAME "linked"
#define BIG_MB 16
#define PRE_MAIN_HOOK()                                                  \
    do {                                                                 \
        int rc_ = cr_init();                                             \
        if (rc_ < 0) {                                                   \
            printf("FAIL linked: cr_init() returned %d\n", rc_);         \
            fflush(stdout);                                              \
            fprintf(stderr, "FAIL linked: cr_init() returned %d\n", rc_); \
            exit(1);                                                     \
        }                                                                \
    } while (0)

#include "single.c"
