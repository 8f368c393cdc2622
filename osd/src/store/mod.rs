//! The object store: objects of up to 1 MiB in 4 KiB blocks on a raw device, each block
//! with a crc32c, each object with a version, indexed in RAM.
//!
//! Writes are redirect-on-write: new data goes to free blocks, and a small journal record
//! (object, version, blocks → physical blocks, crcs) says where it is. The data and the
//! record are written concurrently, so a small write costs one data write plus a share of
//! one journal block (group commit), and the old blocks are freed only afterwards.
//!
//! Atomicity: after a crash, journal records are replayed. A record whose id is at most the
//! newest persisted `durable_upto` (all records up to it had their data and record durable)
//! is applied as is. A newer record is applied only if every data block it names matches its
//! crc; otherwise it (and every later record of the same object) is dropped, so each object
//! is a prefix of its write history and every aligned write is all or nothing.
//!
//! Invariants:
//! - a physical block is referenced by at most one object block;
//! - a block that a record replaced becomes free only when a persisted `durable_upto` covers
//!   that record, so replay can never find a trusted record's data overwritten;
//! - journal blocks are written one at a time in sequence order; replay stops at the first
//!   block that is missing, damaged, out of sequence or of another generation; every
//!   recovery writes a checkpoint of a new generation before accepting writes;
//! - the journal never overwrites a block at or after the last checkpoint's start;
//! - a block is returned only after its crc32c matched; a mismatch is a typed error, counted
//!   and logged with the object and offset, never bad bytes;
//! - callers serialise operations on one object (the OSD's per-object lock).

pub mod device;
pub mod fsck;
pub mod layout;

use bytes::{Bytes, BytesMut};
use device::{AlignedBuf, BlockDevice};
use layout::{
    CheckpointEntry, CheckpointHeader, JournalBlock, LayoutError, Record, Superblock, BLOCK,
    ENTRY_FIXED, ENTRY_PER_BLOCK, KIND_TRIM, KIND_WRITE,
};
use proto::checksum::{crc32c, zero_block_crc};
use proto::msg::{ObjectEntry, OsdStats};
use proto::{ObjectId, Version};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};

/// Distinct data blocks found corrupt after which the device is considered failing. One
/// rotted block read again and again (its only surviving copy, say) counts once: it is a
/// bad block, not a failing device.
pub const CHECKSUM_ERROR_LIMIT: u64 = 16;
const ABSENT: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A completed write is durable (RWF_DSYNC / FUA).
    Immediate,
    /// A write is durable after the next `flush`.
    Lazy,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "immediate" => Ok(Durability::Immediate),
            "lazy" => Ok(Durability::Lazy),
            _ => Err(format!("durability {s:?}: expected immediate or lazy")),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("device {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("device failed: {0}")]
    DeviceFailed(String),
    #[error("checksum mismatch in object {object} at offset {offset}")]
    Checksum { object: ObjectId, offset: u64 },
    #[error("no free space for object {0}")]
    NoSpace(ObjectId),
    #[error("range {offset}+{length} does not fit an object of at most {max} bytes")]
    Range { offset: u32, length: u32, max: u32 },
    #[error("damaged record: {what}")]
    Corrupt { what: String },
}

#[derive(Clone, Debug, Default)]
struct ObjectMeta {
    version: Version,
    last_record_id: u64,
    /// (physical block, crc) per object block; `ABSENT` = never written or trimmed.
    blocks: Vec<(u32, u32)>,
}

impl ObjectMeta {
    fn present(&self) -> usize {
        self.blocks.iter().filter(|(p, _)| *p != ABSENT).count()
    }

    fn entry(&self, object: ObjectId) -> CheckpointEntry {
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| *p != ABSENT)
            .map(|(i, (p, c))| (i as u16, *p, *c))
            .collect();
        CheckpointEntry {
            object,
            version: self.version,
            last_record_id: self.last_record_id,
            blocks,
        }
    }

    fn set(&mut self, block: usize, value: (u32, u32)) -> Option<u32> {
        if self.blocks.len() <= block {
            self.blocks.resize(block + 1, (ABSENT, 0));
        }
        let old = std::mem::replace(&mut self.blocks[block], value).0;
        (old != ABSENT).then_some(old)
    }
}

/// Free data blocks.
struct FreeMap {
    bits: Vec<u64>,
    free: u64,
    total: u64,
    cursor: u64,
}

impl FreeMap {
    fn new(total: u64) -> FreeMap {
        let mut bits = vec![u64::MAX; total.div_ceil(64) as usize];
        if !total.is_multiple_of(64) {
            if let Some(last) = bits.last_mut() {
                *last = (1u64 << (total % 64)) - 1;
            }
        }
        FreeMap {
            bits,
            free: total,
            total,
            cursor: 0,
        }
    }

