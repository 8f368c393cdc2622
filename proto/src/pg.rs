//! Per-PG facts derived from a map: the placement set, the acting set, whether the PG can
//! serve IO, and the identity of its current interval.
//!
//! The acting set is the placement set's members that are up, in placement order; its
//! first member is the primary. A PG can serve IO when at least `min_size` members act
//! (whether it does is up to peering on the primary: see `osd::peering`).

use crate::ids::{Epoch, OsdId, PgId};
use crate::map::{ClusterMap, Pool};
use crate::placement::{pg_osds, PoolPlacement};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PgState {
    /// Every member of the placement set is up.
    Active,
    /// At least `min_size` members act, but fewer than `size` (members down, or fewer
    /// failure domains than `size`).
    ActiveDegraded,
    /// Fewer than `min_size` members are up: IO waits for them.
    Down,
    /// Fewer failure domains than `min_size`: no IO until the cluster grows.
    Undersized,
    /// The pool uses a placement algorithm this build does not know: no IO from here.
    UnknownPlacement,
}

impl PgState {
    pub fn name(&self) -> &'static str {
        match self {
            PgState::Active => "active",
            PgState::ActiveDegraded => "active+degraded",
            PgState::Down => "down",
            PgState::Undersized => "undersized",
            PgState::UnknownPlacement => "unknown-placement",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgMapping {
    pub pg: PgId,
    /// Ordered placement, including down members.
    pub osds: Vec<OsdId>,
    /// The members that are up, in placement order (first = primary).
    pub acting: Vec<OsdId>,
    pub state: PgState,
    /// Each member with the incarnation it has in this map (0 when down): what the
    /// monitors compare to decide that a new interval began.
    pub interval_key: Vec<(OsdId, Epoch)>,
    /// The epoch at which the PG's current interval began (`ClusterMap::interval_start`);
    /// 0 while the map has none for the pool (upgraded map: no IO until it has). Two maps
    /// with the same value see the same interval: this, not `interval_key`, identifies it.
    pub interval: Epoch,
}

impl PgMapping {
    pub fn primary(&self) -> Option<OsdId> {
        self.acting.first().copied()
    }
    pub fn is_active(&self) -> bool {
        matches!(self.state, PgState::Active | PgState::ActiveDegraded)
    }
    /// Active, and in an interval the map identifies (see `interval`).
    pub fn can_serve(&self) -> bool {
        self.is_active() && self.interval != 0
    }
    /// The acting members with their incarnations (the interval key without the down
    /// placement members): what the monitors record for an interval that went active.
    pub fn acting_incarnations(&self) -> Vec<(OsdId, Epoch)> {
        self.interval_key
            .iter()
            .filter(|(_, e)| *e != 0)
            .copied()
            .collect()
    }
}

pub fn pg_mapping(map: &ClusterMap, pool: &Pool, seed: u32) -> PgMapping {
    mapping_of(map, pool, seed, pg_osds(map, pool, seed))
}

/// Every PG of a pool (placement set up once for the pool, not once per PG).
pub fn pool_mappings(map: &ClusterMap, pool: &Pool) -> Vec<PgMapping> {
    let placement = PoolPlacement::new(map, pool);
    (0..pool.pg_count)
        .map(|seed| mapping_of(map, pool, seed, placement.pg_osds(seed)))
        .collect()
}

fn mapping_of(map: &ClusterMap, pool: &Pool, seed: u32, osds: Vec<OsdId>) -> PgMapping {
    let interval_key: Vec<(OsdId, Epoch)> = osds
        .iter()
        .map(|id| {
            let up_from = map
                .osd(*id)
                .filter(|o| o.up)
                .map(|o| o.up_from)
                .unwrap_or(0);
            (*id, up_from)
        })
        .collect();
    let acting: Vec<OsdId> = interval_key
        .iter()
        .filter(|(_, e)| *e != 0)
        .map(|(o, _)| *o)
        .collect();
    let state = if !crate::placement::supports(pool) {
        PgState::UnknownPlacement
    } else if osds.len() < pool.min_size as usize {
        PgState::Undersized
    } else if acting.len() < pool.min_size as usize {
        PgState::Down
    } else if acting.len() < pool.size as usize {
        PgState::ActiveDegraded
    } else {
        PgState::Active
    };
    let pg = PgId {
        pool: pool.id,
        seed,
    };
    PgMapping {
        pg,
        osds,
        acting,
        state,
        interval_key,
        interval: map.interval_start(pg).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Command, FailureDomain, WEIGHT_ONE};
    use crate::PgId;

    #[test]
    fn a_pool_of_an_unknown_placement_algorithm_serves_no_io() {
        let m = three_osds(4);
        let mut p = m.pools[&1].clone();
        assert!(pool_mappings(&m, &p)
            .iter()
            .all(|g| g.state == PgState::Active));
        p.placement = crate::placement::PLACEMENT_ALGORITHM + 1;
        assert!(pool_mappings(&m, &p)
            .iter()
            .all(|g| g.state == PgState::UnknownPlacement && !g.is_active()));
    }

    fn three_osds(pg_count: u32) -> ClusterMap {
        let mut m = ClusterMap::new(1, vec![]);
        for (i, h) in ["a", "b", "c"].iter().enumerate() {
            let create = Command::CreateOsd {
                host: h.to_string(),
                weight: WEIGHT_ONE,
                store_uuid: i as u128 + 1,
                capacity_bytes: 1 << 30,
            };
            m = m.apply(&create).unwrap().0;
            let boot = Command::BootOsd {
                process: 1,
                id: crate::OsdId(i as u32),
                store_uuid: i as u128 + 1,
                addr: "127.0.0.1:1".into(),
            };
            m = m.apply(&boot).unwrap().0;
        }
        let pool = Command::CreatePool {
            name: "p".into(),
            size: 3,
            min_size: 2,
            pg_count,
            object_size: 4096,
            failure_domain: FailureDomain::Host,
        };
        m.apply(&pool).unwrap().0
    }

    fn interval_of(m: &ClusterMap) -> crate::map::PastInterval {
        let g = pg_mapping(m, &m.pools[&1], 0);
        crate::map::PastInterval {
            start: g.interval,
            members: g
                .acting
                .iter()
                .map(|o| {
                    let i = m.osd(*o).unwrap();
                    crate::map::IntervalMember {
                        osd: *o,
                        up_from: i.up_from,
                        store_uuid: i.store_uuid,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn a_member_down_leaves_min_size_acting_and_moves_the_primary() {
        let m = three_osds(1);
        let g = pg_mapping(&m, &m.pools[&1], 0);
        assert_eq!(g.state, PgState::Active);
        let first = g.acting[0];
        let down = Command::MarkOsdDown {
            id: first,
            up_from: m.osd(first).unwrap().up_from,
        };
        let m2 = m.apply(&down).unwrap().0;
        let g2 = pg_mapping(&m2, &m2.pools[&1], 0);
        assert_eq!(g2.state, PgState::ActiveDegraded);
        assert_eq!(g2.acting.len(), 2);
        assert_ne!(g2.primary(), Some(first));
        assert_ne!(g2.interval_key, g.interval_key);
        // A second member down: below min_size.
        let second = g2.acting[0];
        let down2 = Command::MarkOsdDown {
            id: second,
            up_from: m2.osd(second).unwrap().up_from,
        };
        let m3 = m2.apply(&down2).unwrap().0;
        let g3 = pg_mapping(&m3, &m3.pools[&1], 0);
        assert_eq!(g3.state, PgState::Down);
        assert!(!g3.is_active());
    }

    #[test]
    fn history_records_current_intervals_only_and_trims_when_clean() {
        let pg = PgId { pool: 1, seed: 0 };
        let m = three_osds(1);
        let i0 = interval_of(&m);
        let m = m
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, i0.clone())],
            })
            .unwrap()
            .0;
        // Recording it again changes nothing.
        let m = m
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, i0.clone())],
            })
            .unwrap()
            .0;
        assert_eq!(m.pg_history[&pg], vec![i0.clone()]);
        // A member goes down: the old interval is no longer current and is refused.
        let victim = i0.members[2].osd;
        let m = m
            .apply(&Command::MarkOsdDown {
                id: victim,
                up_from: i0.members[2].up_from,
            })
            .unwrap()
            .0;
        let stale = m.apply(&Command::PgsActivated {
            intervals: vec![(pg, i0.clone())],
        });
        assert!(stale.is_err(), "a stale interval was recorded");
        let i1 = interval_of(&m);
        let m = m
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, i1.clone())],
            })
            .unwrap()
            .0;
        assert_eq!(m.pg_history[&pg].len(), 2);
        // The down OSD is declared lost: it witnesses nothing any more.
        let lost = m.apply(&Command::MarkOsdLost { id: victim }).unwrap().0;
        assert!(lost.pg_history[&pg]
            .iter()
            .all(|i| i.members.iter().all(|x| x.osd != victim)));
        // Recovered in the second (degraded) interval: the first, full one stays, its
        // members' copies are not strays yet.
        let m = m
            .apply(&Command::PgsClean {
                pgs: vec![(pg, i1.start)],
            })
            .unwrap()
            .0;
        assert_eq!(m.pg_history[&pg], vec![i0.clone(), i1.clone()]);
        // Another degraded interval (the victim back, and down again): the one in between
        // is trimmed, the full one still stays. History does not grow while degraded.
        let m = m
            .apply(&Command::BootOsd {
                id: victim,
                store_uuid: i0.members[2].store_uuid,
                addr: "127.0.0.1:1".into(),
                process: 2,
            })
            .unwrap()
            .0;
        let up_from = m.osd(victim).unwrap().up_from;
        let m = m
            .apply(&Command::MarkOsdDown {
                id: victim,
                up_from,
            })
            .unwrap()
            .0;
        let i2 = interval_of(&m);
        assert!(i2.start > i1.start && i2.members == i1.members);
        let m = m
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, i2.clone())],
            })
            .unwrap()
            .0;
        let m = m
            .apply(&Command::PgsClean {
                pgs: vec![(pg, i2.start)],
            })
            .unwrap()
            .0;
        assert_eq!(m.pg_history[&pg], vec![i0.clone(), i2.clone()]);
        // Recovered with a full acting set: only that interval is left.
        let m = m
            .apply(&Command::BootOsd {
                id: victim,
                store_uuid: i0.members[2].store_uuid,
                addr: "127.0.0.1:1".into(),
                process: 3,
            })
            .unwrap()
            .0;
        let i3 = interval_of(&m);
        let m = m
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, i3.clone())],
            })
            .unwrap()
            .0;
        let m = m
            .apply(&Command::PgsClean {
                pgs: vec![(pg, i3.start)],
            })
            .unwrap()
            .0;
        assert_eq!(m.pg_history[&pg], vec![i3]);
    }

    /// An acting set that changed and changed back, and an OSD that skipped the map in
    /// between asking the monitors to record the interval it knew as the current one: what
    /// went wrong, or None when the monitors refuse.
    fn old_interval_recorded_as_current() -> Option<String> {
        let pg = PgId { pool: 1, seed: 0 };
        let m = three_osds(1);
        let member = pg_mapping(&m, &m.pools[&1], 0).acting[1];
        let out = m.apply(&Command::MarkOsdOut { id: member }).unwrap().0;
        let back = out.apply(&Command::MarkOsdIn { id: member }).unwrap().0;
        let old = interval_of(&m);
        back.apply(&Command::PgsActivated {
            intervals: vec![(pg, old.clone())],
        })
        .ok()
        .map(|_| {
            format!(
                "interval identity: the monitors recorded the interval from epoch {} as current at epoch {}, after it ended at epoch {}",
                old.start,
                back.epoch,
                out.epoch
            )
        })
    }

    /// Planted `interval-by-members` (intervals told apart by members and incarnations
    /// alone) is caught here by name; the whole-cluster simulator does not reach it, as a
    /// primary that misses maps is marked down, and its new incarnation is a new interval.
    #[test]
    fn planted_interval_by_members_is_caught_by_the_interval_check() {
        let v = crate::planted::caught(
            crate::planted::Bug::IntervalByMembers,
            old_interval_recorded_as_current,
        );
        assert!(v.starts_with("interval identity:"), "{v}");
    }

    #[test]
    fn an_interval_that_ends_and_comes_back_with_the_same_members_is_a_new_interval() {
        let pg = PgId { pool: 1, seed: 0 };
        let m = three_osds(1);
        let a = pg_mapping(&m, &m.pools[&1], 0);
        // A member marked out and in again: the acting set changes and changes back.
        let member = a.acting[1];
        let out = m.apply(&Command::MarkOsdOut { id: member }).unwrap().0;
        let b = pg_mapping(&out, &out.pools[&1], 0);
        assert_ne!(b.interval, a.interval);
        let back = out.apply(&Command::MarkOsdIn { id: member }).unwrap().0;
        let c = pg_mapping(&back, &back.pools[&1], 0);
        assert_eq!(
            c.interval_key, a.interval_key,
            "same members, same incarnations"
        );
        assert!(c.interval > b.interval && b.interval > a.interval);
        // An OSD that skipped the map in between tells them apart, and the monitors refuse
        // to record the old interval as the current one.
        let mut old = interval_of(&m);
        old.members = interval_of(&back).members;
        assert!(back
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, old)],
            })
            .is_err());
        assert!(back
            .apply(&Command::PgsActivated {
                intervals: vec![(pg, interval_of(&back))],
            })
            .is_ok());
        // Changes that do not touch the PG start no interval.
        let flagged = back
            .apply(&Command::SetFlag {
                flag: crate::map::ClusterFlag::NoOut,
            })
            .unwrap()
            .0;
        assert_eq!(
            pg_mapping(&flagged, &flagged.pools[&1], 0).interval,
            c.interval
        );
    }
}
