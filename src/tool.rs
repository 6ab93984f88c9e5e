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

/// A signal given by name (`TERM`, `SIGUSR1`, any case) or number (1-64).
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let table = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("XCPU", libc::SIGXCPU),
        ("PWR", libc::SIGPWR),
        ("WINCH", libc::SIGWINCH),
    ];
    table.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// A duration like `90s`, `30m`, `2h`, `1d`, `1h30m` or plain seconds; `None` when malformed
/// or zero.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !num.is_empty() {
        total = total.checked_add(num.parse::<u64>().ok()?)?;
        any = true;
    }
    (any && total > 0).then(|| std::time::Duration::from_secs(total))
}

/// This host's name (the default node name).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most the buffer's length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc != 0 || end == 0 {
        return "node".into();
    }
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs("30m"), Some(1800));
        assert_eq!(secs("2h"), Some(7200));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("1d"), Some(86_400));
        assert_eq!(secs("45"), Some(45));
        for bad in [
            "",
            "0",
            "0s",
            "m",
            "10x",
            "1.5h",
            "-5s",
            "s10",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal("usr2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal("sigxcpu"), Some(libc::SIGXCPU));
        assert_eq!(parse_signal("10"), Some(10));
        for bad in ["0", "65", "KILLME", "SIG", "", "-1"] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
    }
}
