//! Soname of the stub, and the static unwinder (see build/static_unwinder.rs).
include!("../../build/static_unwinder.rs");

fn main() {
    link_static_unwinder();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcr_run.so.0");
    // Start-up and fork-child code is in `.text.hot.*` (issue 11, idle cost): kept together.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,keep-text-section-prefix");
}
