//! The control thread: listens on the process's control socket, runs each checkpoint (quiesce,
//! write, commit, release) and, in a restored process, finishes the restart.
//!
//! It runs with every signal blocked, so it never receives the checkpoint signal or the program's
//! signals. Between quiesce and release it uses only raw syscalls and its own stack.

use super::image::{write_callback, Job, STEPS};
use super::quiesce::{self, DirBuf, QuiesceError, SLOTS};
use super::scratch::Scratch;
use crate::protocol::{self, Reply, Request, RestartInfo};
use crate::sys::{self, StackBuf};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering::*};

/// The listening socket (a high descriptor, close-on-exec), or -1.
#[link_section = ".data1"]
pub static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
/// Pid the listening socket was bound for.
#[link_section = ".data1"]
static BOUND_PID: AtomicI32 = AtomicI32::new(0);
/// The inode of the pid namespace the listening socket was bound in (0: none yet).
#[link_section = ".data1"]
static BOUND_NS: AtomicU64 = AtomicU64::new(0);
/// The pid the process had when its control socket was bound (in a restored process: the pid at
/// checkpoint time, until the restart binds again).
pub fn bound_pid() -> i32 {
    BOUND_PID.load(Acquire)
}

/// The connection and image descriptor of the request being served (-1: none). A child forked
/// by the program meanwhile inherits them; its fork handler closes them again
/// ([`forget_request_fds`]), or a tree checkpoint would find another process's image file open
/// in the child.
/// The third is the pidfd of a copy-on-write writer while it runs.
/// The fourth is the destination of a compressed checkpoint's raw path (`protocol::send_fds`),
/// the fifth the acknowledgement pipe of its pulled pieces (`protocol::FLAG_ZPULL`), the sixth
/// the eventfd a copy-on-write writer signals when it is done (`cow::done_fd`).
#[link_section = ".data1"]
static REQUEST_FDS: [AtomicI32; 6] = [const { AtomicI32::new(-1) }; 6];

/// Set while the control thread takes a request's passed descriptors, from its `recvmsg` until
/// they are recorded in [`REQUEST_FDS`] (or closed): a fork in that instant would copy them into
/// a child that does not know them (seen once under load: a fork child kept a request's image
/// file, its own checkpoint saved it, and its restart could not reopen it). Forks wait for it
/// ([`before_fork`]).
#[link_section = ".data1"]
static TAKING_FDS: AtomicU32 = AtomicU32::new(0);

/// TEST ONLY (tests/faults.rs): `LIBCR_TEST_TAKE_FDS_MS` at start-up; [`recv_request`] then
/// holds a request's descriptors that long before it records them, so that forks land there.
static TEST_TAKE_FDS_NS: AtomicU64 = AtomicU64::new(0);

/// Reads `LIBCR_TEST_TAKE_FDS_MS` (at init, see [`TEST_TAKE_FDS_NS`]).
pub fn init_test_knobs() {
    TEST_TAKE_FDS_NS.store(super::env_ms_at_init(c"LIBCR_TEST_TAKE_FDS_MS"), Relaxed);
}

/// The longest a fork waits for [`TAKING_FDS`] (it never takes more than a system call and a few
/// stores; bounded all the same).
const TAKING_WAIT_NS: u64 = 50_000_000;

/// The agent's fork handler in the parent, before the fork: waits while the control thread is
/// taking a request's descriptors ([`TAKING_FDS`]). Otherwise one load.
#[link_section = ".text.hot.libcr_start"]
pub extern "C" fn before_fork() {
    if TAKING_FDS.load(Acquire) == 0 {
        return;
    }
    let until = sys::monotonic_ns() + TAKING_WAIT_NS;
    while TAKING_FDS.load(Acquire) != 0 {
        let now = sys::monotonic_ns();
        if now >= until {
            break;
        }
        let _ = sys::futex_wait(&TAKING_FDS, 1, Some((until - now).min(1_000_000)));
    }
}

