//! Per-PG facts derived from a map: the placement set, the acting set, whether the PG can
//! serve IO, and the identity of its current interval.
//!
//! Until peering exists (the failures issue), a PG is active only when every OSD of its
//! placement set is up: IO waits while any member is down, so a member that missed writes
//! can never serve a read. Degraded IO with `min_size` members comes with peering.

use crate::ids::{Epoch, OsdId, PgId};
use crate::map::{ClusterMap, Pool};
use crate::placement::{pg_osds, PoolPlacement};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PgState {
    /// Every member of the placement set is up: IO is served.
    ActiveClean,
    /// Active, but the cluster has fewer failure domains than `size`: fewer copies.
    ActiveUndersized,
    /// Some member is down: IO waits for it.
    Down,
    /// Fewer failure domains than `min_size`: no IO until the cluster grows.
    Undersized,
    /// The pool uses a placement algorithm this build does not know: no IO from here.
    UnknownPlacement,
}

impl PgState {
    pub fn name(&self) -> &'static str {
        match self {
            PgState::ActiveClean => "active+clean",
            PgState::ActiveUndersized => "active+undersized",
            PgState::Down => "down",
            PgState::Undersized => "undersized",
            PgState::UnknownPlacement => "unknown-placement",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgMapping {
    pub pg: PgId,
    /// Ordered placement (first = primary), including down members.
    pub osds: Vec<OsdId>,
    pub state: PgState,
    /// Each member with the incarnation it has in this map (0 when down). Two maps in which
    /// this value is equal belong to the same interval of the PG.
    pub interval_key: Vec<(OsdId, Epoch)>,
}

impl PgMapping {
    pub fn primary(&self) -> Option<OsdId> {
        self.osds.first().copied()
    }
    pub fn is_active(&self) -> bool {
        matches!(self.state, PgState::ActiveClean | PgState::ActiveUndersized)
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
    let state = if !crate::placement::supports(pool) {
        PgState::UnknownPlacement
    } else if osds.len() < pool.min_size as usize {
        PgState::Undersized
    } else if interval_key.iter().any(|(_, e)| *e == 0) {
        PgState::Down
    } else if osds.len() < pool.size as usize {
        PgState::ActiveUndersized
    } else {
        PgState::ActiveClean
    };
    PgMapping {
        pg: PgId {
            pool: pool.id,
            seed,
        },
        osds,
        state,
        interval_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Command, FailureDomain, WEIGHT_ONE};

    #[test]
    fn a_pool_of_an_unknown_placement_algorithm_serves_no_io() {
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
            pg_count: 4,
            object_size: 4096,
            failure_domain: FailureDomain::Host,
        };
        m = m.apply(&pool).unwrap().0;
        let mut p = m.pools[&1].clone();
        assert!(pool_mappings(&m, &p)
            .iter()
            .all(|g| g.state == PgState::ActiveClean));
        p.placement = crate::placement::PLACEMENT_ALGORITHM + 1;
        assert!(pool_mappings(&m, &p)
            .iter()
            .all(|g| g.state == PgState::UnknownPlacement && !g.is_active()));
    }
}
