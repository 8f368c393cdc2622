//! What the NBD server needs from storage: an export is a byte array of `size()` bytes that
//! is read and written in whole 4 KiB blocks. The server does sub-block read-modify-write
//! itself (under per-block locks shared by every connection to the export), so a backend
//! only ever sees `BLOCK_SIZE`-aligned offsets and lengths.

use bytes::Bytes;
pub use net::sync::Cancel;
use std::future::Future;
use std::sync::Arc;

/// The block size the gateway advertises as its minimum and that backends work in.
pub const BLOCK_SIZE: u64 = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IoError {
    /// The request itself is wrong (maps to NBD EINVAL).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The cluster is out of space (maps to NBD ENOSPC).
    #[error("no space: {0}")]
    NoSpace(String),
    /// The IO failed (maps to NBD EIO).
    #[error("io error: {0}")]
    Io(String),
    /// The request's connection closed and the request was settled unfinished (nobody
    /// reads its reply).
    #[error("cancelled: the connection closed")]
    Cancelled,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("no such export {0:?}")]
    NotFound(String),
    #[error("cannot open export {name:?}: {reason}")]
    Failed { name: String, reason: String },
}

/// One export's storage. Offsets and lengths are multiples of `BLOCK_SIZE` and within
/// `size()`; the server checks both before calling.
///
/// Every call takes the request's [`Cancel`]: the server sets it when the client's
/// connection is gone. A call then returns (`IoError::Cancelled`) only once nothing it
/// started can still change the export, because the client's resend will follow.
pub trait Backend: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read(
        &self,
        offset: u64,
        len: u64,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<Bytes, IoError>> + Send;
    /// On stable media before it returns when `fua` is set; otherwise after `flush`.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), IoError>> + Send;
    fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), IoError>> + Send;
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<(), IoError>> + Send;
    /// Every write completed before it is on stable media when it returns.
    fn flush(&self, cancel: &Cancel) -> impl Future<Output = Result<(), IoError>> + Send;
}

/// Resolves export names (`pool/image`) to backends.
pub trait ExportProvider: Send + Sync + 'static {
    type Backend: Backend;
    fn open(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<Self::Backend>, OpenError>> + Send;
    fn list(&self) -> impl Future<Output = Vec<String>> + Send;
}