/// Set by a control thread that came back from an image: the connection it was serving (and
/// whose number `control_main` still holds) was the checkpointed process's, never ours here.
/// Closing that number would close whatever the restored program has opened there since its
/// threads were let go (seen as EBADF in a restored program: an accepted connection, cc1's
/// output file).
static CONN_IS_PAST: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Set while a request is served: the control thread opens descriptors (the request's, and
/// `/proc/self/task/*` files while it stops the threads) that a child forked meanwhile inherits.
#[link_section = ".data1"]
static SERVING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// In a fork child: closes what the parent's control thread had open for a request in progress
/// (its connection, the image, and `/proc/PARENT/...` files), so none of it looks like one of
/// the program's descriptors when the child is checkpointed.
#[link_section = ".text.hot.libcr_start"]
pub fn forget_request_fds() {
    for f in &REQUEST_FDS {
        if f.load(Acquire) < 0 {
            continue; // (not written: see agent::after_fork_child)
        }
        let fd = f.swap(-1, AcqRel);
        if fd >= 0 {
            sys::close(fd);
        }
    }
    if !SERVING.load(Acquire) || !SERVING.swap(false, AcqRel) {
        return;
    }
    let ppid = sys::sys3(libc::SYS_getppid as usize, 0, 0, 0).unwrap_or(0);
    let mut prefix = StackBuf::<32>::new();
    prefix.push(b"/proc/").num(ppid as u64).push(b"/");
    sys::each_open_fd(|fd| {
        let mut link = StackBuf::<64>::new();
        link.push(b"/proc/self/fd/").num(fd as u64);
        let mut target = [0u8; 64];
        let n = sys::readlink(link.as_cstr(), &mut target).unwrap_or(0);
        if target[..n.min(64)].starts_with(prefix.as_bytes()) {
            sys::close(fd);
        }
    });
}

/// Pid of the process that restarted us last (0 = never restarted).
pub static RESTARTER: AtomicI64 = AtomicI64::new(0);

/// Stack size of the control thread.
const CONTROL_STACK: usize = 256 * 1024;
/// Default time all threads get to reach the checkpoint handler.
const QUIESCE_TIMEOUT_MS: u64 = 10_000;
/// How long a process of a multi-process checkpoint waits, stopped, for its turn to write: the
/// processes before it write their images first (a requester that dies ends the wait at once).
const WRITE_WAIT_MS: i32 = 600_000;
/// How long the program stays stopped waiting for the requester to commit.
const COMMIT_TIMEOUT_MS: i32 = 60_000;

#[link_section = ".text.hot.libcr_start"]
pub(super) fn high_fd_floor() -> usize {
    let mut lim = [0u64; 2];
    let _ = sys::sys6(
        libc::SYS_prlimit64 as usize,
        0,
        libc::RLIMIT_NOFILE as usize,
        0,
        lim.as_mut_ptr() as usize,
        0,
        0,
    );
    let soft = lim[0].min(1 << 20) as usize;
    if soft > 1100 {
        1000
    } else {
        soft.saturating_sub(24).max(3)
    }
}

/// `struct f_owner_ex`'s type for one thread (`F_SETOWN_EX`).
const F_OWNER_TID: i32 = 0;

/// Creates and binds this process's control socket; returns its descriptor. `lazy`: the signal
/// the socket raises in the process (`O_ASYNC`) on a connection, set before it listens.
#[link_section = ".text.hot.libcr_start"]
fn bind_socket(lazy: Option<i32>, fork_child: bool) -> Result<i32, sys::Errno> {
    let low = sys::sys3(
        libc::SYS_socket as usize,
        libc::AF_UNIX as usize,
        (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as usize,
        0,
    )? as i32;
    let fd = sys::fcntl(low, libc::F_DUPFD_CLOEXEC, high_fd_floor()).unwrap_or(low as usize) as i32;
    if fd != low {
        sys::close(low);
    }
    let (ns, pid) = identity(fork_child);
    let (addr, len) = protocol::socket_addr(ns, pid);
    let res = sys::sys3(
        libc::SYS_bind as usize,
        fd as usize,
        &addr as *const _ as usize,
        len as usize,
    )
    .and_then(|_| {
        let mut fl = libc::O_NONBLOCK;
        if let Some(signal) = lazy {
            // The signal names this descriptor (si_fd): set up at its final number, before
            // anyone can connect.
            // Bound on a wake-up by the main thread (where `protocol::wake` sends it): the
            // connection's signal goes to this thread only (`F_OWNER_TID`), as the wake-up did.
            // Sent to the process while this thread still runs the wake-up's handler (which
            // blocks its own signal), the kernel aimed it at another thread and woke it, and
            // this thread then took it first: the other thread's `epoll_wait` returned EINTR
            // with nothing delivered (tests/load.rs `restarts_while_ignored_signals_arrive`).
            // Elsewhere (the checkpoint signal, a fork child's or init's socket, a wake-up
            // taken by another thread) the process as before.
            let pid = sys::getpid();
            if signal == protocol::WAKE_SIGNAL && sys::gettid() == pid {
                let owner: [i32; 2] = [F_OWNER_TID, pid];
                sys::fcntl(fd, sys::fcntl_cmd::F_SETOWN_EX, owner.as_ptr() as usize)?;
            } else {
                sys::fcntl(fd, libc::F_SETOWN, pid as usize)?;
            }
            sys::fcntl(fd, sys::fcntl_cmd::F_SETSIG, signal as usize)?;
            fl |= libc::O_ASYNC;
            super::ctlstart::arm(fd);
        }
        sys::fcntl(fd, libc::F_SETFL, fl as usize)?;
        sys::sys3(libc::SYS_listen as usize, fd as usize, 8, 0)
    });
    if let Err(e) = res {
        if lazy.is_some() {
            super::ctlstart::disarm();
        }
        sys::close(fd);
        return Err(e);
    }
    BOUND_PID.store(pid, Release);
    BOUND_NS.store(ns, Release);
    Ok(fd)
}

/// Our pid namespace's inode and our pid in it. A fork child (`fork_child`) is in the namespace
/// its parent bound its socket in unless the parent moved its children into another one
/// (`unshare`/`setns`), which hides the parent from the child: `getppid()` is then 0, never the
/// parent's pid. So a child that sees its parent's pid skips reading `/proc/self/ns/pid`, a path
/// walk through procfs that cost about 9 µs in every fork here (issue 11, idle cost).
#[link_section = ".text.hot.libcr_start"]
fn identity(fork_child: bool) -> (u64, i32) {
    let (parent_ns, parent_pid) = (BOUND_NS.load(Acquire), BOUND_PID.load(Acquire));
    if fork_child && parent_ns != 0 && parent_pid > 0 && sys::getppid() == parent_pid {
        return (parent_ns, sys::getpid());
    }
    if parent_ns != 0 {
        // Read afresh: forgotten until this bind succeeds (a restored process may be in another
        // namespace than the one recorded in its image; a failed bind leaves its children none).
        BOUND_NS.store(0, Release);
    }
    protocol::own_identity()
}

/// Whether this process binds its control socket only when woken (issue 11, idle cost): set at
/// init where the control thread can start lazily (`ctlstart`) and the wake-up signal's handler
/// is installed; inherited by fork children.
#[link_section = ".data1"]
static LAZY_SOCKET: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Set where a wake-up may never arrive (the program blocks or ignores the wake-up signal):
/// the socket is bound at once here and in every fork child ([`bind_now_and_in_children`]).
#[link_section = ".data1"]
static BIND_AT_ONCE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Set while a thread binds the lazy socket ([`ensure_bound`]).
#[link_section = ".data1"]
static BINDING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether the control socket is bound only on a wake-up in this process.
pub fn lazy_socket() -> bool {
    LAZY_SOCKET.load(Acquire)
}

/// At init (`fork_child` false) and in every fork child. Where the control thread can start on
/// the first connection (`ctlstart`) and the wake-up handler is installed (`lazy_socket`),
/// nothing is bound: the socket comes with the first wake-up ([`ensure_bound`]); a fork child
/// only drops its parent's socket, if the parent had bound one. Elsewhere the socket is bound
/// and the control thread started at once (a pthread), as before.
#[link_section = ".text.hot.libcr_start"]
pub fn start(fork_child: bool) {
    if LISTEN_FD.load(Acquire) >= 0 {
        let old = LISTEN_FD.swap(-1, AcqRel);
        if old >= 0 {
            sys::close(old); // inherited from the parent across fork
        }
    }
    if fork_child && BINDING.load(Acquire) {
        BINDING.store(false, Release); // a parent's thread was binding when it forked
        close_inherited_control_sockets();
    }
    if LAZY_SOCKET.load(Acquire) {
        super::ctlstart::forget_socket();
        // A child forked by a thread that blocks the wake-up signal (the program's, or one with
        // a mask set by a raw system call, as the API's callback thread) could not be woken.
        let urg = 1u64 << (protocol::WAKE_SIGNAL - 1);
        if BIND_AT_ONCE.load(Acquire)
            || (fork_child && sys::sigprocmask_raw(libc::SIG_BLOCK, None) & urg != 0)
        {
            ensure_bound();
        }
        return;
    }
    bind_and_start(fork_child);
}

/// In a fork child whose parent was binding its control socket when it forked (a wake-up's
/// handler in one thread, `fork` in another): the parent's socket was copied before its number
/// was published in `LISTEN_FD`. Kept, it held the parent's address after the parent ended (the
/// copy is the same socket, bound and listening once the parent's bind ends): a restored parent
/// could not bind its socket again, a wake-up then bound one and started a second control
/// thread, which waited for the first one to stop (tests/load.rs
/// `blocked_calls_restarted_again_and_again`, "thread N did not stop"; a child of c-tests/blocked.c
/// kept it in 2 of 12 first wake-ups by hand). Found by what the agent's socket is at any
/// moment of its bind: a close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket that is named
/// `@libcr-ctl.`, or not yet bound nor connected. Rare (only here): the scan of `/proc/self/fd`
/// costs nothing otherwise.
fn close_inherited_control_sockets() {
    const PREFIX: &[u8] = b"\0libcr-ctl.";
    let opt = |fd: i32, name: i32| -> i32 {
        let (mut v, mut len) = (0i32, 4u32);
        match sys::sys6(
            libc::SYS_getsockopt as usize,
            fd as usize,
            libc::SOL_SOCKET as usize,
            name as usize,
            &mut v as *mut i32 as usize,
            &mut len as *mut u32 as usize,
            0,
        ) {
            Ok(_) => v,
            Err(_) => -1,
        }
    };
    sys::each_open_fd(|fd| {
        if opt(fd, libc::SO_DOMAIN) != libc::AF_UNIX
            || opt(fd, libc::SO_TYPE) != libc::SOCK_SEQPACKET
            || sys::fcntl(fd, libc::F_GETFD, 0).map_or(true, |f| f & libc::FD_CLOEXEC as usize == 0)
        {
            return;
        }
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
        let mut len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if sys::sys3(
            libc::SYS_getsockname as usize,
            fd as usize,
            &mut addr as *mut _ as usize,
            &mut len as *mut _ as usize,
        )
        .is_err()
        {
            return;
        }
        let name_len = (len as usize).saturating_sub(core::mem::size_of::<libc::sa_family_t>());
        // SAFETY: sun_path is a plain byte array inside addr.
        let path = unsafe {
            core::slice::from_raw_parts(addr.sun_path.as_ptr() as *const u8, addr.sun_path.len())
        };
        let ours = if name_len == 0 {
            // Not bound yet: ours unless it is connected (ENOTCONN).
            let mut peer: libc::sockaddr_un = unsafe { core::mem::zeroed() };
            let mut plen = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            sys::sys3(
                libc::SYS_getpeername as usize,
                fd as usize,
                &mut peer as *mut _ as usize,
                &mut plen as *mut _ as usize,
            )
            .is_err()
        } else {
            name_len >= PREFIX.len() && path.starts_with(PREFIX)
        };
        if ours {
            sys::close(fd);
        }
    });
}

/// Whether the lazy socket is bound at once here ([`bind_now_and_in_children`]), for `-v`.
pub fn bound_at_once() -> bool {
    BIND_AT_ONCE.load(Acquire)
}

/// Binds the lazy socket now, and in every fork child from now on: the program blocks the
/// wake-up signal (a blocked wake-up would leave a requester waiting) or ignores it (the kernel
/// then ignores it too, so that `SIG_IGN` survives `exec` as without the agent).
pub fn bind_now_and_in_children() {
    if LAZY_SOCKET.load(Acquire) && !BIND_AT_ONCE.load(Acquire) {
        BIND_AT_ONCE.store(true, Release);
        // A socket bound on a wake-up raises the wake-up signal, which may now be ignored or
        // blocked: the checkpoint signal from now on, and a connection whose signal the
        // kernel dropped (setting `SIG_IGN` discards a pending one) is served now.
        super::ctlstart::signal_connections_with_64(LISTEN_FD.load(Acquire));
    }
    ensure_bound();
}

/// The signal a control socket bound on a wake-up raises on its first connection: the wake-up
/// signal itself (it was just delivered, so it reaches the process), unless the program ignores
/// or blocks it ([`bind_now_and_in_children`]); a socket bound otherwise (at init, in a fork
/// child whose mask blocks the wake-up signal, where the program ignores or blocks it) raises
/// the checkpoint signal. The wake-up signal's default action is to be ignored: a connection
/// that reaches a process while it runs `exec` (the handlers are the defaults from then on, and
/// a pending signal outlives `exec`) is dropped, where signal 64's default action ended the new
/// program before its first instruction (a shell script's child checkpointed while it exec'd
/// its command: `tests/faults.rs` `checkpoint_during_fork_exec_churn`).
fn woken_socket_signal() -> i32 {
    if BIND_AT_ONCE.load(Acquire) {
        super::quiesce::CR_SIGNUM
    } else {
        protocol::WAKE_SIGNAL
    }
}

/// Whether the socket is bound on a wake-up from now on (at init, around installing the
/// wake-up handler).
#[link_section = ".text.hot.libcr_start"]
pub fn set_lazy_socket(on: bool) {
    LAZY_SOCKET.store(on, Release);
}

/// Binds the lazy control socket unless it is bound already, raising the checkpoint signal
/// (async-signal-safe: raw syscalls only; where the program blocks or ignores the wake-up
/// signal). The control thread then starts on the first connection, as at an eager bind.
pub fn ensure_bound() {
    bind_lazily(super::quiesce::CR_SIGNUM);
}

/// [`ensure_bound`] for a wake-up (its handler): the socket raises [`woken_socket_signal`].
pub fn ensure_bound_woken() {
    bind_lazily(woken_socket_signal());
}

fn bind_lazily(signal: i32) {
    if !LAZY_SOCKET.load(Acquire) || LISTEN_FD.load(Acquire) >= 0 {
        return;
    }
    if BINDING.swap(true, AcqRel) {
        return; // another thread binds it
    }
    if LISTEN_FD.load(Acquire) < 0 {
        if let Ok(fd) = bind_socket(Some(signal), false) {
            LISTEN_FD.store(fd, Release);
        }
    }
    BINDING.store(false, Release);
}

/// Binds the socket and starts the control thread: on the first connection where it can
/// (`ctlstart`), else at once.
#[link_section = ".text.hot.libcr_start"]
fn bind_and_start(fork_child: bool) {
    let lazy = super::ctlstart::lazy_possible();
    let Ok(fd) = bind_socket(lazy.then_some(super::quiesce::CR_SIGNUM), fork_child) else {
        return;
    };
    LISTEN_FD.store(fd, Release);
    if lazy {
        return;
    }
    super::ctlstart::started_at_once();
    // The new thread inherits a mask with every signal blocked but the ignored ones
    // (`quiesce::block_all_but_ignored`); it blocks those too first thing.
    let old_mask = super::quiesce::block_all_but_ignored();
    let mut th: libc::pthread_t = 0;
    // SAFETY: attribute calls on a local attr, then pthread_create with a static entry.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        // A small stack is enough: the image writer runs on scratch memory.
        libc::pthread_attr_setstacksize(&mut attr, CONTROL_STACK);
        let rc = libc::pthread_create(&mut th, &attr, control_main, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(old_mask));
    if rc == 0 {
        // SAFETY: th is a thread we just created; detaching it is always valid.
        unsafe { libc::pthread_detach(th) };
    } else {
        LISTEN_FD.store(-1, Release);
        sys::close(fd);
    }
}

/// The control thread's loop (a pthread's entry, or called by a lazily started thread).
pub(super) extern "C" fn control_main(_: *mut libc::c_void) -> *mut libc::c_void {
    // Every signal blocked: the program's go to its own threads (its creator left the ignored
    // ones open, `quiesce::block_all_but_ignored`).
    sys::sigprocmask_raw(libc::SIG_SETMASK, Some(!0));
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        c"cr-control".as_ptr() as usize,
        0,
    );
    super::verify_tid_offset();
    loop {
        let lfd = LISTEN_FD.load(Acquire);
        // The listening socket is non-blocking (so busy requests can be turned away while a
        // checkpoint runs): wait for a connection first, or for a writer left behind to end
        // (reaped at once: no zombie, no descriptor kept).
        let mut p = [libc::pollfd {
            fd: lfd,
            events: libc::POLLIN,
            revents: 0,
        }; 9];
        let n = 1 + super::offload::pidfds(&mut p[1..]);
        let _ = sys::sys3(
            libc::SYS_poll as usize,
            p.as_mut_ptr() as usize,
            n,
            usize::MAX,
        );
        if n > 1 {
            super::offload::reap_done();
        }
        if p[0].revents == 0 {
            continue;
        }
        match accept(lfd) {
            Ok(c) => {
                if let Some(why) = peer_refusal(c) {
                    refuse_peer(c, why);
                } else {
                    // Threads may still be finishing the last checkpoint (e.g. stopped by a
                    // post-checkpoint SIGSTOP and just continued): give them a moment.
                    let deadline = sys::monotonic_ns() + LINGER_NS;
                    while crate::api::callbacks::in_progress() && sys::monotonic_ns() < deadline {
                        crate::api::callbacks::wait_callbacks_done(10_000_000);
                    }
                    if crate::api::callbacks::in_progress() {
                        // Callbacks of the last checkpoint are still finishing (BLCR: overlap).
                        refuse_busy(c);
                    } else {
                        serve(c);
                    }
                }
                if !CONN_IS_PAST.swap(false, AcqRel) {
                    sys::close(c);
                }
            }
            Err(sys::Errno(libc::EINTR))
            | Err(sys::Errno(libc::ECONNABORTED))
            | Err(sys::Errno(libc::EAGAIN)) => {}
            Err(_) => {
                // The program closed our socket (or the pid changed): bind a new one.
                match bind_socket(None, false) {
                    Ok(fd) => LISTEN_FD.store(fd, Release),
                    Err(_) => return core::ptr::null_mut(),
                }
            }
        }
    }
}

fn accept(lfd: i32) -> Result<i32, sys::Errno> {
    sys::sys6(
        libc::SYS_accept4 as usize,
        lfd as usize,
        0,
        0,
        libc::SOCK_CLOEXEC as usize,
        0,
        0,
    )
    .map(|c| c as i32)
}

/// Answers a request with EBUSY: this process is already in a checkpoint.
fn refuse_busy(conn: i32) {
    refuse(
        conn,
        libc::EBUSY,
        b"the process is already taking part in a checkpoint",
    );
}

/// Reads the request (waiting up to 1 s for it, closing a passed descriptor), then answers it
/// with `errno` and the reason; the caller closes the connection.
fn refuse(conn: i32, errno: i32, why: &[u8]) {
    sys::poll_one(conn, libc::POLLIN, 1000);
    recv_request(conn, |fds| {
        for &f in fds {
            if f >= 0 {
                sys::close(f);
            }
        }
    });
    send_reply(conn, errno, 0, why);
}

/// Called by the control thread's wait loops during a checkpoint: every request that arrives
/// meanwhile is answered EBUSY at once (BLCR's overlap rule) instead of waiting its turn.
pub fn turn_away_busy() {
    let lfd = LISTEN_FD.load(Acquire);
    if lfd < 0 {
        return;
    }
    while let Ok(c) = accept(lfd) {
        match peer_refusal(c) {
            None => refuse_busy(c),
            Some(why) => refuse_peer(c, why),
        }
        sys::close(c);
    }
}

/// Why a requester may not checkpoint this process, or `None` when it may. Root may always.
/// Anyone else must be the process's owner, and the process must be one its owner could
/// `ptrace` (the kernel's rule for reading another process's memory): real, effective and saved
/// user ids all the requester's, real, effective and saved group ids equal (not set-gid), and
/// dumpable. A set-uid program, one that changed its user or group, and one that called
/// `PR_SET_DUMPABLE 0` (ssh-agent and gpg-agent do, to keep their keys from their own user) are
/// refused: their memory must not land in a file the requester can read. Raw syscalls only
/// (also called while a checkpoint runs).
fn peer_refusal(conn: i32) -> Option<&'static [u8]> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let rc = sys::sys6(
        libc::SYS_getsockopt as usize,
        conn as usize,
        libc::SOL_SOCKET as usize,
        libc::SO_PEERCRED as usize,
        &mut cred as *mut _ as usize,
        &mut len as *mut _ as usize,
        0,
    );
    if rc.is_err() {
        return Some(b"permission denied: the requester's credentials are unknown");
    }
    if cred.uid == 0 {
        return None;
    }
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    let uids = sys::sys3(
        libc::SYS_getresuid as usize,
        &mut r as *mut u32 as usize,
        &mut e as *mut u32 as usize,
        &mut s as *mut u32 as usize,
    );
    if uids.is_err() || [r, e, s].iter().any(|&u| u != cred.uid) {
        if r == cred.uid {
            return Some(
                b"permission denied: the process runs with another user's rights (set-uid or changed user id); only root may checkpoint it",
            );
        }
        return Some(b"permission denied: the process belongs to another user");
    }
    let gids = sys::sys3(
        libc::SYS_getresgid as usize,
        &mut r as *mut u32 as usize,
        &mut e as *mut u32 as usize,
        &mut s as *mut u32 as usize,
    );
    if gids.is_err() || r != e || r != s {
        return Some(
            b"permission denied: the process runs with another group's rights (set-gid or changed group id); only root may checkpoint it",
        );
    }
    if !super::process::dumpable_before_request() {
        return Some(
            b"permission denied: the process is not dumpable (PR_SET_DUMPABLE 0, or it changed its credentials); only root may checkpoint it",
        );
    }
    None
}

