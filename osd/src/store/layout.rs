//! On-disk records of store format 1.
//!
//! ```text
//! device:  [ superblock 4 KiB ][ slot 0 ][ slot 1 ] ... [ slot N-1 ]
//! slot:    [ object header 4 KiB ][ object data: object_size bytes ]
//! ```
//!
//! Superblock (little-endian, 4096 bytes):
//! ```text
//!   0 magic "ATLSUPER" u64 | 8 format u32 | 12 block_size u32
//!  16 cluster fsid u128 | 32 store uuid u128
//!  48 osd id u32 | 52 object_size u32 | 56 device_size u64 | 64 slot_count u64
//!  72 .. 4092 zero | 4092 crc32c of bytes 0..4092
//! ```
//! Object header (little-endian, 4096 bytes; all zero = free slot):
//! ```text
//!   0 magic "ATLO" u32 | 4 format u16 | 6 reserved u16 | 8 pool u32 | 12 blocks u32
//!  16 image u64 | 24 index u64 | 32 version epoch u64 | 40 version seq u64
//!  48 present bitmap: blocks bits, padded to 8 bytes
//!  .. crc32c per block, u32 × blocks
//!  4092 crc32c of bytes 0..4092
//! ```
//! Limits of format 1: objects of at most 2 MiB (the header must hold the bitmap and crcs).
//! Writes update data in place and then the header; the store issue replaces this with a
//! write-ahead ring that makes every aligned write atomic.

use proto::checksum::crc32c;
use proto::{ObjectId, Version};

pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"ATLSUPER");
pub const OBJECT_MAGIC: u32 = u32::from_le_bytes(*b"ATLO");
pub const FORMAT_VERSION: u32 = 1;
pub const BLOCK: usize = 4096;
pub const HEADER_BYTES: u64 = BLOCK as u64;
pub const MAX_OBJECT_SIZE: u32 = 2 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub fsid: u128,
    pub store_uuid: u128,
    pub osd_id: u32,
    pub object_size: u32,
    pub device_size: u64,
    pub slot_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no Atlant superblock (bad magic); format the device with `atlant osd create`")]
    NoSuperblock,
    #[error("superblock checksum mismatch")]
    SuperblockChecksum,
    #[error("store format {0} is not supported by this build (reads format {FORMAT_VERSION})")]
    Format(u32),
    #[error("object header at slot {slot}: {what}")]
    BadHeader { slot: u64, what: String },
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}
fn u128_at(b: &[u8], i: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    u128::from_le_bytes(a)
}

fn seal(b: &mut [u8]) {
    let c = crc32c(&b[..BLOCK - 4]);
    b[BLOCK - 4..BLOCK].copy_from_slice(&c.to_le_bytes());
}

fn sealed(b: &[u8]) -> bool {
    crc32c(&b[..BLOCK - 4]) == u32_at(b, BLOCK - 4)
}

impl Superblock {
    /// Number of slots of `object_size` that fit on a device of `device_size` bytes.
    pub fn slots_for(device_size: u64, object_size: u32) -> u64 {
        device_size.saturating_sub(BLOCK as u64) / (HEADER_BYTES + object_size as u64)
    }

    pub fn encode(&self, b: &mut [u8]) {
        b[..BLOCK].fill(0);
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.fsid.to_le_bytes());
        b[32..48].copy_from_slice(&self.store_uuid.to_le_bytes());
        b[48..52].copy_from_slice(&self.osd_id.to_le_bytes());
        b[52..56].copy_from_slice(&self.object_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.device_size.to_le_bytes());
        b[64..72].copy_from_slice(&self.slot_count.to_le_bytes());
        seal(b);
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, LayoutError> {
        if b.len() < BLOCK || u64_at(b, 0) != SUPERBLOCK_MAGIC {
            return Err(LayoutError::NoSuperblock);
        }
        if !sealed(b) {
            return Err(LayoutError::SuperblockChecksum);
        }
        let format = u32_at(b, 8);
        if format != FORMAT_VERSION {
            return Err(LayoutError::Format(format));
        }
        Ok(Superblock {
            fsid: u128_at(b, 16),
            store_uuid: u128_at(b, 32),
            osd_id: u32_at(b, 48),
            object_size: u32_at(b, 52),
            device_size: u64_at(b, 56),
            slot_count: u64_at(b, 64),
        })
    }

    pub fn slot_offset(&self, slot: u64) -> u64 {
        BLOCK as u64 + slot * (HEADER_BYTES + self.object_size as u64)
    }
}

/// The in-memory and on-disk description of one stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    pub object: ObjectId,
    pub version: Version,
    /// One bit per block: the block holds data (otherwise it reads as zeroes).
    pub present: Vec<u64>,
    pub crcs: Vec<u32>,
}

