//! `libcr_run.so.0`: BLCR's preload stub for `cr_run` (see ../stub.rs).
#![allow(non_upper_case_globals)]

/// Whether processes with this stub are left out of every checkpoint.
const OMIT: bool = false;

/// Link anchor (`-u cr_run_link_me`).
#[no_mangle]
#[used]
pub static cr_run_link_me: core::ffi::c_int = 0;

include!("../../stub.rs");
