//! On-disk records of store format 2. Every record has a magic, a format version and a
//! crc32c; every integer is little-endian. Decoders never panic and never trust a length
//! they have not checked (they are fuzzed: `osd/tests/fuzz_decoders.rs`).
//!
//! ```text
//! device: [ superblock 4 KiB ][ checkpoint A ][ checkpoint B ][ journal ring ][ data blocks ]
//! ```
//!
//! Superblock (4096 bytes, written once by mkfs, never rewritten):
//! ```text
//!   0 magic "ATLSUPER" u64 | 8 format u32 (= 2) | 12 block_size u32 (= 4096)
//!  16 cluster fsid u128 | 32 store uuid u128 | 48 osd id u32 | 52 max object size u32
//!  56 device_size u64 | 64 checkpoint_offset u64 | 72 checkpoint_bytes u64 (each of A, B)
//!  80 journal_offset u64 | 88 journal_blocks u64 | 96 data_offset u64 | 104 data_blocks u64
//! 112 .. 4092 zero | 4092 crc32c of bytes 0..4092
//! ```
//!
//! Journal block (4096 bytes; the ring slot of journal sequence `seq` is `seq % journal_blocks`):
//! ```text
//!   0 magic "ATLJ" u32 | 4 format u16 | 6 record count u16 | 8 seq u64 | 16 generation u64
//!  24 durable_upto u64 | 32 payload_len u32 | 36 crc32c of bytes 0..36 and the payload
//!  40 records, back to back (payload_len bytes), then zeroes
//! ```
//! Journal record (52 bytes + 8 per block for writes):
//! ```text
//!   0 kind u8 (1 write, 2 trim) | 1 reserved u8 | 2 first_block u16 | 4 nblocks u16 | 6 reserved u16
//!   8 record id u64 | 16 pool u32 | 20 image u64 | 28 index u64 | 36 version epoch u64 | 44 version seq u64
//!  52 writes only: physical data block u32 × nblocks, then crc32c u32 × nblocks
//! ```
//!
//! Checkpoint header (4096 bytes at the start of area A or B; its body follows it):
//! ```text
//!   0 magic "ATLCKPT\0" u64 | 8 format u32 | 12 reserved u32 | 16 checkpoint seq u64
//!  24 generation u64 | 32 journal_start_seq u64 | 40 next_record_id u64 | 48 durable_upto u64
//!  56 objects u64 | 64 body_len u64 | 72 body crc32c u32 | 4092 crc32c of bytes 0..4092
//! ```
//! Checkpoint body entry (44 bytes + 10 per present block):
//! ```text
//!   0 pool u32 | 4 image u64 | 12 index u64 | 20 version epoch u64 | 28 version seq u64
//!  36 last_record_id u64 | 44 present u16 | 46 (block u16, physical u32, crc32c u32) × present
//! ```
//! (The body entry is 46 + 10·present bytes; `ENTRY_FIXED` below is the exact figure.)

use proto::checksum::crc32c;
use proto::{ObjectId, Version};

pub const BLOCK: usize = 4096;
pub const FORMAT_VERSION: u32 = 2;
pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"ATLSUPER");
pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"ATLJ");
pub const CHECKPOINT_MAGIC: u64 = u64::from_le_bytes(*b"ATLCKPT\0");
/// Largest object the store holds: one journal record (52 + 8 bytes per block) must fit a
/// journal block.
pub const MAX_OBJECT_SIZE: u32 = proto::map::MAX_OBJECT_SIZE;
pub const JOURNAL_HEADER: usize = 40;
pub const RECORD_FIXED: usize = 52;
pub const ENTRY_FIXED: usize = 46;
pub const ENTRY_PER_BLOCK: usize = 10;

pub const KIND_WRITE: u8 = 1;
pub const KIND_TRIM: u8 = 2;