impl ObjectHeader {
    pub fn new(object: ObjectId, blocks: usize) -> ObjectHeader {
        ObjectHeader { object, version: Version::NONE, present: vec![0; blocks.div_ceil(64)], crcs: vec![0; blocks] }
    }

    pub fn blocks(&self) -> usize {
        self.crcs.len()
    }

    pub fn is_present(&self, block: usize) -> bool {
        self.present[block / 64] & (1 << (block % 64)) != 0
    }

    pub fn set_present(&mut self, block: usize, on: bool) {
        if on {
            self.present[block / 64] |= 1 << (block % 64);
        } else {
            self.present[block / 64] &= !(1 << (block % 64));
        }
    }

    pub fn present_count(&self) -> u32 {
        self.present.iter().map(|w| w.count_ones()).sum()
    }

    pub fn encode(&self, b: &mut [u8]) {
        b[..BLOCK].fill(0);
        let blocks = self.blocks();
        b[0..4].copy_from_slice(&OBJECT_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.object.pool.to_le_bytes());
        b[12..16].copy_from_slice(&(blocks as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.object.image.to_le_bytes());
        b[24..32].copy_from_slice(&self.object.index.to_le_bytes());
        b[32..40].copy_from_slice(&self.version.epoch.to_le_bytes());
        b[40..48].copy_from_slice(&self.version.seq.to_le_bytes());
        let mut at = 48;
        for w in &self.present {
            b[at..at + 8].copy_from_slice(&w.to_le_bytes());
            at += 8;
        }
        for c in &self.crcs {
            b[at..at + 4].copy_from_slice(&c.to_le_bytes());
            at += 4;
        }
        seal(b);
    }

    /// Decodes a slot header: `Ok(None)` for a free (all-zero) slot.
    pub fn decode(b: &[u8], slot: u64, blocks: usize) -> Result<Option<ObjectHeader>, LayoutError> {
        let bad = |what: String| LayoutError::BadHeader { slot, what };
        if b.len() < BLOCK {
            return Err(bad("short header".into()));
        }
        if b[..BLOCK].iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if u32_at(b, 0) != OBJECT_MAGIC {
            return Err(bad("bad magic".into()));
        }
        if !sealed(b) {
            return Err(bad("checksum mismatch".into()));
        }
        let format = u16::from_le_bytes([b[4], b[5]]) as u32;
        if format != FORMAT_VERSION {
            return Err(bad(format!("format {format}")));
        }
        if u32_at(b, 12) as usize != blocks {
            return Err(bad(format!("{} blocks, the store has {blocks}", u32_at(b, 12))));
        }
        let object = ObjectId { pool: u32_at(b, 8), image: u64_at(b, 16), index: u64_at(b, 24) };
        let version = Version { epoch: u64_at(b, 32), seq: u64_at(b, 40) };
        let mut h = ObjectHeader::new(object, blocks);
        h.version = version;
        let mut at = 48;
        for w in h.present.iter_mut() {
            *w = u64_at(b, at);
            at += 8;
        }
        for c in h.crcs.iter_mut() {
            *c = u32_at(b, at);
            at += 4;
        }
        Ok(Some(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_and_damage() {
        let sb = Superblock { fsid: 1, store_uuid: 2, osd_id: 3, object_size: 131072, device_size: 1 << 30, slot_count: 10 };
        let mut b = vec![0u8; BLOCK];
        sb.encode(&mut b);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        b[20] ^= 1;
        assert_eq!(Superblock::decode(&b), Err(LayoutError::SuperblockChecksum));
        assert_eq!(Superblock::decode(&[0u8; BLOCK]), Err(LayoutError::NoSuperblock));
    }

    #[test]
    fn header_round_trip_free_and_damage() {
        let blocks = (MAX_OBJECT_SIZE as usize) / BLOCK;
        let mut h = ObjectHeader::new(ObjectId { pool: 1, image: 2, index: 3 }, blocks);
        h.version = Version { epoch: 5, seq: 6 };
        h.set_present(0, true);
        h.set_present(blocks - 1, true);
        h.crcs[blocks - 1] = 0xdead_beef;
        let mut b = vec![0u8; BLOCK];
        h.encode(&mut b);
        assert_eq!(ObjectHeader::decode(&b, 0, blocks).unwrap(), Some(h));
        assert_eq!(ObjectHeader::decode(&[0u8; BLOCK], 0, blocks).unwrap(), None);
        b[100] ^= 4;
        assert!(ObjectHeader::decode(&b, 0, blocks).is_err());
    }
}
