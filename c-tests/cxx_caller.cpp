/*
 * cxx_caller.cpp - libcr's headers and library used from C++ (like BLCR's
 * bonus test "testcxx"): every typedef, the macros in constant expressions,
 * callbacks given as an extern "C" function and as a captureless lambda,
 * and all 38 functions referenced with C linkage (the link fails if
 * libcr.h lacks extern "C" or the library lacks a symbol).  No checkpoint
 * is taken.
 *
 * Build (from the repository root, LIBDIR = directory holding libcr.so):
 *   g++ -std=c++17 -Wall -Wextra -Werror -I include -o cxx_caller c-tests/cxx_caller.cpp \
 *       -L$LIBDIR -lcr -Wl,-rpath,$LIBDIR
 * Run: ./cxx_caller   -> "PASS cxx_caller", exit 0 (or "FAIL cxx_caller: ..." lines, exit 1)
 */
#include <libcr.h>
#include <blcr_common.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <type_traits>

/* ---- compile time: typedefs and constants as seen by C++ ---- */
static_assert(std::is_same<cr_version_t, int>::value, "cr_version_t");
static_assert(std::is_same<cr_client_id_t, int>::value, "cr_client_id_t");
static_assert(std::is_same<cr_callback_id_t, int>::value, "cr_callback_id_t");
static_assert(std::is_same<cr_spinlock_t, unsigned int>::value, "cr_spinlock_t");
static_assert(std::is_same<cr_checkpoint_handle_t, unsigned long>::value, "handle");
static_assert(std::is_same<cr_restart_handle_t, unsigned long>::value, "handle");
static_assert(std::is_same<cr_bool_t, long>::value, "cr_bool_t");
static_assert(std::is_same<cr_callback_t, int (*)(void *)>::value, "cr_callback_t");
static_assert(std::is_same<cr_hook_fn_t, void (*)(cr_hook_event_t)>::value, "cr_hook_fn_t");
static_assert(std::is_enum<cr_scope_t>::value && sizeof(cr_scope_t) == 4, "cr_scope_t");
static_assert(std::is_enum<cr_hook_event_t>::value && sizeof(cr_hook_event_t) == 4, "hooks");
static_assert(std::is_enum<cr_format_t>::value, "cr_format_t");
static_assert(std::is_same<struct cr_checkpoint_args, cr_checkpoint_args_t>::value, "tag");
static_assert(std::is_same<struct cr_restart_args, cr_restart_args_t>::value, "tag");
static_assert(std::is_standard_layout<cr_checkpoint_args_t>::value, "layout");
static_assert(sizeof(cr_checkpoint_args_t) == 28, "cr_checkpoint_args_t");
static_assert(sizeof(cr_restart_args_t) == 24, "cr_restart_args_t");
static_assert(sizeof(struct cr_checkpoint_info) == 32, "cr_checkpoint_info");
static_assert(sizeof(struct cr_restart_info) == 16, "cr_restart_info");
static_assert(sizeof(struct cr_rstrt_relocate_pair) == 16, "relocate pair");
static_assert(sizeof(struct cr_rstrt_relocate) == 8, "relocate header");
static_assert(CR_RSTRT_RELOCATE_SIZE(3) == 8 + 3 * 16, "CR_RSTRT_RELOCATE_SIZE");
static_assert(CR_CHECKPOINT_TEMP_FAILURE_CODE(5) == (1 | (5 << 16)), "TEMP_FAILURE_CODE");
static_assert(CR_CHECKPOINT_PERM_FAILURE_CODE(5) == (2 | (5 << 16)), "PERM_FAILURE_CODE");
static_assert(CR_CHECKPOINT_ABORT_MASK == 7, "ABORT_MASK");
static_assert(CR_SIGNAL_CONTEXT == 0x2000000 && CR_THREAD_CONTEXT == 0x4000000, "contexts");
static_assert(CR_ID_CALLBACK == -1, "CR_ID_CALLBACK");
static_assert(CR_ENOINIT == 2365 && CR_MAX_ERRCODE == 2366, "errcodes");
static_assert(CR_NUM_HOOKS == 6, "hooks");
static_assert(CR_SIGNUM == 64, "CR_SIGNUM");
static_assert(std::is_same<decltype(cr_strerror(0)), const char *>::value, "cr_strerror");
static_assert(std::is_same<decltype(cr_get_checkpoint_info()), const cr_checkpoint_info *>::value,
              "cr_get_checkpoint_info");

