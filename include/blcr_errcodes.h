/*
 * blcr_errcodes.h: BLCR-specific error numbers (libcr-rs).
 *
 * These are private errno values, placed well above the kernel's own
 * (Linux uses 1..133 for errno, and 512..530 for kernel-internal codes).
 * They are returned through errno by the libcr functions, negated by
 * cr_checkpoint(), and (low 8 bits) used as exit codes by the tools.
 * cr_strerror() knows their texts; for any other value it returns
 * strerror(value).
 *
 * As in BLCR the codes are enumerators of an anonymous enum (so they are
 * usable in C and C++ expressions, but not in #if), bracketed by the
 * sentinels CR_MIN_ERRCODE and CR_MAX_ERRCODE:
 *     CR_MIN_ERRCODE < code < CR_MAX_ERRCODE
 * The list is append-only: existing values never change.
 */
#ifndef BLCR_ERRCODES_H
#define BLCR_ERRCODES_H 1

enum {
    CR_MIN_ERRCODE = 2353, /* sentinel: not an error code */
    CR_ETEMPFAIL = 2354,   /* temporary failure: checkpoint cancelled, job continues */
    CR_EPERMFAIL = 2355,   /* permanent failure: checkpoint cancelled, job killed */
    CR_ENOSUPPORT = 2356,  /* checkpoint support not linked into a target process */
    CR_EVERSION = 2357,    /* requested interface version not supported */
    CR_EOMITTED = 2358,    /* process omitted at a callback's request */
    CR_EBADARCH = 2359,    /* context file does not match this architecture */
    CR_EPTRACED = 2360,    /* a target is being ptraced */
    CR_EPTRACER = 2361,    /* a target is ptracing other processes */
    CR_ERSTRTABRT = 2362,  /* restart aborted, job killed */
    CR_ERESTARTED = 2363,  /* request invalid across a restart (self-checkpoint restarted) */
    CR_ENOTCB = 2364,      /* call only valid inside a checkpoint callback */
    CR_ENOINIT = 2365,     /* calling thread has not called cr_init() */
    CR_MAX_ERRCODE = 2366  /* sentinel: one past the last code */
};

#endif /* BLCR_ERRCODES_H */
