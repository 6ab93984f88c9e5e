/*
 * abi_layout.c - the libcr C ABI of BLCR 0.8.6_b4 (BLCR-REFERENCE.md
 * sections 1.1-1.5): every constant value, every type, every struct size and
 * field offset (x86-64), the exact type of all 38 functions, and the
 * library-side defaults of the argument initializers and cr_strerror().
 *
 * Build (from the repository root, LIBDIR = directory holding libcr.so):
 *   gcc -Wall -Wextra -Werror -I include -o abi_layout c-tests/abi_layout.c \
 *       -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR
 * Compile-time part only (no library needed):
 *   gcc -Wall -Wextra -Werror -I include -DABI_STATIC_ONLY -o abi_layout_static c-tests/abi_layout.c
 *
 * Most checks are _Static_assert/#error: a wrong header does not compile.
 * The run prints "FAIL abi_layout: ..." for each runtime mismatch and exits
 * 1, or prints "PASS abi_layout" and exits 0.  Needs C11 (gcc's default).
 */
#include <libcr.h>
#include <blcr_common.h> /* again: must be harmless */
#include <blcr_errcodes.h>

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

/* _Generic-based exact type test (no qualifier or sign conversions). */
#define IS_TYPE(expr, T) _Generic((expr), T: 1, default: 0)
#define SA(cond) _Static_assert((cond), #cond)
#define SA_TYPE(T, want) SA(IS_TYPE((T)0, want))
#define SA_FIELD(S, f, off, T)                                         \
    SA(offsetof(S, f) == (off));                                       \
    SA(IS_TYPE(&((S *)0)->f, T *))

/* ======================================================================
 * 1.1 Version and misc. constants (macros: checked by the preprocessor)
 * ====================================================================== */
#if !defined(CR_RELEASE_MAJOR) || CR_RELEASE_MAJOR != 0
#error CR_RELEASE_MAJOR
#endif
#if !defined(CR_RELEASE_MINOR) || CR_RELEASE_MINOR != 8
#error CR_RELEASE_MINOR
#endif
#ifndef CR_RELEASE_PATCH /* the bare token 6_b4: checked as a string below */
#error CR_RELEASE_PATCH
#endif
#ifndef CR_RELEASE_VERSION
#error CR_RELEASE_VERSION
#endif
#if !defined(LIBCR_MAJOR) || LIBCR_MAJOR != 0 || LIBCR_MINOR != 5 || LIBCR_PATCH != 5
#error LIBCR_MAJOR/MINOR/PATCH
#endif
#ifndef LIBCR_VERSION
#error LIBCR_VERSION
#endif
#if !defined(CR_MODULE_MAJOR) || CR_MODULE_MAJOR != 0 || CR_MODULE_MINOR != 10 || \
    CR_MODULE_PATCH != 3
#error CR_MODULE_MAJOR/MINOR/PATCH
#endif
#if !defined(CR_SIGNUM) || CR_SIGNUM != 64
#error CR_SIGNUM
#endif
#if !defined(CR_CHECKPOINT_ARGS_VERSION) || CR_CHECKPOINT_ARGS_VERSION != 1
#error CR_CHECKPOINT_ARGS_VERSION
#endif
#if !defined(CR_RESTART_ARGS_VERSION) || CR_RESTART_ARGS_VERSION != 1
#error CR_RESTART_ARGS_VERSION
#endif
#if !defined(CR_MAX_CALLBACKS) || CR_MAX_CALLBACKS != 0x1FFFFFF
#error CR_MAX_CALLBACKS
#endif
#ifndef CR_ID_CALLBACK
#error CR_ID_CALLBACK
#endif
#if !defined(CR_SPINLOCK_INITIALIZER) || CR_SPINLOCK_INITIALIZER != 0
#error CR_SPINLOCK_INITIALIZER
#endif
#if !defined(CR_DEST_CWD) || CR_DEST_CWD != -4096
#error CR_DEST_CWD
#endif
#ifndef CR_CTRL_FILE
#error CR_CTRL_FILE
#endif
#if !defined(CR_MAX_RSTRT_RELOC) || CR_MAX_RSTRT_RELOC != 16
#error CR_MAX_RSTRT_RELOC
#endif
#ifndef CR_RSTRT_RELOCATE_SIZE
#error CR_RSTRT_RELOCATE_SIZE
#endif
#if !defined(CR_POLL_CHKPT_ERR_PRE) || CR_POLL_CHKPT_ERR_PRE != -1 || \
    CR_POLL_CHKPT_ERR_POST != -2 || CR_POLL_CHKPT_ERR_LOG != -3
