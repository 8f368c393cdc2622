//! What this OSD knows about PGs: for each PG it belongs to, the current interval (its
//! start epoch and identity), the peering phase and recovery state when it is the primary,
//! the next sequence number to assign, and the ops recently completed.
//!
//! An interval starts whenever a PG's placement, a member's incarnation or whether it can
//! serve changes; the map records its start (`ClusterMap::interval_start`), so every member
//! names it alike and an interval that ended is never taken for a later one with the same
//! members. Only the primary assigns versions (interval start, sequence), and each
//! interval's start is later than the previous one's, so versions grow across intervals.

use proto::msg::{PgPhase, PgStat};
use proto::pg::{pool_mappings, PgMapping};
use proto::{ClusterMap, Epoch, ObjectId, OpId, OsdId, PgId, Version};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tokio::time::Instant;

/// How many completed op ids a PG remembers for answering re-sent ops.
const RECENT_OPS: usize = 4096;

pub struct PgInfo {
    pub mapping: PgMapping,
    pub interval_start: Epoch,
    /// Primary only: where peering and recovery stand.
    pub phase: PgPhase,
    pub phase_since: Instant,
    pub waiting_for: Vec<OsdId>,
    /// Primary only: per acting member (the primary too), the objects it lacks at the
    /// authoritative version, with that version (`Version::NONE`: it must not exist).
    pub missing: BTreeMap<OsdId, BTreeMap<ObjectId, Version>>,
    /// Primary only: OSDs holding the authoritative copy of objects the primary lacks.
    pub sources: BTreeMap<ObjectId, Vec<OsdId>>,
    /// Primary only: objects whose last write reached the primary's copy but failed on a
    /// member. Not read until recovery has put that copy on every member: a read must
    /// never return what a new interval could roll back.
    pub unresolved: BTreeSet<ObjectId>,
    /// Primary only: a recovery task is running for this interval.
    pub recovery_running: bool,
    /// The interval start its primary activated this interval with (see
    /// `peering::on_activate`). Replica ops carry it: an op stamped with another start
    /// comes from a primary of an interval that ended, however new its map.
    pub activated: Option<Epoch>,
    pub objects: u64,
    pub recovering: u64,
    pub blocked_ops: u64,
    next_seq: u64,
    recent: BTreeMap<OpId, Version>,
    recent_order: VecDeque<OpId>,
    /// Primary only: client writes admitted and not finished (a FENCE waits for them).
    in_flight: BTreeSet<OpId>,
    /// Primary only: ops their client cancelled (`op::FENCE`) before they arrived; refused
    /// if they ever do.
    fenced: BTreeSet<OpId>,
    fenced_order: VecDeque<OpId>,
}

impl PgInfo {
    /// Assigns the next version of this interval (primary only).
    pub fn next_version(&mut self) -> Version {
        self.next_seq += 1;
        Version {
            epoch: self.interval_start,
            seq: self.next_seq,
        }
    }

    pub fn completed(&self, id: &OpId) -> Option<Version> {
        self.recent.get(id).copied()
    }

