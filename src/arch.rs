//! x86-64 context primitives: the only assembly besides the restart trampoline.
//!
//! [`call_preserving_fpu`] wraps `cr_checkpoint()`: a callback's x87/SSE/AVX state is saved with
//! XSAVE on its own stack before and restored after, in the process that continues and in a
//! restored one (where the thread comes back through the same frame).
//!
//! A thread that takes part in a checkpoint calls [`save_and_call`]: it pushes its callee-saved
//! registers (and MXCSR / x87 control word), records its stack pointer in a slot and calls a
//! function on the same stack. In the original process that function returns normally and so does
//! `save_and_call`. In a restored process the memory is byte-identical, so a freshly cloned thread
//! can call [`resume`] with the recorded stack pointer: it pops the same registers and "returns"
//! from `save_and_call` with the value it is given (`RESUMED`). Because the resumed stack frame is
//! exactly the one that called the function, this is an ordinary function return for the compiler;
//! no `returns_twice` trickery is involved.

use core::arch::global_asm;

/// Value `save_and_call` returns in a thread that was re-created by the restart loader.
pub const RESUMED: usize = 1;

global_asm!(
    ".text",
    ".globl cr_arch_save_and_call",
    ".type cr_arch_save_and_call,@function",
    "cr_arch_save_and_call:",
    // rdi = *mut usize (where to store rsp), rsi = fn(usize) -> usize, rdx = arg,
    // rcx = stack to run fn on (0 = stay on this stack)
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "stmxcsr [rsp]",
    "fnstcw [rsp+4]",
    "mov [rdi], rsp",
    "mov r12, rdi",
    "test rcx, rcx",
    "jz 1f",
    "mov rsp, rcx",
    "1:",
    "mov rdi, rdx",
    "call rsi",
    "mov rsp, [r12]",
    ".globl cr_arch_resume_point",
    "cr_arch_resume_point:",
    "ldmxcsr [rsp]",
    "fldcw [rsp+4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size cr_arch_save_and_call, .-cr_arch_save_and_call",
    "",
    ".globl cr_arch_resume",
    ".type cr_arch_resume,@function",
    "cr_arch_resume:",
    // rdi = saved rsp, rsi = value to return
    "mov rsp, rdi",
    "mov rax, rsi",
    "jmp cr_arch_resume_point",
    ".size cr_arch_resume, .-cr_arch_resume",
    "",
    ".globl cr_arch_clone_thread",
    ".type cr_arch_clone_thread,@function",
    "cr_arch_clone_thread:",
    // rdi = flags, rsi = child stack, rdx = parent_tid ptr, rcx = child_tid ptr, r8 = tls,
    // r9 = argument for the child entry; the child calls cr_arch_thread_entry(r9).
    "mov r10, rcx",
    "mov eax, 56",
    "syscall",
    "test rax, rax",
    "jnz 2f",
    "xor ebp, ebp",
    "mov rdi, r9",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    "2:",
    "ret",
    ".size cr_arch_clone_thread, .-cr_arch_clone_thread",
    "",
    ".globl cr_arch_clone3_thread",
    ".type cr_arch_clone3_thread,@function",
    "cr_arch_clone3_thread:",
    // rdi = struct clone_args *, rsi = its size, rdx = argument for the child entry; the child
    // starts on the stack the args name and calls cr_arch_thread_entry(rdx).
    "mov r9, rdx",
    "mov eax, 435",
    "syscall",
    "test rax, rax",
    "jnz 3f",
    "xor ebp, ebp",
    "mov rdi, r9",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    "3:",
    "ret",
    ".size cr_arch_clone3_thread, .-cr_arch_clone3_thread",
    "",
    ".globl cr_arch_clone3_call",
    ".type cr_arch_clone3_call,@function",
    "cr_arch_clone3_call:",
    // rdi = struct clone_args *, rsi = its size, rdx = fn(usize) -> ! for the child, rcx = its
    // argument; the child starts on the stack the args name (syscall keeps r8 and r9).
    "mov r8, rdx",
    "mov r9, rcx",
    "mov eax, 435",
    "syscall",
    "test rax, rax",
    "jnz 4f",
    "xor ebp, ebp",
    "mov rdi, r9",
    "and rsp, -16",
    "call r8",
    "ud2",
    "4:",
    "ret",
    ".size cr_arch_clone3_call, .-cr_arch_clone3_call",
    "",
    ".globl cr_arch_call_preserving_fpu",
    ".type cr_arch_call_preserving_fpu,@function",
    "cr_arch_call_preserving_fpu:",
    // rdi = fn(usize) -> usize, rsi = its argument, rdx = XSAVE feature mask (0: FXSAVE),
    // rcx = size of the save area. The area is 64-byte aligned on this stack, below the frame.
    "push rbp",
    "mov rbp, rsp",
    "push rbx",
    "push r12",
    "mov rbx, rdx",
    "mov r12, rdi",
    "sub rsp, rcx",
    "and rsp, -64",
    // XRSTOR (standard form) wants the header's XCOMP_BV and reserved bytes zero; XSAVE only
    // writes XSTATE_BV.
    "xor eax, eax",
    "mov [rsp+512], rax",
    "mov [rsp+520], rax",
    "mov [rsp+528], rax",
    "mov [rsp+536], rax",
    "mov [rsp+544], rax",
    "mov [rsp+552], rax",
    "mov [rsp+560], rax",
    "mov [rsp+568], rax",
    "test rbx, rbx",
    "jz 5f",
    "mov eax, ebx",
    "mov rdx, rbx",
    "shr rdx, 32",
    "xsave64 [rsp]",
    "jmp 6f",
    "5:",
    "fxsave64 [rsp]",
    "6:",
    "mov rdi, rsi",
    "call r12",
    "mov r12, rax",
    "test rbx, rbx",
    "jz 7f",
    "mov eax, ebx",
    "mov rdx, rbx",
    "shr rdx, 32",
    "xrstor64 [rsp]",
    "jmp 8f",
    "7:",
    "fxrstor64 [rsp]",
    "8:",
    "mov rax, r12",
    "lea rsp, [rbp-16]",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size cr_arch_call_preserving_fpu, .-cr_arch_call_preserving_fpu",
    "",
    ".globl cr_arch_restorer",
    ".type cr_arch_restorer,@function",
    "cr_arch_restorer:",
    "mov eax, 15",
    "syscall",
    "ud2",
    ".size cr_arch_restorer, .-cr_arch_restorer",
    entry = sym crate::agent::resume::thread_entry,
);

