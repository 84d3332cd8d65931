//! Kiln's read-only TFTP server: RFC 1350 with options (RFC 2347), blksize (RFC 2348), tsize
//! and timeout (RFC 2349) and windowsize (RFC 7440).
//!
//! [`packet`] parses and encodes packets and negotiates options without IO; [`server`] runs
//! every transfer as a task on one runtime, confined to its root directory.

pub mod packet;
pub mod server;

pub use server::{DynamicFile, DynamicFiles, TftpConfig, TftpHandle, start};
