//! Image IO: a byte range of an image is cut into per-object pieces that run concurrently.
//! Offsets and lengths are multiples of 4 KiB (the NBD gateway does sub-block
//! read-modify-write above this layer). Checksums are computed here for writes and checked
//! here for reads, so data is covered end to end.
//!
//! Durability: a write's reply says whether it is already on stable media on every member
//! (`REPLY_DURABLE`: OSDs in immediate mode, or FUA). The PGs of the others are remembered,
//! and `flush` sends a FLUSH to each one's primary, which recovers what a member lacks and
//! flushes every member's device. In immediate mode nothing is remembered and a flush
//! returns at once — except the first flush after `open`, which flushes every PG holding
//! the image's objects once: an earlier opener (a gateway killed under its VM, the source
//! of a live migration) may have left acknowledged writes unflushed, and the guest's next
//! FLUSH must cover them too.

use crate::cluster::{ClientError, Cluster, ObjectRequest};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use net::sync::Cancel;
use proto::checksum::{block_crcs, verify_blocks};
use proto::map::BLOCK_SIZE;
use proto::msg::{op, FLAG_FUA, REPLY_DURABLE};
use proto::placement::object_pg;
use proto::{ImageId, ObjectId, PgId, PoolId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Object ops one image request keeps in flight (a 1 GiB trim is 8192 of them).
const MAX_OPS_PER_REQUEST: usize = 64;

pub struct Image {
    cluster: Arc<Cluster>,
    pub pool: PoolId,
    pub id: ImageId,
    pub name: String,
    pub size_bytes: u64,
    pub object_size: u32,
    /// PGs written since the last flush whose writes are not yet on stable media
    /// everywhere, each with one of its objects (a FLUSH op names its PG by an object).
    dirty: Mutex<BTreeMap<PgId, ObjectId>>,
    /// Until the first flush succeeds: what earlier openers wrote may be unflushed.
    inherited: std::sync::atomic::AtomicBool,
}

/// One object's part of an image range.
struct Piece {
    object: ObjectId,
    /// Offset inside the object.
    offset: u32,
    length: u32,
    /// Offset of the piece inside the request.
    at: usize,
}

impl Image {
    /// Opens `pool/name` from the cluster's current map.
    pub fn open(cluster: &Arc<Cluster>, pool: &str, name: &str) -> Result<Image, ClientError> {
        let map = cluster.map();
        let (p, i) = map
            .resolve_image(pool, name)
            .map_err(|e| ClientError::NotFound(e.to_string()))?;
        Ok(Image {
            cluster: Arc::clone(cluster),
            pool: p.id,
            id: i.id,
            name: format!("{pool}/{name}"),
            size_bytes: i.size_bytes,
            object_size: i.object_size,
            dirty: Mutex::new(BTreeMap::new()),
            inherited: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn pieces(&self, offset: u64, len: u64) -> Result<Vec<Piece>, ClientError> {
        let b = BLOCK_SIZE as u64;
        if !offset.is_multiple_of(b) || !len.is_multiple_of(b) {
            return Err(ClientError::Invalid(format!(
                "range {offset}+{len} is not 4 KiB-aligned"
            )));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.size_bytes)
        {
            return Err(ClientError::Invalid(format!(
                "range {offset}+{len} is past the end ({})",
                self.size_bytes
            )));
        }
        let os = self.object_size as u64;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let index = pos / os;
            let in_obj = pos % os;
            let n = (os - in_obj).min(offset + len - pos);
            out.push(Piece {
                object: ObjectId {
                    pool: self.pool,
                    image: self.id,
                    index,
                },
                offset: in_obj as u32,
                length: n as u32,
                at: (pos - offset) as usize,
            });
            pos += n;
        }
        Ok(out)
    }

    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, ClientError> {
        self.read_cancellable(offset, len, &Cancel::never()).await
    }

    /// Reads a range; stops (with `ClientError::Cancelled`) once `cancel` is set.
    pub async fn read_cancellable(
        &self,
        offset: u64,
        len: u64,
        cancel: &Cancel,
    ) -> Result<Bytes, ClientError> {
        let pieces = self.pieces(offset, len)?;
        let parts: Vec<Bytes> = stream::iter(pieces.into_iter().map(|p| async move {
            let req = ObjectRequest {
                object: p.object,
                op: op::READ,
                flags: 0,
                offset: p.offset,
                length: p.length,
                data: Bytes::new(),
                crcs: Vec::new(),
            };
            // A block damaged in transit is re-read a few times before it is an error.
            let mut attempts = 0;
            loop {
                let (reply, data) = self.cluster.object_op_cancellable(&req, cancel).await?;
                if data.len() == p.length as usize && verify_blocks(&data, &reply.crcs).is_ok() {
                    return Ok::<Bytes, ClientError>(data);
                }
                attempts += 1;
                if attempts >= 3 {
                    return Err(ClientError::Io {
                        object: p.object,
                        reason: "read data failed its checksum".into(),
                    });
                }
            }
        }))
        .buffered(MAX_OPS_PER_REQUEST)
        .try_collect()
        .await?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for part in parts {
            out.extend_from_slice(&part);
        }
        Ok(out.freeze())
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ClientError> {
        self.write_cancellable(offset, data, fua, &Cancel::never())
            .await
    }

    /// Writes a range. With `fua` it is on stable media on every member when this returns;
    /// otherwise after the next `flush`. Once `cancel` is set it stops and returns
    /// `Cancelled` when none of its pieces can land any more.
    pub async fn write_cancellable(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), ClientError> {
        let pieces = self.pieces(offset, data.len() as u64)?;
        let mutations = pieces.into_iter().map(|p| {
            let slice = data.slice(p.at..p.at + p.length as usize);
            ObjectRequest {
                object: p.object,
                op: op::WRITE,
                flags: if fua { FLAG_FUA } else { 0 },
                offset: p.offset,
                length: p.length,
                crcs: block_crcs(&slice),
                data: slice,
            }
        });
        self.mutate(mutations, fua, cancel).await
    }

    /// Frees a range: it reads back as zeroes (with `fua`, durably so when this returns).
    pub async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ClientError> {
        self.trim_cancellable(offset, len, fua, &Cancel::never())
            .await
    }

    pub async fn trim_cancellable(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), ClientError> {
        let pieces = self.pieces(offset, len)?;
        let mutations = pieces.into_iter().map(|p| ObjectRequest {
            object: p.object,
            op: op::TRIM,
            flags: if fua { FLAG_FUA } else { 0 },
            offset: p.offset,
            length: p.length,
            data: Bytes::new(),
            crcs: Vec::new(),
        });
        self.mutate(mutations, fua, cancel).await
    }

    /// Runs writes or trims concurrently; every PG they leave without `REPLY_DURABLE` is
    /// remembered for the next flush (and flushed now when `fua` asks for durability).
    async fn mutate(
        &self,
        reqs: impl Iterator<Item = ObjectRequest>,
        fua: bool,
        cancel: &Cancel,
    ) -> Result<(), ClientError> {
        stream::iter(reqs.map(|req| async move {
            let (reply, _) = self.cluster.object_op_cancellable(&req, cancel).await?;
            if reply.flags & REPLY_DURABLE == 0 {
                self.note_dirty(req.object);
                if fua {
                    self.flush_pg(req.object, cancel).await?;
                }
            }
            Ok::<(), ClientError>(())
        }))
        .buffer_unordered(MAX_OPS_PER_REQUEST)
        .try_collect::<()>()
        .await?;
        Ok(())
    }

    /// Every PG that holds objects of the image is to be flushed, each named by its first
    /// object.
    fn note_all_dirty(&self) {
        let map = self.cluster.map();
        let Some(pool) = map.pools.get(&self.pool) else {
            return;
        };
        let objects = self.size_bytes.div_ceil(u64::from(self.object_size.max(1)));
        let mut dirty = net::sync::lock(&self.dirty);
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..objects {
            let object = ObjectId {
                pool: self.pool,
                image: self.id,
                index,
            };
            let pg = object_pg(&object, pool);
            if seen.insert(pg) {
                dirty.entry(pg).or_insert(object);
                if seen.len() >= pool.pg_count as usize {
                    break;
                }
            }
        }
    }

    fn note_dirty(&self, object: ObjectId) {
        let map = self.cluster.map();
        if let Some(pool) = map.pools.get(&object.pool) {
            let pg = object_pg(&object, pool);
            net::sync::lock(&self.dirty).entry(pg).or_insert(object);
        }
    }

    async fn flush_pg(&self, object: ObjectId, cancel: &Cancel) -> Result<(), ClientError> {
        let req = ObjectRequest {
            object,
            op: op::FLUSH,
            flags: 0,
            offset: 0,
            length: self.object_size,
            data: Bytes::new(),
            crcs: Vec::new(),
        };
        self.cluster
            .object_op_cancellable(&req, cancel)
            .await
            .map(|_| ())
    }

    /// Makes every write acknowledged before it durable on every member of its PG's acting
    /// set: each PG written since the last flush (and not durable at once, as it is with
    /// OSDs in immediate mode) is flushed through its primary, riding out OSD failures as
    /// writes do. With nothing to flush it returns at once.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.flush_cancellable(&Cancel::never()).await
    }

    pub async fn flush_cancellable(&self, cancel: &Cancel) -> Result<(), ClientError> {
        if proto::planted::active(proto::planted::Bug::FlushUpOsdsOnce) {
            return self.cluster.flush_all().await;
        }
        let inherited = self
            .inherited
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if inherited {
            self.note_all_dirty();
        }
        let dirty = std::mem::take(&mut *net::sync::lock(&self.dirty));
        let results: Vec<(PgId, ObjectId, Result<(), ClientError>)> =
            stream::iter(dirty.into_iter().map(|(pg, object)| async move {
                (pg, object, self.flush_pg(object, cancel).await)
            }))
            .buffer_unordered(MAX_OPS_PER_REQUEST)
            .collect()
            .await;
        let mut first_error = None;
        for (pg, object, r) in results {
            if let Err(e) = r {
                // Still to flush next time.
                net::sync::lock(&self.dirty).entry(pg).or_insert(object);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
