// Shared by the build scripts of libcr and its preload stubs (included with `include!`).
//
// Links the unwinder statically (libgcc_eh.a, as `gcc -static-libgcc` does) instead of needing
// libgcc_s.so.1. Every process started under cr_run loads the stub and libcr; libgcc_s's
// constructor alone (`__cpu_indicator_init`, CPUID instructions that trap to the hypervisor in a
// VM) cost about 0.3 ms per exec here, half the agent's whole start-up cost. `-bundle` keeps
// libgcc_eh out of libcr.a: static users link the unwinder of their choice (`-lgcc_s` as before).

/// Prints the cargo directives that link libgcc_eh.a whole into the final cdylib or binary.
fn link_static_unwinder() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output();
    let path = match out {
        Ok(o) if o.status.success() => {
            std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
        }
        _ => {
            println!("cargo:warning=cannot ask {cc} for libgcc_eh.a: linking libgcc_s.so.1 (slower start-up)");
            return;
        }
    };
    if !path.is_absolute() {
        // gcc prints the bare name when it has no such file.
        println!("cargo:warning=no libgcc_eh.a: linking libgcc_s.so.1 (slower start-up)");
        return;
    }
    if let Some(dir) = path.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
    }
    println!("cargo:rerun-if-env-changed=CC");
}