    fn is_free(&self, b: u32) -> bool {
        (b as u64) < self.total && self.bits[b as usize / 64] & (1 << (b % 64)) != 0
    }

    fn take(&mut self, b: u32) -> bool {
        if !self.is_free(b) {
            return false;
        }
        self.bits[b as usize / 64] &= !(1 << (b % 64));
        self.free -= 1;
        true
    }

    fn release(&mut self, b: u32) {
        debug_assert!(!self.is_free(b));
        self.bits[b as usize / 64] |= 1 << (b % 64);
        self.free += 1;
    }

    /// `n` free blocks, preferring one contiguous run from the cursor (next fit).
    fn alloc(&mut self, n: usize) -> Option<Vec<u32>> {
        if (self.free as usize) < n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut b = self.cursor;
        let mut scanned = 0;
        while out.len() < n && scanned < self.total {
            if b.is_multiple_of(64) && self.bits[(b / 64) as usize] == 0 {
                b = (b + 64) % self.total;
                scanned += 64;
                continue;
            }
            if self.is_free(b as u32) {
                out.push(b as u32);
            }
            b = (b + 1) % self.total;
            scanned += 1;
        }
        if out.len() < n {
            return None;
        }
        for p in &out {
            self.take(*p);
        }
        self.cursor = b;
        Some(out)
    }
}

struct Inner {
    objects: HashMap<ObjectId, ObjectMeta>,
    free: FreeMap,
    /// Blocks replaced by record `.0`, freed once a persisted `durable_upto` covers it.
    pending_free: Vec<(u64, u32)>,
    next_record_id: u64,
    /// Records submitted but not yet applied, with their journal block (MAX until written).
    inflight: BTreeMap<u64, u64>,
    /// Lazy mode: records applied but not yet made durable by a flush.
    unflushed: BTreeSet<u64>,
    next_seq: u64,
    /// Replay starts here: the journal must not overwrite it.
    tail_seq: u64,
    generation: u64,
    persisted_durable: u64,
    /// Lazy mode: `durable_upto` of the newest journal block written since the last flush.
    written_durable: u64,
    checkpoint_seq: u64,
    failed: Option<String>,
}

impl Inner {
    fn durable_upto(&self) -> u64 {
        let first_open = [self.inflight.keys().next(), self.unflushed.iter().next()]
            .into_iter()
            .flatten()
            .min()
            .copied();
        first_open.unwrap_or(self.next_record_id).saturating_sub(1)
    }

    /// Where replay would start if a checkpoint were written now: the journal block of
    /// the oldest record not yet applied.
    fn replay_start(&self) -> u64 {
        self.inflight
            .values()
            .copied()
            .min()
            .unwrap_or(u64::MAX)
            .min(self.next_seq)
    }

    fn release_pending(&mut self) {
        let d = self.persisted_durable;
        let mut keep = Vec::new();
        for (id, b) in std::mem::take(&mut self.pending_free) {
            if id <= d {
                self.free.release(b);
            } else {
                keep.push((id, b));
            }
        }
        self.pending_free = keep;
    }

    /// Applies a record to the index; returns the blocks it replaced.
    fn apply(&mut self, r: &Record) -> Vec<u32> {
        let meta = self.objects.entry(r.object).or_default();
        let mut replaced = Vec::new();
        for i in 0..r.nblocks as usize {
            let b = r.first_block as usize + i;
            let value = if r.kind == KIND_WRITE {
                (r.phys[i], r.crcs[i])
            } else {
                (ABSENT, 0)
            };
            replaced.extend(meta.set(b, value));
        }
        meta.version = r.version;
        meta.last_record_id = r.id;
        // A trim at `Version::NONE` that leaves nothing removes the object (recovery
        // deleting a copy that must not exist, or a stray PG's data).
        if r.kind == KIND_TRIM && r.version.is_none() && meta.present() == 0 {
            self.objects.remove(&r.object);
        }
        replaced
    }
}

enum JournalRequest {
    Record(Record, oneshot::Sender<Result<(), String>>),
    /// Writes a block even with no records (persists `durable_upto`).
    Commit(oneshot::Sender<Result<(), String>>),
}

pub struct Store {
    dev: Arc<dyn BlockDevice>,
    pub superblock: Superblock,
    pub durability: Durability,
    inner: Mutex<Inner>,
    journal: mpsc::UnboundedSender<JournalRequest>,
    checksum_errors: AtomicU64,
    /// The distinct data blocks that failed their checksum (the device fails at the limit,
    /// so the set stays small).
    bad_blocks: Mutex<BTreeSet<u32>>,
    checkpoint_lock: tokio::sync::Mutex<()>,
    journal_space: Notify,
    /// Time the last open took to rebuild the index, in milliseconds.
    pub open_ms: u64,
}

