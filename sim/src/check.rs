//! The linearizability checker, per 512-byte unit (a sector).
//!
//! Every unit has one writer (its owner client), which writes it one request at a time, so
//! a unit's writes are totally ordered by issue: w1, w2, ... Each write carries a unique
//! value, written over the whole unit, so a read names the write it saw, and a torn or
//! foreign unit is caught. Zeroing (WRITE_ZEROES, TRIM of whole blocks) is a write of the
//! value 0, which reads as the initial zeroes do: a read of zeroes is taken to have seen the
//! newest zeroing issued before it ended (or the initial zeroes). A read that started at `s`
//! and ended at `e` and saw write k is correct when
//! 1. k is a write of this unit and the unit is whole;
//! 2. k is not older than the newest write acknowledged before `s` (no stale read);
//! 3. write k had been issued before `e` (no read from the future);
//! 4. k is not older than what any read that ended before `s` saw (once a newer value is
//!    seen an older one never comes back, acknowledged or not).
//!
//! A write that failed or never returned may or may not appear: rules 2 and 4 treat it
//! as any other write once a read has seen it. With a single writer per unit, these
//! rules are linearizability of the register.
//!
//! Durability: a write is durable once acknowledged with FUA or in immediate mode, or
//! once a FLUSH its writer sent after the acknowledgement completed. A whole-cluster power
//! loss ([`History::power_lost`]) may lose exactly the acknowledged writes that were not
//! durable: they count as never acknowledged from then on, and reads after it are not
//! compared by rule 4 with reads before it. Every durable write still binds rule 2, so a
//! lost durable write is a stale read.

use std::collections::BTreeMap;

/// The image's block (the gateway's read-modify-write unit); ownership goes by block.
pub const BLOCK: usize = 4096;
/// The checker's register: one sector.
pub const UNIT: usize = 512;
/// Units in a block.
pub const UNITS_PER_BLOCK: u64 = (BLOCK / UNIT) as u64;

/// The names violations start with (`"<kind>: <what happened>"`): a planted bug counts as
/// caught only when the run reports the kind of violation it causes.
pub mod kind {
    /// A unit that is not one whole write (torn, or another unit's bytes).
    pub const TORN: &str = "torn read";
    /// A value never written to the unit.
    pub const FOREIGN: &str = "foreign read";
    /// Older than a write acknowledged before the read started (a lost or stale write).
    pub const STALE: &str = "stale read";
    /// A write issued after the read ended.
    pub const FUTURE: &str = "read from the future";
    /// Older than what an earlier read saw.
    pub const BACKWARDS: &str = "read went back";
    /// A reply reporting an object version older than one an op answered before it
    /// started had (or, for a write, not newer).
    pub const VERSION_BACKWARDS: &str = "reply version went back";
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
    /// A running OSD that reaches the monitors but is still down in the map long after the
    /// heal (it never registered again, so it serves nothing and its data moves away), or
    /// up but out though only the monitors' down-out timer took it out.
    pub const STRANDED: &str = "stranded osd";
    /// A daemon that failed on its own (a store that does not open, a monitor that stops).
    pub const DAEMON: &str = "daemon failed";
}

