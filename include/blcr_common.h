/*
 * blcr_common.h: constants, types and structures of the BLCR libcr API
 * (libcr-rs, a user-space re-implementation of BLCR 0.8.6_b4).
 *
 * Applications normally include <libcr.h>, which includes this file and
 * declares the functions.  Including this file alone gives every constant,
 * type and structure (as BLCR's installed blcr_common.h did for its test
 * suite), but no function.  Values and x86-64 layouts are those of BLCR
 * 0.8.6_b4, so programs written for BLCR compile unchanged.
 *
 * Valid C (C99 and later) and C++.
 */
#ifndef BLCR_COMMON_H
#define BLCR_COMMON_H 1

#include <errno.h>     /* BLCR's libcr.h provided errno for the CR_E* checks */
#include <sys/types.h> /* pid_t */
#include <sys/time.h>  /* struct timeval (cr_wait_*, cr_poll_*) */

#include "blcr_errcodes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Attributes
 * ------------------------------------------------------------------------ */

/* Marks the legacy cr_request*() calls. */
#if defined(__GNUC__) && ((__GNUC__ > 3) || (__GNUC__ == 3 && __GNUC_MINOR__ >= 2))
#define _CR_DEPRECATED __attribute__((__deprecated__))
#else
#define _CR_DEPRECATED /* empty */
#endif

/* ------------------------------------------------------------------------
 * Versions
 * ------------------------------------------------------------------------ */

/* BLCR release implemented (printed by the tools' --version).  As in BLCR
 * 0.8.6_b4, CR_RELEASE_PATCH is the bare token 6_b4 (not an integer). */
#define CR_RELEASE_MAJOR 0
#define CR_RELEASE_MINOR 8
#define CR_RELEASE_PATCH 6_b4
#define CR_RELEASE_VERSION "0.8.6_b4"

/* Library interface version; the soname major is LIBCR_MAJOR (libcr.so.0). */
#define LIBCR_MAJOR 0
#define LIBCR_MINOR 5
#define LIBCR_PATCH 5
#define LIBCR_VERSION "0.5.5"

/* Kernel interface version of BLCR 0.8.6_b4 (kept for compatibility). */
#define CR_MODULE_MAJOR 0
#define CR_MODULE_MINOR 10
#define CR_MODULE_PATCH 3
#define CR_MODULE_VERSION "0.10.3"

/* Versions of the argument structures understood by cri_init_*_args_t(). */
#define CR_CHECKPOINT_ARGS_VERSION 1
#define CR_RESTART_ARGS_VERSION 1

/* ------------------------------------------------------------------------
 * Miscellaneous constants
 * ------------------------------------------------------------------------ */

/* Signal used to deliver checkpoint requests: the first real-time signal
 * glibc gives out (from the top), so applications see SIGRTMAX == 63. */
#define CR_SIGNUM 64

/* Maximum number of callbacks per list (thread list, or one thread's
 * signal list). */
#define CR_MAX_CALLBACKS 0x1FFFFFF

/* Special cr_fd value: write the context file in the requester's cwd. */
#define CR_DEST_CWD (-4096)

/* BLCR's kernel control node (not used by libcr-rs, kept for reference). */
#define CR_CTRL_FILE "/proc/checkpoint/ctrl"

/* Context flags of cr_register_callback(), cr_replace_callback() and
 * cr_replace_self(); callback ids carry the same bit. */
#define CR_SIGNAL_CONTEXT 0x2000000
#define CR_THREAD_CONTEXT 0x4000000

/* ------------------------------------------------------------------------
 * Scalar types
 * ------------------------------------------------------------------------ */

typedef int cr_version_t;                  /* version of an args structure */
typedef int cr_client_id_t;                /* returned by cr_init() */
typedef int cr_callback_id_t;              /* returned by cr_register_callback() */
typedef unsigned int cr_spinlock_t;        /* signal-safe spinlock */
typedef unsigned long cr_checkpoint_handle_t; /* opaque request handle */
typedef unsigned long cr_restart_handle_t;    /* opaque request handle */
typedef long cr_bool_t;                    /* boolean for atomic bit operations */

