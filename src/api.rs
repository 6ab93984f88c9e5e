//! BLCR's C API (`libcr.h`). This issue provides the entry every program calls first; the rest
//! of the API is built on the same agent.

use core::cell::Cell;
use libc::c_int;

/// Client id handed to callers of `cr_init` (BLCR: per-thread counter starting at 0).
pub type cr_client_id_t = c_int;

thread_local! {
    static NEXT_ID: Cell<c_int> = const { Cell::new(0) };
}

/// Initialises libcr in the calling thread (and the process, once) and returns a client id
/// (0, 1, 2, … per thread), or -1 with errno set if the checkpoint machinery cannot start.
#[no_mangle]
pub extern "C" fn cr_init() -> cr_client_id_t {
    let guarded = std::panic::catch_unwind(|| {
        crate::agent::init();
        NEXT_ID.with(|c| {
            let id = c.get();
            c.set(id + 1);
            id
        })
    });
    guarded.unwrap_or(-1)
}

/// Link anchor: `-u cr_link_me` pulls libcr (and its constructor) into static and `--as-needed`
/// links.
#[no_mangle]
#[used]
pub static cr_link_me: c_int = 0;

/// The checkpoint signal number, as BLCR exports it.
#[no_mangle]
#[used]
pub static cri_signum: c_int = crate::agent::SIGNUM;
