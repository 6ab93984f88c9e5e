//! Soname of the stub.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcr_omit.so.0");
}