/// Answers a refused requester with `EPERM` and the reason, then the caller closes.
fn refuse_peer(conn: i32, why: &[u8]) {
    refuse(conn, libc::EPERM, why);
}

/// Receives a request and (optionally) its passed descriptors: the image's, a second one
/// (-1: none) for the raw path of a compressed checkpoint, and a third (-1: none), the
/// acknowledgement pipe of pulled pieces (`protocol::send_fds`, `protocol::FLAG_ZPULL`).
/// `record` gets them (on failure too) before any fork may copy them ([`TAKING_FDS`]).
fn recv_request(conn: i32, record: impl FnOnce(&[i32; 3])) -> Option<(Request, [i32; 3])> {
    let mut req: Request = bytemuck::Zeroable::zeroed();
    let mut iov = libc::iovec {
        iov_base: &mut req as *mut _ as *mut _,
        iov_len: core::mem::size_of::<Request>(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut _;
    msg.msg_controllen = core::mem::size_of_val(&cbuf);
    // Waited for first, so that forks wait only for the call itself, never for the requester.
    sys::poll_one(conn, libc::POLLIN, -1);
    TAKING_FDS.store(1, Release);
    // SAFETY: msg points at valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(conn, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    // TEST ONLY (`LIBCR_TEST_TAKE_FDS_MS`): the descriptors held unrecorded that long.
    let hold = TEST_TAKE_FDS_NS.load(Relaxed);
    if hold > 0 {
        let ts = libc::timespec {
            tv_sec: (hold / 1_000_000_000) as i64,
            tv_nsec: (hold % 1_000_000_000) as i64,
        };
        // SAFETY: a plain sleep with a valid timespec (the control thread blocks all signals).
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
    }
    let mut fds = [-1i32; 3];
    // SAFETY: the CMSG macros walk the control buffer the kernel filled.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            for (k, f) in fds.iter_mut().enumerate().take(len / 4) {
                *f = core::ptr::read_unaligned((libc::CMSG_DATA(c) as *const i32).add(k));
            }
        }
    }
    let ok = n == core::mem::size_of::<Request>() as isize && req.magic == protocol::MAGIC;
    if ok {
        record(&fds);
    } else {
        for f in fds {
            if f >= 0 {
                sys::close(f);
            }
        }
    }
    TAKING_FDS.store(0, Release);
    sys::futex_wake_all(&TAKING_FDS);
    ok.then_some((req, fds))
}

