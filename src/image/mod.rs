//! The checkpoint image: one versioned, checksummed, self-describing format with one writer (the
//! agent, allocation-free) and one reader (the tools).

pub mod chain;
pub mod compress;
pub mod format;
pub mod merge;
pub mod reader;
pub mod stream;
pub mod tree;
pub mod writer;
