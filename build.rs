//! Build script: library soname, tool marker export, static unwinder, and the C header (cbindgen).

include!("build/static_unwinder.rs");

fn main() {
    link_static_unwinder();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcr.so.0");
    // What start-up and the fork child run and write, gathered on few pages (issue 11, idle
    // cost): see build/startup.ld.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/build/startup.ld");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{script}");
    println!("cargo:rerun-if-changed={script}");
    // The tools export a marker so the agent stays dormant inside them (see agent::is_tool).
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=libcr_tool_marker");
    println!("cargo:rerun-if-changed=src/api/exports.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap_or_default();
    match cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/src/api/exports.rs"))
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(format!("{dir}/include/libcr.h"));
        }
        Err(e) => println!("cargo:warning=cbindgen could not generate include/libcr.h: {e}"),
    }
}