/// Sends the requester a reply (`msg` cut to 239 bytes); returns whether all of it went.
pub(super) fn send_reply(conn: i32, status: i32, bytes: u64, msg: &[u8]) -> bool {
    let mut r = Reply {
        magic: protocol::MAGIC,
        status,
        bytes,
        msg: [0; 240],
    };
    let n = msg.len().min(239);
    r.msg[..n].copy_from_slice(&msg[..n]);
    let b = bytemuck::bytes_of(&r);
    // SAFETY: sending from a valid buffer.
    let n = unsafe { libc::send(conn, b.as_ptr() as *const _, b.len(), libc::MSG_NOSIGNAL) };
    n == b.len() as isize
}

/// Waits (bounded) for the requester's RELEASE after the image is committed; false when the
/// requester went away (or timed out) instead: the image was never committed.
fn wait_commit(conn: i32) -> bool {
    next_request(conn, COMMIT_TIMEOUT_MS).is_some_and(|r| r.kind == protocol::REQ_RELEASE)
}

/// The requester's next message within `timeout_ms` (`None`: none came, or it went away).
fn next_request(conn: i32, timeout_ms: i32) -> Option<Request> {
    let mut p = libc::pollfd {
        fd: conn,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, timeout_ms) } <= 0 {
        return None;
    }
    let mut req: Request = bytemuck::Zeroable::zeroed();
    // SAFETY: receiving into a valid buffer.
    let n = unsafe {
        libc::recv(
            conn,
            &mut req as *mut _ as *mut _,
            core::mem::size_of::<Request>(),
            0,
        )
    };
    (n == core::mem::size_of::<Request>() as isize && req.magic == protocol::MAGIC).then_some(req)
}

/// Whether the requester gave up while we wait for critical sections: it closed the connection,
/// or sent something (a RELEASE: a multi-process checkpoint abandoned).
fn requester_left(conn: i32) -> bool {
    let mut p = libc::pollfd {
        fd: conn,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents != 0 }
}

/// Waits (bounded) for the requester of a multi-process checkpoint to say "write" (every process
/// of the cut is stopped): its flags (`FLAG_COW` when this process may be written copy-on-write);
/// `None` when it says "release" instead, goes away or times out.
fn wait_write(conn: i32) -> Option<u32> {
    next_request(conn, WRITE_WAIT_MS)
        .filter(|r| r.kind == protocol::REQ_WRITE)
        .map(|r| r.flags)
}

