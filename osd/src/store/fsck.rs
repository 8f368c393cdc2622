//! Offline check of a store: opens it read-only in spirit (no journal writer, no new
//! checkpoint), verifies the superblock, both checkpoint areas, the journal chain, every
//! index invariant and the crc32c of every referenced data block, and reports.

use super::device::{AlignedBuf, BlockDevice};
use super::layout::{CheckpointEntry, CheckpointHeader, JournalBlock, Superblock, BLOCK};
use proto::checksum::crc32c;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct FsckReport {
    pub superblock: Option<Superblock>,
    pub checkpoint_seq: u64,
    pub objects: u64,
    pub blocks_checked: u64,
    pub journal_blocks_replayable: u64,
    pub journal_records: u64,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

impl FsckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(sb) = &self.superblock {
            writeln!(
                f,
                "store: osd.{} cluster {} store {}",
                sb.osd_id,
                proto::uuid_hex(sb.fsid),
                proto::uuid_hex(sb.store_uuid)
            )?;
            writeln!(
                f,
                "geometry: {} data blocks, journal {} blocks, checkpoint areas {} bytes",
                sb.data_blocks, sb.journal_blocks, sb.checkpoint_bytes
            )?;
        }
        writeln!(
            f,
            "checkpoint seq {}: {} objects",
            self.checkpoint_seq, self.objects
        )?;
        writeln!(
            f,
            "journal: {} blocks with {} records after the checkpoint",
            self.journal_blocks_replayable, self.journal_records
        )?;
        writeln!(f, "data blocks checked: {}", self.blocks_checked)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for e in &self.errors {
            writeln!(f, "ERROR: {e}")?;
        }
        write!(
            f,
            "{}",
            if self.ok() {
                "fsck: clean"
            } else {
                "fsck: ERRORS FOUND"
            }
        )
    }
}

async fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> std::io::Result<AlignedBuf> {
    let (buf, r) = dev.read(offset, AlignedBuf::zeroed(len)).await;
    r.map(|()| buf)
}

/// Checks the store on `dev` and reports; never writes.
pub async fn fsck(dev: &dyn BlockDevice) -> FsckReport {
    let mut rep = FsckReport::default();
    let sb = match read(dev, 0, BLOCK)
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| Superblock::decode(&b).map_err(|e| e.to_string()))
    {
        Ok(sb) => sb,
        Err(e) => {
            rep.errors.push(format!("superblock: {e}"));
            return rep;
        }
    };
    rep.superblock = Some(sb.clone());
    // Both checkpoint areas; the newest valid one is the state.
    let mut best: Option<(CheckpointHeader, Vec<CheckpointEntry>)> = None;
    for area in 0..2u64 {
        let base = sb.checkpoint_area(area);
        let Ok(hb) = read(dev, base, BLOCK).await else {
            rep.errors
                .push(format!("checkpoint area {area}: read error"));
            continue;
        };
        let h = match CheckpointHeader::decode(&hb) {
            Ok(h) => h,
            Err(e) => {
                rep.notes.push(format!(
                    "checkpoint area {area}: {e} (an unused or superseded area)"
                ));
                continue;
            }
        };
        if h.body_len + BLOCK as u64 > sb.checkpoint_bytes {
            rep.errors.push(format!(
                "checkpoint area {area}: body length {} exceeds the area",
                h.body_len
            ));
            continue;
        }
        let body = match read(dev, base + BLOCK as u64, (h.body_len as usize).max(1)).await {
            Ok(b) => b,
            Err(e) => {
                rep.errors.push(format!("checkpoint area {area}: {e}"));
                continue;
            }
        };
        let body = &body[..h.body_len as usize];
        if crc32c(body) != h.body_crc {
            rep.notes.push(format!("checkpoint area {area} (seq {}): body checksum mismatch (torn while being written?)", h.seq));
            continue;
        }
        match CheckpointEntry::decode_all(body, h.objects) {
            Ok(entries) => {
                if best.as_ref().is_none_or(|(b, _)| h.seq > b.seq) {
                    best = Some((h, entries));
                }
            }
            Err(e) => rep.errors.push(format!("checkpoint area {area}: {e}")),
        }
    }
    let Some((ckpt, entries)) = best else {
        rep.errors.push("no valid checkpoint".into());
        return rep;
    };
    rep.checkpoint_seq = ckpt.seq;
    rep.objects = entries.len() as u64;
    // Index invariants: each physical block referenced once and in range; every block's crc.
    let mut owner: HashMap<u32, String> = HashMap::new();
    for e in &entries {
        for (b, p, c) in &e.blocks {
            if *p as u64 >= sb.data_blocks {
                rep.errors.push(format!(
                    "{} block {b}: physical block {p} out of range",
                    e.object
                ));
                continue;
            }
            if let Some(other) = owner.insert(*p, format!("{} block {b}", e.object)) {
                rep.errors.push(format!(
                    "physical block {p} used by {other} and {} block {b}",
                    e.object
                ));
            }
            match read(dev, sb.data_block_offset(*p), BLOCK).await {
                Ok(d) if crc32c(&d) == *c => rep.blocks_checked += 1,
                Ok(_) => rep.errors.push(format!(
                    "{} offset {}: checksum mismatch",
                    e.object,
                    *b as u64 * BLOCK as u64
                )),
                Err(err) => rep.errors.push(format!(
                    "{} offset {}: read error {err}",
                    e.object,
                    *b as u64 * BLOCK as u64
                )),
            }
        }
        if e.last_record_id >= ckpt.next_record_id {
            rep.errors.push(format!(
                "{}: record id {} not below the checkpoint's next id {}",
                e.object, e.last_record_id, ckpt.next_record_id
            ));
        }
    }
    // The journal chain after the checkpoint (what the next open would replay).
    let mut seq = ckpt.journal_start_seq;
    while seq - ckpt.journal_start_seq < sb.journal_blocks {
        let Ok(b) = read(dev, sb.journal_slot_offset(seq), BLOCK).await else {
            break;
        };
        match JournalBlock::decode(&b) {
            Ok(j) if j.seq == seq && j.generation == ckpt.generation => {
                rep.journal_blocks_replayable += 1;
                rep.journal_records += j.records.len() as u64;
                seq += 1;
            }
            _ => break,
        }
    }
    rep
}
