//! `cr_strerror`: BLCR's texts for its own codes, the C library's for the rest.

use super::types::*;
use core::ffi::CStr;
use libc::{c_char, c_int};

/// BLCR's text for one of its codes (`CR_ETEMPFAIL..=CR_ENOINIT`).
pub fn blcr_text(e: c_int) -> Option<&'static CStr> {
    (CR_MIN_ERRCODE < e && e < CR_MAX_ERRCODE).then(|| ERROR_TEXT[(e - CR_ETEMPFAIL) as usize])
}

/// `cr_strerror`.
pub fn strerror(e: c_int) -> *const c_char {
    match blcr_text(e) {
        Some(t) => t.as_ptr(),
        // SAFETY: strerror returns a valid C string for any number.
        None => unsafe { libc::strerror(e) },
    }
}