/// Turns a callback's abort request into the outcome `cr_checkpoint()` reports and the errno the
/// requester gets: TEMP → CR_ETEMPFAIL (or the user code), PERM → CR_EPERMFAIL (or the code),
/// OMIT → the process is left out (the requester sees ESRCH when nothing was saved).
fn abort_outcome(abort: i64) -> (i64, i32, &'static [u8], bool) {
    use crate::api::types::*;
    let flag = (abort >> 32) as i32;
    let code = (abort & 0xffff_ffff) as i32;
    match flag {
        CR_CHECKPOINT_PERM_FAILURE => {
            let e = if code != 0 { code } else { CR_EPERMFAIL };
            (
                -(e as i64),
                e,
                b"a callback requested a permanent failure",
                true,
            )
        }
        CR_CHECKPOINT_OMIT => (
            -(CR_EOMITTED as i64),
            libc::ESRCH,
            b"every process was omitted",
            false,
        ),
        _ => {
            let e = if code != 0 { code } else { CR_ETEMPFAIL };
            (
                -(e as i64),
                e,
                b"a callback cancelled the checkpoint",
                false,
            )
        }
    }
}

/// Ends a request: publishes the outcome, lets the threads go, answers the requester.
fn conclude(conn: i32, api: bool, outcome: i64, status: i32, bytes: u64, msg: &[u8]) {
    quiesce::finish(outcome);
    if status == 0 && !api {
        // cr_checkpoint renames the image and sends its signal before the program runs again.
        send_reply(conn, 0, bytes, msg);
        // A requester killed before its commit: no image, so no post-checkpoint signal either.
        let committed = wait_commit(conn);
        // Not killed by the requester's SIGKILL (it comes before the release): released, with
        // the SIGTERM if one was asked (then the resets stay: the program ends itself).
        let term = super::forward::post_signal() == libc::SIGTERM;
        crate::kinds::socket::undo_reset_on_close(committed && term);
        if committed {
            super::forward::deliver_signal();
        }
        super::forward::release_all();
        // Not pending any more before any thread runs: cr_leave_cs() returns when the
        // checkpoint is done, and cr_status() right after must say IDLE.
        crate::api::cs::end_pending();
        quiesce::release();
        return;
    }
    if status == 0 {
        super::forward::deliver_signal();
    }
    super::forward::release_all();
    crate::api::cs::end_pending();
    quiesce::release();
    // The request is complete once every thread has finished its callbacks (as in BLCR, whose
    // kernel completes a request only after each thread reported done).
    let deadline = sys::monotonic_ns() + CALLBACKS_DONE_LIMIT_NS;
    while crate::api::callbacks::in_progress() && sys::monotonic_ns() < deadline {
        crate::api::callbacks::wait_callbacks_done(10_000_000);
        turn_away_busy();
    }
    send_reply(conn, status, bytes, msg);
}

/// Records, when a request ends, how much of its scratch area was in memory: the next delta
/// buffer leaves room for as much (`agent::deltabuf`).
/// (Declared after the scratch area: dropped before it is unmapped.)
struct ScratchMeter(usize);

impl Drop for ScratchMeter {
    fn drop(&mut self) {
        super::deltabuf::note_scratch(super::scratch::resident_at(self.0));
    }
}

/// How long a new request waits for the threads to finish the previous checkpoint.
const LINGER_NS: u64 = 3_000_000_000;

/// Longest the answer to a request waits for the program's callbacks to finish.
const CALLBACKS_DONE_LIMIT_NS: u64 = 60_000_000_000;

fn serve(conn: i32) {
    SERVING.store(true, Release);
    REQUEST_FDS[0].store(conn, Release);
    let record = |fds: &[i32; 3]| {
        REQUEST_FDS[1].store(fds[0], Release);
        REQUEST_FDS[3].store(fds[1], Release);
        REQUEST_FDS[4].store(fds[2], Release);
    };
    if let Some((req, [img_fd, raw_fd, ack_fd])) = recv_request(conn, record) {
        // Watched from here on (callbacks, stop, write): a requester that dies lets the program
        // go within a few tens of milliseconds, whatever phase the checkpoint is in.
        super::image::REQUESTER_CONN.store(conn, Release);
        // The `.NAME.tmp` we write (no O_TMPFILE there): removed if the checkpoint is given up.
        let tmp =
            super::offload::TmpName::of(req.flags, &req.dest[..req.dest_len as usize], img_fd);
        let handed = core::cell::Cell::new(HANDED_NONE);
        serve_request(conn, req, [img_fd, raw_fd, ack_fd], &tmp, &handed);
        if !CONN_IS_PAST.load(Acquire) {
            // (Not in a restored process: nothing of that request is ours there.)
            if handed.get() == HANDED_NONE && super::image::requester_gone() {
                // A requester gone (at any phase, before its commit included) removes nothing
                // itself: we do, if its temporary name is still our file (after a commit it
                // is not: renamed). A writer left behind does it once it is gone.
                tmp.remove();
            }
            if raw_fd >= 0 && handed.get() != HANDED_BOTH {
                sys::close(raw_fd);
            }
            if ack_fd >= 0 {
                sys::close(ack_fd);
            }
        }
        super::image::REQUESTER_CONN.store(-1, Release);
        // The program runs again: size the delta buffer for the next delta (or free it), and
        // destroy the image's AIO context (its wait for an RCU grace period is not the stop's).
        super::deltabuf::settle();
        super::aio::destroy_deferred();
    }
    for f in &REQUEST_FDS {
        f.store(-1, Release);
    }
    SERVING.store(false, Release);
}

/// [`serve_request`] handed no descriptor to a writer left behind.
const HANDED_NONE: u8 = 0;
/// … the image descriptor (a copy-on-write writer's).
const HANDED_IMAGE: u8 = 1;
/// … the image descriptor and the raw one of `--compress` (a stopped write's helper).
const HANDED_BOTH: u8 = 2;

