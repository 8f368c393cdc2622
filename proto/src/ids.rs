//! Identifiers shared by every daemon: OSD, pool, image, object and PG ids, epochs and
//! object versions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A map epoch. Every committed map change makes a new one; epochs only grow.
pub type Epoch = u64;

/// An OSD's id, assigned by the monitors when its store is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OsdId(pub u32);

impl fmt::Display for OsdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "osd.{}", self.0)
    }
}

pub type PoolId = u32;
pub type ImageId = u64;

/// An object of an image: the `index`-th `object_size` piece of image `image` in `pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    pub pool: PoolId,
    pub image: ImageId,
    pub index: u64,
}

/// The image id no image ever gets (ids grow from 1): objects under it hold an OSD's own
/// per-PG metadata (`last_epoch_started`, missing objects), never image data.
pub const PG_META_IMAGE: ImageId = u64::MAX;

impl ObjectId {
    /// Where an OSD keeps its metadata of `pg`.
    pub fn pg_meta(pg: PgId) -> ObjectId {
        ObjectId {
            pool: pg.pool,
            image: PG_META_IMAGE,
            index: pg.seed as u64,
        }
    }

    pub fn is_pg_meta(&self) -> bool {
        self.image == PG_META_IMAGE
    }

    /// A stable 64-bit hash of the id (xxh3 over the little-endian fields, never a
    /// per-process seeded hasher), the input of PG selection.
    pub fn stable_hash(&self) -> u64 {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.pool.to_le_bytes());
        b[4..12].copy_from_slice(&self.image.to_le_bytes());
        b[12..20].copy_from_slice(&self.index.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&b)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}.{:x}", self.pool, self.image, self.index)
    }
}

/// A placement group: `seed` in `0..pool.pg_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PgId {
    pub pool: PoolId,
    pub seed: u32,
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool, self.seed)
    }
}

/// An object version: the epoch at which the PG's interval began and a per-PG sequence
/// assigned by the primary. Ordered lexicographically; (0, 0) means "never written".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub epoch: Epoch,
    pub seq: u64,
}

impl Version {
    pub const NONE: Version = Version { epoch: 0, seq: 0 };

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}'{}", self.epoch, self.seq)
    }
}

/// Identity of one client operation: (client instance, transaction id). A re-sent op
/// carries the same identity so the primary answers it instead of applying it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    pub client: u64,
    pub tid: u64,
}

/// 128-bit ids (cluster fsid, store uuid) rendered as 32 hex digits.
pub fn uuid_hex(u: u128) -> String {
    format!("{u:032x}")
}
