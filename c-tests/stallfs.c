/*
 * stallfs.c - a FUSE file system whose writes can be held: a destination that stops answering
 * (tests/faults.rs destination_fuse_server_stalls; issue 13: a slow NFS-like destination).
 *
 * Build: gcc -O2 -Wall $(pkg-config --cflags fuse3) -o stallfs stallfs.c $(pkg-config --libs fuse3)
 * Run:   stallfs BACKING_DIR STALL_FILE MOUNTPOINT -f [-o OPTIONS]
 *
 * Every operation is passed through to BACKING_DIR (paths below the mount point are the same
 * paths below it). While STALL_FILE exists, a write that would take a file's data past 1 MiB
 * does not answer: the server waits (1 ms polls) until STALL_FILE is removed, then writes. On
 * the first such write of a stall it prints "STALLED PATH" on stdout. A file opened or created
 * while STALL_FILE.pass exists is never held (a second checkpoint to the same destination gets
 * through while the first one's writes are still held). Once the connection is
 * up it prints "READY". The kernel sends every write of a file opened without a write-back
 * cache to the server and waits for its answer, so the writer waits in the kernel as long as
 * the server does (or until the server dies: the connection is then aborted and the writer
 * gets ENOTCONN).
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define STALL_AFTER (1L << 20)

static const char *backing, *stall_file;
static char pass_file[PATH_MAX];
/* Per server-side descriptor (fi->fh): opened while pass_file existed, never held. */
static unsigned char no_stall[1 << 16];

static void mark_open(int fd)
{
    if (fd >= 0 && fd < (int)sizeof no_stall)
        no_stall[fd] = access(pass_file, F_OK) == 0;
}
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static int stall_reported;

static void real(char *out, const char *path)
{
    snprintf(out, PATH_MAX, "%s%s", backing, path);
}

static void say(const char *what, const char *path)
{
    pthread_mutex_lock(&print_lock);
    printf("%s%s%s\n", what, path ? " " : "", path ? path : "");
    fflush(stdout);
    pthread_mutex_unlock(&print_lock);
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->use_ino = 1;
    /* Attributes and names from the backing directory as they are now. */
    cfg->entry_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->negative_timeout = 0;
    say("READY", NULL);
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    if (fi)
        return fstat(fi->fh, st) ? -errno : 0;
    char p[PATH_MAX];
    real(p, path);
    return lstat(p, st) ? -errno : 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off, (void)fi, (void)flags;
    char p[PATH_MAX];
    real(p, path);
    DIR *d = opendir(p);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        fill(buf, e->d_name, NULL, 0, 0);
    closedir(d);
    return 0;
}

static int sf_mkdir(const char *path, mode_t mode)
{
    char p[PATH_MAX];
    real(p, path);
    return mkdir(p, mode) ? -errno : 0;
}

static int sf_rmdir(const char *path)
{
    char p[PATH_MAX];
    real(p, path);
    return rmdir(p) ? -errno : 0;
}

static int sf_unlink(const char *path)
{
    char p[PATH_MAX];
    real(p, path);
    return unlink(p) ? -errno : 0;
}

static int sf_rename(const char *from, const char *to, unsigned int flags)
{
    char a[PATH_MAX], b[PATH_MAX];
    real(a, from);
    real(b, to);
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, flags) ? -errno : 0;
}

static int sf_link(const char *from, const char *to)
{
    char a[PATH_MAX], b[PATH_MAX];
    real(a, from);
    real(b, to);
    return link(a, b) ? -errno : 0;
}

static int sf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    if (fi)
        return fchmod(fi->fh, mode) ? -errno : 0;
    char p[PATH_MAX];
    real(p, path);
    return chmod(p, mode) ? -errno : 0;
}

static int sf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    if (fi)
        return fchown(fi->fh, uid, gid) ? -errno : 0;
    char p[PATH_MAX];
    real(p, path);
    return lchown(p, uid, gid) ? -errno : 0;
}

static int sf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    if (fi)
        return ftruncate(fi->fh, size) ? -errno : 0;
    char p[PATH_MAX];
    real(p, path);
    return truncate(p, size) ? -errno : 0;
}

static int sf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    if (fi)
        return futimens(fi->fh, tv) ? -errno : 0;
    char p[PATH_MAX];
    real(p, path);
    return utimensat(AT_FDCWD, p, tv, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

static int sf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    char p[PATH_MAX];
    real(p, path);
    int fd = open(p, (fi->flags & ~O_DIRECT) | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    mark_open(fd);
    fi->fh = fd;
    return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
    char p[PATH_MAX];
    real(p, path);
    int fd = open(p, (fi->flags & ~O_DIRECT) | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    mark_open(fd);
    fi->fh = fd;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    ssize_t r = pread(fi->fh, buf, n, off);
    return r < 0 ? -errno : (int)r;
}

static int sf_write(const char *path, const char *buf, size_t n, off_t off,
                    struct fuse_file_info *fi)
{
    int held = !(fi->fh < sizeof no_stall && no_stall[fi->fh]);
    if (held && off + (off_t)n > STALL_AFTER && access(stall_file, F_OK) == 0) {
        pthread_mutex_lock(&print_lock);
        int first = !stall_reported;
        stall_reported = 1;
        pthread_mutex_unlock(&print_lock);
        if (first)
            say("STALLED", path);
        struct timespec t = {0, 1000000};
        while (access(stall_file, F_OK) == 0)
            nanosleep(&t, NULL);
        pthread_mutex_lock(&print_lock);
        stall_reported = 0;
        pthread_mutex_unlock(&print_lock);
    }
    ssize_t r = pwrite(fi->fh, buf, n, off);
    return r < 0 ? -errno : (int)r;
}

static int sf_statfs(const char *path, struct statvfs *st)
{
    char p[PATH_MAX];
    real(p, path);
    return statvfs(p, st) ? -errno : 0;
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    if (fi->fh < sizeof no_stall)
        no_stall[fi->fh] = 0;
    close(fi->fh);
    return 0;
}

static int sf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    return (datasync ? fdatasync(fi->fh) : fsync(fi->fh)) ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = sf_init,
    .getattr = sf_getattr,
    .readdir = sf_readdir,
    .mkdir = sf_mkdir,
    .rmdir = sf_rmdir,
    .unlink = sf_unlink,
    .rename = sf_rename,
    .link = sf_link,
    .chmod = sf_chmod,
    .chown = sf_chown,
    .truncate = sf_truncate,
    .utimens = sf_utimens,
    .create = sf_create,
    .open = sf_open,
    .read = sf_read,
    .write = sf_write,
    .statfs = sf_statfs,
    .release = sf_release,
    .fsync = sf_fsync,
};

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: stallfs BACKING_DIR STALL_FILE MOUNTPOINT [FUSE OPTIONS]\n");
        return 2;
    }
    backing = realpath(argv[1], NULL);
    stall_file = argv[2];
    snprintf(pass_file, sizeof pass_file, "%s.pass", stall_file);
    if (!backing) {
        perror(argv[1]);
        return 2;
    }
    /* fuse_main gets: program name, mount point, options. */
    argv[2] = argv[0];
    return fuse_main(argc - 2, argv + 2, &ops, NULL);
}