const _: () =
    assert!(JOURNAL_HEADER + RECORD_FIXED + 8 * (MAX_OBJECT_SIZE as usize / BLOCK) <= BLOCK);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no Atlant superblock (bad magic); format the device with `atlant osd create`")]
    NoSuperblock,
    #[error("superblock checksum mismatch")]
    SuperblockChecksum,
    #[error("store format {0} is not supported by this build (reads format {FORMAT_VERSION})")]
    Format(u32),
    #[error("superblock geometry is inconsistent: {0}")]
    Geometry(String),
    #[error("{what}: {why}")]
    Bad { what: &'static str, why: String },
}

fn bad(what: &'static str, why: impl Into<String>) -> LayoutError {
    LayoutError::Bad {
        what,
        why: why.into(),
    }
}

/// Bounds-checked little-endian reads.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, at: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], LayoutError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| bad(self.what, "truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, LayoutError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LayoutError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, LayoutError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, LayoutError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn object(&mut self) -> Result<ObjectId, LayoutError> {
        Ok(ObjectId {
            pool: self.u32()?,
            image: self.u64()?,
            index: self.u64()?,
        })
    }
    fn version(&mut self) -> Result<Version, LayoutError> {
        Ok(Version {
            epoch: self.u64()?,
            seq: self.u64()?,
        })
    }
    fn u128(&mut self) -> Result<u128, LayoutError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(a))
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

/// Recomputes the trailing crc of a sealed 4 KiB record (superblock, checkpoint header):
/// fuzzers use it to reach the parsers behind the checksum.
pub fn reseal_block(b: &mut [u8]) {
    if b.len() >= BLOCK {
        seal_block(b);
    }
}

fn seal_block(b: &mut [u8]) {
    let c = crc32c(&b[..BLOCK - 4]);
    b[BLOCK - 4..BLOCK].copy_from_slice(&c.to_le_bytes());
}

fn block_sealed(b: &[u8]) -> bool {
    b.len() >= BLOCK && crc32c(&b[..BLOCK - 4]).to_le_bytes() == b[BLOCK - 4..BLOCK]
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub fsid: u128,
    pub store_uuid: u128,
    pub osd_id: u32,
    pub max_object_size: u32,
    pub device_size: u64,
    pub checkpoint_offset: u64,
    pub checkpoint_bytes: u64,
    pub journal_offset: u64,
    pub journal_blocks: u64,
    pub data_offset: u64,
    pub data_blocks: u64,
}

impl Superblock {
    /// Lays out a device: the journal gets 1/32 of the device, at least 4 MiB (or a quarter
    /// of a tiny device) and at most 1 GiB;
    /// each checkpoint area room for a full index (see the body entry size).
    pub fn plan(
        fsid: u128,
        store_uuid: u128,
        osd_id: u32,
        device_size: u64,
    ) -> Result<Superblock, LayoutError> {
        let blocks = device_size / BLOCK as u64;
        if blocks < 1024 {
            return Err(LayoutError::Geometry(format!(
                "device of {device_size} bytes is too small (at least 4 MiB)"
            )));
        }
        let journal_blocks = (blocks / 32).clamp(1024.min(blocks / 4), 262_144);
        // Every data block may be present in one entry, and every object has at most
        // max_object_size/BLOCK of them; objects ≤ data blocks bounds the fixed parts.
        let per_block = (ENTRY_PER_BLOCK + ENTRY_FIXED) as u64;
        let remaining = blocks - 1 - journal_blocks;
        // data + 2 · (header + ceil(data·per_block / BLOCK)) ≤ remaining
        let data_blocks =
            (remaining.saturating_sub(4) * BLOCK as u64) / (BLOCK as u64 + 2 * per_block);
        let checkpoint_blocks = 1 + (data_blocks * per_block).div_ceil(BLOCK as u64);
        let sb = Superblock {
            fsid,
            store_uuid,
            osd_id,
            max_object_size: MAX_OBJECT_SIZE,
            device_size,
            checkpoint_offset: BLOCK as u64,
            checkpoint_bytes: checkpoint_blocks * BLOCK as u64,
            journal_offset: BLOCK as u64 + 2 * checkpoint_blocks * BLOCK as u64,
            journal_blocks,
            data_offset: BLOCK as u64 * (1 + 2 * checkpoint_blocks + journal_blocks),
            data_blocks,
        };
        sb.check()?;
        Ok(sb)
    }