/// The bytes a write of `value` puts on its unit: the value in every 8-byte word, mixed
/// with the word's position so that a unit assembled from two writes does not decode.
pub fn pattern(value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(UNIT);
    for i in 0..(UNIT / 8) as u64 {
        let w = if value == 0 {
            0
        } else {
            value ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// The value a unit holds, or None when it is not a whole unit of one write.
pub fn decode(unit: &[u8]) -> Option<u64> {
    if unit.len() != UNIT {
        return None;
    }
    let value = u64::from_le_bytes(unit[..8].try_into().ok()?);
    (pattern(value) == unit).then_some(value)
}

#[derive(Clone, Debug)]
struct Write {
    value: u64,
    start: u64,
    /// When the write was acknowledged (µs); None while pending, when it failed, or when
    /// a power loss may have lost it.
    acked: Option<u64>,
    durable: bool,
}

#[derive(Clone, Debug)]
struct Read {
    start: u64,
    end: u64,
    /// Index into the unit's writes + 1 (0: the initial zeroes).
    saw: usize,
    who: String,
    /// Power losses before the read started.
    era: u32,
}

#[derive(Default, Debug)]
struct Register {
    writes: Vec<Write>,
    reads: Vec<Read>,
}

/// A write as the history knows it, to acknowledge it by.
#[derive(Clone, Copy, Debug)]
pub struct WriteRef {
    unit: u64,
    /// Index into the unit's writes + 1.
    k: usize,
}

/// The history of every unit. Times are simulated microseconds.
#[derive(Default, Debug)]
pub struct History {
    units: BTreeMap<u64, Register>,
    /// Which unit and write each nonzero value is.
    index: BTreeMap<u64, (u64, usize)>,
    pub violations: Vec<String>,
    pub reads: u64,
    pub writes: u64,
    digest: u64,
    /// Per writer: acknowledged writes not yet durable.
    undurable: BTreeMap<String, Vec<WriteRef>>,
    era: u32,
    /// Acknowledged writes that were not durable at a power loss.
    pub exposed: u64,
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

    /// A write of `value` (0: zeroing) to `unit` was issued at `start`.
    pub fn write_started(&mut self, unit: u64, value: u64, start: u64) -> WriteRef {
        let b = self.units.entry(unit).or_default();
        b.writes.push(Write {
            value,
            start,
            acked: None,
            durable: false,
        });
        let k = b.writes.len();
        if value != 0 {
            self.index.insert(value, (unit, k));
        }
        self.writes += 1;
        self.mix(unit ^ value.rotate_left(7) ^ start.rotate_left(29));
        WriteRef { unit, k }
    }

    /// `w` was acknowledged to `who` at `at`, durable at once or not.
    pub fn write_acked(&mut self, w: WriteRef, at: u64, durable: bool, who: &str) {
        self.mix(w.unit ^ (w.k as u64).rotate_left(11) ^ at.rotate_left(31));
        if let Some(b) = self.units.get_mut(&w.unit) {
            let write = &mut b.writes[w.k - 1];
            write.acked = Some(at);
            write.durable = durable;
            if !durable {
                self.undurable.entry(who.to_string()).or_default().push(w);
            }
        }
    }

    /// A FLUSH that `who` sent at `sent` completed: its writes acknowledged before are
    /// durable.
    pub fn flushed(&mut self, who: &str, sent: u64) {
        let Some(list) = self.undurable.get_mut(who) else {
            return;
        };
        let units = &mut self.units;
        list.retain(|w| {
            let Some(write) = units.get_mut(&w.unit).map(|b| &mut b.writes[w.k - 1]) else {
                return false;
            };
            match write.acked {
                Some(a) if a < sent => {
                    write.durable = true;
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    /// Every node lost power at `at`: acknowledged writes that were not durable may be
    /// gone.
    pub fn power_lost(&mut self, at: u64) {
        self.mix(at.rotate_left(3) ^ 0x5057_524c);
        for list in std::mem::take(&mut self.undurable).into_values() {
            for w in list {
                if let Some(write) = self.units.get_mut(&w.unit).map(|b| &mut b.writes[w.k - 1]) {
                    if write.acked.is_some_and(|a| a <= at) && !write.durable {
                        write.acked = None;
                        self.exposed += 1;
                    }
                }
            }
        }
        self.era += 1;
    }

    /// A read of the units from `first` on over [start, end] returned `data` (whole units).
    pub fn read_range(&mut self, first: u64, start: u64, end: u64, data: &[u8], who: &str) {
        for (i, unit) in data.chunks(UNIT).enumerate() {
            self.read_done(first + i as u64, start, end, unit, who);
        }
    }

    /// A read of `unit` over [start, end] returned `data`; checks rules 1-3 at once.
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
                "{}: {who}: unit {block} read at {} is not one whole write (torn or foreign data, first word {:#x})",
                kind::TORN,
                fmt_us(end),
                u64::from_le_bytes(data.get(..8).and_then(|w| w.try_into().ok()).unwrap_or([0; 8]))
            ));
            return;
        };
        let b = self.units.entry(block).or_default();
        let saw = if value == 0 {
            // The newest zeroing issued before the read ended, or the initial zeroes.
            b.writes
                .iter()
                .rposition(|w| w.value == 0 && w.start <= end)
                .map_or(0, |i| i + 1)
        } else {
            match self.index.get(&value) {
                Some((blk, k)) if *blk == block => *k,
                _ => {
                    self.violations.push(format!(
                        "{}: {who}: unit {block} read at {} returned value {value:#x}, never written to it",
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
                "{}: {who}: unit {block} at {}: saw {} but {} was acknowledged at {}",
                kind::STALE,
                fmt_us(start),
                describe(&b.writes, saw),
                describe(&b.writes, floor),
                fmt_us(w.acked.unwrap_or(0))
            ));
        }
        // Rule 3: issued before the read ended.
        if saw > 0 && b.writes[saw - 1].start > end {
            self.violations.push(format!(
                "{}: {who}: unit {block} read ending at {} saw write {value:#x} issued later",
                kind::FUTURE,
                fmt_us(end)
            ));
        }
        b.reads.push(Read {
            start,
            end,
            saw,
            who: who.to_string(),
            era: self.era,
        });
    }

    /// Rule 4 over the whole history (call once at the end).
    pub fn check_order(&mut self) {
        for (block, b) in &self.units {
            for era in 0..=self.era {
                let reads: Vec<&Read> = b.reads.iter().filter(|r| r.era == era).collect();
                self.violations
                    .extend(order_violations(*block, &b.writes, &reads));
            }
        }
    }
}

/// Rule 4 over the reads of one unit in one era.
fn order_violations(block: u64, writes: &[Write], reads: &[&Read]) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_end: Vec<&Read> = reads.to_vec();
    by_end.sort_by_key(|r| r.end);
    // Prefix maximum of what reads ending by each point saw.
    let mut best: Vec<(u64, usize, usize)> = Vec::with_capacity(by_end.len());
    for (i, r) in by_end.iter().enumerate() {
        let prev = best.last().map_or((0, 0), |p| (p.1, p.2));
        let (m, at) = if r.saw >= prev.0 { (r.saw, i) } else { prev };
        best.push((r.end, m, at));
    }
    for r in reads {
        // Reads that ended strictly before this one started.
        let n = best.partition_point(|p| p.0 < r.start);
        if n == 0 {
            continue;
        }
        let (_, m, at) = best[n - 1];
        if r.saw < m {
            let earlier = by_end[at];
            out.push(format!(
                "{}: {}: unit {block} read at {} saw {}, older than {} that {} read at {}",
                kind::BACKWARDS,
                r.who,
                fmt_us(r.start),
                describe(writes, r.saw),
                describe(writes, m),
                earlier.who,
                fmt_us(earlier.end)
            ));
        }
    }
    out
}

fn describe(writes: &[Write], k: usize) -> String {
    match k {
        0 => "the initial zeroes".into(),
        k if writes[k - 1].value == 0 => format!("zeroing #{k}"),
        k => format!("write {:#x}", writes[k - 1].value),
    }
}

pub fn fmt_us(us: u64) -> String {
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::OpObserver;

    fn req(op: u8) -> client::cluster::ObjectRequest {
        client::cluster::ObjectRequest {
            object: proto::ObjectId {
                pool: 1,
                image: 1,
                index: 0,
            },
            op,
            flags: 0,
            offset: 0,
            length: 4096,
            data: bytes::Bytes::new(),
            crcs: Vec::new(),
        }
    }

    fn reply(seq: u64) -> proto::msg::ObjectReply {
        let mut r = proto::msg::ObjectReply::status(proto::msg::Status::Ok, 1);
        r.version = proto::Version { epoch: 1, seq };
        r
    }

    #[test]
    fn reply_versions_that_go_back_are_caught_and_concurrent_ones_pass() {
        use proto::msg::op::{READ, WRITE};
        let c = VersionCheck::new(tokio::time::Instant::now());
        let object = req(READ).object;
        let w = c.started(&object);
        let concurrent = c.started(&object); // started before the write's answer
        c.answered(w, &req(WRITE), &reply(5));
        c.answered(concurrent, &req(READ), &reply(4));
        let r = c.started(&object);
        c.answered(r, &req(READ), &reply(5));
        assert_eq!(c.results(), (3, vec![]));
        let stale = c.started(&object);
        c.answered(stale, &req(READ), &reply(4));
        let same = c.started(&object);
        c.answered(same, &req(WRITE), &reply(5));
        let (checked, v) = c.results();
        assert_eq!(checked, 5);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v.iter().all(|m| m.starts_with(kind::VERSION_BACKWARDS)),
            "{v:?}"
        );
        // A power loss starts a new era: older versions may come back.
        c.power_lost();
        let after = c.started(&object);
        c.answered(after, &req(READ), &reply(3));
        assert_eq!(c.results().1.len(), 2);
    }

    fn h() -> History {
        let mut h = History::default();
        let w = h.write_started(1, 10, 100);
        h.write_acked(w, 200, true, "c");
        let w = h.write_started(1, 11, 300);
        h.write_acked(w, 400, true, "c");
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
        torn[256..].copy_from_slice(&pattern(11)[256..]);
        h.read_done(1, 500, 510, &torn, "c");
        h.read_done(2, 500, 510, &pattern(11), "c");
        assert_eq!(h.violations.len(), 2, "{:?}", h.violations);
    }

    #[test]
    fn zeroing_is_a_write_whose_zeroes_can_go_stale() {
        let mut h = h();
        let z = h.write_started(1, 0, 500);
        h.read_done(1, 510, 520, &pattern(0), "c"); // concurrent with the zeroing
        h.write_acked(z, 600, true, "c");
        h.read_done(1, 700, 710, &pattern(0), "c");
        assert!(h.violations.is_empty(), "{:?}", h.violations);
        // Zeroed and acknowledged, then the old value comes back.
        h.read_done(1, 800, 810, &pattern(11), "c");
        assert!(
            h.violations[0].starts_with(kind::STALE),
            "{:?}",
            h.violations
        );
        // A write after the zeroing, then zeroes again: the zeroing came back.
        let w = h.write_started(1, 12, 900);
        h.write_acked(w, 950, true, "c");
        h.read_done(1, 1000, 1010, &pattern(0), "c");
        assert!(
            h.violations[1].starts_with(kind::STALE),
            "{:?}",
            h.violations
        );
    }

    #[test]
    fn a_power_loss_may_lose_exactly_the_writes_not_yet_durable() {
        let mut h = History::default();
        // Durable: 10 (FUA), 20 (flushed). Not durable: 11, 21 (acked after the FLUSH
        // was sent).
        let w = h.write_started(1, 10, 100);
        h.write_acked(w, 110, true, "a");
        let w = h.write_started(1, 11, 200);
        h.write_acked(w, 210, false, "a");
        let w = h.write_started(2, 20, 100);
        h.write_acked(w, 110, false, "a");
        h.flushed("a", 150);
        let w = h.write_started(2, 21, 160);
        h.write_acked(w, 170, false, "a");
        h.read_done(1, 300, 310, &pattern(11), "r");
        h.power_lost(400);
        assert_eq!(h.exposed, 2);
        // 11 and 21 lost: fine, and no "went back" against the read before the loss.
        h.read_done(1, 500, 510, &pattern(10), "r");
        h.read_done(2, 500, 510, &pattern(20), "r");
        h.check_order();
        assert!(h.violations.is_empty(), "{:?}", h.violations);
        // A durable write lost is a stale read.
        h.read_done(2, 600, 610, &pattern(0), "r");
        assert!(
            h.violations[0].starts_with(kind::STALE),
            "{:?}",
            h.violations
        );
    }

    #[test]
    fn a_range_read_checks_every_unit() {
        let mut h = h();
        let mut data = pattern(11);
        data.extend(pattern(0));
        data.extend(pattern(10));
        h.read_range(1, 500, 510, &data, "c");
        // Unit 3 never saw value 10.
        assert_eq!(h.violations.len(), 1, "{:?}", h.violations);
        assert!(
            h.violations[0].starts_with(kind::FOREIGN),
            "{:?}",
            h.violations
        );
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

/// The per-object check of the versions that primaries' replies report: an op that starts
/// after another op on the same object was answered must report a version at least as new
/// as that one (a read), or newer (a write or trim: each gets a version of its own). A
/// power loss starts a new era, as in `History`: writes not yet durable may be gone.
pub struct VersionCheck {
    base: tokio::time::Instant,
    state: std::sync::Mutex<VersionState>,
}

/// The newest version an answered op reported, when it was answered, and which kind of op.
type Floor = (proto::Version, u64, &'static str);

#[derive(Default)]
struct VersionState {
    /// Per object: the newest version an answered op reported.
    floors: BTreeMap<proto::ObjectId, Floor>,
    /// Ops started and not answered: object, the floor at their start, era, start time.
    started: BTreeMap<u64, (proto::ObjectId, Option<Floor>, u32, u64)>,
    next: u64,
    era: u32,
    checked: u64,
    violations: Vec<String>,
}

fn op_name(op: u8) -> &'static str {
    match op {
        proto::msg::op::READ => "read",
        proto::msg::op::WRITE => "write",
        proto::msg::op::TRIM => "trim",
        _ => "other",
    }
}

impl VersionCheck {
    /// A check whose times count from `base` (the run's start).
    pub fn new(base: tokio::time::Instant) -> Self {
        VersionCheck {
            base,
            state: Default::default(),
        }
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Every node lost power: versions of writes that were not durable may be gone.
    pub fn power_lost(&self) {
        let mut s = net::sync::lock(&self.state);
        s.era += 1;
        s.floors.clear();
    }

    /// Replies checked so far, and the violations found.
    pub fn results(&self) -> (u64, Vec<String>) {
        let s = net::sync::lock(&self.state);
        (s.checked, s.violations.clone())
    }
}

impl client::OpObserver for VersionCheck {
    fn started(&self, object: &proto::ObjectId) -> u64 {
        let now = self.now_us();
        let mut s = net::sync::lock(&self.state);
        let token = s.next;
        s.next += 1;
        let floor = s.floors.get(object).copied();
        let era = s.era;
        s.started.insert(token, (*object, floor, era, now));
        token
    }

    fn answered(
        &self,
        started: u64,
        req: &client::cluster::ObjectRequest,
        reply: &proto::msg::ObjectReply,
    ) {
        let now = self.now_us();
        let mut s = net::sync::lock(&self.state);
        let Some((object, floor, era, start)) = s.started.remove(&started) else {
            return;
        };
        let name = op_name(req.op);
        if name == "other" {
            return;
        }
        let v = reply.version;
        if era == s.era {
            s.checked += 1;
            if let Some((fv, at, by)) = floor {
                let writes = req.op != proto::msg::op::READ;
                if v < fv || (writes && v == fv) {
                    let msg = format!(
                        "{}: {name} of {object} started at {} and answered at {} reports version {v}, but a {by} answered at {} before it started reported {fv}",
                        kind::VERSION_BACKWARDS,
                        fmt_us(start),
                        fmt_us(now),
                        fmt_us(at)
                    );
                    s.violations.push(msg);
                }
            }
        }
        let newer = s.floors.get(&object).is_none_or(|(fv, _, _)| v > *fv);
        if era == s.era && newer {
            s.floors.insert(object, (v, now, name));
        }
    }
}