/// Serves one checkpoint request. `tmp`: the temporary file written (see
/// `offload::TmpName`); `handed` says which of the image descriptors (`img_fd`, `raw_fd`) were
/// handed to a writer left behind (`offload::leave_behind`, which closes them and removes
/// `tmp` once the writer is gone).
fn serve_request(
    conn: i32,
    req: Request,
    [img_fd, raw_fd, ack_fd]: [i32; 3],
    tmp: &super::offload::TmpName,
    handed: &core::cell::Cell<u8>,
) {
    super::offload::reap_done();
    super::offload::adopt_orphans();
    let _dumpable = super::process::Dumpable::for_request();
    super::forward::begin(req.flags, req.requester, req.signal);
    if req.flags & (protocol::FLAG_API | protocol::FLAG_BARRIER) == protocol::FLAG_API
        && req.scope != crate::api::types::CR_SCOPE_PROC
    {
        // An API request for a tree, group or session reaches one process: the scope's other
        // processes join ours as if forwarded.
        let _ = super::forward::add(req.scope, req.target);
    }
    if req.kind != protocol::REQ_CHECKPOINT || img_fd < 0 {
        send_reply(conn, libc::EINVAL, 0, b"bad request");
        if img_fd >= 0 {
            sys::close(img_fd);
        }
        return;
    }
    let api = req.flags & protocol::FLAG_API != 0;
    if super::OMITTED.load(Acquire) {
        send_reply(
            conn,
            libc::ESRCH,
            0,
            b"the process is omitted from checkpoints (cr_run --omit)",
        );
        sys::close(img_fd);
        return;
    }

    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            send_reply(conn, e.0, 0, b"cannot map scratch memory");
            sys::close(img_fd);
            return;
        }
    };
    let meter = ScratchMeter(scratch.base());
    let timeout_ns = if req.timeout_ms == 0 {
        QUIESCE_TIMEOUT_MS * 1_000_000
    } else {
        req.timeout_ms as u64 * 1_000_000
    };
    // What callbacks may ask about this request (cr_get_checkpoint_info).
    let mut dest = [0u8; 4096];
    let dest_len = if req.dest_len > 0 {
        let n = (req.dest_len as usize).min(dest.len());
        dest[..n].copy_from_slice(&req.dest[..n]);
        n
    } else {
        let mut link = StackBuf::<64>::new();
        link.push(b"/proc/self/fd/").num(img_fd as u64);
        sys::readlink(link.as_cstr(), &mut dest).unwrap_or(0)
    };
    let dest_ok = dest_len > 0 && dest[0] == b'/';
    crate::api::info::set_checkpoint(
        req.signal,
        if dest_ok { &dest[..dest_len] } else { b"" },
        req.requester,
        req.target,
        req.scope,
    );
    quiesce::ABORT.store(0, Release);
    crate::api::callbacks::reset_barrier();

    // Critical sections postpone the whole checkpoint; a deadline only with --time / cr_timeout.
    let cs_deadline = if req.timeout_ms == 0 {
        u64::MAX
    } else {
        sys::monotonic_ns() + timeout_ns
    };
    if !crate::api::cs::begin_pending(
        cs_deadline,
        || {
            send_reply(conn, protocol::STATUS_ACCEPTED, 0, b"");
        },
        || requester_left(conn),
    ) {
        quiesce::finish(-(libc::ETIMEDOUT as i64));
        send_reply(
            conn,
            libc::ETIMEDOUT,
            0,
            b"the program stayed in a critical section",
        );
        sys::close(img_fd);
        return;
    }
    // Phase 1: thread-context callbacks reach their cr_checkpoint() (or the requester died
    // meanwhile: ECANCELED, nothing is stopped).
    if let Err(e) = crate::api::callbacks::run_thread_phase(timeout_ns) {
        quiesce::request_abort(crate::api::types::CR_CHECKPOINT_TEMP_FAILURE, e);
    }
    if end_if_aborted(conn, api, img_fd) {
        return;
    }
    // The bounce ring of the page data, mapped and populated while the program still runs
    // (`agent::bounce`; a copy-on-write writer has a buffer of its own). Unmapped when dropped.
    let bounce = if req.flags & protocol::FLAG_COW == 0 {
        Some(super::bounce::Bounce::map())
    } else {
        super::bounce::not_mapped_for_cow();
        None
    };
    // Phase 2: every thread stops in the handler (running its signal-context callbacks).
    let quiesce_start = sys::monotonic_ns();
    let mut dirbuf = DirBuf([0; 8192]);
    if let Err(e) = quiesce::quiesce(&mut dirbuf, timeout_ns) {
        let mut m = StackBuf::<240>::new();
        let status = match e {
            QuiesceError::Timeout(tid) => {
                m.push(b"thread ")
                    .num(tid as u64)
                    .push(b" did not stop for the checkpoint");
                libc::ETIMEDOUT
            }
            QuiesceError::TooManyThreads => {
                m.push(b"too many threads");
                libc::ENOMEM
            }
            QuiesceError::Proc(err) => {
                m.push(b"cannot list threads");
                err.0
            }
            QuiesceError::Cancelled => {
                m.push(b"the requester went away while the threads stopped");
                libc::ECANCELED
            }
            QuiesceError::InExec(n) => {
                m.push(b"a thread was still inside exec at the time limit (")
                    .num(u64::from(n))
                    .push(b" in exec): nothing was stopped");
                libc::ETIMEDOUT
            }
        };
        conclude(conn, true, -(status as i64), status, 0, m.as_bytes());
        sys::close(img_fd);
        return;
    }
    if end_if_aborted(conn, api, img_fd) {
        return;
    }
    let quiesce_ms = (sys::monotonic_ns() - quiesce_start) / 1_000_000;
    // Copy-on-write asked for: one-process checkpoints by the tools (an API request's requester
    // waits for its own callbacks; forwarded processes append their images to ours).
    let mut cow = req.flags & protocol::FLAG_COW != 0;
    let mut raw_ok = raw_fd >= 0;
    // Alone in its cut (a delta may then be released before it is written: agent::deltabuf).
    let mut sole = !api;
    // `protocol::FLAG_PLACED` (and `FLAG_PLACED_NOSYNC`) of the write order.
    let mut placed = 0;
    if req.flags & protocol::FLAG_BARRIER != 0 {
        // One process of a multi-process checkpoint: stopped; write only once every other
        // process of the cut is stopped too.
        // Processes our callbacks forwarded the checkpoint to: cr_checkpoint adds them.
        let mut fwd = StackBuf::<240>::new();
        super::forward::describe(&mut fwd);
        // We can write our image at an offset the requester gives (`protocol::FLAG_PLACED`),
        // unless we would append forwarded processes' images to it.
        // Also from a copy-on-write writer (`protocol::CAP_COW_PLACED`, `finish_cow`).
        let cap = if super::forward::count() == 0 {
            protocol::CAP_PLACED | protocol::CAP_COW_PLACED
        } else {
            0
        };
        send_reply(conn, protocol::STATUS_QUIESCED, cap, fwd.as_bytes());
        let write_flags = wait_write(conn);
        placed = write_flags.unwrap_or(0) & (protocol::FLAG_PLACED | protocol::FLAG_PLACED_NOSYNC);
        // A cut of several processes is written stopped (cr_checkpoint says so): only the
        // requester knows, and sets FLAG_COW on REQ_WRITE when we are the only one.
        cow = write_flags.is_some_and(|f| f & protocol::FLAG_COW != 0);
        // Likewise whether our image is alone in its file (the raw path of `--compress`).
        if write_flags.is_none_or(|f| f & protocol::FLAG_RAW_OK == 0) {
            raw_ok = false;
        }
        sole = sole && write_flags.is_some_and(|f| f & protocol::FLAG_SOLE != 0);
        if write_flags.is_none() {
            let e = libc::ECANCELED;
            conclude(
                conn,
                true,
                -(e as i64),
                e,
                0,
                b"the multi-process checkpoint was abandoned",
            );
            sys::close(img_fd);
            return;
        }
    } else if super::forward::count() > 0 {
        // A one-process checkpoint our callbacks forwarded to other processes: stop them now,
        // they append their images after ours.
        let ms = (timeout_ns / 1_000_000).min(i32::MAX as u64) as i32;
        if let Err((e, pid)) = super::forward::stop_all(img_fd, &req, ms) {
            forward_failed(conn, img_fd, e, pid, b"could not be stopped");
            return;
        }
        // Every process of the checkpoint is stopped: which descriptions do they share?
        super::forward::find_shares(img_fd, scratch.probe());
    }
    let mut cow_note = 0;
    if super::forward::count() > 0 {
        sole = false;
    }
    if cow && (api || super::forward::count() > 0) {
        cow = false;
        cow_note = super::cow::NOTE_FORWARD;
    }
    // Every thread of the cut is stopped: the pending signals now are the image's.
    quiesce::capture_pending(sys::monotonic_ns() + timeout_ns);
    let job = Job {
        fd: img_fd,
        // The raw path only for an image that is the file's sole content: not when the processes
        // our callbacks forwarded to append theirs after it through `img_fd`.
        raw_fd: if raw_ok && super::forward::count() == 0 {
            raw_fd
        } else {
            -1
        },
        // The pieces of a split image handed to cr_checkpoint to read from our memory itself
        // (`protocol::FLAG_ZPULL`), acknowledged on this pipe.
        ack_fd: if req.flags & protocol::FLAG_ZPULL != 0 {
            ack_fd
        } else {
            -1
        },
        flags: req.flags | placed,
        skip_fds: [LISTEN_FD.load(Relaxed), conn, img_fd, raw_fd, ack_fd],
        bytes: AtomicU64::new(0),
        errno: AtomicI32::new(0),
        step: core::sync::atomic::AtomicU32::new(0),
        scratch: &scratch,
        deadline_ns: cs_deadline,
        cow,
        writer: AtomicI32::new(-1),
        cow_note: core::sync::atomic::AtomicU32::new(cow_note),
        req: &req,
        files: req.files,
        sole,
        held: core::cell::Cell::new(None),
    };
    // Progress messages while the image is written, when the requester asked for them.
    super::image::progress::arm(if req.flags & protocol::FLAG_PROGRESS != 0 {
        conn
    } else {
        -1
    });
    // The writer runs on a stack inside the scratch area: our own stack is part of the image and
    // must not change while it is hashed and written.
    // SAFETY: the scratch stack is mapped, unused, and outlives the call.
    // Calls that may wait on a regular-file destination go to a helper from here on, so that
    // a write stuck in the kernel cannot keep the program stopped (`agent::offload`).
    super::offload::begin([img_fd, job.raw_fd], cs_deadline, tmp);
    let r = unsafe {
        crate::arch::save_and_call_on(
            &SLOTS[0].ctx_rsp,
            write_callback,
            &job as *const Job as usize,
            scratch.stack_top(),
        )
    };
    super::image::progress::arm(-1);
    if r == crate::arch::RESUMED {
        super::offload::forget_restored();
        // The restored process: the connection was the checkpointed process's.
        super::image::REQUESTER_CONN.store(-1, Release);
        // We are the control thread of a restored process; conn, img_fd and the scratch area
        // belong to the past (they were never part of the image).
        core::mem::forget(meter);
        core::mem::forget(scratch);
        super::scratch::forget_restored();
        super::aio::forget_deferred();
        if let Some(b) = bounce {
            super::bounce::after_restart(b);
        }
        // (Set before the program's threads go, which after_restart does at its end.)
        CONN_IS_PAST.store(true, Release);
        after_restart();
        return;
    }
    // A helper given up in the middle of a call (the image failed): it keeps the image's
    // descriptors until it is gone.
    let stuck = super::offload::end();
    if r == super::image::FORKED {
        if finish_cow(conn, &job, &scratch, quiesce_start, quiesce_ms, tmp) {
            handed.set(HANDED_IMAGE);
        } else {
            sys::close(img_fd);
        }
        return;
    }
    if r == super::image::HELD {
        match job.held.take() {
            Some(held) => finish_held(conn, held, &scratch, quiesce_start, quiesce_ms),
            // (Never: HELD comes with the rest of the image.)
            None => conclude(
                conn,
                true,
                -(libc::EIO as i64),
                libc::EIO,
                0,
                b"internal error",
            ),
        }
        sys::close(img_fd);
        return;
    }
    let cow_asked = req.flags & protocol::FLAG_COW != 0 || cow;
    if r == 0 {
        let forwarded = match super::forward::write_all() {
            Ok(b) => b,
            Err((e, pid)) => {
                forward_failed(conn, img_fd, e, pid, b"failed to write its image");
                return;
            }
        };
        // (An API request's SIGTERM is the program's own choice and has no release to forget
        // the table at: not for it.)
        if req.signal == libc::SIGKILL || (!api && req.signal == libc::SIGTERM) {
            crate::kinds::socket::reset_accepted_on_close();
        }
        if api && req.signal == libc::SIGKILL {
            // SIGKILL cannot wait for the release: it ends us at once. The requester learns of
            // the durable image first (BLCR's kernel completed the request, then killed); the
            // processes the checkpoint was forwarded to get theirs too.
            send_reply(conn, 0, job.bytes.load(Acquire) + forwarded, b"");
            super::forward::deliver_signal();
            kill_self();
        }
        if api && req.signal > 0 {
            // API requests: the post-checkpoint signal is ours to send (pending until release).
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), req.signal) };
        }
        // How the image went (direct I/O or why not, and where the time went) for `-v`.
        // (Only for the tools: an API requester's log must stay empty on success.)
        let mut report = StackBuf::<240>::new();
        if !api {
            super::ctlstart::describe(&mut report);
            report.push(b"quiesce=").num(quiesce_ms).push(b"ms ");
            super::image::io_report::describe(&mut report);
            report.push(b" mode=stopped");
            super::deltabuf::describe_fallback(&mut report);
            let note = job.cow_note.load(Acquire);
            if cow_asked && note != 0 {
                report
                    .push(b"(no copy-on-write: ")
                    .push(super::cow::note_text(note))
                    .push(b")");
            }
        }
        if !api || req.flags & protocol::FLAG_INCREMENTAL != 0 {
            super::incremental::describe(&mut report);
        }
        conclude(
            conn,
            api,
            0,
            0,
            job.bytes.load(Acquire) + forwarded,
            report.as_bytes(),
        );
    } else {
        let e = job.errno.load(Acquire);
        let mut m = StackBuf::<240>::new();
        m.push(b"failed at ")
            .push(STEPS[job.step.load(Acquire) as usize % STEPS.len()].as_bytes());
        if stuck.is_some() {
            m.push(b" (a write of it ")
                .push(protocol::LEFT_BEHIND.as_bytes())
                .push(b": left to finish on its own)");
        }
        conclude(conn, true, -(e as i64), e, 0, m.as_bytes());
    }
    if let Some(b) = stuck {
        // Given up while a write waits in the kernel: the program runs again (`conclude`);
        // the helper closes nothing, we do once it is gone, and remove the temporary file.
        super::offload::leave_behind(b, -1, [img_fd, raw_fd], tmp);
        handed.set(HANDED_BOTH);
        return;
    }
    sys::close(img_fd);
}