    pub fn check(&self) -> Result<(), LayoutError> {
        let b = BLOCK as u64;
        let end = self
            .data_offset
            .saturating_add(self.data_blocks.saturating_mul(b));
        let aligned = [
            self.checkpoint_offset,
            self.checkpoint_bytes,
            self.journal_offset,
            self.data_offset,
        ]
        .iter()
        .all(|x| x % b == 0);
        // Checked: the fields come from the device and may be anything.
        let ordered = self.checkpoint_offset >= b
            && self
                .checkpoint_bytes
                .checked_mul(2)
                .and_then(|c| c.checked_add(self.checkpoint_offset))
                .is_some_and(|end| self.journal_offset >= end)
            && self
                .journal_blocks
                .checked_mul(b)
                .and_then(|j| j.checked_add(self.journal_offset))
                .is_some_and(|end| self.data_offset >= end);
        if !aligned
            || !ordered
            || end > self.device_size
            || self.journal_blocks < 16
            || self.data_blocks == 0
            || self.data_blocks > u32::MAX as u64
        {
            return Err(LayoutError::Geometry(format!("{self:?}")));
        }
        if self.max_object_size > MAX_OBJECT_SIZE
            || !self.max_object_size.is_power_of_two()
            || (self.max_object_size as usize) < BLOCK
        {
            return Err(LayoutError::Geometry(format!(
                "max object size {}",
                self.max_object_size
            )));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(BLOCK);
        put(&mut o, &SUPERBLOCK_MAGIC.to_le_bytes());
        put(&mut o, &FORMAT_VERSION.to_le_bytes());
        put(&mut o, &(BLOCK as u32).to_le_bytes());
        put(&mut o, &self.fsid.to_le_bytes());
        put(&mut o, &self.store_uuid.to_le_bytes());
        put(&mut o, &self.osd_id.to_le_bytes());
        put(&mut o, &self.max_object_size.to_le_bytes());
        for v in [
            self.device_size,
            self.checkpoint_offset,
            self.checkpoint_bytes,
            self.journal_offset,
            self.journal_blocks,
            self.data_offset,
            self.data_blocks,
        ] {
            put(&mut o, &v.to_le_bytes());
        }
        o.resize(BLOCK, 0);
        seal_block(&mut o);
        o
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, LayoutError> {
        let mut r = Reader::new(b, "superblock");
        if b.len() < BLOCK || r.u64()? != SUPERBLOCK_MAGIC {
            return Err(LayoutError::NoSuperblock);
        }
        if !block_sealed(b) {
            return Err(LayoutError::SuperblockChecksum);
        }
        let format = r.u32()?;
        if format != FORMAT_VERSION {
            return Err(LayoutError::Format(format));
        }
        if r.u32()? as usize != BLOCK {
            return Err(LayoutError::Geometry("block size is not 4096".into()));
        }
        let sb = Superblock {
            fsid: r.u128()?,
            store_uuid: r.u128()?,
            osd_id: r.u32()?,
            max_object_size: r.u32()?,
            device_size: r.u64()?,
            checkpoint_offset: r.u64()?,
            checkpoint_bytes: r.u64()?,
            journal_offset: r.u64()?,
            journal_blocks: r.u64()?,
            data_offset: r.u64()?,
            data_blocks: r.u64()?,
        };
        sb.check()?;
        Ok(sb)
    }

    pub fn journal_slot_offset(&self, seq: u64) -> u64 {
        self.journal_offset + (seq % self.journal_blocks) * BLOCK as u64
    }

    pub fn data_block_offset(&self, phys: u32) -> u64 {
        self.data_offset + phys as u64 * BLOCK as u64
    }

    pub fn checkpoint_area(&self, which: u64) -> u64 {
        self.checkpoint_offset + (which % 2) * self.checkpoint_bytes
    }
}

/// One change to one object, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub id: u64,
    pub object: ObjectId,
    pub version: Version,
    pub first_block: u16,
    pub nblocks: u16,
    /// Writes: the physical data block of each written block.
    pub phys: Vec<u32>,
    /// Writes: the crc32c of each written block.
    pub crcs: Vec<u32>,
}

impl Record {
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED
            + if self.kind == KIND_WRITE {
                8 * self.nblocks as usize
            } else {
                0
            }
    }

