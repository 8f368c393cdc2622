//! Image IO: a byte range of an image is cut into per-object pieces that run concurrently.
//! Offsets and lengths are multiples of 4 KiB (the NBD gateway does sub-block
//! read-modify-write above this layer). Checksums are computed here for writes and checked
//! here for reads, so data is covered end to end.

use crate::cluster::{ClientError, Cluster, ObjectRequest};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use proto::checksum::{block_crcs, verify_blocks};
use proto::map::BLOCK_SIZE;
use proto::msg::{op, FLAG_FUA};
use proto::{ImageId, ObjectId, PoolId};
use std::sync::Arc;

/// Object ops one image request keeps in flight (a 1 GiB trim is 8192 of them).
const MAX_OPS_PER_REQUEST: usize = 64;

pub struct Image {
    cluster: Arc<Cluster>,
    pub pool: PoolId,
    pub id: ImageId,
    pub name: String,
    pub size_bytes: u64,
    pub object_size: u32,
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
                let (reply, data) = self.cluster.object_op(&req).await?;
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
        let pieces = self.pieces(offset, data.len() as u64)?;
        stream::iter(pieces.into_iter().map(|p| {
            let slice = data.slice(p.at..p.at + p.length as usize);
            let cluster = &self.cluster;
            async move {
                let req = ObjectRequest {
                    object: p.object,
                    op: op::WRITE,
                    flags: if fua { FLAG_FUA } else { 0 },
                    offset: p.offset,
                    length: p.length,
                    crcs: block_crcs(&slice),
                    data: slice,
                };
                cluster.object_op(&req).await.map(|_| ())
            }
        }))
        .buffer_unordered(MAX_OPS_PER_REQUEST)
        .try_collect::<()>()
        .await?;
        Ok(())
    }

    /// Frees a range: it reads back as zeroes.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let pieces = self.pieces(offset, len)?;
        stream::iter(pieces.into_iter().map(|p| async move {
            let req = ObjectRequest {
                object: p.object,
                op: op::TRIM,
                flags: 0,
                offset: p.offset,
                length: p.length,
                data: Bytes::new(),
                crcs: Vec::new(),
            };
            self.cluster.object_op(&req).await.map(|_| ())
        }))
        .buffer_unordered(MAX_OPS_PER_REQUEST)
        .try_collect::<()>()
        .await?;
        Ok(())
    }

    /// Makes every acknowledged write durable on every replica. OSDs in immediate mode
    /// answer at once; OSDs in lazy mode flush their devices.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.cluster.flush_all().await
    }
}