/* A callback: receives the arg given at registration; returns 0 on success
 * (non-zero aborts the checkpoint as a permanent failure). */
typedef int (*cr_callback_t)(void *);

/* Client id to use for critical-section calls made inside callbacks. */
#define CR_ID_CALLBACK ((cr_client_id_t)(-1))

/* Initializer for statically allocated spinlocks (unlocked). */
#define CR_SPINLOCK_INITIALIZER 0U

/* ------------------------------------------------------------------------
 * Enumerations and flags
 * ------------------------------------------------------------------------ */

/* Format of context files (only one). */
typedef enum {
    cr_format_vmadump = 0
} cr_format_t;

/* Scope of a checkpoint request. */
typedef enum {
    CR_SCOPE_PROC = 0, /* all threads of one process */
    CR_SCOPE_PGRP = 1, /* all processes of a process group */
    CR_SCOPE_SESS = 2, /* all processes of a session */
    CR_SCOPE_TREE = 3  /* a process and all its non-orphaned descendants */
} cr_scope_t;

/* Flags of cr_checkpoint(), called inside a callback. */
enum {
    CR_CHECKPOINT_READY = 0,        /* go on with the checkpoint */
    CR_CHECKPOINT_TEMP_FAILURE = 1, /* cancel it; everyone continues */
    CR_CHECKPOINT_PERM_FAILURE = 2, /* cancel it; every process is killed */
    CR_CHECKPOINT_OMIT = 4,         /* leave this process out of it */
    _CR_CHECKPOINT_STUB = 0x4000    /* internal: caller is a stub handler */
};
#define CR_CHECKPOINT_ABORT_MASK \
    (CR_CHECKPOINT_TEMP_FAILURE | CR_CHECKPOINT_PERM_FAILURE | CR_CHECKPOINT_OMIT)
/* Failure with a user error code v (1..65535; 0 = the default code):
 * flag | (v << 16), an int (shifted as unsigned so that v >= 32768 does not
 * overflow). */
#define CR_CHECKPOINT_TEMP_FAILURE_CODE(_v) \
    (CR_CHECKPOINT_TEMP_FAILURE | (int)((unsigned int)(_v) << 16))
#define CR_CHECKPOINT_PERM_FAILURE_CODE(_v) \
    (CR_CHECKPOINT_PERM_FAILURE | (int)((unsigned int)(_v) << 16))

/* cr_flags of a checkpoint request (cr_checkpoint_args_t). */
#define CR_CHKPT_PROHIBIT_SELF 0x00000001 /* EDEADLK if the requester is in scope */
#define CR_CHKPT_PTRACED_ALLOW 0x00000002 /* checkpoint ptraced processes too */
#define CR_CHKPT_PTRACED_SKIP 0x00000004  /* leave ptraced processes out */
#define CR_CHKPT_PTRACER_SKIP 0x00000008  /* leave ptracing processes out */
#define CR_CHKPT_ASYNC_ERR 0x00000010     /* report errors at reap time */
#define CR_CHKPT_DUMP_EXEC 0x00000200     /* save the executable */
#define CR_CHKPT_DUMP_PRIVATE 0x00000400  /* save private file mappings */
#define CR_CHKPT_DUMP_SHARED 0x00000800   /* save shared file mappings */
#define CR_CHKPT_DUMP_ALL \
    (CR_CHKPT_DUMP_EXEC | CR_CHKPT_DUMP_PRIVATE | CR_CHKPT_DUMP_SHARED)

/* cr_flags of a restart request (cr_restart_args_t). */
#define CR_RSTRT_ASYNC_ERR 0x00000001    /* report errors at reap time */
#define CR_RSTRT_RESTORE_PID 0x00000002  /* restore pids (the default) */
#define CR_RSTRT_RESTORE_PGID 0x00000004 /* restore process group ids */
#define CR_RSTRT_RESTORE_SID 0x00000008  /* restore session ids */

/* Return codes of cr_poll_checkpoint_msg() / cr_poll_checkpoint(). */
#define CR_POLL_CHKPT_ERR_PRE (-1)  /* waiting failed */
#define CR_POLL_CHKPT_ERR_POST (-2) /* the request failed (see errno) */
#define CR_POLL_CHKPT_ERR_LOG (-3)  /* fetching the log failed */