/* A namespace-scope spinlock with the static initializer. */
static cr_spinlock_t static_lock = CR_SPINLOCK_INITIALIZER;

static int failures;

static void fail(const char *what, long have)
{
    std::printf("FAIL cxx_caller: %s (got %ld, errno %d)\n", what, have, errno);
    std::fprintf(stderr, "FAIL cxx_caller: %s (got %ld, errno %d)\n", what, have, errno);
    failures++;
}

#define EXPECT(cond, have)                                               \
    do {                                                                 \
        if (!(cond))                                                     \
            fail(#cond, static_cast<long>(have));                        \
    } while (0)

/* A signal-context callback with C linkage. */
extern "C" int cxx_extern_callback(void *arg)
{
    int *calls = static_cast<int *>(arg);
    ++*calls;
    const int rc = cr_checkpoint(CR_CHECKPOINT_READY);
    return rc < 0 ? 1 : 0;
}

extern "C" void cxx_hook(cr_hook_event_t event)
{
    (void)event;
}

/* Every function of the API, with C linkage: referencing them makes the
 * linker resolve each symbol. */
typedef void (*any_fn)(void);
template <typename F> static any_fn fn(F f)
{
    return reinterpret_cast<any_fn>(f);
}

static int count_api_functions()
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    static any_fn const volatile table[] = {
        fn(&cr_init),
        fn(&cri_init_checkpoint_args_t),
        fn(&cr_request_checkpoint),
        fn(&cr_forward_checkpoint),
        fn(&cr_wait_checkpoint),
        fn(&cr_log_checkpoint),
        fn(&cr_reap_checkpoint),
        fn(&cr_poll_checkpoint_msg),
        fn(&cr_poll_checkpoint),
        fn(&cri_init_restart_args_t),
        fn(&cr_request_restart),
        fn(&cr_wait_restart),
        fn(&cr_log_restart),
        fn(&cr_reap_restart),
        fn(&cr_poll_restart_msg),
        fn(&cr_poll_restart),
        fn(&cr_register_callback),
        fn(&cr_replace_callback),
        fn(&cr_replace_self),
        fn(&cr_enter_cs),
        fn(&cr_tryenter_cs),
        fn(&cr_leave_cs),
        fn(&cr_status),
        fn(&cr_checkpoint),
        fn(&cr_get_checkpoint_info),
        fn(&cr_get_restart_info),
        fn(&cr_spinlock_init),
        fn(&cr_spinlock_lock),
        fn(&cr_spinlock_unlock),
        fn(&cr_spinlock_trylock),
        fn(&cr_strerror),
        fn(&cr_register_hook),
        fn(&cr_hold_ctrl),
        fn(&cr_inc_persist),
        fn(&cr_dec_persist),
        fn(&cr_request),
        fn(&cr_request_file),
        fn(&cr_request_fd),
    };
#pragma GCC diagnostic pop
    int n = 0;
    for (any_fn const volatile &f : table)
        n += f != nullptr;
    return n;
}

