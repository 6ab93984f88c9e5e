/* sysvshm00.c - SysV shared memory segments survive as SysV segments: a keyed 64 KiB segment
 * (mode 0640) attached twice (read-write and SHM_RDONLY) filled with a pattern, and a private
 * 3-page segment removed with IPC_RMID once attached.  The segments are left behind by --term
 * (the keyed one is not removed): the restart takes the saved one over.  After GO: contents,
 * both attachments of the keyed segment are one segment (a write shows through the read-only
 * one), shmget(key) finds it with its size, mode and two attachments, the private one is still
 * a SysV mapping (/proc/self/maps) and writable.  PASS sysvshm00. */
/* cr-test: cflags= */
#define NAME "sysvshm00"
#include "kobj.h"
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#define SEG (64 << 10)
#define PRIV (3 * 4096)

/* Whether /proc/self/maps names the mapping at p a SysV segment. */
static int is_sysv(void *p)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    int found = 0;
    check(f != NULL);
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s == (unsigned long)p)
            found = strstr(line, "/SYSV") != NULL;
    }
    fclose(f);
    return found;
}

int main(void)
{
    key_t key = 0x6c690000 | (getpid() & 0xffff);
    int id = shmget(key, SEG, IPC_CREAT | IPC_EXCL | 0640);
    check(id >= 0);
    unsigned char *rw = shmat(id, NULL, 0);
    const unsigned char *ro = shmat(id, NULL, SHM_RDONLY);
    check(rw != (void *)-1 && ro != (void *)-1);
    for (size_t i = 0; i < SEG; i += 7)
        rw[i] = (unsigned char)(i / 7 + 1);
    int pid = shmget(IPC_PRIVATE, PRIV, IPC_CREAT | 0600);
    check(pid >= 0);
    uint32_t *priv = shmat(pid, NULL, 0);
    check(priv != (void *)-1);
    check(shmctl(pid, IPC_RMID, NULL) == 0);
    for (size_t i = 0; i < PRIV / 4; i += 101)
        priv[i] = (uint32_t)i * 3 + 1;

    ready_then_wait_go();

    for (size_t i = 0; i < SEG; i++)
        check(ro[i] == (i % 7 ? 0 : (unsigned char)(i / 7 + 1)));
    rw[5] = 0xab;
    check(ro[5] == 0xab);
    int id2 = shmget(key, 0, 0);
    check(id2 >= 0);
    struct shmid_ds ds;
    check(shmctl(id2, IPC_STAT, &ds) == 0);
    check(ds.shm_segsz == SEG && (ds.shm_perm.mode & 0777) == 0640 && ds.shm_nattch == 2);
    for (size_t i = 0; i < PRIV / 4; i++)
        check(priv[i] == (i % 101 ? 0 : (uint32_t)i * 3 + 1));
    check(is_sysv(rw) && is_sysv((void *)ro) && is_sysv(priv));
    priv[1] = 42;
    check(priv[1] == 42);
    check(shmdt(rw) == 0 && shmdt(ro) == 0 && shmctl(id2, IPC_RMID, NULL) == 0);
    pass();
}
