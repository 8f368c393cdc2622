//! What an OSD persists per PG, beside the PG's objects: the start of the last interval it
//! helped activate (`last_epoch_started`) and the objects it was missing then, with the
//! authoritative version each needs.
//!
//! Stored as objects of the store under `PG_META_IMAGE` (an image id no image gets). The
//! root object of PG `pool.seed` has index `seed`; a record too large for it (a new member
//! joining a PG of many objects lacks all of them) goes into chunk objects of index
//! `seed | chunk << 32`, in two alternating slots, so the list has no size limit and a save
//! is atomic: the chunks of the inactive slot are written first, then the root that names
//! them (one object write, atomic in the store).
//!
//! Root object, format 2 (little-endian, zero-padded to whole 4 KiB blocks):
//! ```text
//!   0 magic "ATPG" u32 | 4 format u16 (=2) | 6 slot u8 (0: inline, 1 or 2) | 7 reserved u8
//!   8 chunks u32 | 12 reserved u32 | 16 body_len u64 | 24 body crc32c u32 | 28 reserved u32
//!  32 body (inline) — or, with a slot, the body is the concatenation of the slot's chunks
//!     (chunk k of slot s has index seed | (1 + (s - 1) · 2^16 + k) << 32)
//! body: postcard(PgMeta)
//! ```
//! Format 1 (read, then rewritten as format 2 at the next activation): `u32 length |
//! postcard(PgMeta)` in the root object. A length can never equal the magic (a format-1
//! record was at most one object of 1 MiB).
//!
//! Missing entries are removed lazily as recovery fills them: a stale entry is harmless,
//! because an object present at a version at least the needed one is taken as present.

use crate::store::{Store, StoreError};
use bytes::Bytes;
use proto::checksum::{block_crcs, crc32c};
use proto::{Epoch, ObjectId, PgId, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const BLOCK: usize = 4096;
const MAGIC: u32 = u32::from_le_bytes(*b"ATPG");
const FORMAT: u16 = 2;
const HEADER: usize = 32;
/// Chunks one slot can hold.
const SLOT_CHUNKS: u64 = 1 << 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgMeta {
    pub last_epoch_started: Epoch,
    pub missing: BTreeMap<ObjectId, Version>,
}

fn chunk_id(pg: PgId, slot: u8, k: u64) -> ObjectId {
    let n = 1 + (slot as u64 - 1) * SLOT_CHUNKS + k;
    ObjectId {
        index: pg.seed as u64 | (n << 32),
        ..ObjectId::pg_meta(pg)
    }
}

fn corrupt(pg: PgId, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: format!("pg {pg} metadata: {why}"),
    }
}

/// Reads the whole of a metadata object (0 bytes if it does not exist).
async fn read_object(store: &Store, id: ObjectId) -> Result<Bytes, StoreError> {
    if store.version(&id).is_none() {
        return Ok(Bytes::new());
    }
    Ok(store.read(id, 0, store.max_object_size()).await?.0)
}