extern "C" {
    fn cr_arch_save_and_call(
        slot: *mut usize,
        f: extern "C" fn(usize) -> usize,
        arg: usize,
        stack: usize,
    ) -> usize;
    fn cr_arch_resume(rsp: usize, value: usize) -> !;
    fn cr_arch_restorer();
    fn cr_arch_call_preserving_fpu(
        f: extern "C" fn(usize) -> usize,
        arg: usize,
        mask: u64,
        size: usize,
    ) -> usize;
    fn cr_arch_clone3_thread(args: *const CloneArgs, size: usize, arg: usize) -> isize;
    fn cr_arch_clone3_call(
        args: *const CloneArgs,
        size: usize,
        f: extern "C" fn(usize) -> !,
        arg: usize,
    ) -> isize;
    fn cr_arch_clone_thread(
        flags: usize,
        stack: usize,
        ptid: usize,
        ctid: usize,
        tls: usize,
        arg: usize,
    ) -> isize;
}

/// Saves the callee-saved context, stores the stack pointer in `*slot`, and calls `f(arg)` on the
/// same stack. Returns `f`'s result, or [`RESUMED`] when re-entered through [`resume`].
pub fn save_and_call(
    slot: &core::sync::atomic::AtomicUsize,
    f: extern "C" fn(usize) -> usize,
    arg: usize,
) -> usize {
    // SAFETY: the assembly follows the SysV ABI (callee-saved registers and the stack are restored
    // before returning) and only writes the stack pointer into the atomic's storage.
    unsafe { cr_arch_save_and_call(slot.as_ptr(), f, arg, 0) }
}

/// As [`save_and_call`], but `f` runs on the separate stack ending at `stack_top`, so the
/// caller's stack stays untouched while `f` runs (the image writer captures it meanwhile).
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of writable memory large enough for `f`.
pub unsafe fn save_and_call_on(
    slot: &core::sync::atomic::AtomicUsize,
    f: extern "C" fn(usize) -> usize,
    arg: usize,
    stack_top: usize,
) -> usize {
    // SAFETY: as save_and_call; the caller guarantees the stack.
    unsafe { cr_arch_save_and_call(slot.as_ptr(), f, arg, stack_top) }
}

/// Continues a thread whose context was saved by [`save_and_call`] at stack pointer `rsp`.
///
/// # Safety
/// `rsp` must be a value recorded by `save_and_call` in this address space, whose stack memory is
/// unchanged since, and the calling thread's TLS must be that thread's.
pub unsafe fn resume(rsp: usize, value: usize) -> ! {
    cr_arch_resume(rsp, value)
}

