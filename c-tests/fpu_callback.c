/*
 * fpu_callback.c - the FPU/vector state of a callback across its cr_checkpoint() (BLCR's
 * "math" test): what a callback leaves in the x87 stack, the x87 control word, MXCSR and the
 * XMM/YMM registers when it calls cr_checkpoint() must be there when the call returns, in the
 * process that continues and after a restart.
 *
 * Build: gcc -O2 -Wall -I include -o fpu_callback fpu_callback.c -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR
 * Run:   CR_TEST_GO=/path/to/go ./fpu_callback        (linked with libcr; no cr_run)
 *
 * A signal-context callback (main thread) and a thread-context callback (libcr's helper thread)
 * each call fpu_probe(): x87 control word 0x0a7f (round up, 53-bit precision), MXCSR 0xbfc0
 * (round down, FTZ, DAZ), pi, 1 and log2(10) pushed on the x87 stack, XMM0-15 (YMM0-15 with
 * AVX) loaded with a per-context pattern; then cr_checkpoint(0) is called and everything is
 * stored again and compared (x87 values bit for bit, stack top, control words, registers).
 * After GO both callbacks must have run and passed (the restored process ran them after its
 * restart: cr_checkpoint() > 0).
 */
#define _GNU_SOURCE
#include <libcr.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NAME "fpu_callback"
#include "fail.h"

struct probe {
    unsigned char st_before[3][16], st_after[3][16];
    unsigned char regs[16][32];
    unsigned int mxcsr;
    unsigned short fcw, fsw_before, fsw_after;
    int rc;
};
_Static_assert(offsetof(struct probe, st_after) == 48 && offsetof(struct probe, regs) == 96 &&
               offsetof(struct probe, mxcsr) == 608 && offsetof(struct probe, fcw) == 612 &&
               offsetof(struct probe, fsw_before) == 614 && offsetof(struct probe, fsw_after) == 616 &&
               offsetof(struct probe, rc) == 620, "offsets used by fpu_probe");

/* int fpu_probe(int (*fn)(int), struct probe *out, const unsigned char pattern[16][32], int avx) */
int fpu_probe(int (*fn)(int), struct probe *out, const unsigned char (*pattern)[32], int avx);
__asm__(".text\n.globl fpu_probe\n.type fpu_probe,@function\nfpu_probe:\n"
        ".intel_syntax noprefix\n"
        "push rbx\npush r12\npush r13\npush r14\npush r15\nsub rsp, 16\n"
        "mov rbx, rdi\nmov r12, rsi\nmov r13, rdx\nmov r14, rcx\n"
        "fnstcw [rsp]\nstmxcsr [rsp+4]\n"
        "mov word ptr [rsp+8], 0x0a7f\nfldcw [rsp+8]\n"
        "mov dword ptr [rsp+12], 0xbfc0\nldmxcsr [rsp+12]\n"
        "fldpi\nfld1\nfldl2t\n"
        "fld st(0)\nfstp tbyte ptr [r12]\nfld st(1)\nfstp tbyte ptr [r12+16]\nfld st(2)\nfstp tbyte ptr [r12+32]\n"
        "fnstsw ax\nmov [r12+614], ax\n"
        "test r14, r14\njz 1f\n"
        ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\nvmovdqu ymm\\i, [r13+\\i*32]\n.endr\njmp 2f\n"
        "1:\n.irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\nmovdqu xmm\\i, [r13+\\i*32]\n.endr\n"
        "2:\nxor edi, edi\ncall rbx\nmov [r12+620], eax\n"
        "test r14, r14\njz 3f\n"
        ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\nvmovdqu [r12+96+\\i*32], ymm\\i\n.endr\njmp 4f\n"
        "3:\n.irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\nmovdqu [r12+96+\\i*32], xmm\\i\n.endr\n"
        "4:\nfnstsw ax\nmov [r12+616], ax\nfnstcw [r12+612]\nstmxcsr [r12+608]\n"
        "fstp tbyte ptr [r12+48]\nfstp tbyte ptr [r12+64]\nfstp tbyte ptr [r12+80]\n"
        "fldcw [rsp]\nldmxcsr [rsp+4]\n"
        "test r14, r14\njz 5f\nvzeroupper\n5:\n"
        "mov eax, [r12+620]\nadd rsp, 16\npop r15\npop r14\npop r13\npop r12\npop rbx\nret\n"
        ".att_syntax prefix\n.size fpu_probe, .-fpu_probe\n");

