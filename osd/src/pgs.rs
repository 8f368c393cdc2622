//! What this OSD knows about PGs: for each PG it belongs to, the current interval (its
//! start epoch and identity), the next sequence number to assign as primary, and the ops
//! recently completed, derived from each map the OSD applies.
//!
//! An interval starts whenever a PG's placement set or a member's incarnation changes. On
//! start-up the OSD has no history, so a PG's interval start is the newest incarnation
//! (`up_from`) among its members, which is when the set last changed in any way that
//! matters for fencing until OSDs can be moved in and out (quorum and peering issues).

use proto::pg::{pool_mappings, PgMapping};
use proto::{ClusterMap, Epoch, OpId, OsdId, PgId, Version};
use std::collections::{HashMap, VecDeque};

/// How many completed op ids a PG remembers for answering re-sent ops.
const RECENT_OPS: usize = 4096;

pub struct PgInfo {
    pub mapping: PgMapping,
    pub interval_start: Epoch,
    next_seq: u64,
    recent: HashMap<OpId, Version>,
    recent_order: VecDeque<OpId>,
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
}

#[derive(Default)]
pub struct PgTable {
    pub epoch: Epoch,
    pub pgs: HashMap<PgId, PgInfo>,
}

impl PgTable {
    /// Recomputes the PGs this OSD belongs to from `map`, starting a new interval for every
    /// PG whose interval identity changed.
    pub fn apply_map(&mut self, me: OsdId, map: &ClusterMap) {
        let mut next = HashMap::new();
        for pool in map.pools.values() {
            for mapping in pool_mappings(map, pool) {
                if !mapping.osds.contains(&me) {
                    continue;
                }
                let pg = mapping.pg;
                let info = match self.pgs.remove(&pg) {
                    Some(mut old) if old.mapping.interval_key == mapping.interval_key => {
                        old.mapping = mapping;
                        old
                    }
                    old => {
                        let start = if old.is_some() {
                            map.epoch
                        } else {
                            mapping
                                .interval_key
                                .iter()
                                .map(|(_, e)| *e)
                                .max()
                                .unwrap_or(map.epoch)
                        };
                        PgInfo {
                            mapping,
                            interval_start: start,
                            next_seq: 0,
                            recent: HashMap::new(),
                            recent_order: VecDeque::new(),
                        }
                    }
                };
                next.insert(pg, info);
            }
        }
        self.pgs = next;
        self.epoch = map.epoch;
    }
}