/// A copy-on-write checkpoint whose writer runs: lets the program go at once, waits for the
/// writer, then answers the requester, who commits and signals, and waits for its RELEASE.
///
/// One of several processes written at once (`protocol::FLAG_PLACED`): the program stays
/// stopped until the requester says every member's writer exists (`protocol::REQ_RUN`, after
/// our `protocol::STATUS_FORKED`): a member released before another's writer exists could
/// send it bytes that are not in the cut. Without that word it runs again only after the
/// commit (the requester's RELEASE), or once the checkpoint failed.
///
/// Returns true when the writer was left behind, still waiting on the destination after it
/// was killed (`offload::leave_behind` has the image descriptor then, and `tmp`).
fn finish_cow(
    conn: i32,
    job: &Job,
    scratch: &Scratch,
    quiesce_start: u64,
    quiesce_ms: u64,
    tmp: &super::offload::TmpName,
) -> bool {
    let pidfd = job.writer.load(Acquire);
    REQUEST_FDS[2].store(pidfd, Release);
    REQUEST_FDS[5].store(super::cow::done_fd(scratch), Release);
    let forked_ns = sys::monotonic_ns();
    // When the program ran on (0: not yet).
    let released_ns = core::cell::Cell::new(0u64);
    // The image is the snapshot's: as far as the program's callbacks are concerned the
    // checkpoint is taken (BLCR's callbacks continue once the kernel has the image).
    // Lets the program go with `status` as its checkpoint's outcome, once.
    let release = |status: i64| {
        if released_ns.get() == 0 {
            quiesce::finish(status);
            crate::api::cs::end_pending();
            quiesce::release();
            released_ns.set(sys::monotonic_ns());
        }
    };
    let mut run = || release(0);
    let placed = job.flags & protocol::FLAG_PLACED != 0;
    if placed {
        // Our writer exists; the others' may not yet.
        send_reply(conn, protocol::STATUS_FORKED, 0, b"");
    } else {
        run();
    }
    // (cow::wait closes the eventfd.)
    let res = super::cow::wait(
        pidfd,
        scratch,
        conn,
        job.deadline_ns,
        || {
            REQUEST_FDS[5].store(-1, Release);
        },
        &mut run,
    );
    // (A failed checkpoint whose program is still stopped: it runs on, the checkpoint not
    // taken.)
    let release_failed = |e: i32| release(-(e as i64));
    // (A writer that said it succeeded before its exit is reaped below, once the requester
    // was answered: its pidfd stays ours until then.)
    if !res.as_ref().is_ok_and(|w| w.exiting) {
        REQUEST_FDS[2].store(-1, Release);
    }
    if let Err(e @ super::cow::WriterError::Lingering(_)) = &res {
        // Killed, but still in the kernel (a write the destination does not answer): the
        // next checkpoint must not wait for it. Reaped from our loop once it is gone.
        super::incremental::failed();
        let mut m = StackBuf::<240>::new();
        e.describe(&mut m);
        m.push(b" (the killed writer ")
            .push(protocol::LEFT_BEHIND.as_bytes())
            .push(b": left to end on its own)");
        send_reply(conn, e.errno(), 0, m.as_bytes());
        release_failed(e.errno());
        super::offload::leave_behind(0, pidfd, [job.fd, -1], tmp);
        return true;
    }
    match res {
        Ok(super::cow::Written { bytes, exiting }) => {
            // The writer's trailer is in the scratch area: an incremental checkpoint's next
            // delta may name this image (tracking was armed in the stop).
            let tsize = core::mem::size_of::<crate::image::format::Trailer>();
            let tr: crate::image::format::Trailer =
                bytemuck::pod_read_unaligned(&scratch.trailer()[..tsize]);
            super::incremental::remember(tr.trailer_hash, tr.total_len);
            let mut report = StackBuf::<240>::new();
            super::ctlstart::describe(&mut report);
            report.push(b"quiesce=").num(quiesce_ms).push(b"ms ");
            super::image::io_report::describe(&mut report);
            report.push(b" mode=cow stop=");
            if released_ns.get() == 0 {
                // (Placed, and the requester never said every writer exists: released after
                // the commit, stopped for the whole write.)
                report.push(b"whole(");
            } else {
                let stop_ns = released_ns.get() - quiesce_start;
                report.ms(stop_ns).push(b"ms(");
            }
            report
                .push(b"fork=")
                .ms(super::cow::FORK_NS.load(Relaxed))
                .push(b"ms check=")
                .num(super::cow::CHECK_NS.load(Relaxed) / 1_000_000)
                .push(b"ms");
            if placed && released_ns.get() != 0 {
                // Waiting for the other members' writers.
                let ns = released_ns.get().saturating_sub(forked_ns);
                report.push(b" cut=").ms(ns).push(b"ms");
            }
            report.push(b")");
            super::incremental::describe(&mut report);
            send_reply(conn, 0, bytes, report.as_bytes());
            let _ = wait_commit(conn);
            // (Not released before: once committed, or the requester gone.)
            run();
            if exiting {
                // Its status is known (it said so before its exit): reaped from our poll once
                // its exit has torn down its copy of the address space, not waited for here
                // (the next request would wait for it: `offload::reap_later`).
                REQUEST_FDS[2].store(-1, Release);
                super::offload::reap_later(pidfd);
            }
        }
        Err(e) => {
            super::incremental::failed();
            let mut m = StackBuf::<240>::new();
            e.describe(&mut m);
            send_reply(conn, e.errno(), 0, m.as_bytes());
            release_failed(e.errno());
        }
    }
    false
}

