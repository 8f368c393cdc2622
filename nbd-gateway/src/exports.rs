//! The export registry and the byte-range IO layer between NBD requests and a [`Backend`].
//!
//! [`Exports`] resolves names through the [`ExportProvider`] and hands every connection to the
//! same export the same [`ExportState`]: one backend, one lock table. It keeps only weak
//! references, so an export whose last connection closed is dropped (which, in Atlant,
//! releases the image's exclusive lock).
//!
//! [`ExportState`] turns byte ranges into whole-block backend calls:
//! - reads of unaligned ranges read the covering blocks and slice;
//! - writes and write-zeroes of unaligned ranges read-modify-write the partial head/tail
//!   blocks, holding them exclusive in the export's [`BlockLocks`]; aligned ranges hold their
//!   blocks shared (see `locks.rs` for why);
//! - trims only trim the fully covered blocks and leave partial blocks alone (the content of
//!   a trimmed range is undefined, the bytes next to it must not change).
//!
//! Invariants: every backend call has a `BLOCK_SIZE`-aligned offset and length inside
//! `ExportState::size`, which is the backend size rounded down to a whole block.

use crate::backend::{Backend, Cancel, ExportProvider, IoError, OpenError, BLOCK_SIZE};
use crate::locks::{BlockLocks, Mode};
use crate::server::ServerConfig;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// Largest single backend write used when writing literal zeroes (NO_HOLE).
const ZERO_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

type Slot<B> = Arc<tokio::sync::Mutex<Weak<ExportState<B>>>>;

/// Every export this gateway serves, by name, shared by all connections.
pub struct Exports<P: ExportProvider> {
    provider: P,
    config: ServerConfig,
    /// One slot per export name that is open or being opened. The async mutex in the slot
    /// serialises opens of one name, so two connections never open one image twice.
    slots: Mutex<BTreeMap<String, Slot<P::Backend>>>,
}

impl<P: ExportProvider> Exports<P> {
    pub fn new(provider: P, config: ServerConfig) -> Self {
        Exports {
            provider,
            config,
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn provider(&self) -> &P {
        &self.provider
    }

    pub async fn list(&self) -> Vec<String> {
        self.provider.list().await
    }

    /// Maps the name a client asked for to the export name: an empty name means the only
    /// export, if there is exactly one.
    pub async fn resolve_name(&self, name: &str) -> Result<String, OpenError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        let mut all = self.provider.list().await;
        if all.len() == 1 {
            if let Some(only) = all.pop() {
                return Ok(only);
            }
        }
        Err(OpenError::NotFound(String::new()))
    }

    /// Opens (or joins) the export `name`, which must already be resolved.
    pub async fn open(&self, name: &str) -> Result<Arc<ExportState<P::Backend>>, OpenError> {
        let slot = {
            let mut slots = net::sync::lock(&self.slots);
            if !slots.contains_key(name) {
                // Drop slots of exports that are closed and not being opened, so names sent
                // by clients cannot grow the map without bound.
                slots.retain(|_, s| match s.try_lock() {
                    Ok(weak) => weak.strong_count() > 0,
                    Err(_) => true,
                });
            }
            slots
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Weak::new())))
                .clone()
        };
        let mut weak = slot.lock().await;
        if let Some(state) = weak.upgrade() {
            return Ok(state);
        }
        let backend = self.provider.open(name).await?;
        let state = Arc::new(ExportState::new(
            name.to_string(),
            backend,
            self.config.lock_stripes,
        ));
        *weak = Arc::downgrade(&state);
        Ok(state)
    }
}

/// One open export: its backend and the block locks every connection to it shares.
pub struct ExportState<B: Backend> {
    name: String,
    backend: Arc<B>,
    size: u64,
    locks: BlockLocks,
    /// Connections that closed with requests still running, until those requests are
    /// settled (cancelled and unable to land): requests that arrive meanwhile wait, so a
    /// client's resend after a reconnect never races its original.
    settling: tokio::sync::watch::Sender<usize>,
}

/// Held while a closed connection's requests settle (see `ExportState::settling`).
pub struct Settling<B: Backend>(Arc<ExportState<B>>);

impl<B: Backend> Drop for Settling<B> {
    fn drop(&mut self) {
        self.0.settling.send_modify(|n| *n -= 1);
    }
}

fn io_error(msg: String) -> IoError {
    IoError::Io(msg)
}