/* Return codes of cr_poll_restart_msg() / cr_poll_restart(). */
#define CR_POLL_RSTRT_ERR_PRE (-1)
#define CR_POLL_RSTRT_ERR_POST (-2)
#define CR_POLL_RSTRT_ERR_LOG (-3)

/* Values returned by cr_status(). */
enum {
    CR_STATE_IDLE = 0,    /* no checkpoint pending or active */
    CR_STATE_PENDING = 1, /* a checkpoint request is pending */
    CR_STATE_ACTIVE = 2   /* inside a callback */
};

/* flags of cr_hold_ctrl(). */
#define CR_HOLD_READ (-1) /* only read the current value */
#define CR_HOLD_NONE 0    /* do not hold */
#define CR_HOLD_CONT 1    /* hold after a checkpoint (continue) */
#define CR_HOLD_RSTRT 2   /* hold after a restart */
#define CR_HOLD_BOTH (CR_HOLD_CONT | CR_HOLD_RSTRT)
#define CR_HOLD_DFLT 4    /* thread scope only: use the INIT scope's value */

/* scope of cr_hold_ctrl(). */
enum {
    CR_HOLD_SCOPE_THREAD = 0, /* the calling thread */
    CR_HOLD_SCOPE_INIT = 1,   /* threads that called cr_init() */
    CR_HOLD_SCOPE_UNINIT = 2  /* threads that did not */
};

/* Events of cr_register_hook(). */
typedef enum {
    CR_HOOK_CONT_SIGNAL_CONTEXT = 0,  /* continuing, thread with callbacks/CS */
    CR_HOOK_CONT_THREAD_CONTEXT = 1,  /* continuing, the callback thread */
    CR_HOOK_CONT_NO_CALLBACKS = 2,    /* continuing, thread without callbacks */
    CR_HOOK_RSTRT_SIGNAL_CONTEXT = 3, /* restarted, thread with callbacks/CS */
    CR_HOOK_RSTRT_THREAD_CONTEXT = 4, /* restarted, the callback thread */
    CR_HOOK_RSTRT_NO_CALLBACKS = 5,   /* restarted, thread without callbacks */
    CR_NUM_HOOKS = 6                  /* number of events (not an event) */
} cr_hook_event_t;

/* A hook (like a signal handler: receives the event). */
typedef void (*cr_hook_fn_t)(cr_hook_event_t);

/* Error return of cr_register_hook(). */
#define CR_HOOK_FN_ERROR ((cr_hook_fn_t)(~0UL))

/* ------------------------------------------------------------------------
 * Structures
 * ------------------------------------------------------------------------ */

/* Path relocation for a restart: files under oldpath are opened under
 * newpath instead (x86-64: 16 bytes). */
struct cr_rstrt_relocate_pair {
    const char *oldpath;
    const char *newpath;
};

/* A list of relocations, allocated with CR_RSTRT_RELOCATE_SIZE(count)
 * (x86-64: 8-byte header, path[] at offset 8). */
struct cr_rstrt_relocate {
    unsigned int count;
#if defined(__GNUC__) && (defined(__cplusplus) || !defined(__STDC_VERSION__) || __STDC_VERSION__ < 199901L)
    /* C++ and C90 have no flexible array members: a GNU extension there. */
    __extension__
#endif
    struct cr_rstrt_relocate_pair path[]; /* count entries */
};

/* Bytes to allocate for a struct cr_rstrt_relocate with _cnt pairs. */
#define CR_RSTRT_RELOCATE_SIZE(_cnt) \
    (sizeof(struct cr_rstrt_relocate) + (_cnt) * sizeof(struct cr_rstrt_relocate_pair))

/* Maximum number of relocation pairs. */
#define CR_MAX_RSTRT_RELOC 16

/* Arguments of cr_request_checkpoint(); initialise with
 * cr_initialize_checkpoint_args_t() first (x86-64: 28 bytes). */