    pub fn record(&mut self, id: OpId, v: Version) {
        if self.recent.insert(id, v).is_none() {
            self.recent_order.push_back(id);
            if self.recent_order.len() > RECENT_OPS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    pub fn op_started(&mut self, id: OpId) {
        self.in_flight.insert(id);
    }

    pub fn op_finished(&mut self, id: &OpId) {
        self.in_flight.remove(id);
    }

    pub fn is_in_flight(&self, id: &OpId) -> bool {
        self.in_flight.contains(id)
    }

    pub fn is_fenced(&self, id: &OpId) -> bool {
        self.fenced.contains(id)
    }

    /// Records that `id` must be refused if it ever arrives (its client cancelled it).
    pub fn fence_op(&mut self, id: OpId) {
        if self.fenced.insert(id) {
            self.fenced_order.push_back(id);
            if self.fenced_order.len() > RECENT_OPS {
                if let Some(old) = self.fenced_order.pop_front() {
                    self.fenced.remove(&old);
                }
            }
        }
    }

    pub fn set_phase(&mut self, phase: PgPhase) {
        if self.phase != phase {
            self.phase = phase;
            self.phase_since = Instant::now();
            if phase == PgPhase::Active {
                self.blocked_ops = 0;
            }
        }
    }

    /// True when `osd` lacks the authoritative copy of `object`.
    pub fn is_missing(&self, osd: OsdId, object: &ObjectId) -> bool {
        self.missing
            .get(&osd)
            .is_some_and(|m| m.contains_key(object))
    }

    pub fn stat(&self, size: usize) -> PgStat {
        let mut degraded = 0;
        let mut misplaced = 0;
        for o in self.missing.values().flat_map(|m| m.keys()) {
            if self.sources.get(o).is_some_and(|s| s.len() >= size) {
                misplaced += 1;
            } else {
                degraded += 1;
            }
        }
        // Members the placement lacks altogether (down, or too few failure domains).
        degraded += self.objects * size.saturating_sub(self.mapping.acting.len()) as u64;
        PgStat {
            pg: self.mapping.pg,
            phase: self.phase,
            interval_start: self.interval_start,
            acting: self.mapping.acting.clone(),
            waiting_for: self.waiting_for.clone(),
            objects: self.objects,
            degraded,
            misplaced,
            recovering: self.recovering,
            blocked_ops: self.blocked_ops,
            phase_ms: self.phase_since.elapsed().as_millis() as u64,
        }
    }
}

#[derive(Default)]
pub struct PgTable {
    pub epoch: Epoch,
    pub pgs: BTreeMap<PgId, PgInfo>,
}

impl PgTable {
    /// Recomputes the PGs this OSD acts in from `map`, starting a new interval for every PG
    /// whose interval start changed. Returns the PGs (with their interval start) this
    /// OSD must now peer as primary.
    pub fn apply_map(&mut self, me: OsdId, map: &ClusterMap) -> Vec<(PgId, Epoch)> {
        let mut next = BTreeMap::new();
        let mut to_peer = Vec::new();
        for pool in map.pools.values() {
            for mapping in pool_mappings(map, pool) {
                if !mapping.acting.contains(&me) {
                    continue;
                }
                let pg = mapping.pg;
                let by_members = crate::planted::active(crate::planted::Bug::IntervalByMembers);
                let info = match self.pgs.remove(&pg) {
                    Some(mut old)
                        if (by_members && old.mapping.interval_key == mapping.interval_key)
                            || (!by_members && old.interval_start == mapping.interval) =>
                    {
                        old.mapping = mapping;
                        old
                    }
                    old => {
                        // The interval as the map identifies it: every member sees the
                        // same start, and a later interval with the same members has a
                        // later one. A pool without interval starts (upgraded map) serves
                        // nothing until it has them.
                        let start = if by_members {
                            map.epoch
                        } else {
                            mapping.interval
                        };
                        if mapping.primary() == Some(me) && mapping.can_serve() {
                            to_peer.push((pg, start));
                        }
                        if let Some(o) = &old {
                            assert!(
                                start == 0 || start > o.interval_start,
                                "pg {pg}: interval start {start} after {}",
                                o.interval_start
                            );
                        }
                        // Ops this OSD completed as the PG's primary stay answered when it
                        // is the primary again: each was on every member, so peering keeps
                        // it, and a re-sent copy must not be applied a second time.
                        // So do the ops it fenced: a cancelled op must never land.
                        let (blocked_ops, recent, recent_order, fenced, fenced_order) = match old {
                            Some(o) if o.mapping.primary() == Some(me) => (
                                o.blocked_ops,
                                o.recent,
                                o.recent_order,
                                o.fenced,
                                o.fenced_order,
                            ),
                            Some(o) => (
                                o.blocked_ops,
                                Default::default(),
                                Default::default(),
                                Default::default(),
                                Default::default(),
                            ),
                            None => Default::default(),
                        };
                        PgInfo {
                            mapping,
                            interval_start: start,
                            phase: PgPhase::Peering,
                            phase_since: Instant::now(),
                            waiting_for: Vec::new(),
                            missing: BTreeMap::new(),
                            sources: BTreeMap::new(),
                            unresolved: BTreeSet::new(),
                            recovery_running: false,
                            activated: None,
                            objects: 0,
                            recovering: 0,
                            blocked_ops,
                            next_seq: 0,
                            recent,
                            recent_order,
                            in_flight: BTreeSet::new(),
                            fenced,
                            fenced_order,
                        }
                    }
                };
                next.insert(pg, info);
            }
        }
        self.pgs = next;
        self.epoch = map.epoch;
        to_peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::map::{Command, FailureDomain, WEIGHT_ONE};

    fn cluster() -> ClusterMap {
        let mut m = ClusterMap::new(1, vec![]);
        for i in 0..3u32 {
            let create = Command::CreateOsd {
                host: format!("h{i}"),
                weight: WEIGHT_ONE,
                store_uuid: i as u128 + 1,
                capacity_bytes: 1 << 30,
            };
            m = m.apply(&create).unwrap().0;
            let boot = Command::BootOsd {
                id: OsdId(i),
                store_uuid: i as u128 + 1,
                addr: "127.0.0.1:1".into(),
                process: 1,
            };
            m = m.apply(&boot).unwrap().0;
        }
        let pool = Command::CreatePool {
            name: "p".into(),
            size: 3,
            min_size: 2,
            pg_count: 1,
            object_size: 4096,
            failure_domain: FailureDomain::Host,
        };
        m.apply(&pool).unwrap().0
    }

    #[test]
    fn a_new_interval_on_the_same_primary_keeps_completed_ops_and_grows_versions() {
        let m = cluster();
        let pg = PgId { pool: 1, seed: 0 };
        let primary = pool_mappings(&m, &m.pools[&1])[0].primary().unwrap();
        let mut t = PgTable::default();
        assert_eq!(t.apply_map(primary, &m), vec![(pg, m.epoch)]);
        let op = OpId { client: 7, tid: 1 };
        let v1 = {
            let i = t.pgs.get_mut(&pg).unwrap();
            let v = i.next_version();
            i.record(op, v);
            v
        };
        // Another member goes down: a new interval, the same primary.
        let other = pool_mappings(&m, &m.pools[&1])[0].acting[2];
        let down = Command::MarkOsdDown {
            id: other,
            up_from: m.osd(other).unwrap().up_from,
        };
        let m2 = m.apply(&down).unwrap().0;
        assert_eq!(t.apply_map(primary, &m2), vec![(pg, m2.epoch)]);
        let i = t.pgs.get_mut(&pg).unwrap();
        assert_eq!(i.completed(&op), Some(v1), "a re-sent op would apply twice");
        assert!(i.next_version() > v1);
        // The same map again starts nothing.
        assert!(t.apply_map(primary, &m2).is_empty());
    }

    /// The primary of a PG whose acting set changed and changed back, having skipped the
    /// map in between: what went wrong, or None if it starts (and peers) a new interval.
    fn missed_interval_not_peered() -> Option<String> {
        let m = cluster();
        let pg = PgId { pool: 1, seed: 0 };
        let mapping = &pool_mappings(&m, &m.pools[&1])[0];
        let primary = mapping.primary().unwrap();
        let member = mapping.acting[1];
        let out = m.apply(&Command::MarkOsdOut { id: member }).unwrap().0;
        let back = out.apply(&Command::MarkOsdIn { id: member }).unwrap().0;
        let mut t = PgTable::default();
        t.apply_map(primary, &m);
        let peer = t.apply_map(primary, &back);
        let start = pool_mappings(&back, &back.pools[&1])[0].interval;
        (peer != vec![(pg, start)] || t.pgs[&pg].interval_start != start).then(|| {
            format!(
                "interval identity: {primary} kept pg {pg} in its interval from epoch {} at epoch {} (peering {peer:?}), though it ended at epoch {}",
                t.pgs[&pg].interval_start,
                back.epoch,
                out.epoch
            )
        })
    }

    #[test]
    fn an_osd_that_missed_the_maps_between_peers_the_set_that_came_back() {
        let v = crate::planted::caught(
            crate::planted::Bug::IntervalByMembers,
            missed_interval_not_peered,
        );
        assert!(v.starts_with("interval identity:"), "{v}");
    }
}
