//! The restart trampoline: position-independent code, raw syscalls only, copied into a block that
//! is free in both the restarter's and the program's address space.
//!
//! ```text
//!  before (cr_restart's child)              after
//!  +---------------------------+            +---------------------------+
//!  | cr_restart exe/libs/heap  | --munmap-> | (gone)                    |
//!  | program regions at FINAL  |            | program regions at FINAL  |
//!  | program regions at TEMP   | -mremap--> | ... moved to their FINAL  |
//!  | [vvar] [vvar_vclock]      | -mremap--> | at the saved addresses    |
//!  | [vdso]                    |  (via a    |  (same deltas as saved)   |
//!  |                           |  scratch)  |                           |
//!  | trampoline code + block   |            | (unmapped by the agent)   |
//!  +---------------------------+            +---------------------------+
//! ```
//! Then `prctl(PR_SET_MM_MAP)` restores brk/stack/arg/env/auxv, `arch_prctl(ARCH_SET_FS)` sets the
//! leader's TLS, the stack switches to the agent's restore stack and the agent's
//! `restart_entry(info)` is called. On any mremap failure the process exits with status 125.
//! Between the two, the image's uids are set (`restore::creds`, step 3); if the kernel refuses
//! them the process exits with status 126.

use core::arch::global_asm;

global_asm!(
    ".text",
    ".globl cr_trampoline_start",
    ".globl cr_trampoline_end",
    "cr_trampoline_start:",
    "mov r15, rdi",
    // 1. unmap everything of cr_restart
    "mov r12, [r15]",
    "mov r13, [r15+8]",
    "1:",
    "test r12, r12",
    "jz 2f",
    "mov rdi, [r13]",
    "mov rsi, [r13+8]",
    "mov eax, 11",
    "syscall",
    "add r13, 16",
    "dec r12",
    "jmp 1b",
    // 2. move regions into place: mremap(from, len, len, MAYMOVE|FIXED, to)
    "2:",
    "mov r12, [r15+16]",
    "mov r13, [r15+24]",
    "3:",
    "test r12, r12",
    "jz 4f",
    "mov rdi, [r13]",
    "mov rsi, [r13+8]",
    "mov rdx, rsi",
    "mov r10d, 3",
    "mov r8, [r13+16]",
    "mov eax, 25",
    "syscall",
    "cmp rax, [r13+16]",
    "jne 9f",
    "add r13, 24",
    "dec r12",
    "jmp 3b",
    // 3. prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof map, 0); result stored for the agent
    "4:",
    "mov edi, 35",
    "mov esi, 14",
    "mov rdx, [r15+32]",
    "mov r10, [r15+40]",
    "xor r8d, r8d",
    "mov eax, 157",
    "syscall",
    "mov rcx, [r15+80]",
    "mov [rcx], rax",
    // Refused with an exe_fd (no CAP_CHECKPOINT_RESTORE here): again without it, the mm
    // fields matter more than /proc/self/exe.
    "test rax, rax",
    "jz 6f",
    "mov rdx, [r15+32]",
    "cmp dword ptr [rdx+100], -1",
    "je 6f",
    "mov dword ptr [rdx+100], -1",
    "jmp 4b",
    "6:",
    // 3b. the image's uids (`restore::creds::TrampCreds` at [r15+88], 0: none), after
    // /proc/self/exe and before any code of the image runs: setresuid, capset when a uid stays
    // 0, setfsuid, the parent-death signal again (the kernel cleared it). A refusal ends the
    // process with status 126: it never runs with other ids than planned.
    "mov rbx, [r15+88]",
    "test rbx, rbx",
    "jz 22f",
    "mov rdi, [rbx]",
    "mov rsi, [rbx+8]",
    "mov rdx, [rbx+16]",
    "mov eax, 117",
    "syscall",
    "test rax, rax",
    "jnz 28f",
    "cmp qword ptr [rbx+32], 0",
    "je 21f",
    "lea rdi, [rbx+40]",
    "lea rsi, [rbx+48]",
    "mov eax, 126",
    "syscall",
    "test rax, rax",
    "jnz 28f",
    "21:",
    "mov rdi, [rbx+24]",
    "mov eax, 122",
    "syscall",
    "mov rsi, [rbx+72]",
    "test rsi, rsi",
    "jz 22f",
    "mov edi, 1",
    "mov eax, 157",
    "syscall",
    "22:",
    // 4. arch_prctl(ARCH_SET_FS, leader fs)
    "mov edi, 0x1002",
    "mov rsi, [r15+48]",
    "mov eax, 158",
    "syscall",
    // 5. switch to the restore stack and enter the agent
    "mov rdi, [r15+72]",
    "mov rax, [r15+64]",
    "mov rsp, [r15+56]",
    "xor ebp, ebp",
    "call rax",
    "ud2",
    "9:",
    "mov edi, 125",
    "mov eax, 231",
    "syscall",
    "ud2",
    "28:",
    "mov edi, 126",
    "mov eax, 231",
    "syscall",
    "ud2",
    "cr_trampoline_end:",
);

extern "C" {
    static cr_trampoline_start: u8;
    static cr_trampoline_end: u8;
}

/// The trampoline's machine code.
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols delimit the assembly above, in this binary's text.
    unsafe {
        let s = &cr_trampoline_start as *const u8;
        let e = &cr_trampoline_end as *const u8;
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

/// The argument block header the trampoline reads (offsets are fixed by the assembly).
#[repr(C)]
#[derive(Default, Debug)]
pub struct TrampArgs {
    /// Number of (addr, len) pairs to unmap.
    pub n_unmap: u64,
    /// Address of the pairs.
    pub unmap: u64,
    /// Number of (from, len, to) moves.
    pub n_moves: u64,
    /// Address of the triples.
    pub moves: u64,
    /// Address of a `struct prctl_mm_map`.
    pub mm_map: u64,
    /// Its size.
    pub mm_map_size: u64,
    /// fs base of the leader thread.
    pub fs_base: u64,
    /// Agent restore stack top.
    pub stack_top: u64,
    /// Agent restart entry.
    pub entry: u64,
    /// Argument of the entry (`RestartInfo *`).
    pub entry_arg: u64,
    /// Where the prctl result is stored.
    pub result_ptr: u64,
    /// Address of a `restore::creds::TrampCreds` (0: the ids stay as they are).
    pub creds: u64,
}
const _: () = assert!(core::mem::offset_of!(TrampArgs, result_ptr) == 80);
const _: () = assert!(core::mem::offset_of!(TrampArgs, creds) == 88);

/// Kernel `struct prctl_mm_map` (`exe_fd` at byte 100: the trampoline clears it for its retry).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct PrctlMmMap {
    /// See `image::format::MmFields`.
    pub fields: [u64; 11],
    /// Address of the auxv words.
    pub auxv: u64,
    /// Byte size of auxv.
    pub auxv_size: u32,
    /// Executable fd, or -1 to leave `/proc/self/exe` alone.
    pub exe_fd: u32,
}

/// Copies the code to `code_addr`, then jumps to it with `args` on the stack `stack_top`.
///
/// # Safety
/// Everything the trampoline will need must already be in place in `args`; this never returns.
pub unsafe fn jump(code_addr: usize, args: usize, stack_top: usize) -> ! {
    // SAFETY: the caller guarantees the block contents; after this the old address space is gone.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "jmp {code}",
            stack = in(reg) stack_top,
            code = in(reg) code_addr,
            in("rdi") args,
            options(noreturn)
        )
    }
}
