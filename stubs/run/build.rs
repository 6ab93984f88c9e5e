//! Soname of the stub.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcr_run.so.0");
}
