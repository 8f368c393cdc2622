//! The object store: objects of a fixed slot size on a block device, each with a version,
//! per-4 KiB-block crc32c and a present bitmap, indexed in RAM.
//!
//! Invariants:
//! - the RAM index is exactly the set of non-free slot headers on the device (rebuilt by
//!   scanning them at open);
//! - a block is returned only after its crc32c matched; a mismatch is a typed error, counted
//!   and logged with the object and offset, never bad bytes;
//! - every write is durable when it returns (the device is opened O_DSYNC);
//! - callers serialise operations on one object (the OSD holds a per-object lock), so the
//!   store only guards the index and the free list.
//!
//! Format 1 writes data in place, then the header; the store issue replaces this with an
//! atomic write-ahead design, io_uring and crash-point tests.

pub mod device;
pub mod layout;

use bytes::{Bytes, BytesMut};
use device::{AlignedBuf, BlockDevice, FileDevice};
use layout::{LayoutError, ObjectHeader, Superblock, BLOCK, HEADER_BYTES};
use proto::checksum::{crc32c, zero_block_crc};
use proto::msg::{ObjectEntry, OsdStats};
use proto::{ObjectId, Version};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("device {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("device {path}: {source}")]
    Layout { path: String, source: LayoutError },
    #[error("device io error: {0}")]
    Io(String),
    #[error("checksum mismatch in object {object} at offset {offset}")]
    Checksum { object: ObjectId, offset: u64 },
    #[error("no free space for object {0}")]
    NoSpace(ObjectId),
    #[error("range {offset}+{length} does not fit object size {object_size}")]
    Range { offset: u32, length: u32, object_size: u32 },
}

struct Index {
    objects: HashMap<ObjectId, (u64, ObjectHeader)>,
    free: BTreeSet<u64>,
}

pub struct Store {
    dev: Arc<dyn BlockDevice>,
    pub superblock: Superblock,
    index: Mutex<Index>,
    checksum_errors: AtomicU64,
}