impl<B: Backend> ExportState<B> {
    pub fn new(name: String, backend: Arc<B>, lock_stripes: usize) -> Self {
        let raw = backend.size();
        let size = raw - raw % BLOCK_SIZE;
        if size != raw {
            tracing::warn!(export = %name, raw, size, "export size is not a whole number of blocks; serving it rounded down");
        }
        ExportState {
            name,
            backend,
            size,
            locks: BlockLocks::new(lock_stripes),
            settling: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A connection closed with requests running: new requests wait until the guard is
    /// dropped (when those requests have settled).
    pub fn begin_settling(self: &Arc<Self>) -> Settling<B> {
        self.settling.send_modify(|n| *n += 1);
        Settling(Arc::clone(self))
    }

    /// Waits until no closed connection's requests are still settling.
    pub async fn settled(&self) {
        let mut rx = self.settling.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size served to clients (a multiple of `BLOCK_SIZE`).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Checks that `offset..offset+len` lies inside the export (no wrap-around).
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(IoError::Invalid(format!(
                "range {len}@{offset} is outside the export of {} bytes",
                self.size
            ))),
        }
    }

    /// Reads exactly `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64, cancel: &Cancel) -> Result<Bytes, IoError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let start = offset - offset % BLOCK_SIZE;
        let end = round_up(offset + len);
        let data = self.backend_read(start, end - start, cancel).await?;
        let from = (offset - start) as usize;
        Ok(data.slice(from..from + len as usize))
    }

