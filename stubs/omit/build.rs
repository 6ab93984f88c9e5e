//! Soname of the stub, and the static unwinder (see build/static_unwinder.rs).
include!("../../build/static_unwinder.rs");

fn main() {
    link_static_unwinder();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcr_omit.so.0");
    // What start-up and the fork child run and write, gathered on few pages (issue 11, idle
    // cost): see build/startup.ld.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/startup.ld");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{script}");
    println!("cargo:rerun-if-changed={script}");
}