impl Store {
    /// Formats `dev`: writes a superblock and clears nothing else (free slots are the ones
    /// whose header is all zeroes, so the slot area must start zeroed: a new sparse file or a
    /// discarded device).
    pub fn format(dev: &dyn BlockDevice, sb: &Superblock) -> Result<(), StoreError> {
        let mut buf = AlignedBuf::zeroed(BLOCK);
        sb.encode(&mut buf);
        dev.write_at(&buf, 0).map_err(|e| StoreError::Io(e.to_string()))?;
        // Clear every slot header so a reused device does not resurrect old objects.
        let zero = AlignedBuf::zeroed(BLOCK);
        for slot in 0..sb.slot_count {
            let mut probe = AlignedBuf::zeroed(BLOCK);
            dev.read_at(&mut probe, sb.slot_offset(slot)).map_err(|e| StoreError::Io(e.to_string()))?;
            if probe.iter().any(|&b| b != 0) {
                dev.write_at(&zero, sb.slot_offset(slot)).map_err(|e| StoreError::Io(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Opens the store on a device path (file or block device).
    pub fn open_path(path: &Path) -> Result<Store, StoreError> {
        let dev = FileDevice::open(path)
            .map_err(|e| StoreError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        Store::open(Arc::new(dev)).map_err(|e| match e {
            StoreError::Io(reason) => StoreError::Open { path: path.display().to_string(), reason },
            StoreError::Layout { source, .. } => StoreError::Layout { path: path.display().to_string(), source },
            other => other,
        })
    }

    /// Reads the superblock and rebuilds the index from the slot headers.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Store, StoreError> {
        let layout_err = |source| StoreError::Layout { path: String::new(), source };
        let mut buf = AlignedBuf::zeroed(BLOCK);
        dev.read_at(&mut buf, 0).map_err(|e| StoreError::Io(e.to_string()))?;
        let sb = Superblock::decode(&buf).map_err(layout_err)?;
        if sb.device_size > dev.size() {
            return Err(StoreError::Io(format!("device is {} bytes, the superblock says {}", dev.size(), sb.device_size)));
        }
        let blocks = sb.object_size as usize / BLOCK;
        let mut objects = HashMap::new();
        let mut free = BTreeSet::new();
        for slot in 0..sb.slot_count {
            dev.read_at(&mut buf, sb.slot_offset(slot)).map_err(|e| StoreError::Io(e.to_string()))?;
            match ObjectHeader::decode(&buf, slot, blocks).map_err(layout_err)? {
                Some(h) => {
                    if let Some((other, _)) = objects.insert(h.object, (slot, h)) {
                        return Err(layout_err(LayoutError::BadHeader { slot, what: format!("object also in slot {other}") }));
                    }
                }
                None => {
                    free.insert(slot);
                }
            }
        }
        Ok(Store { dev, superblock: sb, index: Mutex::new(Index { objects, free }), checksum_errors: AtomicU64::new(0) })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn object_size(&self) -> u32 {
        self.superblock.object_size
    }

    fn check_range(&self, offset: u32, length: u32) -> Result<(), StoreError> {
        let os = self.object_size();
        if offset as usize % BLOCK != 0 || length as usize % BLOCK != 0 || offset as u64 + length as u64 > os as u64 {
            return Err(StoreError::Range { offset, length, object_size: os });
        }
        Ok(())
    }

    /// The object's version, `Version::NONE` if it was never written.
    pub fn version(&self, object: &ObjectId) -> Version {
        self.index().objects.get(object).map(|(_, h)| h.version).unwrap_or_default()
    }

    pub fn checksum_errors(&self) -> u64 {
        self.checksum_errors.load(Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&dyn BlockDevice) -> std::io::Result<T> + Send + 'static) -> Result<T, StoreError> {
        let dev = Arc::clone(&self.dev);
        tokio::task::spawn_blocking(move || f(&*dev))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Reads a range; returns the data, one crc per block, and the object's version. Blocks
    /// never written read as zeroes.
    pub async fn read(&self, object: ObjectId, offset: u32, length: u32) -> Result<(Bytes, Vec<u32>, Version), StoreError> {
        self.check_range(offset, length)?;
        let Some((slot, h)) = self.index().objects.get(&object).cloned() else {
            let blocks = length as usize / BLOCK;
            return Ok((Bytes::from(vec![0u8; length as usize]), vec![zero_block_crc(); blocks], Version::NONE));
        };
        let at = self.superblock.slot_offset(slot) + HEADER_BYTES + offset as u64;
        let buf = self
            .blocking(move |d| {
                let mut buf = AlignedBuf::zeroed(length as usize);
                d.read_at(&mut buf, at)?;
                Ok(buf)
            })
            .await?;
        let first = offset as usize / BLOCK;
        let mut out = BytesMut::with_capacity(length as usize);
        let mut crcs = Vec::with_capacity(length as usize / BLOCK);
        for (i, block) in buf.chunks(BLOCK).enumerate() {
            let b = first + i;
            if h.is_present(b) {
                if crc32c(block) != h.crcs[b] {
                    self.checksum_errors.fetch_add(1, Ordering::Relaxed);
                    let off = (b * BLOCK) as u64;
                    tracing::error!(%object, offset = off, "checksum mismatch on read");
                    return Err(StoreError::Checksum { object, offset: off });
                }
                out.extend_from_slice(block);
                crcs.push(h.crcs[b]);
            } else {
                out.extend_from_slice(&[0u8; BLOCK]);
                crcs.push(zero_block_crc());
            }
        }
        Ok((out.freeze(), crcs, h.version))
    }

    /// Writes a range at `version`; `crcs` (one per block) were checked by the caller.
    pub async fn write(&self, object: ObjectId, offset: u32, data: Bytes, crcs: &[u32], version: Version) -> Result<(), StoreError> {
        self.check_range(offset, data.len() as u32)?;
        let (slot, mut h) = self.slot_for(object)?;
        let at = self.superblock.slot_offset(slot) + HEADER_BYTES + offset as u64;
        let first = offset as usize / BLOCK;
        for (i, c) in crcs.iter().enumerate() {
            h.set_present(first + i, true);
            h.crcs[first + i] = *c;
        }
        h.version = version;
        // Data and header go to the device concurrently: each is a durable write, and the
        // latency is that of one instead of two. (Format 1 is not atomic either way; a torn
        // pair reads back as a checksum error, never as wrong data.)
        let data_write = self.blocking(move |d| d.write_at(&AlignedBuf::from_slice(&data), at));
        let (d, hd) = tokio::join!(data_write, self.write_header(slot, &h));
        let result = d.and(hd).map(|()| h);
        self.finish(object, slot, result)
    }

    /// Frees a range at `version`: its blocks read as zeroes afterwards.
    pub async fn trim(&self, object: ObjectId, offset: u32, length: u32, version: Version) -> Result<(), StoreError> {
        self.check_range(offset, length)?;
        let (slot, mut h) = self.slot_for(object)?;
        let result = async {
            let first = offset as usize / BLOCK;
            for b in first..first + length as usize / BLOCK {
                h.set_present(b, false);
                h.crcs[b] = 0;
            }
            h.version = version;
            self.write_header(slot, &h).await?;
            Ok(h)
        }
        .await;
        self.finish(object, slot, result)
    }

    /// Replaces the whole object (recovery push): `data` is `object_size` bytes.
    pub async fn write_full(&self, object: ObjectId, data: Bytes, crcs: &[u32], version: Version) -> Result<(), StoreError> {
        self.write(object, 0, data, crcs, version).await
    }

    async fn write_header(&self, slot: u64, h: &ObjectHeader) -> Result<(), StoreError> {
        let mut buf = AlignedBuf::zeroed(BLOCK);
        h.encode(&mut buf);
        let at = self.superblock.slot_offset(slot);
        self.blocking(move |d| d.write_at(&buf, at)).await
    }

    /// The object's slot and header, allocating a free slot for a new object.
    fn slot_for(&self, object: ObjectId) -> Result<(u64, ObjectHeader), StoreError> {
        let mut idx = self.index();
        if let Some((slot, h)) = idx.objects.get(&object) {
            return Ok((*slot, h.clone()));
        }
        let slot = idx.free.pop_first().ok_or(StoreError::NoSpace(object))?;
        let h = ObjectHeader::new(object, self.object_size() as usize / BLOCK);
        idx.objects.insert(object, (slot, h.clone()));
        Ok((slot, h))
    }

    /// Publishes the header of a completed write, or undoes a new slot's allocation.
    fn finish(&self, object: ObjectId, slot: u64, result: Result<ObjectHeader, StoreError>) -> Result<(), StoreError> {
        let mut idx = self.index();
        match result {
            Ok(h) => {
                idx.objects.insert(object, (slot, h));
                Ok(())
            }
            Err(e) => {
                if idx.objects.get(&object).is_some_and(|(_, h)| h.version.is_none()) {
                    idx.objects.remove(&object);
                    idx.free.insert(slot);
                }
                Err(e)
            }
        }
    }

    pub fn list(&self, pool: Option<u32>) -> Vec<ObjectEntry> {
        let idx = self.index();
        let mut v: Vec<ObjectEntry> = idx
            .objects
            .values()
            .filter(|(_, h)| pool.is_none_or(|p| h.object.pool == p))
            .map(|(_, h)| ObjectEntry { object: h.object, version: h.version, blocks: h.present_count() })
            .collect();
        v.sort_by_key(|e| e.object);
        v
    }

    pub fn stats(&self) -> OsdStats {
        let idx = self.index();
        let used_blocks: u64 = idx.objects.values().map(|(_, h)| h.present_count() as u64 + 1).sum();
        OsdStats {
            capacity_bytes: self.superblock.slot_count * self.object_size() as u64,
            used_bytes: used_blocks * BLOCK as u64,
            objects: idx.objects.len() as u64,
        }
    }
}
