//! The linearizability checker, per 4 KiB block.
//!
//! Every block has one writer (its owner client), which writes it one write at a time, so
//! a block's writes are totally ordered by issue: w1, w2, ... Each write carries a unique
//! value, written over the whole block, so a read names the write it saw (0: never
//! written), and a torn or foreign block is caught. A read that started at `s` and ended
//! at `e` and saw write k is correct when
//! 1. k is a write of this block and the block is whole;
//! 2. k is not older than the newest write acknowledged before `s` (no stale read);
//! 3. write k had been issued before `e` (no read from the future);
//! 4. k is not older than what any read that ended before `s` saw (once a newer value is
//!    seen an older one never comes back, acknowledged or not).
//!
//! A write that failed or never returned may or may not appear: rules 2 and 4 treat it
//! as any other write once a read has seen it. With a single writer per block, these
//! rules are linearizability of the register.

use std::collections::BTreeMap;

pub const BLOCK: usize = 4096;

/// The names violations start with (`"<kind>: <what happened>"`): a planted bug counts as
/// caught only when the run reports the kind of violation it causes.
pub mod kind {
    /// A block that is not one whole write (torn, or another block's bytes).
    pub const TORN: &str = "torn read";
    /// A value never written to the block.
    pub const FOREIGN: &str = "foreign read";
    /// Older than a write acknowledged before the read started (a lost or stale write).
    pub const STALE: &str = "stale read";
    /// A write issued after the read ended.
    pub const FUTURE: &str = "read from the future";
    /// Older than what an earlier read saw.
    pub const BACKWARDS: &str = "read went back";
    /// A client read that returned an error.
    pub const FAILED_READ: &str = "failed read";
    /// A client write that returned an error.
    pub const FAILED_WRITE: &str = "failed write";
    /// A client FLUSH that returned an error.
    pub const FAILED_FLUSH: &str = "failed flush";
    /// Another client or operator request that failed (connecting, marking OSDs in).
    pub const FAILED_OP: &str = "failed op";
    /// A client op slower than the bound (detection + peering + recovery of one object).
    pub const SLOW_OP: &str = "slow op";
    /// An op that never finished after the faults healed, or a check that never ended.
    pub const WEDGE: &str = "wedge";
    /// PGs not active+clean long after the heal.
    pub const NOT_CLEAN: &str = "not clean";
    /// Copies of an object that differ after the cluster is clean.
    pub const COPIES_DIFFER: &str = "copies differ";
    /// A running OSD that reaches a quorum of monitors but stays on an old map for long
    /// (it listens to a monitor whose map is frozen).
    pub const STALE_MAP: &str = "stale map";
    /// A daemon that failed on its own (a store that does not open, a monitor that stops).
    pub const DAEMON: &str = "daemon failed";
}