/// Reads the metadata of `pg` (the default if this OSD never activated it).
pub async fn load(store: &Store, pg: PgId) -> Result<PgMeta, StoreError> {
    let root = read_object(store, ObjectId::pg_meta(pg)).await?;
    if root.len() < 4 {
        return Ok(PgMeta::default());
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if u32_at(&root, 0) != MAGIC {
        // Format 1: `u32 length | postcard`.
        let len = u32_at(&root, 0) as usize;
        let body = root
            .get(4..4 + len)
            .ok_or_else(|| corrupt(pg, format!("format-1 length {len} past the object")))?;
        return postcard::from_bytes(body).map_err(|e| corrupt(pg, e));
    }
    if root.len() < HEADER {
        return Err(corrupt(pg, "root shorter than its header"));
    }
    let format = u16::from_le_bytes([root[4], root[5]]);
    if format != FORMAT {
        return Err(corrupt(
            pg,
            format!("format {format}, this build reads {FORMAT}"),
        ));
    }
    let slot = root[6];
    let chunks = u32_at(&root, 8) as u64;
    let len = u64::from_le_bytes(root[16..24].try_into().unwrap_or_default()) as usize;
    let crc = u32_at(&root, 24);
    let body: Bytes = match slot {
        0 => root
            .get(HEADER..HEADER + len)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| corrupt(pg, format!("inline length {len} past the object")))?,
        1 | 2 => {
            let mut body = Vec::with_capacity(len);
            for k in 0..chunks {
                body.extend_from_slice(&read_object(store, chunk_id(pg, slot, k)).await?);
            }
            if body.len() < len {
                return Err(corrupt(
                    pg,
                    format!("{} bytes in chunks, root says {len}", body.len()),
                ));
            }
            body.truncate(len);
            Bytes::from(body)
        }
        s => return Err(corrupt(pg, format!("slot {s}"))),
    };
    if crc32c(&body) != crc {
        return Err(corrupt(pg, "body checksum mismatch"));
    }
    postcard::from_bytes(&body).map_err(|e| corrupt(pg, e))
}

/// Writes `data` (padded to whole blocks) as the whole object `id`.
async fn write_object(store: &Arc<Store>, id: ObjectId, data: &[u8]) -> Result<(), StoreError> {
    let total = data.len().div_ceil(BLOCK).max(1) * BLOCK;
    let mut buf = vec![0u8; total];
    buf[..data.len()].copy_from_slice(data);
    let buf = Bytes::from(buf);
    let crcs = block_crcs(&buf);
    // The version only has to grow (so the object exists and replay keeps order).
    let version = Version {
        epoch: 1,
        seq: store.version(&id).seq + 1,
    };
    store.write_full(id, buf, &crcs, version).await
}

/// Writes the metadata of `pg` durably.
pub async fn save(store: &Arc<Store>, pg: PgId, meta: &PgMeta) -> Result<(), StoreError> {
    let body: Vec<u8> = postcard::to_allocvec(meta).map_err(|e| corrupt(pg, e))?;
    let max = store.max_object_size() as usize;
    let root_id = ObjectId::pg_meta(pg);
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&FORMAT.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32c(&body).to_le_bytes());
    if HEADER + body.len() <= max {
        let mut root = header.to_vec();
        root.extend_from_slice(&body);
        write_object(store, root_id, &root).await?;
        store.flush().await?;
        // The chunks of a larger record before are no longer named.
        for slot in [1, 2] {
            trim_chunks(store, pg, slot, 0).await?;
        }
        return Ok(());
    }
    if crate::planted::active(crate::planted::Bug::MissingListOneObject) {
        return Err(StoreError::Range {
            offset: 0,
            length: (HEADER + body.len()) as u32,
            max: max as u32,
        });
    }
    // The slot the root does not name now.
    let current = {
        let root = read_object(store, root_id).await?;
        (root.len() >= HEADER && root[..4] == MAGIC.to_le_bytes()).then(|| root[6])
    };
    let slot = if current == Some(1) { 2 } else { 1 };
    let chunks: Vec<&[u8]> = body.chunks(max).collect();
    if chunks.len() as u64 > SLOT_CHUNKS {
        return Err(corrupt(
            pg,
            format!("{} bytes do not fit a slot", body.len()),
        ));
    }
    for (k, c) in chunks.iter().enumerate() {
        write_object(store, chunk_id(pg, slot, k as u64), c).await?;
    }
    // The chunks are on stable media before the root names them.
    store.flush().await?;
    header[6] = slot;
    header[8..12].copy_from_slice(&(chunks.len() as u32).to_le_bytes());
    write_object(store, root_id, &header).await?;
    store.flush().await?;
    // Chunks of this slot left from a longer record earlier are no longer named.
    trim_chunks(store, pg, slot, chunks.len() as u64).await
}