    /// A backend read whose result length is checked, so slicing it cannot panic.
    async fn backend_read(&self, offset: u64, len: u64, cancel: &Cancel) -> Result<Bytes, IoError> {
        let data = self.backend.read(offset, len, cancel).await?;
        if data.len() as u64 != len {
            return Err(io_error(format!(
                "backend returned {} bytes for a read of {len}@{offset}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Writes `data` at `offset`, read-modify-writing partial blocks.
    pub async fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), IoError> {
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let head_partial = !offset.is_multiple_of(BLOCK_SIZE) || end < (first + 1) * BLOCK_SIZE;
        let tail_partial = !end.is_multiple_of(BLOCK_SIZE);
        if !head_partial && !tail_partial {
            let _guard = self.locks.lock(first, last, Mode::Shared, &[]).await;
            return self.backend.write(offset, data, fua, cancel).await;
        }
        let mut exclusive = Vec::with_capacity(2);
        if head_partial {
            exclusive.push(first);
        }
        if tail_partial && (last != first || !head_partial) {
            exclusive.push(last);
        }
        let _guard = self.locks.lock(first, last, Mode::Shared, &exclusive).await;
        let start = first * BLOCK_SIZE;
        let full_len = (last + 1) * BLOCK_SIZE - start;
        let mut buf = BytesMut::zeroed(full_len as usize);
        // Read the partial head and tail blocks (concurrently when they differ).
        let read_tail = tail_partial && last != first;
        let (head, tail) = tokio::join!(
            async {
                if head_partial {
                    self.backend_read(start, BLOCK_SIZE, cancel).await.map(Some)
                } else {
                    Ok(None)
                }
            },
            async {
                if read_tail {
                    self.backend_read(last * BLOCK_SIZE, BLOCK_SIZE, cancel)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            }
        );
        let bs = BLOCK_SIZE as usize;
        if let Some(head) = head? {
            buf[..bs].copy_from_slice(&head);
        }
        if let Some(tail) = tail? {
            let at = full_len as usize - bs;
            buf[at..].copy_from_slice(&tail);
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(&data);
        self.backend.write(start, buf.freeze(), fua, cancel).await
    }

    /// Makes `offset..offset+len` read as zeroes. Partial blocks are read-modify-written;
    /// the aligned middle goes to `Backend::write_zeroes`, or, with `no_hole`, is written
    /// as literal zeroes so that the space stays allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
        cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mid_start = round_up(offset);
        let mid_end = end - end % BLOCK_SIZE;
        let mut partial = Vec::with_capacity(2);
        if !offset.is_multiple_of(BLOCK_SIZE) || end < (first + 1) * BLOCK_SIZE {
            partial.push(first);
        }
        if !end.is_multiple_of(BLOCK_SIZE) && !partial.contains(&last) {
            partial.push(last);
        }
        let _guard = self.locks.lock(first, last, Mode::Shared, &partial).await;
        let zero_partial = |block: u64| async move {
            let block_start = block * BLOCK_SIZE;
            let mut buf =
                BytesMut::from(&self.backend_read(block_start, BLOCK_SIZE, cancel).await?[..]);
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + BLOCK_SIZE) - block_start;
            buf[from as usize..to as usize].fill(0);
            self.backend
                .write(block_start, buf.freeze(), fua, cancel)
                .await
        };
        let middle = async {
            if mid_start >= mid_end {
                return Ok(());
            }
            if !no_hole {
                return self
                    .backend
                    .write_zeroes(mid_start, mid_end - mid_start, fua, cancel)
                    .await;
            }
            let zeroes = Bytes::from(vec![
                0u8;
                ZERO_CHUNK_BYTES.min(mid_end - mid_start) as usize
            ]);
            let mut at = mid_start;
            while at < mid_end {
                let n = ZERO_CHUNK_BYTES.min(mid_end - at);
                self.backend
                    .write(at, zeroes.slice(..n as usize), fua, cancel)
                    .await?;
                at += n;
            }
            Ok(())
        };
        let head = async {
            match partial.first() {
                Some(&b) => zero_partial(b).await,
                None => Ok(()),
            }
        };
        let tail = async {
            match partial.get(1) {
                Some(&b) => zero_partial(b).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(head, middle, tail).map(|_| ())
    }

    /// Trims the blocks fully inside `offset..offset+len`; partial blocks keep their data.
    pub async fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), IoError> {
        self.check_range(offset, len)?;
        let mid_start = round_up(offset);
        let end = offset + len;
        let mid_end = end - end % BLOCK_SIZE;
        if mid_start >= mid_end {
            return Ok(());
        }
        let _guard = self
            .locks
            .lock(
                mid_start / BLOCK_SIZE,
                mid_end / BLOCK_SIZE - 1,
                Mode::Shared,
                &[],
            )
            .await;
        self.backend
            .trim(mid_start, mid_end - mid_start, fua, cancel)
            .await
    }

    pub async fn flush(&self, cancel: &Cancel) -> Result<(), IoError> {
        self.backend.flush(cancel).await
    }
}

fn round_up(x: u64) -> u64 {
    // Callers only pass offsets inside the export, which is far below u64::MAX.
    x.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

#[cfg(test)]
mod tests {
    static NEVER: std::sync::LazyLock<Cancel> = std::sync::LazyLock::new(Cancel::never);
    use super::*;
    use crate::mem::{MemBackend, MemProvider};
    use rand::{Rng, SeedableRng};

    fn state(size: u64) -> ExportState<MemBackend> {
        ExportState::new("t".into(), Arc::new(MemBackend::new(size)), 64)
    }

    /// Random unaligned writes, zeroes, trims and reads against a plain byte-array model.
    #[tokio::test]
    async fn unaligned_io_matches_model() {
        let size = 256 * 1024;
        let s = state(size);
        let mut model = vec![0u8; size as usize];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for step in 0..2000 {
            let len = rng.random_range(0..20_000u64).min(size);
            let offset = rng.random_range(0..=size - len);
            let (o, l) = (offset as usize, len as usize);
            match rng.random_range(0..4) {
                0 => {
                    let mut data = vec![0u8; l];
                    rng.fill(&mut data[..]);
                    s.write(
                        offset,
                        Bytes::from(data.clone()),
                        rng.random_bool(0.2),
                        &NEVER,
                    )
                    .await
                    .unwrap();
                    model[o..o + l].copy_from_slice(&data);
                }
                1 => {
                    s.write_zeroes(offset, len, false, rng.random_bool(0.5), &NEVER)
                        .await
                        .unwrap();
                    model[o..o + l].fill(0);
                }
                2 => {
                    s.trim(offset, len, false, &NEVER).await.unwrap();
                    // Trimmed whole blocks read as zero in the memory backend; partial blocks
                    // must be untouched.
                    let ms = round_up(offset);
                    let me = (offset + len) - (offset + len) % BLOCK_SIZE;
                    if ms < me {
                        model[ms as usize..me as usize].fill(0);
                    }
                }
                _ => {
                    let got = s.read(offset, len, &NEVER).await.unwrap();
                    assert_eq!(
                        &got[..],
                        &model[o..o + l],
                        "step {step}: read {len}@{offset}"
                    );
                }
            }
        }
        let all = s.read(0, size, &NEVER).await.unwrap();
        assert_eq!(&all[..], &model[..]);
    }

    #[tokio::test]
    async fn out_of_range_is_invalid() {
        let s = state(64 * 1024);
        assert!(matches!(
            s.read(64 * 1024, 1, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            s.read(u64::MAX - 10, 100, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            s.write(60 * 1024, Bytes::from(vec![1; 8192]), false, &NEVER)
                .await,
            Err(IoError::Invalid(_))
        ));
        assert!(matches!(
            s.trim(u64::MAX, 2, false, &NEVER).await,
            Err(IoError::Invalid(_))
        ));
        assert!(s.read(64 * 1024, 0, &NEVER).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unaligned_size_is_rounded_down() {
        let s = state(10_000);
        assert_eq!(s.size(), 8192);
    }

    #[tokio::test]
    async fn registry_shares_state_and_drops_it() {
        let provider = MemProvider::new()
            .with_export("rbd/a", 1 << 20)
            .with_export("rbd/b", 1 << 20);
        let exports = Exports::new(provider, ServerConfig::default());
        let a1 = exports.open("rbd/a").await.unwrap();
        let a2 = exports.open("rbd/a").await.unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(matches!(
            exports.open("rbd/nope").await,
            Err(OpenError::NotFound(_))
        ));
        let weak = Arc::downgrade(&a1);
        drop((a1, a2));
        assert!(weak.upgrade().is_none());
        assert!(matches!(
            exports.resolve_name("").await,
            Err(OpenError::NotFound(_))
        ));
        let single = Exports::new(
            MemProvider::new().with_export("p/only", 1 << 20),
            ServerConfig::default(),
        );
        assert_eq!(single.resolve_name("").await.unwrap(), "p/only");
    }
}