/// The 4 KiB a write of `value` puts on its block: the value in every 8-byte word, mixed
/// with the word's position so that a block assembled from two writes does not decode.
pub fn pattern(value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    for i in 0..(BLOCK / 8) as u64 {
        let w = if value == 0 {
            0
        } else {
            value ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// The value a block holds, or None when it is not a whole block of one write.
pub fn decode(block: &[u8]) -> Option<u64> {
    if block.len() != BLOCK {
        return None;
    }
    let value = u64::from_le_bytes(block[..8].try_into().ok()?);
    (pattern(value) == block).then_some(value)
}

#[derive(Clone, Debug)]
struct Write {
    value: u64,
    start: u64,
    /// When the write was acknowledged (µs); None while pending, or when it failed.
    acked: Option<u64>,
}

#[derive(Clone, Debug)]
struct Read {
    start: u64,
    end: u64,
    /// Index into the block's writes + 1 (0: the initial zeroes).
    saw: usize,
    who: String,
}

#[derive(Default, Debug)]
struct Block {
    writes: Vec<Write>,
    reads: Vec<Read>,
}

/// The history of every block. Times are simulated microseconds.
#[derive(Default, Debug)]
pub struct History {
    blocks: BTreeMap<u64, Block>,
    index: BTreeMap<u64, (u64, usize)>,
    pub violations: Vec<String>,
    pub reads: u64,
    pub writes: u64,
    digest: u64,
}

impl History {
    fn mix(&mut self, x: u64) {
        self.digest = (self.digest ^ x)
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(17);
    }

    /// A digest of everything recorded, in order: two runs with equal digests issued the
    /// same ops at the same simulated times and saw the same results.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// A write of `value` to `block` was issued at `start`.
    pub fn write_started(&mut self, block: u64, value: u64, start: u64) {
        let b = self.blocks.entry(block).or_default();
        b.writes.push(Write {
            value,
            start,
            acked: None,
        });
        self.index.insert(value, (block, b.writes.len()));
        self.writes += 1;
        self.mix(block ^ value.rotate_left(7) ^ start.rotate_left(29));
    }

    pub fn write_acked(&mut self, value: u64, at: u64) {
        self.mix(value ^ at.rotate_left(31));
        if let Some((block, k)) = self.index.get(&value).copied() {
            if let Some(b) = self.blocks.get_mut(&block) {
                b.writes[k - 1].acked = Some(at);
            }
        }
    }

    /// A read of `block` over [start, end] returned `data`; checks rules 1-3 at once.
    pub fn read_done(&mut self, block: u64, start: u64, end: u64, data: &[u8], who: &str) {
        self.reads += 1;
        let word = u64::from_le_bytes(
            data.get(..8)
                .and_then(|w| w.try_into().ok())
                .unwrap_or([0; 8]),
        );
        self.mix(block ^ start.rotate_left(13) ^ end.rotate_left(41) ^ word);
        let Some(value) = decode(data) else {
            self.violations.push(format!(
                "{}: {who}: block {block} read at {} is not one whole write (torn or foreign data, first word {:#x})",
                kind::TORN,
                fmt_us(end),
                u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]))
            ));
            return;
        };
        let b = self.blocks.entry(block).or_default();
        let saw = if value == 0 {
            0
        } else {
            match self.index.get(&value) {
                Some((blk, k)) if *blk == block => *k,
                _ => {
                    self.violations.push(format!(
                        "{}: {who}: block {block} read at {} returned value {value:#x}, never written to it",
                        kind::FOREIGN,
                        fmt_us(end)
                    ));
                    return;
                }
            }
        };
        // Rule 2: the newest write acknowledged before the read started.
        let floor = b
            .writes
            .iter()
            .rposition(|w| w.acked.is_some_and(|a| a < start))
            .map_or(0, |i| i + 1);
        if saw < floor {
            let w = &b.writes[floor - 1];
            self.violations.push(format!(
                "{}: {who}: block {block} at {}: saw {} but write {:#x} was acknowledged at {}",
                kind::STALE,
                fmt_us(start),
                describe(&b.writes, saw),
                w.value,
                fmt_us(w.acked.unwrap_or(0))
            ));
        }
        // Rule 3: issued before the read ended.
        if saw > 0 && b.writes[saw - 1].start > end {
            self.violations.push(format!(
                "{}: {who}: block {block} read ending at {} saw write {value:#x} issued later",
                kind::FUTURE,
                fmt_us(end)
            ));
        }
        b.reads.push(Read {
            start,
            end,
            saw,
            who: who.to_string(),
        });
    }

    /// Rule 4 over the whole history (call once at the end).
    pub fn check_order(&mut self) {
        for (block, b) in &self.blocks {
            let mut by_end: Vec<&Read> = b.reads.iter().collect();
            by_end.sort_by_key(|r| r.end);
            // Prefix maximum of what reads ending by each point saw.
            let mut best: Vec<(u64, usize, usize)> = Vec::with_capacity(by_end.len());
            for (i, r) in by_end.iter().enumerate() {
                let prev = best.last().map_or((0, 0), |p| (p.1, p.2));
                let (m, at) = if r.saw >= prev.0 { (r.saw, i) } else { prev };
                best.push((r.end, m, at));
            }
            for r in &b.reads {
                // Reads that ended strictly before this one started.
                let n = best.partition_point(|p| p.0 < r.start);
                if n == 0 {
                    continue;
                }
                let (_, m, at) = best[n - 1];
                if r.saw < m {
                    let earlier = by_end[at];
                    self.violations.push(format!(
                        "{}: {}: block {block} read at {} saw {}, older than {} that {} read at {}",
                        kind::BACKWARDS,
                        r.who,
                        fmt_us(r.start),
                        describe(&b.writes, r.saw),
                        describe(&b.writes, m),
                        earlier.who,
                        fmt_us(earlier.end)
                    ));
                }
            }
        }
    }
}

fn describe(writes: &[Write], k: usize) -> String {
    match k {
        0 => "the initial zeroes".into(),
        k => format!("write {:#x}", writes[k - 1].value),
    }
}

pub fn fmt_us(us: u64) -> String {
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> History {
        let mut h = History::default();
        h.write_started(1, 10, 100);
        h.write_acked(10, 200);
        h.write_started(1, 11, 300);
        h.write_acked(11, 400);
        h
    }

    #[test]
    fn correct_reads_pass() {
        let mut h = h();
        h.read_done(1, 250, 260, &pattern(10), "c");
        h.read_done(1, 350, 360, &pattern(10), "c"); // concurrent with write 11
        h.read_done(1, 370, 380, &pattern(11), "c");
        h.read_done(1, 500, 510, &pattern(11), "c");
        h.read_done(2, 500, 510, &pattern(0), "c");
        h.check_order();
        assert!(h.violations.is_empty(), "{:?}", h.violations);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = h();
        h.read_done(1, 500, 510, &pattern(10), "c");
        assert!(
            h.violations[0].starts_with(kind::STALE),
            "{:?}",
            h.violations
        );
    }

    #[test]
    fn an_old_value_coming_back_is_caught() {
        let mut h = h();
        h.read_done(1, 350, 360, &pattern(11), "a");
        h.read_done(1, 365, 370, &pattern(10), "b");
        assert!(h.violations.is_empty());
        h.check_order();
        assert!(
            h.violations[0].starts_with(kind::BACKWARDS),
            "{:?}",
            h.violations
        );
    }

    #[test]
    fn torn_and_foreign_blocks_are_caught() {
        let mut h = h();
        let mut torn = pattern(10);
        torn[2048..].copy_from_slice(&pattern(11)[2048..]);
        h.read_done(1, 500, 510, &torn, "c");
        h.read_done(2, 500, 510, &pattern(11), "c");
        assert_eq!(h.violations.len(), 2, "{:?}", h.violations);
    }

    #[test]
    fn a_read_from_the_future_is_caught() {
        let mut h = h();
        h.write_started(1, 12, 1000);
        h.read_done(1, 500, 510, &pattern(12), "c");
        assert!(
            h.violations[0].starts_with(kind::FUTURE),
            "{:?}",
            h.violations
        );
    }
}