/// Runs a store mutation as a task of its own, so that dropping the caller's future does
/// not stop it half-way.
async fn to_completion<F>(fut: F) -> Result<(), StoreError>
where
    F: std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
{
    net::rt::spawn(fut)
        .await
        .unwrap_or_else(|e| Err(StoreError::DeviceFailed(format!("store task ended: {e}"))))
}

fn io_err(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

impl Store {
    /// Formats `dev`: a superblock and an empty checkpoint of a random generation (so that
    /// journal blocks left by an earlier format are never replayed).
    pub async fn format(dev: &dyn BlockDevice, sb: &Superblock) -> Result<(), StoreError> {
        let generation: u64 = net::rt::random_u64() | 1;
        let header = CheckpointHeader {
            seq: 1,
            generation,
            journal_start_seq: 0,
            next_record_id: 1,
            durable_upto: 0,
            objects: 0,
            body_len: 0,
            body_crc: crc32c(&[]),
        };
        let writes = [
            (sb.checkpoint_area(1), header.encode()),
            (sb.checkpoint_area(0), vec![0u8; BLOCK]),
            (0, sb.encode()),
        ];
        for (offset, bytes) in writes {
            let (_, r) = dev
                .write(offset, AlignedBuf::from_slice(&bytes), true)
                .await;
            r.map_err(|e| StoreError::DeviceFailed(io_err("format", e)))?;
        }
        Ok(())
    }

    /// Opens the store on a device path (file or block device), with io_uring when the
    /// kernel offers it and positioned IO on a thread pool otherwise.
    pub async fn open_path(
        path: &std::path::Path,
        durability: Durability,
    ) -> Result<Arc<Store>, StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let dev = device::open_best(path).map_err(open_err)?;
        Store::open(dev, durability).await.map_err(|e| match e {
            StoreError::DeviceFailed(reason) => StoreError::Open {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Reads the superblock and the newest valid checkpoint, replays the journal, writes a
    /// checkpoint of a new generation, and starts the journal writer.
    pub async fn open(
        dev: Arc<dyn BlockDevice>,
        durability: Durability,
    ) -> Result<Arc<Store>, StoreError> {
        let started = std::time::Instant::now();
        let fail = |what: &str, e: std::io::Error| StoreError::DeviceFailed(io_err(what, e));
        let (buf, r) = dev.read(0, AlignedBuf::zeroed(BLOCK)).await;
        r.map_err(|e| fail("superblock", e))?;
        let sb = Superblock::decode(&buf)?;
        if sb.device_size > dev.size() {
            return Err(StoreError::Layout(LayoutError::Geometry(format!(
                "device is {} bytes, the superblock says {}",
                dev.size(),
                sb.device_size
            ))));
        }
        let (ckpt, entries) = load_checkpoint(&*dev, &sb).await?;
        let mut inner = Inner {
            objects: HashMap::with_capacity(entries.len()),
            free: FreeMap::new(sb.data_blocks),
            pending_free: Vec::new(),
            next_record_id: ckpt.next_record_id,
            inflight: BTreeMap::new(),
            unflushed: BTreeSet::new(),
            next_seq: ckpt.journal_start_seq,
            tail_seq: ckpt.journal_start_seq,
            generation: ckpt.generation,
            persisted_durable: ckpt.durable_upto,
            written_durable: 0,
            checkpoint_seq: ckpt.seq,
            failed: None,
        };
        let corrupt = |why: String| {
            StoreError::Layout(LayoutError::Bad {
                what: "checkpoint",
                why,
            })
        };
        for e in entries {
            let mut meta = ObjectMeta {
                version: e.version,
                last_record_id: e.last_record_id,
                blocks: Vec::new(),
            };
            for (b, p, c) in e.blocks {
                if !inner.free.take(p) {
                    return Err(corrupt(format!(
                        "{}: block {p} is out of range or used twice",
                        e.object
                    )));
                }
                meta.set(b as usize, (p, c));
            }
            if inner.objects.insert(e.object, meta).is_some() {
                return Err(corrupt(format!("{} appears twice", e.object)));
            }
        }
        replay(&*dev, &sb, &mut inner).await?;
        inner.generation = ckpt.generation.wrapping_add(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut store = Store {
            dev,
            superblock: sb,
            durability,
            inner: Mutex::new(inner),
            journal: tx,
            checksum_errors: AtomicU64::new(0),
            bad_blocks: Mutex::new(BTreeSet::new()),
            checkpoint_lock: tokio::sync::Mutex::new(()),
            journal_space: Notify::new(),
            open_ms: 0,
        };
        // The state is now final: persist it under the new generation before any write,
        // so that records dropped by this replay can never be replayed by a later one.
        store.write_checkpoint().await?;
        store.open_ms = started.elapsed().as_millis() as u64;
        let store = Arc::new(store);
        net::rt::spawn(journal_writer(Arc::downgrade(&store), rx));
        Ok(store)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        net::sync::lock(&self.inner)
    }

    pub fn max_object_size(&self) -> u32 {
        self.superblock.max_object_size
    }

    /// Checksum mismatches seen on reads, repeats of one block included.
    pub fn checksum_errors(&self) -> u64 {
        self.checksum_errors.load(Ordering::Relaxed)
    }

    /// Distinct data blocks that failed their checksum.
    pub fn bad_blocks(&self) -> u64 {
        net::sync::lock(&self.bad_blocks).len() as u64
    }

    /// Why the device is considered failed, if it is.
    pub fn failure(&self) -> Option<String> {
        self.inner().failed.clone()
    }

    fn fail(&self, why: String) -> StoreError {
        let mut inner = self.inner();
        if inner.failed.is_none() {
            tracing::error!("store failed: {why}");
            inner.failed = Some(why.clone());
        }
        StoreError::DeviceFailed(inner.failed.clone().unwrap_or(why))
    }

    fn check_ok(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(why) => Err(StoreError::DeviceFailed(why)),
            None => Ok(()),
        }
    }

    fn check_range(&self, offset: u32, length: u32) -> Result<(), StoreError> {
        let max = self.max_object_size();
        if !(offset as usize).is_multiple_of(BLOCK)
            || !(length as usize).is_multiple_of(BLOCK)
            || length == 0
            || offset as u64 + length as u64 > max as u64
        {
            return Err(StoreError::Range {
                offset,
                length,
                max,
            });
        }
        Ok(())
    }

    /// Where block `block` of `object` lives on the device (a byte offset), if written.
    /// For fault injection (the simulator's bit rot) and offline tools.
    pub fn block_location(&self, object: &ObjectId, block: usize) -> Option<u64> {
        let inner = self.inner();
        let (phys, _) = inner.objects.get(object)?.blocks.get(block).copied()?;
        (phys != ABSENT).then(|| self.superblock.data_block_offset(phys))
    }

    /// The object's version, `Version::NONE` if it was never written.
    pub fn version(&self, object: &ObjectId) -> Version {
        self.inner()
            .objects
            .get(object)
            .map(|m| m.version)
            .unwrap_or_default()
    }

    /// Reads a range; returns the data, one crc per block, and the object's version. Blocks
    /// never written (or trimmed) read as zeroes.
    pub async fn read(
        &self,
        object: ObjectId,
        offset: u32,
        length: u32,
    ) -> Result<(Bytes, Vec<u32>, Version), StoreError> {
        self.check_ok()?;
        self.check_range(offset, length)?;
        let first = offset as usize / BLOCK;
        let n = length as usize / BLOCK;
        let (version, blocks) = {
            let inner = self.inner();
            match inner.objects.get(&object) {
                None => (Version::NONE, vec![(ABSENT, 0); n]),
                Some(m) => (
                    m.version,
                    (first..first + n)
                        .map(|b| m.blocks.get(b).copied().unwrap_or((ABSENT, 0)))
                        .collect(),
                ),
            }
        };
        let mut out = BytesMut::zeroed(length as usize);
        let mut crcs = vec![zero_block_crc(); n];
        let mut i = 0;
        while i < n {
            if blocks[i].0 == ABSENT {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && blocks[j].0 != ABSENT && blocks[j].0 == blocks[j - 1].0 + 1 {
                j += 1;
            }
            let at = self.superblock.data_block_offset(blocks[i].0);
            let (buf, r) = self.dev.read(at, AlignedBuf::zeroed((j - i) * BLOCK)).await;
            if let Err(e) = r {
                return Err(self.fail(io_err(&format!("read of {object}"), e)));
            }
            for k in i..j {
                let block = &buf[(k - i) * BLOCK..(k - i + 1) * BLOCK];
                if crc32c(block) != blocks[k].1 {
                    let off = ((first + k) * BLOCK) as u64;
                    let count = self.checksum_errors.fetch_add(1, Ordering::Relaxed) + 1;
                    let distinct = {
                        let mut bad = net::sync::lock(&self.bad_blocks);
                        bad.insert(blocks[k].0);
                        bad.len() as u64
                    };
                    tracing::error!(%object, offset = off, errors = count, bad_blocks = distinct, "checksum mismatch on read");
                    if distinct >= CHECKSUM_ERROR_LIMIT {
                        self.fail(format!("{distinct} distinct blocks failed their checksum"));
                    }
                    return Err(StoreError::Checksum {
                        object,
                        offset: off,
                    });
                }
                out[k * BLOCK..(k + 1) * BLOCK].copy_from_slice(block);
                crcs[k] = blocks[k].1;
            }
            i = j;
        }
        Ok((out.freeze(), crcs, version))
    }

    /// Writes a range at `version`; `crcs` (one per block) were checked by the caller.
    ///
    /// Runs to completion even when the caller stops waiting (an op cancelled by an
    /// interval change, a closed connection): a mutation dropped half-way would leave its
    /// record in flight forever, holding the journal's tail (the ring fills and the
    /// journal writer checkpoints in a loop) and `durable_upto` (replaced blocks are never
    /// freed), or a journaled record whose data was never written.
    pub async fn write(
        self: &Arc<Self>,
        object: ObjectId,
        offset: u32,
        data: Bytes,
        crcs: &[u32],
        version: Version,
    ) -> Result<(), StoreError> {
        let store = Arc::clone(self);
        let crcs = crcs.to_vec();
        to_completion(async move { store.write_now(object, offset, data, &crcs, version).await })
            .await
    }

    async fn write_now(
        &self,
        object: ObjectId,
        offset: u32,
        data: Bytes,
        crcs: &[u32],
        version: Version,
    ) -> Result<(), StoreError> {
        self.check_ok()?;
        self.check_range(offset, data.len() as u32)?;
        let n = data.len() / BLOCK;
        if crcs.len() != n {
            return Err(StoreError::Range {
                offset,
                length: data.len() as u32,
                max: self.max_object_size(),
            });
        }
        let (id, phys) = self.allocate(object, n).await?;
        let record = Record {
            kind: KIND_WRITE,
            id,
            object,
            version,
            first_block: (offset as usize / BLOCK) as u16,
            nblocks: n as u16,
            phys: phys.clone(),
            crcs: crcs.to_vec(),
        };
        let durable = self.durability == Durability::Immediate;
        let data_writes = async {
            let mut i = 0;
            while i < n {
                let mut j = i + 1;
                while j < n && phys[j] == phys[j - 1] + 1 {
                    j += 1;
                }
                let buf = AlignedBuf::from_slice(&data[i * BLOCK..j * BLOCK]);
                let (_, r) = self
                    .dev
                    .write(self.superblock.data_block_offset(phys[i]), buf, durable)
                    .await;
                r.map_err(|e| io_err(&format!("data write of {object}"), e))?;
                i = j;
            }
            Ok::<(), String>(())
        };
        let (d, j) = tokio::join!(data_writes, self.journal_record(record.clone()));
        if let Err(e) = d.and(j) {
            return Err(self.fail(e));
        }
        self.applied(&record);
        Ok(())
    }

    /// Frees a range at `version`: its blocks read as zeroes afterwards. The object keeps
    /// its version (a tombstone when nothing is left). Runs to completion as `write` does.
    pub async fn trim(
        self: &Arc<Self>,
        object: ObjectId,
        offset: u32,
        length: u32,
        version: Version,
    ) -> Result<(), StoreError> {
        let store = Arc::clone(self);
        to_completion(async move { store.trim_now(object, offset, length, version).await }).await
    }

    async fn trim_now(
        &self,
        object: ObjectId,
        offset: u32,
        length: u32,
        version: Version,
    ) -> Result<(), StoreError> {
        self.check_ok()?;
        self.check_range(offset, length)?;
        let (id, _) = self.allocate(object, 0).await?;
        let record = Record {
            kind: KIND_TRIM,
            id,
            object,
            version,
            first_block: (offset as usize / BLOCK) as u16,
            nblocks: (length as usize / BLOCK) as u16,
            phys: Vec::new(),
            crcs: Vec::new(),
        };
        if let Err(e) = self.journal_record(record.clone()).await {
            return Err(self.fail(e));
        }
        self.applied(&record);
        Ok(())
    }

    /// Replaces the whole object (recovery push): `data` covers blocks from 0.
    pub async fn write_full(
        self: &Arc<Self>,
        object: ObjectId,
        data: Bytes,
        crcs: &[u32],
        version: Version,
    ) -> Result<(), StoreError> {
        self.write(object, 0, data, crcs, version).await
    }

    /// Makes every completed write durable (lazy mode; a no-op in immediate mode).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_ok()?;
        if self.durability == Durability::Immediate {
            return Ok(());
        }
        let (flushed_ids, written_durable) = {
            let inner = self.inner();
            (inner.unflushed.clone(), inner.written_durable)
        };
        if let Err(e) = self.dev.flush().await {
            return Err(self.fail(io_err("flush", e)));
        }
        let mut inner = self.inner();
        for id in flushed_ids {
            inner.unflushed.remove(&id);
        }
        inner.persisted_durable = inner.persisted_durable.max(written_durable);
        inner.release_pending();
        Ok(())
    }

    /// Assigns a record id and allocates `n` data blocks.
    async fn allocate(&self, object: ObjectId, n: usize) -> Result<(u64, Vec<u32>), StoreError> {
        for attempt in 0..2 {
            {
                let mut inner = self.inner();
                inner.release_pending();
                let new_object = !inner.objects.contains_key(&object);
                // Index entries are bounded by the data blocks so a checkpoint always fits.
                let room =
                    !new_object || (inner.objects.len() as u64) < self.superblock.data_blocks;
                if room {
                    if let Some(phys) = inner.free.alloc(n) {
                        let id = inner.next_record_id;
                        inner.next_record_id += 1;
                        inner.inflight.insert(id, u64::MAX);
                        return Ok((id, phys));
                    }
                }
                if attempt == 1 || inner.pending_free.is_empty() {
                    return Err(StoreError::NoSpace(object));
                }
            }
            // Blocks are waiting for a persisted durable point: make the completed writes
            // durable (lazy mode), record that in a journal block, then retry.
            self.flush().await?;
            self.commit().await?;
        }
        Err(StoreError::NoSpace(object))
    }

    /// Persists the current `durable_upto` (an empty journal block, plus a flush in lazy mode).
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.journal
            .send(JournalRequest::Commit(tx))
            .map_err(|_| StoreError::DeviceFailed("journal writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::DeviceFailed("journal writer stopped".into()))?
            .map_err(|e| self.fail(e))?;
        self.flush().await
    }

    async fn journal_record(&self, r: Record) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.journal
            .send(JournalRequest::Record(r, tx))
            .map_err(|_| "journal writer stopped".to_string())?;
        rx.await.map_err(|_| "journal writer stopped".to_string())?
    }

    /// Publishes a completed record in the index.
    fn applied(&self, r: &Record) {
        let mut inner = self.inner();
        let replaced = inner.apply(r);
        for b in replaced {
            inner.pending_free.push((r.id, b));
        }
        let seq = inner.inflight.remove(&r.id);
        if self.durability == Durability::Lazy {
            inner.unflushed.insert(r.id);
        }
        // This record may have held the replay start: a checkpoint can move it now (the
        // journal writer may be waiting for that, with the ring full).
        let held_tail = seq == Some(inner.tail_seq);
        drop(inner);
        if held_tail {
            self.journal_space.notify_waiters();
        }
    }

    /// Writes a checkpoint of the current index into the area after the current one, after
    /// which the journal before its start may be reused.
    async fn write_checkpoint(&self) -> Result<(), StoreError> {
        let (header, body) = {
            let inner = self.inner();
            let start = inner.replay_start();
            let mut body =
                Vec::with_capacity(inner.objects.len() * (ENTRY_FIXED + 8 * ENTRY_PER_BLOCK));
            for (object, meta) in &inner.objects {
                meta.entry(*object).encode(&mut body);
            }
            let header = CheckpointHeader {
                seq: inner.checkpoint_seq + 1,
                generation: inner.generation,
                journal_start_seq: start,
                next_record_id: inner.next_record_id,
                durable_upto: inner.durable_upto(),
                objects: inner.objects.len() as u64,
                body_len: body.len() as u64,
                body_crc: crc32c(&body),
            };
            (header, body)
        };
        if body.len() as u64 + BLOCK as u64 > self.superblock.checkpoint_bytes {
            return Err(self.fail(format!(
                "checkpoint of {} bytes does not fit its area",
                body.len()
            )));
        }
        if self.durability == Durability::Lazy {
            // Every record in the snapshot must have durable data before the checkpoint
            // names its blocks.
            self.dev
                .flush()
                .await
                .map_err(|e| self.fail(io_err("flush before checkpoint", e)))?;
        }
        let base = self.superblock.checkpoint_area(header.seq);
        for (i, chunk) in body.chunks(1 << 20).enumerate() {
            let (_, r) = self
                .dev
                .write(
                    base + BLOCK as u64 + (i << 20) as u64,
                    AlignedBuf::from_slice(chunk),
                    true,
                )
                .await;
            r.map_err(|e| self.fail(io_err("checkpoint body", e)))?;
        }
        let (_, r) = self
            .dev
            .write(base, AlignedBuf::from_slice(&header.encode()), true)
            .await;
        r.map_err(|e| self.fail(io_err("checkpoint header", e)))?;
        let mut inner = self.inner();
        inner.checkpoint_seq = header.seq;
        inner.tail_seq = header.journal_start_seq;
        inner.persisted_durable = inner.persisted_durable.max(header.durable_upto);
        inner.release_pending();
        drop(inner);
        self.journal_space.notify_waiters();
        Ok(())
    }

    /// Writes a checkpoint if the journal is more than half full.
    async fn maybe_checkpoint(self: &Arc<Self>) {
        let Ok(_guard) = self.checkpoint_lock.try_lock() else {
            return;
        };
        let (used, stuck) = {
            let inner = self.inner();
            (
                inner.next_seq - inner.tail_seq,
                inner.replay_start() == inner.tail_seq,
            )
        };
        // A checkpoint that cannot move the replay start (its oldest record is still
        // being written, on a slow or stalled disk) would only cost a write of the whole
        // index: one per journal block while the ring stays half full.
        if used * 2 < self.superblock.journal_blocks || stuck {
            return;
        }
        if let Err(e) = self.write_checkpoint().await {
            tracing::error!("checkpoint failed: {e}");
        }
    }

    pub fn list(&self, pool: Option<u32>) -> Vec<ObjectEntry> {
        let inner = self.inner();
        let mut v: Vec<ObjectEntry> = inner
            .objects
            .iter()
            .filter(|(o, _)| pool.is_none_or(|p| o.pool == p))
            .map(|(o, m)| ObjectEntry {
                object: *o,
                version: m.version,
                blocks: m.present() as u32,
            })
            .collect();
        v.sort_by_key(|e| e.object);
        v
    }

    /// Checkpoints written since the store was formatted.
    pub fn checkpoints_written(&self) -> u64 {
        self.inner().checkpoint_seq
    }

    pub fn stats(&self) -> OsdStats {
        let inner = self.inner();
        let capacity = self.superblock.data_blocks * BLOCK as u64;
        OsdStats {
            capacity_bytes: capacity,
            used_bytes: (inner.free.total - inner.free.free) * BLOCK as u64,
            objects: inner.objects.len() as u64,
        }
    }

    /// Bytes of RAM the index uses (approximately), for the per-TB figure.
    pub fn index_bytes(&self) -> u64 {
        let inner = self.inner();
        let per_object = std::mem::size_of::<ObjectId>() + std::mem::size_of::<ObjectMeta>() + 16;
        let blocks: usize = inner
            .objects
            .values()
            .map(|m| m.blocks.capacity() * 8)
            .sum();
        (inner.objects.len() * per_object + blocks + inner.free.bits.len() * 8) as u64
    }
}

/// Group commit: one journal block in flight at a time, holding every record that arrived
/// while the previous one was being written (as many as fit).
async fn journal_writer(
    store: std::sync::Weak<Store>,
    mut rx: mpsc::UnboundedReceiver<JournalRequest>,
) {
    let mut carry: Option<JournalRequest> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let Some(store) = store.upgrade() else { return };
        let mut batch = vec![first];
        let mut size: usize = batch.iter().map(req_len).sum();
        while let Ok(next) = rx.try_recv() {
            if size + req_len(&next) > JournalBlock::CAPACITY {
                carry = Some(next);
                break;
            }
            size += req_len(&next);
            batch.push(next);
        }
        // Waits for ring space: the block must not overwrite the replay start.
        loop {
            let notified = store.journal_space.notified();
            let full = {
                let inner = store.inner();
                inner.next_seq - inner.tail_seq >= store.superblock.journal_blocks
            };
            if !full {
                break;
            }
            let s = Arc::clone(&store);
            net::rt::spawn(async move { s.maybe_checkpoint().await });
            notified.await;
        }
        let block = {
            let mut inner = store.inner();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let mut records = Vec::new();
            for req in &batch {
                if let JournalRequest::Record(r, _) = req {
                    inner.inflight.insert(r.id, seq);
                    records.push(r.clone());
                }
            }
            JournalBlock {
                seq,
                generation: inner.generation,
                durable_upto: inner.durable_upto(),
                records,
            }
        };
        let mut buf = AlignedBuf::zeroed(BLOCK);
        block.encode(&mut buf);
        let immediate = store.durability == Durability::Immediate;
        let (_, r) = store
            .dev
            .write(
                store.superblock.journal_slot_offset(block.seq),
                buf,
                immediate,
            )
            .await;
        let result = r.map_err(|e| io_err("journal write", e));
        if result.is_ok() {
            let mut inner = store.inner();
            if immediate {
                inner.persisted_durable = inner.persisted_durable.max(block.durable_upto);
                inner.release_pending();
            } else {
                inner.written_durable = inner.written_durable.max(block.durable_upto);
            }
        }
        for req in batch {
            let done = match req {
                JournalRequest::Record(_, done) | JournalRequest::Commit(done) => done,
            };
            let _ = done.send(result.clone());
        }
        let half = {
            let inner = store.inner();
            (inner.next_seq - inner.tail_seq) * 2 >= store.superblock.journal_blocks
        };
        if half {
            let s = Arc::clone(&store);
            net::rt::spawn(async move { s.maybe_checkpoint().await });
        }
    }
}

fn req_len(r: &JournalRequest) -> usize {
    match r {
        JournalRequest::Record(r, _) => r.encoded_len(),
        JournalRequest::Commit(_) => 0,
    }
}

/// Loads the newest valid checkpoint.
async fn load_checkpoint(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(CheckpointHeader, Vec<CheckpointEntry>), StoreError> {
    let mut best: Option<(CheckpointHeader, Vec<CheckpointEntry>)> = None;
    let mut why = Vec::new();
    for area in 0..2u64 {
        let base = sb.checkpoint_area(area);
        let (buf, r) = dev.read(base, AlignedBuf::zeroed(BLOCK)).await;
        r.map_err(|e| StoreError::DeviceFailed(io_err("checkpoint header", e)))?;
        let h = match CheckpointHeader::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                why.push(format!("area {area}: {e}"));
                continue;
            }
        };
        if h.body_len + BLOCK as u64 > sb.checkpoint_bytes {
            why.push(format!(
                "area {area}: body of {} bytes exceeds the area",
                h.body_len
            ));
            continue;
        }
        if best.as_ref().is_some_and(|(b, _)| b.seq >= h.seq) {
            continue;
        }
        let len = h.body_len as usize;
        let (body, r) = dev
            .read(base + BLOCK as u64, AlignedBuf::zeroed(len.max(1)))
            .await;
        r.map_err(|e| StoreError::DeviceFailed(io_err("checkpoint body", e)))?;
        let body = &body[..len];
        if crc32c(body) != h.body_crc {
            why.push(format!("area {area}: body checksum mismatch"));
            continue;
        }
        match CheckpointEntry::decode_all(body, h.objects) {
            Ok(entries) => best = Some((h, entries)),
            Err(e) => why.push(format!("area {area}: {e}")),
        }
    }
    best.ok_or_else(|| {
        StoreError::Layout(LayoutError::Bad {
            what: "checkpoint",
            why: format!("no valid checkpoint ({})", why.join("; ")),
        })
    })
}

/// Replays the journal after the checkpoint into `inner` (see the module header).
async fn replay(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    inner: &mut Inner,
) -> Result<(), StoreError> {
    let mut blocks = Vec::new();
    let mut seq = inner.next_seq;
    let mut durable = inner.persisted_durable;
    const BATCH: u64 = 64;
    'scan: while seq - inner.tail_seq < sb.journal_blocks {
        let slot = seq % sb.journal_blocks;
        let n = BATCH
            .min(sb.journal_blocks - slot)
            .min(sb.journal_blocks - (seq - inner.tail_seq));
        let (buf, r) = dev
            .read(
                sb.journal_slot_offset(seq),
                AlignedBuf::zeroed(n as usize * BLOCK),
            )
            .await;
        r.map_err(|e| StoreError::DeviceFailed(io_err("journal read", e)))?;
        for k in 0..n as usize {
            match JournalBlock::decode(&buf[k * BLOCK..(k + 1) * BLOCK]) {
                Ok(b) if b.seq == seq && b.generation == inner.generation => {
                    durable = durable.max(b.durable_upto);
                    blocks.push(b);
                    seq += 1;
                }
                _ => break 'scan,
            }
        }
    }
    inner.next_seq = seq;
    let mut cut: BTreeSet<ObjectId> = BTreeSet::new();
    let mut max_id = inner.next_record_id.saturating_sub(1);
    for b in &blocks {
        for r in &b.records {
            max_id = max_id.max(r.id);
            if cut.contains(&r.object) {
                continue;
            }
            if inner
                .objects
                .get(&r.object)
                .is_some_and(|m| m.last_record_id >= r.id)
            {
                continue;
            }
            let trusted = r.id <= durable;
            if r.kind == KIND_WRITE {
                let in_range = r.phys.iter().all(|p| (*p as u64) < sb.data_blocks);
                let free = in_range && r.phys.iter().all(|p| inner.free.is_free(*p));
                let valid = free && (trusted || data_matches(dev, sb, r).await?);
                if !valid {
                    if trusted {
                        return Err(StoreError::Layout(LayoutError::Bad {
                            what: "journal",
                            why: format!(
                                "record {} of {} names blocks that are not free",
                                r.id, r.object
                            ),
                        }));
                    }
                    tracing::info!(object = %r.object, record = r.id, "dropping a write that did not complete before the crash");
                    cut.insert(r.object);
                    continue;
                }
                for p in &r.phys {
                    inner.free.take(*p);
                }
            }
            for old in inner.apply(r) {
                inner.free.release(old);
            }
        }
    }
    inner.next_record_id = max_id + 1;
    inner.persisted_durable = durable;
    Ok(())
}

async fn data_matches(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    r: &Record,
) -> Result<bool, StoreError> {
    for (p, c) in r.phys.iter().zip(&r.crcs) {
        let (buf, res) = dev
            .read(sb.data_block_offset(*p), AlignedBuf::zeroed(BLOCK))
            .await;
        res.map_err(|e| StoreError::DeviceFailed(io_err("journal replay read", e)))?;
        if crc32c(&buf) != *c {
            return Ok(false);
        }
    }
    Ok(true)
}