#error CR_POLL_CHKPT_ERR_*
#endif
#if !defined(CR_POLL_RSTRT_ERR_PRE) || CR_POLL_RSTRT_ERR_PRE != -1 || \
    CR_POLL_RSTRT_ERR_POST != -2 || CR_POLL_RSTRT_ERR_LOG != -3
#error CR_POLL_RSTRT_ERR_*
#endif
#ifndef CR_HOOK_FN_ERROR
#error CR_HOOK_FN_ERROR
#endif
#ifndef _CR_DEPRECATED
#error _CR_DEPRECATED
#endif
#if !defined(cr_initialize_checkpoint_args_t) || !defined(cr_initialize_restart_args_t)
#error cr_initialize_*_args_t must be macros
#endif
#if !defined(CR_SIGNAL_CONTEXT) || CR_SIGNAL_CONTEXT != 0x2000000
#error CR_SIGNAL_CONTEXT
#endif
#if !defined(CR_THREAD_CONTEXT) || CR_THREAD_CONTEXT != 0x4000000
#error CR_THREAD_CONTEXT
#endif

/* No invented names (BLCR-REFERENCE 1.1). */
#if defined(CR_API_VERSION) || defined(ECRFAILED) || defined(cr_get_client_id)
#error names BLCR never had
#endif

SA(CR_ID_CALLBACK == -1);
SA(IS_TYPE(CR_ID_CALLBACK, cr_client_id_t));
SA(IS_TYPE(CR_SPINLOCK_INITIALIZER, unsigned int));
SA(IS_TYPE(CR_SIGNUM, int));
SA(sizeof(CR_CTRL_FILE) == sizeof("/proc/checkpoint/ctrl"));
SA(sizeof(CR_RELEASE_VERSION) == sizeof("0.8.6_b4"));
SA(sizeof(LIBCR_VERSION) == sizeof("0.5.5"));
SA(CR_RSTRT_RELOCATE_SIZE(0) == 8);
SA(CR_RSTRT_RELOCATE_SIZE(1) == 8 + 16);
SA(CR_RSTRT_RELOCATE_SIZE(CR_MAX_RSTRT_RELOC) == 8 + 16 * 16);
SA(IS_TYPE(CR_RSTRT_RELOCATE_SIZE(3), size_t));

/* ======================================================================
 * 1.2 Error codes
 * ====================================================================== */
SA(CR_MIN_ERRCODE == 2353);
SA(CR_ETEMPFAIL == 2354);
SA(CR_EPERMFAIL == 2355);
SA(CR_ENOSUPPORT == 2356);
SA(CR_EVERSION == 2357);
SA(CR_EOMITTED == 2358);
SA(CR_EBADARCH == 2359);
SA(CR_EPTRACED == 2360);
SA(CR_EPTRACER == 2361);
SA(CR_ERSTRTABRT == 2362);
SA(CR_ERESTARTED == 2363);
SA(CR_ENOTCB == 2364);
SA(CR_ENOINIT == 2365);
SA(CR_MAX_ERRCODE == 2366);
/* low 8 bits = tool exit codes */
SA((CR_ETEMPFAIL & 0xff) == 50);
SA((CR_ENOINIT & 0xff) == 61);

/* ======================================================================
 * 1.3 Enums and flag values
 * ====================================================================== */
