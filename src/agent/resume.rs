//! The restored agent: entered from the restart trampoline in the old address space, it re-creates
//! every thread and resumes each one exactly where its checkpoint left it.
//!
//! State of the process when [`restart_entry`] runs: memory is the image's, `fs` is the leader
//! thread's TLS, every signal is blocked, no other thread exists, and the kernel still carries
//! nothing of the program's per-thread registrations. Here the agent:
//! 1. re-installs the program's signal dispositions and process-wide `prctl` settings;
//! 2. for every other thread, `clone`s a thread with that thread's TLS (`CLONE_SETTLS`), glibc's
//!    tid field as `CLONE_CHILD_SETTID` (fixes the cached tid) and `CLONE_CHILD_CLEARTID` (so
//!    `pthread_join` works), on the unused part of that thread's own stack;
//! 3. each thread (the leader too) re-registers its robust futex list and rseq area, names itself,
//!    re-applies its timer slack, parent-death signal, `no_new_privs`, keep-caps and personality,
//!    queues its pending signals again (the leader also the process-wide ones), unblocks the
//!    signals that are ignored (`quiesce::let_ignored_through`), and jumps back into its saved context with `arch::resume`, which returns from
//!    `save_and_call` in the signal handler (or in the control thread) with `RESUMED`.
//!
//! The control thread then finishes the restart (`control::after_restart`) and releases them all;
//! each handler returns through `rt_sigreturn`, which restores registers, FPU/vector state, the
//! signal mask and the alternate signal stack from the kernel's own signal frame.

use super::quiesce::{self, SLOTS};
use crate::protocol::RestartInfo;
use crate::sys;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering::*};

const RESTORE_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(64))]
struct RestoreStack(UnsafeCell<[u8; RESTORE_STACK_SIZE]>);
// SAFETY: only the restart entry (one thread, before any other exists) uses this memory.
unsafe impl Sync for RestoreStack {}
static RESTORE_STACK: RestoreStack = RestoreStack(UnsafeCell::new([0; RESTORE_STACK_SIZE]));

/// Slot index of the thread the restart loader's thread becomes (the main thread when alive).
pub static LEADER: AtomicUsize = AtomicUsize::new(0);
/// Futex word: set to 1 by the leader once every thread is re-created. The control thread (the
/// first one re-created) waits for it before releasing anything: its release marks every slot
/// free, which would make the leader skip the threads it has not cloned yet.
pub static ALL_CLONED: AtomicU32 = AtomicU32::new(0);
/// Futex word: threads of the restored process that re-registered their kernel state and
/// queued their pending signals again (the control thread releases nobody before all did).
pub static PREPARED: AtomicU32 = AtomicU32::new(0);

/// The restart information of the last restart (copied out of the trampoline block).
pub static INFO: [AtomicI64; crate::protocol::RESTART_INFO_WORDS] =
    [const { AtomicI64::new(0) }; crate::protocol::RESTART_INFO_WORDS];

/// Top of the stack the trampoline switches to before calling [`restart_entry`].
pub fn restore_stack_top() -> usize {
    (RESTORE_STACK.0.get() as usize + RESTORE_STACK_SIZE - 64) & !15
}