    pub fn encode(&self, o: &mut Vec<u8>) {
        put(o, &[self.kind, 0]);
        put(o, &self.first_block.to_le_bytes());
        put(o, &self.nblocks.to_le_bytes());
        put(o, &0u16.to_le_bytes());
        put(o, &self.id.to_le_bytes());
        put(o, &self.object.pool.to_le_bytes());
        put(o, &self.object.image.to_le_bytes());
        put(o, &self.object.index.to_le_bytes());
        put(o, &self.version.epoch.to_le_bytes());
        put(o, &self.version.seq.to_le_bytes());
        if self.kind == KIND_WRITE {
            for p in &self.phys {
                put(o, &p.to_le_bytes());
            }
            for c in &self.crcs {
                put(o, &c.to_le_bytes());
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Record, LayoutError> {
        let kind = r.u8()?;
        r.u8()?;
        let first_block = r.u16()?;
        let nblocks = r.u16()?;
        r.u16()?;
        let id = r.u64()?;
        let object = r.object()?;
        let version = r.version()?;
        let max_blocks = (MAX_OBJECT_SIZE as usize / BLOCK) as u32;
        if nblocks == 0 || first_block as u32 + nblocks as u32 > max_blocks {
            return Err(bad(
                "journal record",
                format!("blocks {first_block}+{nblocks}"),
            ));
        }
        let (mut phys, mut crcs) = (Vec::new(), Vec::new());
        match kind {
            KIND_WRITE => {
                for _ in 0..nblocks {
                    phys.push(r.u32()?);
                }
                for _ in 0..nblocks {
                    crcs.push(r.u32()?);
                }
            }
            KIND_TRIM => {}
            k => return Err(bad("journal record", format!("kind {k}"))),
        }
        Ok(Record {
            kind,
            id,
            object,
            version,
            first_block,
            nblocks,
            phys,
            crcs,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBlock {
    pub seq: u64,
    pub generation: u64,
    pub durable_upto: u64,
    pub records: Vec<Record>,
}

impl JournalBlock {
    /// Room for records in one block.
    pub const CAPACITY: usize = BLOCK - JOURNAL_HEADER;

    pub fn encode(&self, out: &mut [u8]) {
        let mut payload = Vec::with_capacity(Self::CAPACITY);
        for r in &self.records {
            r.encode(&mut payload);
        }
        assert!(payload.len() <= Self::CAPACITY, "journal block overfilled");
        out[..BLOCK].fill(0);
        out[0..4].copy_from_slice(&JOURNAL_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        out[6..8].copy_from_slice(&(self.records.len() as u16).to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.generation.to_le_bytes());
        out[24..32].copy_from_slice(&self.durable_upto.to_le_bytes());
        out[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        out[JOURNAL_HEADER..JOURNAL_HEADER + payload.len()].copy_from_slice(&payload);
        let crc = journal_crc(&out[..36], &payload);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
    }

    /// Recomputes a journal block's crc for whatever payload length its header names (for
    /// fuzzers, to reach the record parser behind the checksum).
    pub fn reseal(b: &mut [u8]) {
        if b.len() < BLOCK {
            return;
        }
        let len = (u32::from_le_bytes([b[32], b[33], b[34], b[35]]) as usize).min(Self::CAPACITY);
        let crc = journal_crc(&b[..36], &b[JOURNAL_HEADER..JOURNAL_HEADER + len]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<JournalBlock, LayoutError> {
        let mut r = Reader::new(b, "journal block");
        if r.u32()? != JOURNAL_MAGIC {
            return Err(bad("journal block", "bad magic"));
        }
        let format = r.u16()?;
        if format as u32 != FORMAT_VERSION {
            return Err(bad("journal block", format!("format {format}")));
        }
        let count = r.u16()?;
        let seq = r.u64()?;
        let generation = r.u64()?;
        let durable_upto = r.u64()?;
        let len = r.u32()? as usize;
        let crc = r.u32()?;
        if len > Self::CAPACITY || b.len() < JOURNAL_HEADER + len {
            return Err(bad("journal block", format!("payload length {len}")));
        }
        let payload = &b[JOURNAL_HEADER..JOURNAL_HEADER + len];
        if journal_crc(&b[..36], payload) != crc {
            return Err(bad("journal block", "checksum mismatch"));
        }
        let mut pr = Reader::new(payload, "journal record");
        let mut records = Vec::with_capacity(count as usize);
        for _ in 0..count {
            records.push(Record::decode(&mut pr)?);
        }
        if pr.at != payload.len() {
            return Err(bad("journal block", "trailing bytes after the records"));
        }
        Ok(JournalBlock {
            seq,
            generation,
            durable_upto,
            records,
        })
    }
}

fn journal_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut v = Vec::with_capacity(header.len() + payload.len());
    v.extend_from_slice(header);
    v.extend_from_slice(payload);
    crc32c(&v)
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CheckpointHeader {
    pub seq: u64,
    pub generation: u64,
    pub journal_start_seq: u64,
    pub next_record_id: u64,
    pub durable_upto: u64,
    pub objects: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

impl CheckpointHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(BLOCK);
        put(&mut o, &CHECKPOINT_MAGIC.to_le_bytes());
        put(&mut o, &FORMAT_VERSION.to_le_bytes());
        put(&mut o, &0u32.to_le_bytes());
        for v in [
            self.seq,
            self.generation,
            self.journal_start_seq,
            self.next_record_id,
            self.durable_upto,
            self.objects,
            self.body_len,
        ] {
            put(&mut o, &v.to_le_bytes());
        }
        put(&mut o, &self.body_crc.to_le_bytes());
        o.resize(BLOCK, 0);
        seal_block(&mut o);
        o
    }

    pub fn decode(b: &[u8]) -> Result<CheckpointHeader, LayoutError> {
        let mut r = Reader::new(b, "checkpoint header");
        if r.u64()? != CHECKPOINT_MAGIC {
            return Err(bad("checkpoint header", "bad magic"));
        }
        if !block_sealed(b) {
            return Err(bad("checkpoint header", "checksum mismatch"));
        }
        let format = r.u32()?;
        if format != FORMAT_VERSION {
            return Err(bad("checkpoint header", format!("format {format}")));
        }
        r.u32()?;
        Ok(CheckpointHeader {
            seq: r.u64()?,
            generation: r.u64()?,
            journal_start_seq: r.u64()?,
            next_record_id: r.u64()?,
            durable_upto: r.u64()?,
            objects: r.u64()?,
            body_len: r.u64()?,
            body_crc: r.u32()?,
        })
    }
}

/// An object as stored in a checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub object: ObjectId,
    pub version: Version,
    pub last_record_id: u64,
    /// (block index in the object, physical block, crc32c) of every present block.
    pub blocks: Vec<(u16, u32, u32)>,
}

impl CheckpointEntry {
    pub fn encode(&self, o: &mut Vec<u8>) {
        put(o, &self.object.pool.to_le_bytes());
        put(o, &self.object.image.to_le_bytes());
        put(o, &self.object.index.to_le_bytes());
        put(o, &self.version.epoch.to_le_bytes());
        put(o, &self.version.seq.to_le_bytes());
        put(o, &self.last_record_id.to_le_bytes());
        put(o, &(self.blocks.len() as u16).to_le_bytes());
        for (b, p, c) in &self.blocks {
            put(o, &b.to_le_bytes());
            put(o, &p.to_le_bytes());
            put(o, &c.to_le_bytes());
        }
    }

    /// Decodes every entry of a body.
    pub fn decode_all(body: &[u8], objects: u64) -> Result<Vec<CheckpointEntry>, LayoutError> {
        let mut r = Reader::new(body, "checkpoint entry");
        let max_blocks = MAX_OBJECT_SIZE as usize / BLOCK;
        let mut out = Vec::with_capacity((objects as usize).min(body.len() / ENTRY_FIXED + 1));
        for _ in 0..objects {
            let object = r.object()?;
            let version = r.version()?;
            let last_record_id = r.u64()?;
            let n = r.u16()? as usize;
            if n > max_blocks {
                return Err(bad("checkpoint entry", format!("{n} blocks")));
            }
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                let b = r.u16()?;
                if b as usize >= max_blocks {
                    return Err(bad("checkpoint entry", format!("block index {b}")));
                }
                blocks.push((b, r.u32()?, r.u32()?));
            }
            out.push(CheckpointEntry {
                object,
                version,
                last_record_id,
                blocks,
            });
        }
        if r.at != body.len() {
            return Err(bad("checkpoint body", "trailing bytes after the entries"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_plans_and_round_trips() {
        for size in [4u64 << 20, 64 << 20, 1 << 30, 8 << 30, 1 << 40] {
            let sb = Superblock::plan(1, 2, 3, size).unwrap();
            assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb, "size {size}");
            if size >= 64 << 20 {
                assert!(
                    sb.data_blocks * BLOCK as u64 > size / 10 * 8,
                    "data area too small for {size}: {sb:?}"
                );
            }
        }
        let mut raw = Superblock::plan(1, 2, 3, 1 << 30).unwrap().encode();
        raw[20] ^= 1;
        assert_eq!(
            Superblock::decode(&raw),
            Err(LayoutError::SuperblockChecksum)
        );
        assert_eq!(
            Superblock::decode(&[0u8; BLOCK]),
            Err(LayoutError::NoSuperblock)
        );
        assert!(Superblock::plan(1, 2, 3, 1 << 20).is_err());
    }

    #[test]
    fn journal_block_round_trip_and_damage() {
        let w = Record {
            kind: KIND_WRITE,
            id: 9,
            object: ObjectId {
                pool: 1,
                image: 2,
                index: 3,
            },
            version: Version { epoch: 4, seq: 5 },
            first_block: 2,
            nblocks: 3,
            phys: vec![10, 11, 40],
            crcs: vec![1, 2, 3],
        };
        let t = Record {
            kind: KIND_TRIM,
            id: 10,
            phys: vec![],
            crcs: vec![],
            ..w.clone()
        };
        let jb = JournalBlock {
            seq: 77,
            generation: 2,
            durable_upto: 8,
            records: vec![w, t],
        };
        let mut b = vec![0u8; BLOCK];
        jb.encode(&mut b);
        assert_eq!(JournalBlock::decode(&b).unwrap(), jb);
        b[60] ^= 1;
        assert!(JournalBlock::decode(&b).is_err());
    }

    #[test]
    fn checkpoint_round_trip() {
        let e = CheckpointEntry {
            object: ObjectId {
                pool: 1,
                image: 2,
                index: 3,
            },
            version: Version { epoch: 4, seq: 5 },
            last_record_id: 6,
            blocks: vec![(0, 5, 9), (31, 6, 10)],
        };
        let mut body = Vec::new();
        e.encode(&mut body);
        e.encode(&mut body);
        assert_eq!(body.len(), 2 * (ENTRY_FIXED + 2 * ENTRY_PER_BLOCK));
        assert_eq!(
            CheckpointEntry::decode_all(&body, 2).unwrap(),
            vec![e.clone(), e]
        );
        assert!(CheckpointEntry::decode_all(&body[..body.len() - 1], 2).is_err());
        let h = CheckpointHeader {
            seq: 1,
            generation: 2,
            journal_start_seq: 3,
            next_record_id: 4,
            durable_upto: 5,
            objects: 2,
            body_len: body.len() as u64,
            body_crc: 7,
        };
        assert_eq!(CheckpointHeader::decode(&h.encode()).unwrap(), h);
    }
}