SA(CR_SCOPE_PROC == 0);
SA(CR_SCOPE_PGRP == 1);
SA(CR_SCOPE_SESS == 2);
SA(CR_SCOPE_TREE == 3);
SA(cr_format_vmadump == 0);

SA(CR_CHECKPOINT_READY == 0);
SA(CR_CHECKPOINT_TEMP_FAILURE == 1);
SA(CR_CHECKPOINT_PERM_FAILURE == 2);
SA(CR_CHECKPOINT_OMIT == 4);
SA(_CR_CHECKPOINT_STUB == 0x4000);
SA(CR_CHECKPOINT_ABORT_MASK == (1 | 2 | 4));
SA(CR_CHECKPOINT_TEMP_FAILURE_CODE(5) == (1 | (5 << 16)));
SA(CR_CHECKPOINT_PERM_FAILURE_CODE(5) == (2 | (5 << 16)));
SA(CR_CHECKPOINT_TEMP_FAILURE_CODE(0) == CR_CHECKPOINT_TEMP_FAILURE);
SA(CR_CHECKPOINT_PERM_FAILURE_CODE(65535) == (int)(2u | (65535u << 16)));
SA(IS_TYPE(CR_CHECKPOINT_TEMP_FAILURE_CODE(7), int));
SA(CR_CHECKPOINT_TEMP_FAILURE_CODE(1 + 1) == (1 | (2 << 16))); /* argument parenthesised */

#if CR_CHKPT_PROHIBIT_SELF != 0x1 || CR_CHKPT_PTRACED_ALLOW != 0x2 || \
    CR_CHKPT_PTRACED_SKIP != 0x4 || CR_CHKPT_PTRACER_SKIP != 0x8 || CR_CHKPT_ASYNC_ERR != 0x10
#error CR_CHKPT_* request flags
#endif
#if CR_CHKPT_DUMP_EXEC != 0x200 || CR_CHKPT_DUMP_PRIVATE != 0x400 || \
    CR_CHKPT_DUMP_SHARED != 0x800 || CR_CHKPT_DUMP_ALL != 0xE00
#error CR_CHKPT_DUMP_*
#endif
#if CR_RSTRT_ASYNC_ERR != 0x1 || CR_RSTRT_RESTORE_PID != 0x2 || CR_RSTRT_RESTORE_PGID != 0x4 || \
    CR_RSTRT_RESTORE_SID != 0x8
#error CR_RSTRT_*
#endif

SA(CR_STATE_IDLE == 0);
SA(CR_STATE_PENDING == 1);
SA(CR_STATE_ACTIVE == 2);

#if CR_HOLD_READ != -1 || CR_HOLD_NONE != 0 || CR_HOLD_CONT != 1 || CR_HOLD_RSTRT != 2 || \
    CR_HOLD_BOTH != 3 || CR_HOLD_DFLT != 4
#error CR_HOLD_*
#endif
SA(CR_HOLD_SCOPE_THREAD == 0);
SA(CR_HOLD_SCOPE_INIT == 1);
SA(CR_HOLD_SCOPE_UNINIT == 2);

SA(CR_HOOK_CONT_SIGNAL_CONTEXT == 0);
SA(CR_HOOK_CONT_THREAD_CONTEXT == 1);
SA(CR_HOOK_CONT_NO_CALLBACKS == 2);
SA(CR_HOOK_RSTRT_SIGNAL_CONTEXT == 3);
SA(CR_HOOK_RSTRT_THREAD_CONTEXT == 4);
SA(CR_HOOK_RSTRT_NO_CALLBACKS == 5);
SA(CR_NUM_HOOKS == 6);
SA(IS_TYPE((cr_hook_event_t)0, cr_hook_event_t));

/* ======================================================================
 * 1.4 Types
 * ====================================================================== */
