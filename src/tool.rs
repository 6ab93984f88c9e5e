//! Small pieces shared by the command-line tools.

/// Declares the tool marker in a binary: the agent stays dormant in processes exporting it (the
/// build exports it from every binary with `--export-dynamic-symbol`).
#[macro_export]
macro_rules! tool_marker {
    () => {
        /// Marks this executable as a libcr tool (see `agent::is_tool`).
        #[no_mangle]
        #[used]
        pub static libcr_tool_marker: u8 = 1;
    };
}

/// Prints `tool: msg` on stderr (one line, without Rust's "(os error N)" suffixes) and exits with
/// `errno & 0xff` (BLCR's convention; 1 if that is 0).
pub fn fail(tool: &str, errno: i32, msg: &str) -> ! {
    let mut line = msg.replace('\n', " ");
    while let Some(i) = line.find(" (os error ") {
        match line[i..].find(')') {
            Some(j) => line.replace_range(i..i + j + 1, ""),
            None => break,
        }
    }
    eprintln!("{tool}: {line}");

    let code = errno & 0xff;
    std::process::exit(if code == 0 { 1 } else { code })
}

/// `strerror` text for an errno ("No such file or directory"), without Rust's "(os error N)";
/// BLCR's own codes (`CR_E*`) get BLCR's texts.
pub fn strerror(errno: i32) -> String {
    if let Some(t) = crate::api::errors::blcr_text(errno) {
        return t.to_string_lossy().into_owned();
    }
    let text = std::io::Error::from_raw_os_error(errno).to_string();

    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Children of process `pid` (the `children` files of all its threads, as our /proc shows them).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out
}