/// A delta whose page data is in the delta buffer (`agent::deltabuf`): lets the program go at
/// once, writes the rest of the image, then answers the requester, who commits and signals,
/// and waits for its RELEASE (as a copy-on-write checkpoint does).
fn finish_held(
    conn: i32,
    held: super::image::Held,
    scratch: &Scratch,
    quiesce_start: u64,
    quiesce_ms: u64,
) {
    // The image's contents are fixed: as far as the program's callbacks are concerned the
    // checkpoint is taken.
    quiesce::finish(0);
    crate::api::cs::end_pending();
    quiesce::release();
    let stop_ns = sys::monotonic_ns() - quiesce_start;
    match super::image::write_held(held, scratch) {
        Ok(bytes) => {
            super::deltabuf::note_scratch(scratch.resident());
            let mut report = StackBuf::<240>::new();
            super::ctlstart::describe(&mut report);
            report.push(b"quiesce=").num(quiesce_ms).push(b"ms ");
            super::image::io_report::describe(&mut report);
            report.push(b" mode=buffered stop=").ms(stop_ns).push(b"ms");
            super::deltabuf::describe_held(&mut report);
            super::incremental::describe(&mut report);
            send_reply(conn, 0, bytes, report.as_bytes());
            let _ = wait_commit(conn);
        }
        Err((step, e)) => {
            super::incremental::failed();
            let mut m = StackBuf::<240>::new();
            m.push(b"failed at ")
                .push(STEPS[step as usize % STEPS.len()].as_bytes())
                .push(b" (a buffered delta, after the program was let go)");
            send_reply(conn, e.0, 0, m.as_bytes());
        }
    }
}

/// Ends the request because process `pid`, which the checkpoint was forwarded to, failed.
fn forward_failed(conn: i32, img_fd: i32, e: i32, pid: i32, what: &[u8]) {
    let mut m = StackBuf::<240>::new();
    m.push(b"process ")
        .num(pid as u64)
        .push(b" (the checkpoint was forwarded to it) ")
        .push(what);
    conclude(conn, true, -(e as i64), e, 0, m.as_bytes());
    sys::close(img_fd);
}

/// Ends the request if a callback asked to abort it (after phase 1 or phase 2); returns whether
/// it did.
fn end_if_aborted(conn: i32, api: bool, img_fd: i32) -> bool {
    let abort = quiesce::ABORT.load(Acquire);
    if abort == 0 {
        return false;
    }
    let (outcome, status, msg, kill) = abort_outcome(abort);
    if kill {
        // A permanent failure: the requester learns it, then the process dies without any thread
        // running on (cr_checkpoint() never returns: the outcome is not published, so not even
        // the helper thread wakes).
        send_reply(conn, status, 0, msg);
        kill_self();
    }
    conclude(conn, api, outcome, status, 0, msg);
    sys::close(img_fd);
    true
}

/// A permanent failure kills the process (BLCR: every process in the request).
fn kill_self() -> ! {
    // SAFETY: SIGKILL to our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    sys::exit_group(137)
}

/// Completes a restart in the control thread, then lets the program's threads go.
fn after_restart() {
    let info = RestartInfo::from_words(core::array::from_fn(|i| {
        super::resume::INFO[i].load(Acquire)
    }));
    RESTARTER.store(info.restarter_pid, Release);
    // The request's descriptors belong to the checkpointed process, not to us.
    for f in &REQUEST_FDS {
        f.store(-1, Release);
    }
    super::forward::forget();
    SERVING.store(false, Release);
    if info.addr_map_len > 0 && info.addr_map_addr != 0 {
        // SAFETY: the map lies in the trampoline's block, still mapped (unmapped below).
        let map = unsafe {
            core::slice::from_raw_parts(info.addr_map_addr as *const u8, info.addr_map_len as usize)
        };
        super::netmap::install(map);
    }
    if info.block_len > 0 {
        sys::munmap(info.block_addr as usize, info.block_len as usize);
    }
    if info.code_len > 0 {
        sys::munmap(info.code_addr as usize, info.code_len as usize);
    }
    super::process::restore_timers();
    super::incremental::restored(
        info.image_hash as u64,
        info.image_size as u64,
        info.image_depth as u32,
    );
    if info.exe_fd >= 0 {
        // The trampoline made it /proc/self/exe where it could; we only close it.
        sys::close(info.exe_fd as i32);
    }
    match bind_socket(None, false) {
        Ok(fd) => LISTEN_FD.store(fd, Release),
        Err(_) => LISTEN_FD.store(-1, Release),
    }
    if info.notify_fd >= 0 {
        // Report::Running: 'R' and our pid.
        let mut msg = [b'R', 0, 0, 0, 0];
        msg[1..].copy_from_slice(&sys::getpid().to_le_bytes());
        let _ = sys::write_all(info.notify_fd as i32, &msg);
        sys::close(info.notify_fd as i32);
    }
    // Every thread must exist before the slots are released (see resume::ALL_CLONED), and have
    // queued its pending signals again.
    while super::resume::ALL_CLONED.load(Acquire) == 0 {
        let _ = sys::futex_wait(&super::resume::ALL_CLONED, 0, Some(100_000_000));
    }
    super::resume::wait_prepared();
    if info.early_signal > 0 {
        // cr_restart --early-stop/--early-abrt: before any thread of the program runs again (a
        // SIGSTOP stops us right here, until the process is continued).
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), info.early_signal as i32) };
    }
    // Callbacks see cr_checkpoint() > 0: the restarter's pid.
    quiesce::finish(info.restarter_pid.max(1));
    crate::api::cs::end_pending();
    quiesce::release();
}