/// Deletes the chunks of `slot` from chunk `from` on (they are written in order, so the
/// first absent one ends them).
async fn trim_chunks(store: &Arc<Store>, pg: PgId, slot: u8, from: u64) -> Result<(), StoreError> {
    let mut k = from;
    while k < SLOT_CHUNKS && !store.version(&chunk_id(pg, slot, k)).is_none() {
        store
            .trim(
                chunk_id(pg, slot, k),
                0,
                store.max_object_size(),
                Version::NONE,
            )
            .await?;
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::sim::SimDevice;
    use crate::store::layout::Superblock;
    use crate::store::Durability;

    fn obj(i: u64) -> ObjectId {
        ObjectId {
            pool: 1,
            image: 7,
            index: i,
        }
    }

    async fn store() -> std::sync::Arc<Store> {
        let dev = SimDevice::new(64 << 20);
        let sb = Superblock::plan(1, 2, 0, 64 << 20).unwrap();
        Store::format(&*dev, &sb).await.unwrap();
        Store::open(dev, Durability::Immediate).await.unwrap()
    }

    #[tokio::test]
    async fn a_missing_list_larger_than_an_object_round_trips_and_shrinks_again() {
        let s = store().await;
        let pg = PgId { pool: 1, seed: 3 };
        assert_eq!(load(&s, pg).await.unwrap(), PgMeta::default());
        // About 200k entries: more than the store's largest object.
        let big = PgMeta {
            last_epoch_started: 40,
            missing: (0..200_000)
                .map(|i| (obj(i), Version { epoch: 30, seq: i }))
                .collect(),
        };
        let encoded = postcard::to_allocvec(&big).unwrap().len();
        assert!(encoded > s.max_object_size() as usize, "{encoded}");
        save(&s, pg, &big).await.unwrap();
        assert_eq!(load(&s, pg).await.unwrap(), big);
        // Saved again: the other slot, and still whole.
        let mut bigger = big.clone();
        bigger.last_epoch_started = 41;
        bigger
            .missing
            .insert(obj(1 << 40), Version { epoch: 41, seq: 1 });
        save(&s, pg, &bigger).await.unwrap();
        assert_eq!(load(&s, pg).await.unwrap(), bigger);
        // Small again: inline in the root; the chunks are not read.
        let small = PgMeta {
            last_epoch_started: 42,
            missing: BTreeMap::from([(obj(5), Version { epoch: 41, seq: 9 })]),
        };
        save(&s, pg, &small).await.unwrap();
        assert_eq!(load(&s, pg).await.unwrap(), small);
        // ... and the chunks of both slots are gone.
        for slot in [1, 2] {
            assert!(
                s.version(&chunk_id(pg, slot, 0)).is_none(),
                "slot {slot} left"
            );
        }
        // Another PG is untouched.
        assert_eq!(
            load(&s, PgId { pool: 1, seed: 4 }).await.unwrap(),
            PgMeta::default()
        );
    }

    #[tokio::test]
    async fn a_format_1_record_is_read_and_damage_is_an_error() {
        let s = store().await;
        let pg = PgId { pool: 2, seed: 0 };
        let meta = PgMeta {
            last_epoch_started: 9,
            missing: BTreeMap::from([(obj(1), Version { epoch: 8, seq: 2 })]),
        };
        let body = postcard::to_allocvec(&meta).unwrap();
        let mut old = (body.len() as u32).to_le_bytes().to_vec();
        old.extend_from_slice(&body);
        write_object(&s, ObjectId::pg_meta(pg), &old).await.unwrap();
        assert_eq!(load(&s, pg).await.unwrap(), meta);
        // A root whose body does not match its checksum is refused, not read as empty.
        save(&s, pg, &meta).await.unwrap();
        let (mut raw, _, _) = s.read(ObjectId::pg_meta(pg), 0, 4096).await.unwrap();
        let mut b = raw.to_vec();
        b[HEADER] ^= 1;
        raw = Bytes::from(b);
        write_object(&s, ObjectId::pg_meta(pg), &raw).await.unwrap();
        assert!(load(&s, pg).await.is_err());
    }
}
