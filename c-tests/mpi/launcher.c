/* launcher.c - what an MPI launcher (Open MPI's mpirun, hydra's mpiexec) does with TCP, in
 * 150 lines and without MPI: it listens on a loopback port WITHOUT SO_REUSEADDR, its two
 * "ranks" (children) connect to it, and it exchanges numbered messages with them over the
 * accepted connections. On SIGTERM it closes the accepted connections FIRST and then waits for
 * the ranks (which leave when their connection ends), as mpirun does on `cr_checkpoint --term`:
 * the launcher's ends go through TIME_WAIT on the listener's port, which a restart must still be
 * able to bind (tests/mpi.rs `launcher_term`).
 *
 * After GO (in the restored job): 100 more checked round trips on each restored connection, a
 * third rank started now connects to the re-bound listener, 100 more with all three; PASS
 * launcher.
 * Run:   CR_TEST_GO=/path/to/go ./launcher
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "launcher"
#define RANKS 2

static volatile sig_atomic_t term;

static void fail(const char *what)
{
    printf("FAIL " NAME ": %s (errno %d %s)\n", what, errno, strerror(errno));
    fprintf(stderr, "FAIL " NAME ": %s (errno %d %s)\n", what, errno, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void on_term(int sig)
{
    (void)sig;
    term = 1;
}

/* All of len bytes, or 0 at the end of the connection (or an error, or a SIGTERM in the
 * launcher between messages). */
static int io_all(int fd, void *buf, size_t len, int writing)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = writing ? send(fd, (char *)buf + done, len - done, MSG_NOSIGNAL)
                            : recv(fd, (char *)buf + done, len - done, 0);
        if (n > 0)
            done += (size_t)n;
        else if (n < 0 && errno == EINTR && !(term && done == 0))
            continue;
        else
            return 0;
    }
    return 1;
}

/* A rank: answers every number n with 3n + id until its connection ends. SIGTERM is noted
 * and ignored: it leaves when the launcher closes its end. It first closes the launcher's
 * descriptors it inherited (the listener, the earlier ranks' connections). */
static void rank(uint16_t port, int id, const int *inherited, int ninherited)
{
    for (int i = 0; i < ninherited; i++)
        close(inherited[i]);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0)
        fail("rank connect");
    uint64_t n;
    while (io_all(s, &n, sizeof n, 0)) {
        n = 3 * n + (uint64_t)id;
        if (!io_all(s, &n, sizeof n, 1))
            break;
    }
    _exit(0);
}

/* One checked round trip with the rank on fd (0: SIGTERM came, or the connection ended). */
static int round_trip(int fd, uint64_t n, int id)
{
    uint64_t back;
    if (!io_all(fd, &n, sizeof n, 1) || !io_all(fd, &back, sizeof back, 0))
        return 0;
    if (back != 3 * n + (uint64_t)id)
        fail("a rank answered a wrong number");
    return 1;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO is not set");
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: reads see EINTR */
    sigaction(SIGTERM, &sa, NULL);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 8) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) != 0)
        fail("listen on loopback");
    uint16_t port = ntohs(a.sin_port);
    pid_t pids[RANKS + 1];
    int conns[RANKS + 2]; /* the listener last, for the ranks to close */
    for (int i = 0; i < RANKS; i++) {
        conns[i] = l;
        if ((pids[i] = fork()) == 0)
            rank(port, i + 1, conns, i + 1);
        if (pids[i] < 0 || (conns[i] = accept(l, NULL, NULL)) < 0)
            fail("start a rank");
    }
    uint64_t n = 0;
    int said_ready = 0;
    while (!term && access(go, F_OK) != 0) {
        for (int i = 0; i < RANKS && !term; i++)
            if (!round_trip(conns[i], ++n, i + 1) && !term)
                fail("a rank's connection ended");
        if (n >= 100 && !said_ready) {
            printf("READY\n");
            fflush(stdout);
            said_ready = 1;
        }
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    if (term) {
        /* mpirun's order: our ends first, then wait for the ranks. */
        for (int i = 0; i < RANKS; i++)
            close(conns[i]);
        for (int i = 0; i < RANKS; i++)
            waitpid(pids[i], NULL, 0);
        return 143;
    }
    for (int k = 0; k < 100; k++)
        for (int i = 0; i < RANKS; i++)
            if (!round_trip(conns[i], ++n, i + 1))
                fail("a restored connection ended");
    conns[RANKS] = l;
    if ((pids[RANKS] = fork()) == 0)
        rank(port, RANKS + 1, conns, RANKS + 1);
    if (pids[RANKS] < 0 || (conns[RANKS] = accept(l, NULL, NULL)) < 0)
        fail("a rank started after the restart cannot connect");
    for (int k = 0; k < 100; k++)
        for (int i = 0; i <= RANKS; i++)
            if (!round_trip(conns[i], ++n, i + 1))
                fail("a connection ended after the restart");
    for (int i = 0; i <= RANKS; i++) {
        int st;
        close(conns[i]);
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("a rank did not end cleanly");
    }
    printf("PASS " NAME "\n");
    fflush(stdout);
    return 0;
}