typedef struct cr_checkpoint_args {
    cr_version_t cr_version; /* CR_CHECKPOINT_ARGS_VERSION (set by the initializer) */
    cr_scope_t cr_scope;     /* scope of the request (initializer: -1, must be set) */
    pid_t cr_target;         /* pid, pgid or sid; 0 = self */
    int cr_fd;               /* destination (initializer: -1, must be set) */
    int cr_signal;           /* signal sent after the checkpoint; 0 = none */
    unsigned int cr_timeout; /* seconds; 0 = unbounded */
    unsigned int cr_flags;   /* CR_CHKPT_* */
} cr_checkpoint_args_t;

/* Arguments of cr_request_restart(); initialise with
 * cr_initialize_restart_args_t() first (x86-64: 24 bytes). */
typedef struct cr_restart_args {
    cr_version_t cr_version;               /* CR_RESTART_ARGS_VERSION */
    int cr_fd;                             /* source (initializer: -1, must be set) */
    int cr_signal;                         /* signal sent after the restart; 0 = none */
    unsigned int cr_flags;                 /* CR_RSTRT_* (initializer: RESTORE_PID) */
    struct cr_rstrt_relocate *cr_relocate; /* path relocations, or NULL */
} cr_restart_args_t;

/* Returned by cr_get_checkpoint_info() (x86-64: 32 bytes). */
struct cr_checkpoint_info {
    int signal;        /* signal sent after the checkpoint, 0 = none */
    const char *dest;  /* path of the context file: "" if not in the file
                        * system, a path ending in "/." for a directory */
    pid_t requester;   /* pid of the requester */
    pid_t target;      /* pid, pgid or sid requested */
    cr_scope_t scope;  /* scope of the request */
};

/* Returned by cr_get_restart_info() (x86-64: 16 bytes). */
struct cr_restart_info {
    pid_t requester;   /* pid of the restarter (cr_restart) */
    const char *src;   /* path of the context file */
};

/* Initialise argument structures with the defaults of this header's
 * version (returns 0, or -1 with errno EINVAL). */
#define cr_initialize_checkpoint_args_t(_cr_args) \
    cri_init_checkpoint_args_t(CR_CHECKPOINT_ARGS_VERSION, (_cr_args))
#define cr_initialize_restart_args_t(_cr_args) \
    cri_init_restart_args_t(CR_RESTART_ARGS_VERSION, (_cr_args))

/* ------------------------------------------------------------------------
 * BLCR's kernel-interface structures (kept because BLCR's blcr_common.h
 * had them; libcr-rs does not use them).
 * ------------------------------------------------------------------------ */

/* A checkpoint request (x86-64: 28 bytes). */
struct cr_chkpt_args {
    pid_t cr_target;         /* who to checkpoint */
    cr_scope_t cr_scope;     /* scope */
    int cr_fd;               /* destination */
    unsigned int cr_secs;    /* timeout in seconds; 0 = unbounded */
    cr_format_t dump_format; /* cr_format_vmadump */
    int signal;              /* sent after the checkpoint */
    unsigned int flags;      /* CR_CHKPT_* */
};

/* cr_forward_checkpoint() arguments (x86-64: 8 bytes). */
struct cr_fwd_args {
    pid_t cr_target;
    cr_scope_t cr_scope;
};

/* A restart request (x86-64: 24 bytes). */
struct cr_rstrt_args {
    int cr_fd;                          /* source */
    int signal;                         /* sent after the restart */
    struct cr_rstrt_relocate *relocate; /* path relocations, or NULL */
    unsigned int flags;                 /* CR_RSTRT_* */
};

/* A process to create during a restart (x86-64: 8 bytes). */
struct cr_procs_tbl {
    int threads;
    int clone_flags;
};

/* Checkpoint info as the kernel returned it; dest is a caller buffer of at
 * least PATH_MAX bytes (x86-64: 24 bytes). */
struct cr_chkpt_info {
    pid_t requester;
    pid_t target;
    int scope;
    int signal;
    char *dest;
};

/* Request for a request's error/warning log (x86-64: 16 bytes). */
struct cr_log_args {
    unsigned int len;
    char *buf;
};

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BLCR_COMMON_H */
