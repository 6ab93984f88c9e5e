//! Per-thread libcr state (what `cr_init` creates) and the errno helpers of the API.
//!
//! The thread-local slot is a plain pointer with a constant initialiser, so reading it is a
//! single `fs`-relative load — safe in the checkpoint signal handler. The state itself is heap
//! memory created in normal context by `cr_init` and freed by a pthread key destructor.

use super::types::*;
use core::cell::{Cell, UnsafeCell};
use libc::{c_int, c_void};

/// One registered callback.
#[derive(Clone, Copy, Debug)]
pub struct Callback {
    /// The function (None = disabled).
    pub func: cr_callback_t,
    /// Its argument.
    pub arg: *mut c_void,
    /// Registration flags.
    pub flags: c_int,
}

// SAFETY: the argument pointer belongs to the program, which decides its thread-safety (as in C).
unsafe impl Send for Callback {}

/// A callback list being run: where the nesting is and what the checkpoint returned.
///
/// Callbacks re-enter libcr (`cr_checkpoint`, `cr_replace_self`, …) through the thread's
/// pointer to this record while outer frames still use it, so every mutable field is a `Cell`
/// and the record is only ever shared (`&Level`).
pub struct Level {
    /// Snapshot of the list (thread context) or pointer into the thread's list (signal context).
    pub list: *const Callback,
    /// Number of entries.
    pub len: usize,
    /// Index of the next callback to run (counts down: LIFO), -1 = none left.
    pub next: Cell<isize>,
    /// Index of the callback running now.
    pub current: Cell<isize>,
    /// Whether the running callback already called `cr_checkpoint()`.
    pub entered: Cell<bool>,
    /// What the checkpoint returned (see `agent::quiesce::OUTCOME`), once it happened.
    pub result: Cell<Option<i64>>,
    /// Performs the actual checkpoint at the innermost level.
    pub checkpoint: fn(&Level) -> i64,
    /// Quiesce slot of the thread (signal context).
    pub slot: usize,
    /// Context bit of the list.
    pub context: c_int,
}

impl Level {
    /// A list about to run from its newest entry.
    pub fn new(
        list: *const Callback,
        len: usize,
        checkpoint: fn(&Level) -> i64,
        slot: usize,
        context: c_int,
    ) -> Level {
        Level {
            list,
            len,
            next: Cell::new(len as isize - 1),
            current: Cell::new(-1),
            entered: Cell::new(false),
            result: Cell::new(None),
            checkpoint,
            slot,
            context,
        }
    }
}

/// What `cr_init` sets up for a thread.
pub struct ThreadState {
    /// Next client id.
    pub next_id: Cell<c_int>,
    /// Signal-context callbacks of this thread. Changed only with the checkpoint signal blocked.
    pub sig_callbacks: UnsafeCell<Vec<Callback>>,
    /// The callback list running in this thread (null outside callbacks).
    pub level: Cell<*const Level>,
    /// Critical-section depth.
    pub cs_depth: Cell<u32>,
    /// `cr_inc_persist` count.
    pub persist: Cell<u32>,
    /// `cr_hold_ctrl` THREAD scope value.
    pub hold: Cell<c_int>,
    /// Whether this thread's last callbacks saw a restart (for `cr_get_restart_info`).
    pub saw_restart: Cell<bool>,
}

thread_local! {
    static CURRENT: Cell<*mut ThreadState> = const { Cell::new(core::ptr::null_mut()) };
}

#[link_section = ".data1"]
static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();

unsafe extern "C" fn free_state(p: *mut c_void) {
    let _ = CURRENT.try_with(|c| c.set(core::ptr::null_mut()));
    // SAFETY: p is the Box<ThreadState> pointer stored by `init_thread`.
    drop(unsafe { Box::from_raw(p as *mut ThreadState) });
}

/// The calling thread's state, if it called `cr_init` (async-signal-safe: read from the
/// pthread key, not from the Rust thread-local, whose first use in a thread allocates the
/// library's TLS block with malloc, which deadlocks in the checkpoint handler when the thread
/// was stopped inside malloc or fork; tests/faults.rs `checkpoint_during_fork_and_thread_churn`).
pub fn current() -> Option<&'static ThreadState> {
    let p = match KEY.get() {
        // SAFETY: reading our own key's value: no allocation, no lock.
        Some(&key) => unsafe { libc::pthread_getspecific(key) as *mut ThreadState },
        None => core::ptr::null_mut(),
    };
    // SAFETY: the pointer stays valid until the thread exits (key destructor).
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Creates the calling thread's state if needed; returns it.
pub fn init_thread() -> &'static ThreadState {
    if let Some(s) = current() {
        return s;
    }
    let key = *KEY.get_or_init(|| {
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: creating a key with a valid destructor.
        unsafe { libc::pthread_key_create(&mut k, Some(free_state)) };
        k
    });
    let state = Box::into_raw(Box::new(ThreadState {
        next_id: Cell::new(0),
        sig_callbacks: UnsafeCell::new(Vec::new()),
        level: Cell::new(core::ptr::null()),
        cs_depth: Cell::new(0),
        persist: Cell::new(0),
        hold: Cell::new(CR_HOLD_DFLT),
        saw_restart: Cell::new(false),
    }));
    // SAFETY: storing our pointer in our key.
    unsafe { libc::pthread_setspecific(key, state as *const c_void) };
    CURRENT.with(|c| c.set(state));
    // SAFETY: just created, never freed before thread exit.
    unsafe { &*state }
}

/// Forgets the calling thread's state (fork child: BLCR starts children with clean state).
#[link_section = ".text.hot.libcr_start"]
pub fn forget_thread() {
    // Without the key no thread has a state (and a fork child that touches no thread-local
    // skips glibc's allocation of this library's TLS block: issue 11, idle cost).
    if let Some(&key) = KEY.get() {
        // SAFETY: clearing our key; the memory is leaked deliberately (it may be mid-use).
        unsafe { libc::pthread_setspecific(key, core::ptr::null()) };
        let _ = CURRENT.try_with(|c| c.set(core::ptr::null_mut()));
    }
}

/// Sets errno.
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Returns -1 with errno set.
pub fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

/// The calling thread's state, or `CR_ENOINIT`.
pub fn require() -> Result<&'static ThreadState, c_int> {
    current().ok_or(CR_ENOINIT)
}
