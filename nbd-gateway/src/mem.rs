//! An in-memory [`ExportProvider`] and [`Backend`], for tests and for serving the gateway on
//! its own (`examples/mem_server.rs`).
//!
//! Storage is sparse: the export is cut into 1 MiB chunks, each allocated on first write
//! and behind its own lock, so a 1 GiB export costs only what is written. Like a real
//! backend it insists on the [`Backend`] contract (whole blocks, inside the export) and
//! answers violations with [`IoError::Invalid`], so server bugs show up in tests.
//!
//! Test hooks: [`MemBackend::set_latency`] delays every operation (to widen race windows and
//! reorder completions) and [`MemBackend::fail_with`] makes every operation fail.

use crate::backend::{Backend, Cancel, ExportProvider, IoError, OpenError, BLOCK_SIZE};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const CHUNK_BYTES: u64 = 1024 * 1024;

pub struct MemBackend {
    size: u64,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
    latency_us: AtomicU64,
    fault: Mutex<Option<IoError>>,
}

impl MemBackend {
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_BYTES) as usize;
        MemBackend {
            size,
            chunks: (0..n).map(|_| RwLock::new(None)).collect(),
            latency_us: AtomicU64::new(0),
            fault: Mutex::new(None),
        }
    }

    /// Delays every later operation by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Makes every later operation fail with `error` (`None` heals the backend).
    pub fn fail_with(&self, error: Option<IoError>) {
        *net::sync::lock(&self.fault) = error;
    }

    /// The stored bytes, without the block-alignment rule (for checking from tests).
    pub fn contents(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        self.copy_out(offset, &mut out);
        out
    }

    async fn enter(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        if let Some(e) = net::sync::lock(&self.fault).clone() {
            return Err(e);
        }
        if !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
            return Err(IoError::Invalid(format!(
                "unaligned backend request {len}@{offset}"
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(IoError::Invalid(format!(
                "backend request {len}@{offset} past the end ({})",
                self.size
            ))),
        }
    }

    /// Calls `f(chunk index, offset in chunk, range in the caller's buffer)` for each chunk
    /// piece of `offset..offset+len`.
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(usize, usize, std::ops::Range<usize>)) {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let chunk = at / CHUNK_BYTES;
            let in_chunk = at % CHUNK_BYTES;
            let n = (CHUNK_BYTES - in_chunk).min(end - at);
            let from = (at - offset) as usize;
            f(chunk as usize, in_chunk as usize, from..from + n as usize);
            at += n;
        }
    }

    fn copy_out(&self, offset: u64, out: &mut [u8]) {
        Self::pieces(offset, out.len() as u64, |chunk, at, range| {
            let Some(lock) = self.chunks.get(chunk) else {
                return;
            };
            let guard = lock.read().unwrap_or_else(|_| panic!("a lock is poisoned"));
            if let Some(data) = guard.as_ref() {
                let n = range.len();
                out[range].copy_from_slice(&data[at..at + n]);
            }
        });
    }

    fn copy_in(&self, offset: u64, data: &[u8]) {
        Self::pieces(offset, data.len() as u64, |chunk, at, range| {
            let Some(lock) = self.chunks.get(chunk) else {
                return;
            };
            let mut guard = lock
                .write()
                .unwrap_or_else(|_| panic!("a lock is poisoned"));
            let buf =
                guard.get_or_insert_with(|| vec![0u8; CHUNK_BYTES as usize].into_boxed_slice());
            let n = range.len();
            buf[at..at + n].copy_from_slice(&data[range]);
        });
    }

    fn zero(&self, offset: u64, len: u64) {
        Self::pieces(offset, len, |chunk, at, range| {
            let Some(lock) = self.chunks.get(chunk) else {
                return;
            };
            let mut guard = lock
                .write()
                .unwrap_or_else(|_| panic!("a lock is poisoned"));
            if at == 0 && range.len() as u64 == CHUNK_BYTES {
                *guard = None;
            } else if let Some(buf) = guard.as_mut() {
                buf[at..at + range.len()].fill(0);
            }
        });
    }
}

impl Backend for MemBackend {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u64, _cancel: &Cancel) -> Result<Bytes, IoError> {
        self.enter(offset, len).await?;
        let mut out = vec![0u8; len as usize];
        self.copy_out(offset, &mut out);
        Ok(Bytes::from(out))
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        _fua: bool,
        _cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.enter(offset, data.len() as u64).await?;
        self.copy_in(offset, &data);
        Ok(())
    }

    async fn trim(
        &self,
        offset: u64,
        len: u64,
        _fua: bool,
        _cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.enter(offset, len).await?;
        self.zero(offset, len);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _fua: bool,
        _cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.enter(offset, len).await?;
        self.zero(offset, len);
        Ok(())
    }

    async fn flush(&self, _cancel: &Cancel) -> Result<(), IoError> {
        self.enter(0, 0).await
    }
}

/// A fixed set of named memory exports. Every `open` of a name returns the same backend, so
/// data outlives connections.
#[derive(Default)]
pub struct MemProvider {
    exports: BTreeMap<String, Arc<MemBackend>>,
}

impl MemProvider {
    pub fn new() -> Self {
        MemProvider::default()
    }

    /// Adds an empty export of `size` bytes.
    pub fn with_export(mut self, name: &str, size: u64) -> Self {
        self.exports
            .insert(name.to_string(), Arc::new(MemBackend::new(size)));
        self
    }

    pub fn insert(&mut self, name: &str, backend: Arc<MemBackend>) {
        self.exports.insert(name.to_string(), backend);
    }

    pub fn backend(&self, name: &str) -> Option<Arc<MemBackend>> {
        self.exports.get(name).cloned()
    }
}

impl ExportProvider for MemProvider {
    type Backend = MemBackend;

    async fn open(&self, name: &str) -> Result<Arc<MemBackend>, OpenError> {
        self.exports
            .get(name)
            .cloned()
            .ok_or_else(|| OpenError::NotFound(name.to_string()))
    }

    async fn list(&self) -> Vec<String> {
        self.exports.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    static NEVER: std::sync::LazyLock<Cancel> = std::sync::LazyLock::new(Cancel::never);
    use super::*;

    #[tokio::test]
    async fn round_trip_across_chunks() {
        let b = MemBackend::new(4 * CHUNK_BYTES);
        let data: Vec<u8> = (0..3 * CHUNK_BYTES as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        b.write(CHUNK_BYTES / 2, Bytes::from(data.clone()), false, &NEVER)
            .await
            .unwrap();
        let got = b
            .read(CHUNK_BYTES / 2, data.len() as u64, &NEVER)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[..]);
        b.trim(CHUNK_BYTES, CHUNK_BYTES, false, &NEVER)
            .await
            .unwrap();
        assert!(b.contents(CHUNK_BYTES, CHUNK_BYTES).iter().all(|x| *x == 0));
        assert_eq!(
            b.contents(CHUNK_BYTES - 4096, 4096),
            data[CHUNK_BYTES as usize / 2 - 4096..CHUNK_BYTES as usize / 2]
        );
    }

    #[tokio::test]
    async fn contract_violations_are_invalid() {
        let b = MemBackend::new(CHUNK_BYTES);
        assert!(matches!(
            b.read(1, 4096, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            b.read(0, 100, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            b.read(CHUNK_BYTES, 4096, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        b.fail_with(Some(IoError::NoSpace("full".into())));
        assert!(matches!(b.flush(&NEVER).await, Err(IoError::NoSpace(_))));
    }
}
