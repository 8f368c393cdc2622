//! What an OSD persists per PG, beside the PG's objects: the start of the last interval it
//! helped activate (`last_epoch_started`) and the objects it was missing then, with the
//! authoritative version each needs.
//!
//! Stored as an object of the store under `PG_META_IMAGE` (an image id no image gets):
//! `u32 length | postcard(PgMeta)`, zero-padded to whole blocks, written durably. Missing
//! entries are removed lazily as recovery fills them: a stale entry is harmless, because an
//! object present at a version at least the needed one is taken as present.

use crate::store::{Store, StoreError};
use bytes::Bytes;
use proto::checksum::block_crcs;
use proto::{Epoch, ObjectId, PgId, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const BLOCK: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgMeta {
    pub last_epoch_started: Epoch,
    pub missing: BTreeMap<ObjectId, Version>,
}

/// Reads the metadata of `pg` (the default if this OSD never activated it).
pub async fn load(store: &Store, pg: PgId) -> Result<PgMeta, StoreError> {
    let id = ObjectId::pg_meta(pg);
    if store.version(&id).is_none() {
        return Ok(PgMeta::default());
    }
    let (first, _, _) = store.read(id, 0, BLOCK as u32).await?;
    let len = u32::from_le_bytes(first[..4].try_into().unwrap_or_default()) as usize;
    let total = (4 + len).div_ceil(BLOCK) * BLOCK;
    let raw = if total <= BLOCK {
        first
    } else {
        store.read(id, 0, total as u32).await?.0
    };
    postcard::from_bytes(&raw[4..4 + len.min(raw.len() - 4)]).map_err(|e| StoreError::Corrupt {
        what: format!("pg {pg} metadata: {e}"),
    })
}

/// Writes the metadata of `pg` durably.
pub async fn save(store: &Store, pg: PgId, meta: &PgMeta) -> Result<(), StoreError> {
    let body: Vec<u8> = postcard::to_allocvec(meta).unwrap_or_default();
    let total = (4 + body.len()).div_ceil(BLOCK) * BLOCK;
    let mut buf = vec![0u8; total];
    buf[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    buf[4..4 + body.len()].copy_from_slice(&body);
    let buf = Bytes::from(buf);
    let crcs = block_crcs(&buf);
    // The version only has to be set (so the object exists); the content is what counts.
    let version = Version {
        epoch: meta.last_epoch_started.max(1),
        seq: store.version(&ObjectId::pg_meta(pg)).seq + 1,
    };
    store
        .write_full(ObjectId::pg_meta(pg), buf, &crcs, version)
        .await?;
    store.flush().await
}