/// Entry point of the restored agent (called by the trampoline; never returns).
///
/// # Safety
/// Only the restart trampoline calls this, on the restore stack, with a valid `info`.
pub unsafe extern "C" fn restart_entry(info: *const RestartInfo) -> ! {
    // SAFETY: the trampoline passes a pointer into its argument block, mapped until the control
    // thread unmaps it after this copy.
    let info = unsafe { core::ptr::read(info) };
    for (slot, v) in INFO.iter().zip(info.as_words()) {
        slot.store(v, Release);
    }
    let src = if info.src_len > 0 {
        // SAFETY: the path lies in the trampoline's block, still mapped.
        unsafe { core::slice::from_raw_parts(info.src_addr as *const u8, info.src_len as usize) }
    } else {
        &[]
    };
    crate::api::on_restart(info.restarter_pid as i32, src);

    super::process::restore_signals();
    super::process::restore_prctl();
    super::incremental::after_restart();
    super::deltabuf::after_restart();
    ALL_CLONED.store(0, Release);
    PREPARED.store(0, Release);
    let leader = LEADER.load(Relaxed);
    let tid_off = super::TID_OFFSET.load(Relaxed);
    // The loader gave us our original pid (cr_restart --restore-pid): give every thread its
    // original tid too.
    let exact = sys::getpid() == super::control::bound_pid();
    for (i, s) in SLOTS.iter().enumerate().take(quiesce::NSLOTS.load(Acquire)) {
        if i == leader || !quiesce::slot_in_use(i) {
            continue;
        }
        let fs = s.fs_base.load(Relaxed);
        let mut flags = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS;
        let ctid = if tid_off != 0 && fs != 0 {
            flags |= libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
            fs + tid_off
        } else {
            0
        };
        // The thread's own stack below its saved context is dead space: boot there.
        let stack = (s.ctx_rsp.load(Relaxed) - 4096) & !15;
        let old_tid: [libc::pid_t; 1] = [s.tid.load(Relaxed)];
        let mut r = -1;
        if exact && old_tid[0] > 0 {
            let args = crate::arch::CloneArgs {
                flags: flags as u64,
                child_tid: ctid as u64,
                stack: (stack - 2048) as u64,
                stack_size: 2048,
                tls: fs as u64,
                set_tid: old_tid.as_ptr() as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            // SAFETY: as below; args lives on our stack for the duration of the call.
            r = unsafe { crate::arch::clone3_thread(&args, i) };
        }
        if r < 0 {
            // SAFETY: stack is unused memory of that thread; ctid points into its TCB.
            r = unsafe { crate::arch::clone_thread(flags as usize, stack, 0, ctid, fs, i) };
        }
        if r < 0 {
            fatal(b"libcr: restart failed: cannot re-create a thread\n");
        }
    }
    ALL_CLONED.store(1, Release);
    sys::futex_wake_all(&ALL_CLONED);
    prepare_thread(leader, true);
    let rsp = SLOTS[leader].ctx_rsp.load(Relaxed);
    // SAFETY: rsp was recorded by save_and_call in this (restored) address space.
    unsafe { crate::arch::resume(rsp, crate::arch::RESUMED) }
}

/// First code of a re-created thread (called from `arch::clone_thread`).
pub extern "C" fn thread_entry(idx: usize) -> ! {
    prepare_thread(idx, false);
    let rsp = SLOTS[idx].ctx_rsp.load(Relaxed);
    // SAFETY: as in restart_entry.
    unsafe { crate::arch::resume(rsp, crate::arch::RESUMED) }
}

fn fatal(msg: &[u8]) -> ! {
    let _ = sys::write_all(2, msg);
    sys::exit_group(127)
}

/// Re-registers what the kernel keeps per thread.
fn prepare_thread(idx: usize, leader: bool) {
    let s = &SLOTS[idx];
    let fs = s.fs_base.load(Relaxed);
    let tid = sys::gettid();
    let tid_off = super::TID_OFFSET.load(Relaxed);
    if leader && tid_off != 0 && fs != 0 {
        let ctid = fs + tid_off;
        // SAFETY: ctid is the tid field of this thread's glibc TCB.
        unsafe { core::ptr::write_volatile(ctid as *mut i32, tid) };
        let _ = sys::sys3(libc::SYS_set_tid_address as usize, ctid, 0, 0);
    }
    let head = s.robust_head.load(Relaxed);
    if head != 0 {
        let _ = sys::sys3(
            libc::SYS_set_robust_list as usize,
            head,
            s.robust_len.load(Relaxed),
            0,
        );
    }
    let rseq_size = super::RSEQ_SIZE.load(Relaxed) as usize;
    if rseq_size != 0 && fs != 0 {
        let area = (fs as isize + super::RSEQ_OFFSET.load(Relaxed)) as usize;
        // SAFETY: the rseq area is in this thread's TLS; clear rseq_cs (offset 8) so no stale
        // critical-section descriptor is honoured.
        unsafe { core::ptr::write_volatile((area + 8) as *mut u64, 0) };
        let _ = sys::sys6(
            libc::SYS_rseq as usize,
            area,
            rseq_size.max(32),
            0,
            super::RSEQ_SIG as usize,
            0,
            0,
        );
    }
    s.tid.store(tid, Relaxed);
    let name = s.comm_bytes();
    let _ = sys::sys3(
        libc::SYS_prctl as usize,
        libc::PR_SET_NAME as usize,
        name.as_ptr() as usize,
        0,
    );
    s.kstate.restore();
    // Every signal is still blocked here: what is queued stays pending until the thread's own
    // mask comes back with its context.
    super::pending::requeue(idx, leader);
    // Except the signals that are ignored now (and that the program's mask lets through), as in
    // the checkpoint handler: blocked in the main thread while the others are already released,
    // a SIGCHLD or SIGCONT sent to the process is queued instead of dropped and wakes a
    // released thread's `epoll_wait` with EINTR, nothing delivered (`quiesce::let_ignored_through`;
    // tests/load.rs `restarts_while_ignored_signals_arrive`). Dispositions are the program's
    // again (`restart_entry`), and nothing runs for an ignored signal.
    quiesce::let_ignored_through(s.program_mask.load(Relaxed));
    PREPARED.fetch_add(1, AcqRel);
    sys::futex_wake_all(&PREPARED);
}

/// Waits until every thread of the restored process ran [`prepare_thread`].
pub fn wait_prepared() {
    let want = (0..quiesce::NSLOTS.load(Acquire))
        .filter(|&i| quiesce::slot_in_use(i))
        .count() as u32;
    loop {
        let n = PREPARED.load(Acquire);
        if n >= want {
            return;
        }
        let _ = sys::futex_wait(&PREPARED, n, Some(100_000_000));
    }
}