SA_TYPE(cr_version_t, int);
SA_TYPE(cr_client_id_t, int);
SA_TYPE(cr_callback_id_t, int);
SA_TYPE(cr_spinlock_t, unsigned int);
SA_TYPE(cr_checkpoint_handle_t, unsigned long);
SA_TYPE(cr_restart_handle_t, unsigned long);
SA_TYPE(cr_bool_t, long);
SA_TYPE(cr_callback_t, int (*)(void *));
SA_TYPE(cr_hook_fn_t, void (*)(cr_hook_event_t));
SA(sizeof(cr_spinlock_t) == 4);
SA(sizeof(cr_checkpoint_handle_t) == 8);
SA(sizeof(cr_restart_handle_t) == 8);
SA(sizeof(cr_bool_t) == 8);
SA(sizeof(cr_scope_t) == 4);
SA(sizeof(cr_format_t) == 4);
SA(sizeof(cr_hook_event_t) == 4);
SA(IS_TYPE(CR_HOOK_FN_ERROR, cr_hook_fn_t));

/* cr_checkpoint_args_t (28 bytes); the struct tag exists too, as in BLCR. */
SA(sizeof(cr_checkpoint_args_t) == 28);
SA(_Alignof(cr_checkpoint_args_t) == 4);
SA(IS_TYPE((struct cr_checkpoint_args *)0, cr_checkpoint_args_t *));
SA_FIELD(cr_checkpoint_args_t, cr_version, 0, cr_version_t);
SA_FIELD(cr_checkpoint_args_t, cr_scope, 4, cr_scope_t);
SA_FIELD(cr_checkpoint_args_t, cr_target, 8, pid_t);
SA_FIELD(cr_checkpoint_args_t, cr_fd, 12, int);
SA_FIELD(cr_checkpoint_args_t, cr_signal, 16, int);
SA_FIELD(cr_checkpoint_args_t, cr_timeout, 20, unsigned int);
SA_FIELD(cr_checkpoint_args_t, cr_flags, 24, unsigned int);

/* cr_restart_args_t (24 bytes) */
SA(sizeof(cr_restart_args_t) == 24);
SA(_Alignof(cr_restart_args_t) == 8);
SA(IS_TYPE((struct cr_restart_args *)0, cr_restart_args_t *));
SA_FIELD(cr_restart_args_t, cr_version, 0, cr_version_t);
SA_FIELD(cr_restart_args_t, cr_fd, 4, int);
SA_FIELD(cr_restart_args_t, cr_signal, 8, int);
SA_FIELD(cr_restart_args_t, cr_flags, 12, unsigned int);
SA_FIELD(cr_restart_args_t, cr_relocate, 16, struct cr_rstrt_relocate *);

/* struct cr_checkpoint_info (32 bytes) */
SA(sizeof(struct cr_checkpoint_info) == 32);
SA_FIELD(struct cr_checkpoint_info, signal, 0, int);
SA_FIELD(struct cr_checkpoint_info, dest, 8, const char *);
SA_FIELD(struct cr_checkpoint_info, requester, 16, pid_t);
SA_FIELD(struct cr_checkpoint_info, target, 20, pid_t);
SA_FIELD(struct cr_checkpoint_info, scope, 24, cr_scope_t);

/* struct cr_restart_info (16 bytes) */
SA(sizeof(struct cr_restart_info) == 16);
SA_FIELD(struct cr_restart_info, requester, 0, pid_t);
SA_FIELD(struct cr_restart_info, src, 8, const char *);

/* relocations: pair 16 bytes, header 8 with path[] at 8 */
SA(sizeof(struct cr_rstrt_relocate_pair) == 16);
SA_FIELD(struct cr_rstrt_relocate_pair, oldpath, 0, const char *);
SA_FIELD(struct cr_rstrt_relocate_pair, newpath, 8, const char *);
SA(sizeof(struct cr_rstrt_relocate) == 8);
SA_FIELD(struct cr_rstrt_relocate, count, 0, unsigned int);
SA(offsetof(struct cr_rstrt_relocate, path) == 8);
SA(IS_TYPE(&((struct cr_rstrt_relocate *)0)->path[0], struct cr_rstrt_relocate_pair *));

