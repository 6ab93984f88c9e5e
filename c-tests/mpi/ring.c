/*
 * mpi/ring.c - an MPI job that checks its own results, for checkpoints of whole mpirun jobs
 * (tests/mpi.rs, issue 16).
 *
 * Build: mpicc -O2 -Wall -o ring ring.c (Open MPI's or MPICH's mpicc)
 * Run:   CR_TEST_GO=/path/to/go cr_run mpirun -np 4 ./ring
 *
 * Every rank keeps the state of all ranks as it must be (a 64-bit value per rank, advanced by
 * a hash each iteration), so every message is checked when it arrives. One iteration: each
 * rank sends a buffer derived from its state to its right neighbour and receives its left
 * neighbour's (non-blocking, sizes cycling from 8 bytes to 256 KiB: eager and rendezvous
 * protocols, shared memory and cross-memory attach), checks it word by word, mixes it into its
 * state; then an MPI_Allreduce of the states (sum) and an MPI_Bcast from a rotating root, both
 * checked. Rank 0 looks for the GO file each iteration; its answer is part of the allreduce, so
 * all ranks stop after the same iteration. Rank 0 prints READY after 20 iterations and
 * "info iter N" on stderr every 200; after GO each rank checks its final state against the
 * expected one and rank 0 prints "PASS ring N" (N iterations, ranks). Any mismatch: "FAIL ring:
 * ..." on stdout and stderr, MPI_Abort.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RANKS 64
#define MAX_WORDS (256 * 1024 / 8)

static int rank, size;

static void fail(const char *what, long iter)
{
    printf("FAIL ring: rank %d iteration %ld: %s\n", rank, iter, what);
    fflush(stdout);
    fprintf(stderr, "FAIL ring: rank %d iteration %ld: %s\n", rank, iter, what);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    return x ^ (x >> 33);
}

/* Words in the message of iteration `iter`: 1 to 32768 (8 bytes to 256 KiB). */
static long words_of(long iter)
{
    static const long sizes[] = {1, 3, 64, 1000, 4096, 9000, 32768, 17};
    return sizes[iter % 8];
}

static uint64_t word(uint64_t state, long i)
{
    return mix(state + (uint64_t)i * 0x9e3779b97f4a7c15ull);
}

/* The message a rank with `state` sends: its words and their sum (what the receiver mixes). */
static uint64_t message_sum(uint64_t state, long n)
{
    uint64_t s = 0;
    for (long i = 0; i < n; i++)
        s += word(state, i);
    return s;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2 || size > MAX_RANKS)
        fail("needs 2 to 64 ranks", 0);
    const char *go = getenv("CR_TEST_GO");
    if (!go)
        fail("CR_TEST_GO is not set", 0);

    uint64_t st[MAX_RANKS], next[MAX_RANKS];
    for (int r = 0; r < size; r++)
        st[r] = mix(0x1234 + r);
    uint64_t *sendbuf = malloc(MAX_WORDS * 8), *recvbuf = malloc(MAX_WORDS * 8);
    if (!sendbuf || !recvbuf)
        fail("out of memory", 0);
    int right = (rank + 1) % size, left = (rank + size - 1) % size;
    long iter = 0;
    for (;;) {
        long n = words_of(iter);
        for (long i = 0; i < n; i++)
            sendbuf[i] = word(st[rank], i);
        memset(recvbuf, 0, n * 8);
        MPI_Request req[2];
        MPI_Status sts[2];
        MPI_Irecv(recvbuf, (int)n, MPI_UINT64_T, left, (int)(iter & 0x7fff), MPI_COMM_WORLD, &req[0]);
        MPI_Isend(sendbuf, (int)n, MPI_UINT64_T, right, (int)(iter & 0x7fff), MPI_COMM_WORLD, &req[1]);
        MPI_Waitall(2, req, sts);
        for (long i = 0; i < n; i++)
            if (recvbuf[i] != word(st[left], i))
                fail("a ring message differs", iter);
        /* Every rank's next state, from its left neighbour's message. */
        for (int r = 0; r < size; r++)
            next[r] = mix(st[r] ^ message_sum(st[(r + size - 1) % size], n) ^ (uint64_t)iter);
        memcpy(st, next, sizeof(uint64_t) * size);

        /* Allreduce: the sum of the states, and whether rank 0 saw GO. */
        uint64_t mine[2] = {st[rank], 0}, sum[2];
        if (rank == 0)
            mine[1] = access(go, F_OK) == 0;
        MPI_Allreduce(mine, sum, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
        uint64_t want = 0;
        for (int r = 0; r < size; r++)
            want += st[r];
        if (sum[0] != want)
            fail("the allreduce sum differs", iter);

        /* Bcast from a rotating root. */
        int root = (int)(iter % size);
        uint64_t b[4];
        for (int k = 0; k < 4; k++)
            b[k] = rank == root ? mix(st[root] + k) : 0;
        MPI_Bcast(b, 4, MPI_UINT64_T, root, MPI_COMM_WORLD);
        for (int k = 0; k < 4; k++)
            if (b[k] != mix(st[root] + k))
                fail("the broadcast differs", iter);

        iter++;
        if (rank == 0 && iter == 20) {
            printf("READY\n");
            fflush(stdout);
        }
        if (rank == 0 && iter % 200 == 0)
            fprintf(stderr, "info iter %ld\n", iter);
        if (sum[1])
            break;
        /* Not a busy loop between iterations: 4 ranks share 2 cores with other jobs. */
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }

    /* Recompute the final states from scratch: each rank alone. */
    uint64_t chk[MAX_RANKS];
    for (int r = 0; r < size; r++)
        chk[r] = mix(0x1234 + r);
    for (long it = 0; it < iter; it++) {
        long n = words_of(it);
        for (int r = 0; r < size; r++)
            next[r] = mix(chk[r] ^ message_sum(chk[(r + size - 1) % size], n) ^ (uint64_t)it);
        memcpy(chk, next, sizeof(uint64_t) * size);
    }
    for (int r = 0; r < size; r++)
        if (chk[r] != st[r])
            fail("the final state differs from a recomputation", iter);
    long iters[2] = {iter, -iter}, agree[2];
    MPI_Allreduce(iters, agree, 2, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
    if (agree[0] != iter || -agree[1] != iter)
        fail("the ranks disagree on the iteration count", iter);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        printf("PASS ring %ld iterations, %d ranks\n", iter, size);
        fflush(stdout);
    }
    free(sendbuf);
    free(recvbuf);
    MPI_Finalize();
    return 0;
}