int main()
{
    EXPECT(count_api_functions() == 38, count_api_functions());

    const cr_client_id_t id = cr_init();
    EXPECT(id >= 0, id);

    EXPECT(cr_status() == CR_STATE_IDLE, cr_status());

    /* Callbacks: an extern "C" function and a captureless lambda. */
    int extern_calls = 0;
    int lambda_calls = 0;
    const cr_callback_id_t cb1 =
        cr_register_callback(cxx_extern_callback, &extern_calls, CR_SIGNAL_CONTEXT);
    EXPECT(cb1 == (CR_SIGNAL_CONTEXT | 0), cb1);
    const cr_callback_t lambda = [](void *arg) -> int {
        ++*static_cast<int *>(arg);
        return cr_checkpoint(CR_CHECKPOINT_READY) < 0 ? 1 : 0;
    };
    const cr_callback_id_t cb2 = cr_register_callback(lambda, &lambda_calls, CR_SIGNAL_CONTEXT);
    EXPECT(cb2 == (CR_SIGNAL_CONTEXT | 1), cb2);
    EXPECT(extern_calls == 0 && lambda_calls == 0, extern_calls + lambda_calls);

    /* Not in a callback: cr_checkpoint() returns -CR_ENOTCB itself. */
    EXPECT(cr_checkpoint(CR_CHECKPOINT_READY) == -CR_ENOTCB, cr_checkpoint(0));
    EXPECT(cr_get_checkpoint_info() == nullptr, 0);
    EXPECT(cr_get_restart_info() == nullptr, 0);

    /* Critical sections. */
    EXPECT(cr_enter_cs(id) == 0, -1);
    EXPECT(cr_status() == CR_STATE_IDLE, cr_status());
    EXPECT(cr_tryenter_cs(id) == 0, -1);
    EXPECT(cr_leave_cs(id) == 0, -1);
    EXPECT(cr_leave_cs(id) == 0, -1);
    EXPECT(cr_status() == CR_STATE_IDLE, cr_status());

    /* Error texts. */
    const char *text = cr_strerror(CR_ENOINIT);
    EXPECT(text != nullptr && text[0] != '\0', 0);
    if (text != nullptr)
        EXPECT(std::strcmp(text, std::strerror(CR_ENOINIT)) != 0, 0);
    const char *noent = cr_strerror(ENOENT);
    EXPECT(noent != nullptr && std::strcmp(noent, std::strerror(ENOENT)) == 0, 0);

    /* Argument initialisers (macros) and the version typedef. */
    cr_checkpoint_args_t args;
    std::memset(&args, 0x5a, sizeof args);
    EXPECT(cr_initialize_checkpoint_args_t(&args) == 0, -1);
    EXPECT(args.cr_version == CR_CHECKPOINT_ARGS_VERSION, args.cr_version);
    EXPECT(static_cast<int>(args.cr_scope) == -1, args.cr_scope);
    EXPECT(args.cr_fd == -1 && args.cr_target == 0, args.cr_fd);
    args.cr_scope = CR_SCOPE_PROC;
    args.cr_flags = CR_CHKPT_PTRACED_ALLOW | CR_CHKPT_DUMP_ALL;
    const cr_version_t bad_version = CR_CHECKPOINT_ARGS_VERSION + 1;
    errno = 0;
    EXPECT(cri_init_checkpoint_args_t(bad_version, &args) == -1 && errno == EINVAL, errno);
    cr_restart_args_t rargs;
    std::memset(&rargs, 0x5a, sizeof rargs);
    EXPECT(cr_initialize_restart_args_t(&rargs) == 0, -1);
    EXPECT(rargs.cr_flags == CR_RSTRT_RESTORE_PID, rargs.cr_flags);
    EXPECT(rargs.cr_relocate == nullptr, 0);
    EXPECT(rargs.cr_fd == -1, rargs.cr_fd);

    /* Spinlocks. */
    cr_spinlock_t lock;
    cr_spinlock_init(&lock);
    cr_spinlock_lock(&lock);
    EXPECT(cr_spinlock_trylock(&lock) == 0, 1);
    cr_spinlock_unlock(&lock);
    EXPECT(cr_spinlock_trylock(&static_lock) != 0, 0);
    cr_spinlock_unlock(&static_lock);

    /* Hooks (signal-like: returns the previous one). */
    const cr_hook_fn_t none = cr_register_hook(CR_HOOK_CONT_NO_CALLBACKS, cxx_hook);
    EXPECT(none == nullptr, none != nullptr);
    const cr_hook_fn_t prev = cr_register_hook(CR_HOOK_CONT_NO_CALLBACKS, nullptr);
    EXPECT(prev == cxx_hook, prev != cxx_hook);
    EXPECT(cr_register_hook(CR_NUM_HOOKS, nullptr) == CR_HOOK_FN_ERROR, 0);

    /* The remaining typedefs. */
    cr_checkpoint_handle_t chandle = 0;
    cr_restart_handle_t rhandle = 0;
    cr_bool_t flag = 1;
    cr_format_t format = cr_format_vmadump;
    cr_scope_t scope = CR_SCOPE_TREE;
    struct cr_rstrt_relocate_pair pair = {"/old", "/new"};
    EXPECT(chandle == rhandle && flag == 1 && format == cr_format_vmadump &&
               scope == CR_SCOPE_TREE && std::strcmp(pair.newpath, "/new") == 0,
           0);

    if (failures) {
        std::printf("FAIL cxx_caller: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("PASS cxx_caller\n");
    return 0;
}
