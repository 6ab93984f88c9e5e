/* api_driver: a BLCR "driver" program that checkpoints and restarts OTHER processes through the
 * API and never calls cr_init() (BLCR's request calls only opened the control device).
 *   api_driver checkpoint PID IMAGE SIGNAL   cr_request_checkpoint(TREE scope of PID, cr_signal =
 *                                            SIGNAL) into IMAGE, cr_poll_checkpoint until done
 *   api_driver restart PATH [FLAGS]          open PATH (an image file, or a directory of images),
 *                                            cr_request_restart (cr_flags = FLAGS, default BLCR's
 *                                            CR_RSTRT_RESTORE_PID), cr_poll_restart -> pid, which
 *                                            must be our child: waitpid it and report its status
 *   api_driver restart-fails PATH FLAGS ERRNO
 *                                            the restart must fail with ERRNO: at once from
 *                                            cr_request_restart, or, with CR_RSTRT_ASYNC_ERR in
 *                                            FLAGS, from cr_poll_restart (CR_POLL_RSTRT_ERR_POST)
 *                                            after the request itself succeeded
 * Output (stdout, one line each): "checkpointed PID", "restored PID", "job exit STATUS",
 * "failed as expected", or
 * "FAIL api_driver: ..." (exit 1). The restored programs' own output goes to our stdout too. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libcr.h>

static void fail(const char *what, int e)
{
    printf("FAIL api_driver: %s: %s (errno %d)\n", what, cr_strerror(e), e);
    fflush(stdout);
    exit(1);
}

static int checkpoint(pid_t pid, const char *image, int sig)
{
    cr_checkpoint_args_t a;
    cr_checkpoint_handle_t h;
    int fd = open(image, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) fail("open image", errno);
    cr_initialize_checkpoint_args_t(&a);
    a.cr_scope = CR_SCOPE_TREE;
    a.cr_target = pid;
    a.cr_fd = fd;
    a.cr_signal = sig;
    if (cr_request_checkpoint(&a, &h) != 0) fail("cr_request_checkpoint", errno);
    int rc;
    do {
        rc = cr_poll_checkpoint(&h, NULL);
    } while (rc < 0 && errno == EINTR);
    if (rc <= 0) fail("cr_poll_checkpoint", errno);
    if (fsync(fd) != 0 || close(fd) != 0) fail("close image", errno);
    printf("checkpointed %d\n", (int)pid);
    return 0;
}

static int restart(const char *path, unsigned flags)
{
    cr_restart_args_t a;
    cr_restart_handle_t h;
    int fd = open(path, O_RDONLY);
    if (fd < 0) fail("open image", errno);
    cr_initialize_restart_args_t(&a);
    a.cr_fd = fd;
    a.cr_flags = flags;
    if (cr_request_restart(&a, &h) != 0) fail("cr_request_restart", errno);
    char *msg = NULL;
    int pid;
    do {
        pid = cr_poll_restart_msg(&h, NULL, &msg);
    } while (pid < 0 && errno == EINTR);
    if (pid <= 0) {
        printf("FAIL api_driver: restart message: %s\n", msg ? msg : "(none)");
        fail("cr_poll_restart", errno);
    }
    free(msg);
    close(fd);
    printf("restored %d\n", pid);
    fflush(stdout);
    int st;
    pid_t w;
    do {
        w = waitpid(pid, &st, 0);
    } while (w < 0 && errno == EINTR);
    if (w != pid) fail("waitpid of the restored process (not our child?)", errno);
    printf("job exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    return 0;
}

static int restart_fails(const char *path, unsigned flags, int want)
{
    cr_restart_args_t a;
    cr_restart_handle_t h;
    int fd = open(path, O_RDONLY);
    if (fd < 0) fail("open image", errno);
    cr_initialize_restart_args_t(&a);
    a.cr_fd = fd;
    a.cr_flags = flags;
    int rc = cr_request_restart(&a, &h);
    if (!(flags & CR_RSTRT_ASYNC_ERR)) {
        if (rc != -1 || errno != want) fail("cr_request_restart should have failed at once", rc ? errno : 0);
    } else {
        if (rc != 0) fail("cr_request_restart with CR_RSTRT_ASYNC_ERR should defer its error", errno);
        rc = cr_poll_restart(&h, NULL);
        if (rc != CR_POLL_RSTRT_ERR_POST || errno != want) fail("cr_poll_restart should report the error", errno);
    }
    printf("failed as expected\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && strcmp(argv[1], "checkpoint") == 0)
        return checkpoint(atoi(argv[2]), argv[3], atoi(argv[4]));
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "restart") == 0)
        return restart(argv[2], argc == 4 ? (unsigned)strtoul(argv[3], NULL, 0) : CR_RSTRT_RESTORE_PID);
    if (argc == 5 && strcmp(argv[1], "restart-fails") == 0)
        return restart_fails(argv[2], (unsigned)strtoul(argv[3], NULL, 0), atoi(argv[4]));
    fprintf(stderr, "usage: api_driver checkpoint PID IMAGE SIGNAL | restart PATH [FLAGS] | "
                    "restart-fails PATH FLAGS ERRNO\n");
    return 2;
}
