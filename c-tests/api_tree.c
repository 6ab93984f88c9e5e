/*
 * api_tree.c - cr_request_checkpoint with CR_SCOPE_TREE from inside the tree.
 *
 * Build: gcc -O2 -Wall -o api_tree api_tree.c -lcr
 * Run:   api_tree IMAGE
 *
 * The process forks a child (which waits for a word on a pipe), then asks for a checkpoint of
 * its own tree into IMAGE and polls it: the image must hold both processes (the agent adds the
 * child to the request). Then, in the original (poll returned 1) as in a process restarted from
 * IMAGE (poll fails with CR_ERESTARTED), it tells the child to finish and collects it with
 * waitpid (exit 0): `PASS api_tree checkpointed` / `PASS api_tree restarted`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libcr.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "api_tree"
#include "fail.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        fail("usage: api_tree IMAGE");
    if (cr_init() < 0)
        fail("cr_init");
    int p[2];
    if (pipe(p) != 0)
        fail("pipe");
    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        close(p[1]);
        char c;
        _exit(read(p[0], &c, 1) == 1 && c == 'x' ? 0 : 3);
    }
    close(p[0]);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        fail("open the image");
    cr_checkpoint_args_t a;
    cr_checkpoint_handle_t h;
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_TREE;
    a.cr_target = 0;
    a.cr_fd = fd;
    if (cr_request_checkpoint(&a, &h) != 0)
        failf("cr_request_checkpoint: errno %d", errno);
    int rc;
    do
        rc = cr_poll_checkpoint(&h, NULL);
    while (rc < 0 && errno == EINTR);
    const char *how;
    if (rc == 1)
        how = "checkpointed";
    else if (rc == CR_POLL_CHKPT_ERR_POST && errno == CR_ERESTARTED)
        how = "restarted";
    else
        failf("cr_poll_checkpoint returned %d (errno %d)", rc, errno);
    if (write(p[1], "x", 1) != 1)
        fail("write to the child");
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failf("the child (%d) is not ours any more, or ended with status %#x", (int)child, st);
    printf("PASS %s %s\n", NAME, how);
    fflush(stdout);
    return 0;
}