/* Kernel-facing structs (BLCR's blcr_common.h) */
SA(sizeof(struct cr_chkpt_args) == 28);
SA_FIELD(struct cr_chkpt_args, cr_target, 0, pid_t);
SA_FIELD(struct cr_chkpt_args, cr_scope, 4, cr_scope_t);
SA_FIELD(struct cr_chkpt_args, cr_fd, 8, int);
SA_FIELD(struct cr_chkpt_args, cr_secs, 12, unsigned int);
SA_FIELD(struct cr_chkpt_args, dump_format, 16, cr_format_t);
SA_FIELD(struct cr_chkpt_args, signal, 20, int);
SA_FIELD(struct cr_chkpt_args, flags, 24, unsigned int);

SA(sizeof(struct cr_fwd_args) == 8);
SA_FIELD(struct cr_fwd_args, cr_target, 0, pid_t);
SA_FIELD(struct cr_fwd_args, cr_scope, 4, cr_scope_t);

SA(sizeof(struct cr_rstrt_args) == 24);
SA_FIELD(struct cr_rstrt_args, cr_fd, 0, int);
SA_FIELD(struct cr_rstrt_args, signal, 4, int);
SA_FIELD(struct cr_rstrt_args, relocate, 8, struct cr_rstrt_relocate *);
SA_FIELD(struct cr_rstrt_args, flags, 16, unsigned int);

SA(sizeof(struct cr_procs_tbl) == 8);
SA_FIELD(struct cr_procs_tbl, threads, 0, int);
SA_FIELD(struct cr_procs_tbl, clone_flags, 4, int);

SA(sizeof(struct cr_chkpt_info) == 24);
SA_FIELD(struct cr_chkpt_info, requester, 0, pid_t);
SA_FIELD(struct cr_chkpt_info, target, 4, pid_t);
SA_FIELD(struct cr_chkpt_info, scope, 8, int);
SA_FIELD(struct cr_chkpt_info, signal, 12, int);
SA_FIELD(struct cr_chkpt_info, dest, 16, char *);

SA(sizeof(struct cr_log_args) == 16);
SA_FIELD(struct cr_log_args, len, 0, unsigned int);
SA_FIELD(struct cr_log_args, buf, 8, char *);

/* ======================================================================
 * 1.5 The 38 functions: exact types (unevaluated, so no link needed)
 * ====================================================================== */