static unsigned char pattern[2][16][32];
static struct probe res[2];
static volatile int done[2], runs[2];
static int avx;

/* Checks one probe result; returns NULL or what is wrong. */
static const char *verify(int ctx, char *why, size_t len)
{
    const struct probe *p = &res[ctx];
    int width = avx ? 32 : 16;
    if (p->rc < 0)
        snprintf(why, len, "cr_checkpoint() returned %d", p->rc);
    else if (memcmp(p->st_after, p->st_before, sizeof p->st_before) != 0 ||
             (p->fsw_after & 0x3800) != (p->fsw_before & 0x3800))
        snprintf(why, len, "x87 stack changed (top %d -> %d, st0 bytes %02x%02x.. -> %02x%02x..)",
                 (p->fsw_before >> 11) & 7, (p->fsw_after >> 11) & 7, p->st_before[0][9],
                 p->st_before[0][8], p->st_after[0][9], p->st_after[0][8]);
    else if (p->fcw != 0x0a7f || (p->mxcsr & 0xffc0) != 0xbfc0)
        snprintf(why, len, "control words: x87 %#x MXCSR %#x, expected 0xa7f 0xbfc0", p->fcw, p->mxcsr);
    else {
        for (int r = 0; r < 16; r++)
            if (memcmp(p->regs[r], pattern[ctx][r], width) != 0) {
                snprintf(why, len, "%s%d changed", avx ? "ymm" : "xmm", r);
                return why;
            }
        return NULL;
    }
    return why;
}

static int callback(void *arg)
{
    int ctx = (int)(long)arg;
    fpu_probe(cr_checkpoint, &res[ctx], pattern[ctx], avx);
    runs[ctx]++;
    __atomic_store_n(&done[ctx], 1, __ATOMIC_SEQ_CST);
    return 0;
}

int main(void)
{
    const char *go = getenv("CR_TEST_GO");
    const char *names[2] = {"signal-context callback", "thread-context callback"};
    char why[200];
    if (!go)
        fail("CR_TEST_GO not set");
    setvbuf(stdout, NULL, _IOLBF, 0);
    __builtin_cpu_init();
    avx = __builtin_cpu_supports("avx");
    for (int c = 0; c < 2; c++)
        for (int r = 0; r < 16; r++)
            for (int b = 0; b < 32; b++)
                pattern[c][r][b] = (unsigned char)(0x5a ^ (c * 101 + r * 17 + b * 3));
    if (cr_init() < 0)
        fail("cr_init");
    if (cr_register_callback(callback, (void *)0L, CR_SIGNAL_CONTEXT) < 0 ||
        cr_register_callback(callback, (void *)1L, CR_THREAD_CONTEXT) < 0)
        fail("cr_register_callback");
    printf("READY\n");

    while (access(go, F_OK) != 0)
        usleep(1000);

    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 5000 && !__atomic_load_n(&done[c], __ATOMIC_SEQ_CST); i++)
            usleep(1000);
        if (!done[c])
            failf("the %s did not run", names[c]);
        if (verify(c, why, sizeof why))
            failf("%s (cr_checkpoint() = %d): %s", names[c], res[c].rc, why);
        fprintf(stderr, "info %s: %s: cr_checkpoint() = %d, %d run(s), state kept (%s)\n", NAME,
                names[c], res[c].rc, runs[c], avx ? "AVX" : "SSE");
    }
    printf("PASS %s\n", NAME);
    return 0;
}
