/* zmem: compressible and incompressible memory, for cr_checkpoint --compress.
 *   zmem TEXT_MB RANDOM_MB [CHILDREN] [MIXED_MB]
 * Each process (the parent and CHILDREN forked children, each with its own seed) fills TEXT_MB
 * MiB of private anonymous memory with generated text lines (compressible, like a program's
 * tables and logs) and RANDOM_MB MiB with pseudo-random words (incompressible), prints READY
 * once every process is filled, and waits for the GO file. Then each regenerates both regions
 * and compares them word by word. `PASS zmem`. MIXED_MB: one more mapping of that many MiB whose
 * 1 MiB blocks are text and random in turn (a split compressed image: its random blocks written
 * by the agent, its text blocks compressed), checked the same way. With CR_TEST_DUMP=PATH (no children) the text
 * region's bytes are also written to PATH, for comparing with gzip. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *words[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta",
                              "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"};

/* Text: numbered records with a few fields each (about 1/6 of the size with zstd -1). */
static void fill_text(char *p, size_t len, uint64_t seed)
{
    size_t at = 0;
    uint64_t i = 0;
    while (at < len) {
        char line[128];
        uint64_t x = (i * 2654435761u) ^ seed;
        int n = snprintf(line, sizeof line, "%08llu %s %s count=%llu state=%s\n",
                         (unsigned long long)i, words[x % 15], words[(x >> 8) % 15],
                         (unsigned long long)(x % 1000), (x >> 16) % 3 ? "ok" : "retry");
        size_t take = (size_t)n < len - at ? (size_t)n : len - at;
        memcpy(p + at, line, take);
        at += take;
        i++;
    }
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fill_random(uint64_t *p, size_t words_n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t k = 0; k < words_n; k++) p[k] = next(&s);
}

/* extra: MAP_NORESERVE for the random region, so that it never merges with the text region
 * into one mapping (one extent): it is stored raw and a lazy restart maps it from the image. */
static void *map(size_t len, int extra)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Block k (1 MiB) of the mixed region: text when k is even, random when odd. */
static void fill_mixed(char *p, size_t mmb, uint64_t seed)
{
    for (size_t k = 0; k < mmb; k++) {
        char *b = p + (k << 20);
        if (k % 2 == 0)
            fill_text(b, 1 << 20, seed + 1000 + k);
        else
            fill_random((uint64_t *)b, (1 << 20) / 8, seed + 1000 + k);
    }
}

static int run(uint64_t seed, size_t tmb, size_t rmb, size_t mmb, int ready_fd, int wait_fd,
               int children, const char *go)
{
    size_t tlen = tmb << 20, rlen = rmb << 20, mlen = mmb << 20;
    char *text = tlen ? map(tlen, 0) : NULL;
    uint64_t *rnd = rlen ? map(rlen, MAP_NORESERVE) : NULL;
    char *mixed = mlen ? map(mlen, MAP_NORESERVE) : NULL;
    if ((tlen && !text) || (rlen && !rnd) || (mlen && !mixed)) return 2;
    if (tlen) fill_text(text, tlen, seed);
    if (rlen) fill_random(rnd, rlen / 8, seed);
    if (mlen) fill_mixed(mixed, mmb, seed);
    const char *dump = getenv("CR_TEST_DUMP");
    if (dump && tlen && seed == 0) {
        FILE *f = fopen(dump, "w");
        if (!f || fwrite(text, 1, tlen, f) != tlen || fclose(f) != 0) return 2;
    }
    if (ready_fd >= 0) {
        if (write(ready_fd, "r", 1) != 1) return 2;
    } else {
        char b;
        for (int i = 0; i < children; i++)
            if (read(wait_fd, &b, 1) != 1) return 2;
        printf("READY\n");
        fflush(stdout);
    }
    struct timespec ts = {0, 5 * 1000 * 1000};
    while (access(go, F_OK) != 0) nanosleep(&ts, NULL);
    int bad = 0;
    if (tlen) {
        char *want = map(tlen, 0);
        if (!want) return 2;
        fill_text(want, tlen, seed);
        if (memcmp(want, text, tlen) != 0) {
            size_t k = 0;
            while (want[k] == text[k]) k++;
            fprintf(stderr, "FAIL zmem: process %llu text byte %zu differs\n",
                    (unsigned long long)seed, k);
            bad = 1;
        }
    }
    if (rlen) {
        uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
        for (size_t k = 0; k < rlen / 8; k++)
            if (rnd[k] != next(&s)) {
                fprintf(stderr, "FAIL zmem: process %llu random word %zu differs\n",
                        (unsigned long long)seed, k);
                bad = 1;
                break;
            }
    }
    if (mlen) {
        char *want = map(mlen, 0);
        if (!want) return 2;
        fill_mixed(want, mmb, seed);
        if (memcmp(want, mixed, mlen) != 0) {
            size_t k = 0;
            while (want[k] == mixed[k]) k++;
            fprintf(stderr, "FAIL zmem: process %llu mixed byte %zu differs\n",
                    (unsigned long long)seed, k);
            bad = 1;
        }
    }
    for (int i = 0; i < children; i++) {
        int st;
        pid_t w = wait(&st);
        if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "FAIL zmem: child %d ended with status %#x\n", (int)w, st);
            bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    const char *go = getenv("CR_TEST_GO");
    if (argc < 3 || !go) {
        fprintf(stderr, "usage: CR_TEST_GO=PATH zmem TEXT_MB RANDOM_MB [CHILDREN] [MIXED_MB]\n");
        return 2;
    }
    size_t tmb = (size_t)atol(argv[1]), rmb = (size_t)atol(argv[2]);
    int children = argc > 3 ? atoi(argv[3]) : 0;
    size_t mmb = argc > 4 ? (size_t)atol(argv[4]) : 0;
    int p[2];
    if (pipe(p) != 0) return 2;
    for (int i = 0; i < children; i++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            close(p[0]);
            _exit(run(i + 1, tmb, rmb, mmb, p[1], -1, 0, go));
        }
    }
    close(p[1]);
    int rc = run(0, tmb, rmb, mmb, -1, p[0], children, go);
    if (rc != 0) {
        printf("FAIL zmem\n");
        return rc;
    }
    printf("PASS zmem\n");
    return 0;
}