#define SA_FN(f, T) SA(IS_TYPE(&f, T))
SA_FN(cr_init, cr_client_id_t (*)(void));
SA_FN(cri_init_checkpoint_args_t, int (*)(cr_version_t, cr_checkpoint_args_t *));
SA_FN(cr_request_checkpoint, int (*)(cr_checkpoint_args_t *, cr_checkpoint_handle_t *));
SA_FN(cr_forward_checkpoint, int (*)(cr_scope_t, pid_t));
SA_FN(cr_wait_checkpoint, int (*)(cr_checkpoint_handle_t *, struct timeval *));
SA_FN(cr_log_checkpoint, int (*)(cr_checkpoint_handle_t *, unsigned int, char *));
SA_FN(cr_reap_checkpoint, int (*)(cr_checkpoint_handle_t *));
SA_FN(cr_poll_checkpoint_msg, int (*)(cr_checkpoint_handle_t *, struct timeval *, char **));
SA_FN(cr_poll_checkpoint, int (*)(cr_checkpoint_handle_t *, struct timeval *));
SA_FN(cri_init_restart_args_t, int (*)(cr_version_t, cr_restart_args_t *));
SA_FN(cr_request_restart, int (*)(cr_restart_args_t *, cr_restart_handle_t *));
SA_FN(cr_wait_restart, int (*)(cr_restart_handle_t *, struct timeval *));
SA_FN(cr_log_restart, int (*)(cr_restart_handle_t *, unsigned int, char *));
SA_FN(cr_reap_restart, int (*)(cr_restart_handle_t *));
SA_FN(cr_poll_restart_msg, int (*)(cr_restart_handle_t *, struct timeval *, char **));
SA_FN(cr_poll_restart, int (*)(cr_restart_handle_t *, struct timeval *));
SA_FN(cr_register_callback, cr_callback_id_t (*)(cr_callback_t, void *, int));
SA_FN(cr_replace_callback, int (*)(cr_callback_id_t, cr_callback_t, void *, int));
SA_FN(cr_replace_self, int (*)(cr_callback_t, void *, int));
SA_FN(cr_enter_cs, int (*)(cr_client_id_t));
SA_FN(cr_tryenter_cs, int (*)(cr_client_id_t));
SA_FN(cr_leave_cs, int (*)(cr_client_id_t));
SA_FN(cr_status, int (*)(void));
SA_FN(cr_checkpoint, int (*)(int));
SA_FN(cr_get_checkpoint_info, const struct cr_checkpoint_info *(*)(void));
SA_FN(cr_get_restart_info, const struct cr_restart_info *(*)(void));
SA_FN(cr_spinlock_init, void (*)(cr_spinlock_t *));
SA_FN(cr_spinlock_lock, void (*)(cr_spinlock_t *));
SA_FN(cr_spinlock_unlock, void (*)(cr_spinlock_t *));
SA_FN(cr_spinlock_trylock, int (*)(cr_spinlock_t *));
SA_FN(cr_strerror, const char *(*)(int));
SA_FN(cr_register_hook, cr_hook_fn_t (*)(cr_hook_event_t, cr_hook_fn_t));
SA_FN(cr_hold_ctrl, int (*)(int, int));
SA_FN(cr_inc_persist, int (*)(void));
SA_FN(cr_dec_persist, int (*)(void));
/* The three legacy calls are _CR_DEPRECATED (tests/abi.rs checks that using
 * them warns); naming them here must not. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
SA_FN(cr_request, void (*)(void));
SA_FN(cr_request_file, void (*)(const char *));
SA_FN(cr_request_fd, void (*)(int));
#pragma GCC diagnostic pop
/* Exported data (BLCR did not declare it in libcr.h; a declaration there
 * must agree with this one). */
extern const int cri_signum;
SA(IS_TYPE(&cri_signum, const int *));

/* ======================================================================
 * Runtime checks
 * ====================================================================== */
static int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL abi_layout: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    va_start(ap, fmt);
    fprintf(stderr, "FAIL abi_layout: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stdout);
    failures++;
}

#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond))                                                     \
            fail("%s", #cond);                                           \
    } while (0)

