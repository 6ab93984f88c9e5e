/* api_seq.h: helpers shared by the c-tests/api_*.c programs.
 *
 * Output follows BLCR's SEQ harness (see tests/api.rs): numbered lines via say(), comments via
 * note(), and FAIL()/CHECK() print an "XXX" line and exit non-zero. Also errno names, timing,
 * and self-checkpoint helpers (request_self, poll_done). Include after <libcr.h>.
 */
#ifndef API_SEQ_H
#define API_SEQ_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int seq_fd = 1;
static int seq_no = 0;

static void seq_write(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(seq_fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            _exit(3);
        }
        s += w;
        n -= (size_t)w;
    }
}

static void seq_vline(const char *prefix, const char *fmt, va_list ap)
{
    char buf[1024];
    int saved = errno;
    int len = snprintf(buf, sizeof buf, "%s", prefix);
    int m = vsnprintf(buf + len, sizeof buf - (size_t)len - 1, fmt, ap);
    if (m < 0) m = 0;
    len += m;
    if (len > (int)sizeof buf - 2) len = (int)sizeof buf - 2;
    buf[len++] = '\n';
    seq_write(buf, (size_t)len);
    errno = saved;
}

__attribute__((format(printf, 1, 2), unused))
static void say(const char *fmt, ...)
{
    char prefix[16];
    va_list ap;
    snprintf(prefix, sizeof prefix, "%03d ", __atomic_fetch_add(&seq_no, 1, __ATOMIC_SEQ_CST));
    va_start(ap, fmt);
    seq_vline(prefix, fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 1, 2), unused))
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    seq_vline("#", fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 2, 3), noreturn, unused))
static void fail_at(int line, const char *fmt, ...)
{
    char prefix[32];
    va_list ap;
    snprintf(prefix, sizeof prefix, "XXX [line %d] ", line);
    va_start(ap, fmt);
    seq_vline(prefix, fmt, ap);
    va_end(ap);
    _exit(1);
}
#define FAIL(...) fail_at(__LINE__, __VA_ARGS__)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

/* Symbolic name of an errno value (libcr's own codes included), for messages. */
__attribute__((unused))
static const char *ename(int e)
{
    static __thread char other[32];
    switch (e) {
    case 0: return "0";
    case CR_ETEMPFAIL: return "CR_ETEMPFAIL";
    case CR_EPERMFAIL: return "CR_EPERMFAIL";
    case CR_ENOSUPPORT: return "CR_ENOSUPPORT";
    case CR_EVERSION: return "CR_EVERSION";
    case CR_EOMITTED: return "CR_EOMITTED";
    case CR_EBADARCH: return "CR_EBADARCH";
    case CR_EPTRACED: return "CR_EPTRACED";
    case CR_EPTRACER: return "CR_EPTRACER";
    case CR_ERSTRTABRT: return "CR_ERSTRTABRT";
    case CR_ERESTARTED: return "CR_ERESTARTED";
    case CR_ENOTCB: return "CR_ENOTCB";
    case CR_ENOINIT: return "CR_ENOINIT";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case ERANGE: return "ERANGE";
    case EDEADLK: return "EDEADLK";
    case ENOSYS: return "ENOSYS";
    default:
        snprintf(other, sizeof other, "errno %d", e);
        return other;
    }
}

/* `call` must return `want` with errno `err`. */
#define EXPECT_ERR(call, want, err) do {                                                        \
        long r_; int e_;                                                                        \
        errno = 0;                                                                              \
        r_ = (long)(call);                                                                      \
        e_ = errno;                                                                             \
        if (r_ != (long)(want) || e_ != (err))                                                  \
            FAIL("%s returned %ld with errno %s; expected %ld with errno %s",                   \
                 #call, r_, ename(e_), (long)(want), #err);                                     \
    } while (0)

/* `call` must return `want` (errno is not looked at). */
#define EXPECT_RET(call, want) do {                                                             \
        long r_;                                                                                \
        errno = 0;                                                                              \
        r_ = (long)(call);                                                                      \
        if (r_ != (long)(want))                                                                 \
            FAIL("%s returned %ld (errno %s); expected %ld", #call, r_, ename(errno), (long)(want)); \
    } while (0)

__attribute__((unused))
static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((unused))
static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* A fresh context file in the cwd, as BLCR's tests open it. */
__attribute__((unused))
static int open_ctx(const char *name)
{
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0, "open(%s): %s", name, strerror(errno));
    return fd;
}

/* cr_request_checkpoint() of this process (scope PROC, target 0) into fd; returns its result. */
__attribute__((unused))
static int request_self(int fd, unsigned flags, cr_checkpoint_handle_t *h)
{
    cr_checkpoint_args_t a;
    int rc = cr_initialize_checkpoint_args_t(&a);
    CHECK(rc == 0, "cr_initialize_checkpoint_args_t returned %d (%s)", rc, ename(errno));
    a.cr_scope = CR_SCOPE_PROC;
    a.cr_target = 0;
    a.cr_fd = fd;
    a.cr_flags = flags;
    return cr_request_checkpoint(&a, h);
}

/* cr_poll_checkpoint() until the request is finished (EINTR retried); a request still unfinished
 * after 30 s is a failure.  Returns the poll result with errno as the poll left it. */
__attribute__((unused))
static int poll_done(cr_checkpoint_handle_t *h)
{
    for (;;) {
        struct timeval tv = { 30, 0 };
        int rc = cr_poll_checkpoint(h, &tv);
        if (rc == CR_POLL_CHKPT_ERR_PRE && errno == EINTR) continue;
        if (rc == 0) FAIL("checkpoint request not finished after 30 s");
        return rc;
    }
}

/* Size of the file open on fd (-1 on error). */
__attribute__((unused))
static long fd_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (long)st.st_size : -1;
}

#endif /* API_SEQ_H */
