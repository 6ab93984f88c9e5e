//! `cr_restart FILE`: restores the program in a child, forwards signals to it, and exits as it does.

use clap::Parser;
use cr::image::reader::Image;
use cr::tool::fail;
use std::io::Read;
use std::os::unix::io::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

cr::tool_marker!();

const TOOL: &str = "cr_restart";

#[derive(Parser, Debug)]
#[command(
    name = "cr_restart",
    version,
    about = "Restart a process from a checkpoint image"
)]
struct Args {
    /// The image to restart from.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file_opt: Option<PathBuf>,
    /// The image to restart from.
    file: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    let fault = matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
    ) && code > 0;
    let child = CHILD.load(Ordering::Relaxed);
    if !fault && child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

fn install_forwarding() {
    for sig in 1..=31 {
        if matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD) {
            continue;
        }
        // SAFETY: installing a SA_SIGINFO handler with a valid sigaction struct.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = forward as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Exits the way the restored program did: same exit code, or death by the same signal.
fn mimic(status: i32) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    // SAFETY: resetting our own disposition and limits, then raising the signal on ourselves.
    unsafe {
        let nocore = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &nocore);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            fail(TOOL, libc::ECHILD, "lost track of the restored process");
        }
    }
}

fn main() {
    let args = Args::parse();
    let Some(path) = args.file_opt.or(args.file) else {
        fail(
            TOOL,
            libc::EINVAL,
            "no image given (usage: cr_restart FILE)",
        )
    };
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        fail(
            TOOL,
            e.raw_os_error().unwrap_or(libc::EIO),
            &format!("{}: {e}", path.display()),
        )
    });
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        fail(
            TOOL,
            libc::EISDIR,
            &format!("{}: is a directory, not an image", path.display()),
        );
    }
    let src = std::path::absolute(&path)
        .unwrap_or_else(|_| path.clone())
        .into_os_string()
        .into_encoded_bytes();
    let img = Image::open(&file)
        .unwrap_or_else(|e| fail(TOOL, e.errno(), &format!("{}: {e}", path.display())));
    if let Err(e) = cr::restore::preflight(&img) {
        fail(TOOL, e.errno, &format!("restart failed: {e}"));
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail(TOOL, libc::EMFILE, "cannot create a pipe");
    }
    let me = std::process::id() as i32;
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(TOOL, libc::EAGAIN, "cannot fork");
    }
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(fds[0]) };
        let err = match cr::restore::run(&img, file, fds[1], me, &src) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        // run() already reported the error to the parent through the pipe.
        // SAFETY: leaving the child without running atexit handlers.
        unsafe { libc::_exit(err.errno & 0xff) }
    }
    CHILD.store(pid, Ordering::Relaxed);
    install_forwarding();
    drop(file);
    // SAFETY: closing our copy of the write end; the read end becomes a File.
    let mut notify = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut msg = Vec::new();
    let _ = notify.read_to_end(&mut msg);
    if msg.first() != Some(&b'R') {
        let status = wait_child(pid);
        let report = cr::restore::parse_report(&msg);
        let why = if let Some((_, text)) = &report {
            text.clone()
        } else if libc::WIFSIGNALED(status) {
            format!(
                "the restored process died of signal {} during the restore",
                libc::WTERMSIG(status)
            )
        } else {
            format!(
                "the restored process exited with status {} during the restore",
                libc::WEXITSTATUS(status)
            )
        };
        let code = match report {
            Some((errno, _)) => errno,
            None => libc::EIO,
        };

        fail(TOOL, code, &format!("restart failed: {why}"));
    }
    let status = wait_child(pid);
    mimic(status)
}
