/* sem00.c - a SysV semaphore set survives with its values: a keyed set of three semaphores
 * (mode 0640) set to 0, 5, 2, then one taken from the second with SEM_UNDO (so this process
 * operated on it last: the rule for saving a set).  --term leaves the set behind with the
 * kernel's undo applied (5 again): the restart takes it over and sets the saved values (its
 * undo adjustment is not restored).  After GO: semget(key) finds it with three semaphores and its
 * mode, values 0, 4, 2; operations work (a wait that cannot proceed gives EAGAIN).
 * PASS sem00. */
/* cr-test: cflags= */
#define NAME "sem00"
#include "kobj.h"
#include <sys/ipc.h>
#include <sys/sem.h>

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

int main(void)
{
    key_t key = 0x6c6a0000 | (getpid() & 0xffff);
    int id = semget(key, 3, IPC_CREAT | IPC_EXCL | 0640);
    check(id >= 0);
    unsigned short set[3] = {0, 5, 2}, got[3];
    check(semctl(id, 0, SETALL, (union semun){.array = set}) == 0);
    struct sembuf take = {1, -1, IPC_NOWAIT | SEM_UNDO};
    check(semop(id, &take, 1) == 0);

    ready_then_wait_go();

    int id2 = semget(key, 0, 0);
    check(id2 >= 0);
    struct semid_ds ds;
    check(semctl(id2, 0, IPC_STAT, (union semun){.buf = &ds}) == 0);
    check(ds.sem_nsems == 3 && (ds.sem_perm.mode & 0777) == 0640);
    check(semctl(id2, 0, GETALL, (union semun){.array = got}) == 0);
    check(got[0] == 0 && got[1] == 4 && got[2] == 2);
    struct sembuf too_much = {2, -3, IPC_NOWAIT};
    check(semop(id2, &too_much, 1) == -1 && errno == EAGAIN);
    struct sembuf ops[2] = {{0, 1, 0}, {1, -4, IPC_NOWAIT}};
    check(semop(id2, ops, 2) == 0);
    check(semctl(id2, 0, GETVAL) == 1 && semctl(id2, 1, GETVAL) == 0);
    check(semctl(id2, 0, IPC_RMID) == 0);
    pass();
}