#define CHECK_STR(have, want)                                            \
    do {                                                                 \
        if (strcmp((have), (want)) != 0)                                 \
            fail("%s is \"%s\", want \"%s\"", #have, (have), (want));   \
    } while (0)

static void header_strings(void)
{
    CHECK_STR(STR(CR_RELEASE_PATCH), "6_b4");
    CHECK_STR(CR_RELEASE_VERSION, "0.8.6_b4");
    CHECK_STR(LIBCR_VERSION, "0.5.5");
    CHECK_STR(CR_CTRL_FILE, "/proc/checkpoint/ctrl");
    CHECK(strstr(STR(_CR_DEPRECATED), "deprecated") != NULL);
    CHECK((unsigned long)CR_HOOK_FN_ERROR == ~0UL);
}

#ifndef ABI_STATIC_ONLY
static void checkpoint_args_defaults(void)
{
    cr_checkpoint_args_t a;
    int rc;

    memset(&a, 0x5a, sizeof a);
    errno = 0;
    rc = cr_initialize_checkpoint_args_t(&a);
    CHECK(rc == 0);
    CHECK(a.cr_version == CR_CHECKPOINT_ARGS_VERSION);
    CHECK((int)a.cr_scope == -1);
    CHECK(a.cr_target == 0);
    CHECK(a.cr_fd == -1);
    CHECK(a.cr_signal == 0);
    CHECK(a.cr_timeout == 0);
    CHECK(a.cr_flags == 0);

    memset(&a, 0x5a, sizeof a);
    errno = 0;
    rc = cri_init_checkpoint_args_t(2, &a);
    CHECK(rc == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    rc = cri_init_checkpoint_args_t(0, &a);
    CHECK(rc == -1);
    CHECK(errno == EINVAL);
}

static void restart_args_defaults(void)
{
    cr_restart_args_t a;
    int rc;

    memset(&a, 0x5a, sizeof a);
    errno = 0;
    rc = cr_initialize_restart_args_t(&a);
    CHECK(rc == 0);
    CHECK(a.cr_version == CR_RESTART_ARGS_VERSION);
    CHECK(a.cr_fd == -1);
    CHECK(a.cr_signal == 0);
    CHECK(a.cr_flags == CR_RSTRT_RESTORE_PID);
    CHECK(a.cr_relocate == NULL);

    memset(&a, 0x5a, sizeof a);
    errno = 0;
    rc = cri_init_restart_args_t(2, &a);
    CHECK(rc == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    rc = cri_init_restart_args_t(0, &a);
    CHECK(rc == -1);
    CHECK(errno == EINVAL);
}

static void strerror_texts(void)
{
    static const int codes[] = {
        CR_ETEMPFAIL, CR_EPERMFAIL, CR_ENOSUPPORT, CR_EVERSION,  CR_EOMITTED, CR_EBADARCH,
        CR_EPTRACED,  CR_EPTRACER,  CR_ERSTRTABRT, CR_ERESTARTED, CR_ENOTCB,  CR_ENOINIT,
    };
    static const int plain[] = {ENOENT, EINVAL, EPERM, CR_MIN_ERRCODE, CR_MAX_ERRCODE, 0};
    char seen[sizeof codes / sizeof codes[0]][256];
    char libc[256];
    size_t i, j;

    /* Inside CR_MIN_ERRCODE < e < CR_MAX_ERRCODE: libcr's own, distinct texts
     * (strerror() only knows "Unknown error N"). */
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = cr_strerror(codes[i]);
        seen[i][0] = '\0';
        if (s == NULL || s[0] == '\0') {
            fail("cr_strerror(%d) is NULL or empty", codes[i]);
            continue;
        }
        snprintf(seen[i], sizeof seen[i], "%s", s);
        snprintf(libc, sizeof libc, "%s", strerror(codes[i]));
        if (strcmp(seen[i], libc) == 0)
            fail("cr_strerror(%d) is strerror's text \"%s\"", codes[i], libc);
        for (j = 0; j < i; j++) {
            if (seen[j][0] != '\0' && strcmp(seen[i], seen[j]) == 0)
                fail("cr_strerror(%d) and cr_strerror(%d) are both \"%s\"", codes[j], codes[i],
                     seen[i]);
        }
    }
    /* Outside: strerror's text. */
    for (i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        const char *s = cr_strerror(plain[i]);
        char have[256];
        snprintf(have, sizeof have, "%s", s ? s : "(null)");
        snprintf(libc, sizeof libc, "%s", strerror(plain[i]));
        if (s == NULL || strcmp(have, libc) != 0)
            fail("cr_strerror(%d) is \"%s\", strerror gives \"%s\"", plain[i], have, libc);
    }
}
#endif /* ABI_STATIC_ONLY */

int main(void)
{
    header_strings();
#ifndef ABI_STATIC_ONLY
    CHECK(cri_signum == CR_SIGNUM);
    checkpoint_args_defaults();
    restart_args_defaults();
    strerror_texts();
#endif
    if (failures) {
        printf("FAIL abi_layout: %d check(s) failed\n", failures);
        return 1;
    }
#ifdef ABI_STATIC_ONLY
    printf("PASS abi_layout (compile-time part only)\n");
#else
    printf("PASS abi_layout\n");
#endif
    return 0;
}