/// Creates a thread with raw `clone` that runs `agent::resume::thread_entry(arg)` on `stack`.
///
/// # Safety
/// `stack` must be writable memory nobody else uses; `ctid`/`ptid` must be valid for the flags.
pub unsafe fn clone_thread(
    flags: usize,
    stack: usize,
    ptid: usize,
    ctid: usize,
    tls: usize,
    arg: usize,
) -> isize {
    cr_arch_clone_thread(flags, stack, ptid, ctid, tls, arg)
}

/// The kernel's `struct clone_args` (version 2, with `set_tid`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct CloneArgs {
    /// `CLONE_*` flags.
    pub flags: u64,
    /// Where to store a pidfd (`CLONE_PIDFD`).
    pub pidfd: u64,
    /// `CLONE_CHILD_SETTID`/`CLEARTID` address.
    pub child_tid: u64,
    /// `CLONE_PARENT_SETTID` address.
    pub parent_tid: u64,
    /// Signal sent to the parent when the child exits.
    pub exit_signal: u64,
    /// Lowest address of the child's stack.
    pub stack: u64,
    /// Size of the child's stack (the child starts at `stack + stack_size`).
    pub stack_size: u64,
    /// TLS for `CLONE_SETTLS`.
    pub tls: u64,
    /// Address of an array of wanted pids, innermost namespace first.
    pub set_tid: u64,
    /// Length of that array.
    pub set_tid_size: u64,
    /// Cgroup fd (`CLONE_INTO_CGROUP`).
    pub cgroup: u64,
}

/// Like [`clone_thread`] with `clone3`, so the thread can be given an exact id (`set_tid`).
///
/// # Safety
/// As [`clone_thread`]; `args` must describe a valid stack.
pub unsafe fn clone3_thread(args: &CloneArgs, arg: usize) -> isize {
    cr_arch_clone3_thread(args, core::mem::size_of::<CloneArgs>(), arg)
}

/// Creates a process (or thread) with `clone3` whose first thread runs `f(arg)` on the stack
/// `args` names; returns the child's id (or `-errno`) in the caller.
///
/// # Safety
/// `args` must describe a stack nobody else uses; `f` must never return.
pub unsafe fn clone3_call(args: &CloneArgs, f: extern "C" fn(usize) -> !, arg: usize) -> isize {
    cr_arch_clone3_call(args, core::mem::size_of::<CloneArgs>(), f, arg)
}

/// Address of our `rt_sigreturn` restorer (used for the checkpoint signal's handler, so a program
/// that rewrites other handlers' `sa_restorer` cannot break it).
pub fn sigreturn_restorer() -> usize {
    cr_arch_restorer as *const () as usize
}

/// XSAVE components never saved by [`call_preserving_fpu`]: AMX tile config and data (bits 17,
/// 18), which the kernel keeps disabled (XFD) until a program asks for them, and whose 8 KiB would
/// not fit a small thread stack.
const XSAVE_SKIP: u64 = (1 << 17) | (1 << 18);

/// The XSAVE feature mask (XCR0 without [`XSAVE_SKIP`]) and the size of a standard-format save
/// area for it; `(0, 512)` (FXSAVE) on a CPU or kernel without XSAVE.
pub fn xsave_layout() -> (u64, usize) {
    let c = core::arch::x86_64::__cpuid_count(1, 0);
    if c.ecx & (1 << 27) == 0 {
        return (0, 512);
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv with ecx=0 is valid.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    let mask = (((hi as u64) << 32) | lo as u64) & !XSAVE_SKIP;
    // Legacy area and header; each further component at its fixed standard-format offset.
    let mut size = 576usize;
    for i in 2..63 {
        if mask & (1 << i) != 0 {
            let d = core::arch::x86_64::__cpuid_count(0xd, i);
            size = size.max(d.ebx as usize + d.eax as usize);
        }
    }
    (mask, size)
}

/// Calls `f(arg)` with the x87/SSE/AVX state (registers, x87 stack, MXCSR, control words) saved
/// on this thread's stack before and restored after, so the caller finds it exactly as it left
/// it. The area is part of the thread's stack, so a thread re-created at restart that returns
/// through here gets the state it had when it called (`cr_checkpoint()` inside a callback).
pub fn call_preserving_fpu(f: extern "C" fn(usize) -> usize, arg: usize) -> usize {
    let (mask, size) = xsave_layout();
    // SAFETY: the assembly keeps the SysV ABI (callee-saved registers, the stack) and only
    // writes the save area it allocates below its own frame.
    unsafe { cr_arch_call_preserving_fpu(f, arg, mask, size + 64) }
}
