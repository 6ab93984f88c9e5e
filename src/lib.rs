//! libcr-rs: Berkeley Lab Checkpoint/Restart rebuilt in user space.
//!
//! The data flow is visible in the module layout:
//! - [`agent`]: runs inside the checkpointed program (control thread, quiesce, image writer,
//!   restart continuation);
//! - [`image`]: the versioned, checksummed image format (one writer, one reader);
//! - [`kinds`]: kernel objects behind descriptors (eventfd, timerfd, signalfd, epoll), one
//!   module per kind, capture and restore side by side;
//! - [`checkpoint`]: the checkpoint coordinator the tools share (scope, consistent cut, commit);
//! - [`restore`]: the restart loader used by `cr_restart` and `cr_request_restart` (validate,
//!   rebuild, trampoline);
//! - [`supervise`]: `cr_run --checkpoint-dir`, the batch-cluster workflow (start or resume,
//!   periodic and preemption checkpoints, generations);
//! - [`api`]: BLCR's C API;
//! - [`protocol`]: what the tools and the agent say to each other;
//! - [`sys`] and [`arch`]: the raw syscall layer and the few lines of assembly.

#![allow(non_camel_case_types, non_upper_case_globals)]

pub mod agent;
pub mod api;
pub mod arch;
pub mod checkpoint;
pub mod image;
pub mod kinds;
pub mod launch;
pub mod progress;
pub mod protocol;
pub mod restore;
pub mod supervise;
pub mod sys;
pub mod tool;
