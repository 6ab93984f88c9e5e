//! The tools' progress bar (`cr_checkpoint`, `cr_restart`): bytes done of the total, rate and
//! time left, drawn on standard error when it is a terminal and the operation has taken longer
//! than about a second; nothing at all otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

/// How long an operation runs before the bar appears (`LIBCR_PROGRESS_AFTER_MS` overrides it).
pub const SHOW_AFTER: Duration = Duration::from_secs(1);
/// The bar is redrawn at most this often.
pub const REDRAW: Duration = Duration::from_millis(100);
/// Width of the bar itself, in characters.
const WIDTH: usize = 24;

/// A progress bar on standard error.
pub struct Bar {
    label: &'static str,
    enabled: bool,
    start: Instant,
    after: Duration,
    last_draw: Option<Instant>,
    /// The first figure seen after the start (when, bytes done), the base of the rate.
    first: Option<(Instant, u64)>,
    drawn: bool,
}

/// Whether standard error is a terminal.
pub fn stderr_is_terminal() -> bool {
    // SAFETY: isatty takes no pointers.
    unsafe { libc::isatty(2) == 1 }
}

/// `n` bytes for people: "512.0 MiB", "1.25 GiB".
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if u >= 3 {
        format!("{v:.2} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "1:05" from seconds.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

impl Bar {
    /// A bar labelled `label` (the tool's name), shown only when standard error is a terminal;
    /// its clock starts now (the tool's start, so that the delay counts the whole operation).
    pub fn new(label: &'static str) -> Bar {
        Bar::with_output(label, stderr_is_terminal())
    }

    /// A bar that is drawn (`enabled`) or not, whatever standard error is.
    pub fn with_output(label: &'static str, enabled: bool) -> Bar {
        let after = std::env::var("LIBCR_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(SHOW_AFTER, Duration::from_millis);
        Bar {
            label,
            enabled,
            start: Instant::now(),
            after,
            last_draw: None,
            first: None,
            drawn: false,
        }
    }

    /// `done` bytes of `total` are done: redraws when it is time.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let first = *self.first.get_or_insert((now, done));
        if now.duration_since(self.start) < self.after
            || self
                .last_draw
                .is_some_and(|t| now.duration_since(t) < REDRAW)
        {
            return;
        }
        self.last_draw = Some(now);
        let line = self.line(done, total, now, first);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the bar's line so that another message can be printed (the next update draws
    /// it again).
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
            self.last_draw = None;
        }
    }

    /// The operation is over: draws the final figures once more (when the bar was shown) and
    /// clears the line.
    pub fn finish(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        if self.drawn || Instant::now().duration_since(self.start) >= self.after {
            self.last_draw = None;
            self.update(done, total);
        }
        self.clear();
    }

    fn line(&self, done: u64, total: u64, now: Instant, first: (Instant, u64)) -> String {
        let total = total.max(done);
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
        let bar: String = "=".repeat(filled) + &" ".repeat(WIDTH - filled);
        // The rate since the first figure; over the whole operation while that is too short.
        // (Unknown at the first figure, unless that is the end already.)
        let since_first = now.duration_since(first.0).as_secs_f64();
        let rate = if done < total && done <= first.1 {
            0.0
        } else if since_first >= 0.05 && done > first.1 {
            (done - first.1) as f64 / since_first
        } else {
            done as f64 / now.duration_since(self.start).as_secs_f64().max(1e-3)
        };
        let (rate, left) = if rate > 0.0 {
            (human(rate as u64), clock((total - done) as f64 / rate))
        } else {
            ("? B".into(), "?".into())
        };
        format!(
            "{}: [{bar}] {} / {}  {rate}/s  {left} left",
            self.label,
            human(done),
            human(total),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(5 << 30), "5.00 GiB");
    }

    #[test]
    fn nothing_drawn_before_the_delay_or_when_disabled() {
        let mut bar = Bar::with_output("t", true);
        bar.after = SHOW_AFTER;
        bar.update(1, 2);
        assert!(!bar.drawn);
        let mut off = Bar::with_output("t", false);
        off.after = Duration::ZERO;
        off.update(1, 2);
        off.finish(2, 2);
        assert!(!off.drawn && off.last_draw.is_none());
    }

    #[test]
    fn line_has_bytes_rate_and_time_left() {
        let bar = Bar::with_output("t", true);
        let t0 = bar.start;
        let line = bar.line(512 << 20, 1 << 30, t0 + Duration::from_secs(1), (t0, 0));
        assert!(line.contains("512.0 MiB / 1.00 GiB"), "{line}");
        assert!(line.contains("512.0 MiB/s"), "{line}");
        assert!(line.contains("0:01 left"), "{line}");
    }
}
