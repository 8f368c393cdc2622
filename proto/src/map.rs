//! The cluster map and the commands that change it.
//!
//! The map is one versioned value; `apply` is a pure state machine: given a map and a
//! command it either refuses the command (the map is untouched) or returns the next map with
//! `epoch + 1`. The monitor persists each map it applies; a replicated log (the quorum issue)
//! drives the same `apply` unchanged.
//!
//! Invariants kept by `apply`:
//! - `epoch` grows by exactly one per accepted command;
//! - OSD, pool and image ids are never reused (`next_*` only grow);
//! - pool and image names are unique (images per pool);
//! - an OSD boots only with the store uuid recorded when its store was created, and every
//!   boot gives it a new incarnation (`up_from` = the epoch of the boot).

use crate::ids::{Epoch, ImageId, OsdId, PgId, PoolId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Weights are fixed point with 16 fractional bits: `WEIGHT_ONE` is 1.0 (by convention
/// 1 TiB of capacity), so placement math is integer and identical on every machine.
pub const WEIGHT_ONE: u32 = 0x1_0000;

pub const MAX_POOL_SIZE: u8 = 10;
pub const MIN_OBJECT_SIZE: u32 = 4096;
/// The largest object every OSD's store holds (one journal record names all of an object's
/// blocks in one 4 KiB block: see `osd::store::layout`); a pool with larger objects is
/// refused at creation instead of turning every IO into an error.
pub const MAX_OBJECT_SIZE: u32 = 1 << 20;
pub const MAX_PG_COUNT: u32 = 1 << 16;
pub const BLOCK_SIZE: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonInfo {
    pub name: String,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdInfo {
    pub id: OsdId,
    /// Failure-domain path below the root: the host name.
    pub host: String,
    /// Address on the (single, for now) fabric, `ip:port`. Empty until the first boot.
    pub addr: String,
    /// Capacity weight, fixed point (`WEIGHT_ONE` = 1.0).
    pub weight: u32,
    pub up: bool,
    /// Whether the OSD holds data: an OSD that is out gets no placement.
    pub is_in: bool,
    /// The epoch of the OSD's current incarnation (its last boot); 0 before the first.
    pub up_from: Epoch,
    /// The uuid written into the store's superblock when it was formatted.
    pub store_uuid: u128,
    pub capacity_bytes: u64,
    /// How full the OSD last reported itself, against the map's ratios.
    pub fullness: Fullness,
    /// The process that booted the current incarnation (`Command::BootOsd::process`).
    pub process: u64,
}

/// An OSD's usage against the cluster's ratios. A write is refused (ENOSPC, before anything
/// is applied) when any member of its PG is `Full`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Fullness {
    #[default]
    Ok,
    Nearfull,
    Backfillfull,
    Full,
}

/// Usage thresholds in per-mille of an OSD's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullRatios {
    pub nearfull: u16,
    pub backfillfull: u16,
    pub full: u16,
}

impl Default for FullRatios {
    fn default() -> Self {
        FullRatios {
            nearfull: 850,
            backfillfull: 900,
            full: 950,
        }
    }
}

impl FullRatios {
    pub fn classify(&self, used: u64, capacity: u64) -> Fullness {
        if capacity == 0 {
            return Fullness::Full;
        }
        let permille = (used as u128 * 1000 / capacity as u128) as u64;
        if permille >= self.full as u64 {
            Fullness::Full
        } else if permille >= self.backfillfull as u64 {
            Fullness::Backfillfull
        } else if permille >= self.nearfull as u64 {
            Fullness::Nearfull
        } else {
            Fullness::Ok
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureDomain {
    Host,
    Osd,
}

impl std::str::FromStr for FailureDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Self::Host),
            "osd" => Ok(Self::Osd),
            _ => Err(format!(
                "unknown failure domain {s:?} (expected host or osd)"
            )),
        }
    }
}

impl std::fmt::Display for FailureDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Osd => "osd",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub id: PoolId,
    pub name: String,
    pub size: u8,
    pub min_size: u8,
    pub pg_count: u32,
    pub object_size: u32,
    pub failure_domain: FailureDomain,
    /// The placement algorithm the pool was created with
    /// (`placement::PLACEMENT_ALGORITHM`). A build that does not know it refuses the pool's IO
    /// instead of computing different sets than its peers.
    pub placement: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: ImageId,
    pub pool: PoolId,
    pub name: String,
    pub size_bytes: u64,
    pub object_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub fsid: u128,
    pub epoch: Epoch,
    pub mons: Vec<MonInfo>,
    pub osds: BTreeMap<u32, OsdInfo>,
    pub pools: BTreeMap<PoolId, Pool>,
    pub images: BTreeMap<ImageId, Image>,
    pub next_osd_id: u32,
    pub next_pool_id: PoolId,
    pub next_image_id: ImageId,
    pub ratios: FullRatios,
    /// Cluster-wide flags set by the operator (`atlant osd set FLAG`).
    pub flags: BTreeSet<ClusterFlag>,
    /// Per PG, the intervals that went active since the PG was last clean (oldest first).
    /// Only these can hold acknowledged writes: peering asks a member of each.
    pub pg_history: BTreeMap<PgId, Vec<PastInterval>>,
    /// Per pool, the epoch at which each PG's current interval began (indexed by PG seed):
    /// the last epoch that changed the PG's placement, a member's incarnation, or whether
    /// it can serve (see `track_intervals`). Every daemon reads a PG's interval from here,
    /// so an interval that ended can never be taken for a later one with the same members
    /// (an OSD that skipped the maps in between would otherwise do exactly that). A pool
    /// without an entry (a map upgraded from format 4) serves nothing until the leader
    /// commits `StartIntervals`.
    pub pg_intervals: BTreeMap<PoolId, Vec<Epoch>>,
    /// OSDs that the monitors marked out for being down `down_out_interval`
    /// (`AutoMarkOsdOut`): the next boot of such an OSD marks it in again, as a reboot that
    /// took long is no reason to keep its capacity out. An OSD the operator marked out, or
    /// whose device failed, stays out when it boots; the operator's `in` or `out` clears
    /// the entry.
    pub auto_out: BTreeSet<u32>,
}

/// One member of a PG interval: the OSD, its incarnation and the store it ran on. A member
/// on another store (the OSD was recreated) is not a witness for this interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalMember {
    pub osd: OsdId,
    pub up_from: Epoch,
    pub store_uuid: u128,
}

/// An interval of a PG that went active: its start epoch and acting set (primary first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastInterval {
    pub start: Epoch,
    pub members: Vec<IntervalMember>,
}

/// The map as format 3 of the monitor store held it (before PG history); read once when a
/// monitor of an older build is upgraded, and converted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterMapV3 {
    pub fsid: u128,
    pub epoch: Epoch,
    pub mons: Vec<MonInfo>,
    pub osds: BTreeMap<u32, OsdInfo>,
    pub pools: BTreeMap<PoolId, Pool>,
    pub images: BTreeMap<ImageId, Image>,
    pub next_osd_id: u32,
    pub next_pool_id: PoolId,
    pub next_image_id: ImageId,
    pub ratios: FullRatios,
    pub flags: BTreeSet<ClusterFlag>,
}

impl From<ClusterMapV3> for ClusterMap {
    fn from(m: ClusterMapV3) -> ClusterMap {
        ClusterMap {
            fsid: m.fsid,
            epoch: m.epoch,
            mons: m.mons,
            osds: m.osds,
            pools: m.pools,
            images: m.images,
            next_osd_id: m.next_osd_id,
            next_pool_id: m.next_pool_id,
            next_image_id: m.next_image_id,
            ratios: m.ratios,
            flags: m.flags,
            // A store of format 3 ran PGs only with every member up: every copy is current.
            pg_history: BTreeMap::new(),
            pg_intervals: BTreeMap::new(),
            auto_out: BTreeSet::new(),
        }
    }
}

/// The map as format 4 of the monitor store held it (before per-PG interval starts); read
/// once when a monitor of an older build is upgraded, and converted. Its PGs serve nothing
/// until the leader commits `StartIntervals`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterMapV4 {
    pub fsid: u128,
    pub epoch: Epoch,
    pub mons: Vec<MonInfo>,
    pub osds: BTreeMap<u32, OsdInfo>,
    pub pools: BTreeMap<PoolId, Pool>,
    pub images: BTreeMap<ImageId, Image>,
    pub next_osd_id: u32,
    pub next_pool_id: PoolId,
    pub next_image_id: ImageId,
    pub ratios: FullRatios,
    pub flags: BTreeSet<ClusterFlag>,
    pub pg_history: BTreeMap<PgId, Vec<PastInterval>>,
}

impl From<ClusterMapV4> for ClusterMap {
    fn from(m: ClusterMapV4) -> ClusterMap {
        ClusterMap {
            fsid: m.fsid,
            epoch: m.epoch,
            mons: m.mons,
            osds: m.osds,
            pools: m.pools,
            images: m.images,
            next_osd_id: m.next_osd_id,
            next_pool_id: m.next_pool_id,
            next_image_id: m.next_image_id,
            ratios: m.ratios,
            flags: m.flags,
            pg_history: m.pg_history,
            pg_intervals: BTreeMap::new(),
            auto_out: BTreeSet::new(),
        }
    }
}

/// The map as format 5 of the monitor store held it (before `auto_out`); read once when a
/// monitor of an older build is upgraded, and converted. Its OSDs that were marked out
/// for being down stay out when they boot (the old rule) until the operator marks them in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterMapV5 {
    pub fsid: u128,
    pub epoch: Epoch,
    pub mons: Vec<MonInfo>,
    pub osds: BTreeMap<u32, OsdInfo>,
    pub pools: BTreeMap<PoolId, Pool>,
    pub images: BTreeMap<ImageId, Image>,
    pub next_osd_id: u32,
    pub next_pool_id: PoolId,
    pub next_image_id: ImageId,
    pub ratios: FullRatios,
    pub flags: BTreeSet<ClusterFlag>,
    pub pg_history: BTreeMap<PgId, Vec<PastInterval>>,
    pub pg_intervals: BTreeMap<PoolId, Vec<Epoch>>,
}

impl From<ClusterMapV5> for ClusterMap {
    fn from(m: ClusterMapV5) -> ClusterMap {
        ClusterMap {
            fsid: m.fsid,
            epoch: m.epoch,
            mons: m.mons,
            osds: m.osds,
            pools: m.pools,
            images: m.images,
            next_osd_id: m.next_osd_id,
            next_pool_id: m.next_pool_id,
            next_image_id: m.next_image_id,
            ratios: m.ratios,
            flags: m.flags,
            pg_history: m.pg_history,
            pg_intervals: m.pg_intervals,
            auto_out: BTreeSet::new(),
        }
    }
}

/// Operator flags that suspend parts of the monitor's automatic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClusterFlag {
    /// Down OSDs are never marked out automatically (maintenance, planned reboots).
    NoOut,
    /// OSDs are never marked down automatically (lease expiry or peer reports).
    NoDown,
}

impl ClusterFlag {
    pub const ALL: [ClusterFlag; 2] = [ClusterFlag::NoOut, ClusterFlag::NoDown];
    pub fn name(self) -> &'static str {
        match self {
            ClusterFlag::NoOut => "noout",
            ClusterFlag::NoDown => "nodown",
        }
    }
}

impl std::str::FromStr for ClusterFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ClusterFlag::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown flag {s:?} (expected noout or nodown)"))
    }
}

impl std::fmt::Display for ClusterFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A change to the map. Every variant is validated by `apply` before anything changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records a newly formatted store and assigns it an OSD id. The OSD starts down and in.
    CreateOsd {
        host: String,
        weight: u32,
        store_uuid: u128,
        capacity_bytes: u64,
    },
    /// A daemon started on the store: a new incarnation that is up from this epoch.
    BootOsd {
        id: OsdId,
        store_uuid: u128,
        addr: String,
        /// Random per OSD process: a boot from the process that booted the current
        /// incarnation means it was marked down while running (flapping, damped by the
        /// monitors), a new value means a restart.
        process: u64,
    },
    /// The daemon of incarnation `up_from` stopped (or was seen dead): mark it down.
    /// A stale report about an older incarnation is refused.
    MarkOsdDown {
        id: OsdId,
        up_from: Epoch,
    },
    /// The OSD's device failed (IO errors, checksum errors past the limit): mark it down and
    /// out at once, so its data is re-replicated without waiting for `down_out_interval`.
    MarkOsdFailed {
        id: OsdId,
        up_from: Epoch,
        reason: String,
    },
    /// Records an OSD's fullness (the monitor derives it from the OSD's usage reports).
    SetOsdFullness {
        id: OsdId,
        fullness: Fullness,
    },
    SetFullRatios {
        ratios: FullRatios,
    },
    CreatePool {
        name: String,
        size: u8,
        min_size: u8,
        pg_count: u32,
        object_size: u32,
        failure_domain: FailureDomain,
    },
    CreateImage {
        pool: String,
        name: String,
        size_bytes: u64,
    },
    ResizeImage {
        pool: String,
        name: String,
        size_bytes: u64,
    },
    RemoveImage {
        pool: String,
        name: String,
    },
    /// The monitor group's committed membership changed (written by the monitors only).
    SetMonitors {
        mons: Vec<MonInfo>,
    },
    /// The OSD holds no data any more: its placement moves to the others.
    MarkOsdOut {
        id: OsdId,
    },
    MarkOsdIn {
        id: OsdId,
    },
    ReweightOsd {
        id: OsdId,
        weight: u32,
    },
    /// Forgets an OSD that is down and out. Its id is never reused.
    RemoveOsd {
        id: OsdId,
    },
    SetFlag {
        flag: ClusterFlag,
    },
    UnsetFlag {
        flag: ClusterFlag,
    },
    /// Changes a pool's min_size (how many current copies a PG needs to accept writes).
    SetPoolMinSize {
        pool: String,
        min_size: u8,
    },
    /// Removes a pool that holds no images.
    RemovePool {
        name: String,
    },
    /// Primaries record the intervals they activate (like Ceph's up_thru). Refused for an
    /// interval that is no longer current: that primary must peer again.
    PgsActivated {
        intervals: Vec<(PgId, PastInterval)>,
    },
    /// Every member of the PG's interval that started at the given epoch holds every
    /// object: older history is trimmed, but for the newest interval with a full acting
    /// set when this one is degraded (its members' copies are not strays yet).
    PgsClean {
        pgs: Vec<(PgId, Epoch)>,
    },
    /// The operator declares a down OSD's data lost: it stops being a witness for past
    /// intervals, so PGs waiting for it can go on with what the others hold.
    MarkOsdLost {
        id: OsdId,
    },
    /// Gives every pool without interval starts (a map upgraded from format 4) a start of
    /// this epoch for each PG. The leader commits it once after an upgrade.
    StartIntervals,
    /// The monitors' liveness policy: incarnation `up_from` of the OSD has been down for
    /// `down_out_interval`, so it is marked out (and recorded in `auto_out`: its next boot
    /// marks it in again). Last among the variants, so logs of older builds still decode.
    AutoMarkOsdOut {
        id: OsdId,
        up_from: Epoch,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Osd(OsdId),
    Pool(PoolId),
    Image(ImageId),
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MapError {
    #[error("{what} {name:?} already exists")]
    Exists { what: String, name: String },
    #[error("{what} {name:?} does not exist")]
    NotFound { what: String, name: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("osd.{id}: store uuid {got:032x} does not match the map's {want:032x}; this device is not the store of osd.{id}")]
    StoreMismatch { id: u32, got: u128, want: u128 },
    #[error("osd.{id}: report about incarnation {reported} is stale (current {current})")]
    StaleIncarnation {
        id: u32,
        reported: Epoch,
        current: Epoch,
    },
}

impl ClusterMap {
    /// The map of a new cluster at epoch 1.
    pub fn new(fsid: u128, mons: Vec<MonInfo>) -> Self {
        ClusterMap {
            fsid,
            epoch: 1,
            mons,
            osds: BTreeMap::new(),
            pools: BTreeMap::new(),
            images: BTreeMap::new(),
            next_osd_id: 0,
            next_pool_id: 1,
            next_image_id: 1,
            ratios: FullRatios::default(),
            flags: BTreeSet::new(),
            pg_history: BTreeMap::new(),
            pg_intervals: BTreeMap::new(),
            auto_out: BTreeSet::new(),
        }
    }

    pub fn osd(&self, id: OsdId) -> Option<&OsdInfo> {
        self.osds.get(&id.0)
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Pool> {
        self.pools.values().find(|p| p.name == name)
    }

    pub fn image_by_name(&self, pool: PoolId, name: &str) -> Option<&Image> {
        self.images
            .values()
            .find(|i| i.pool == pool && i.name == name)
    }

    /// Looks up `pool/image`.
    pub fn resolve_image(&self, pool: &str, image: &str) -> Result<(&Pool, &Image), MapError> {
        let p = self
            .pool_by_name(pool)
            .ok_or_else(|| not_found("pool", pool))?;
        let i = self
            .image_by_name(p.id, image)
            .ok_or_else(|| not_found("image", image))?;
        Ok((p, i))
    }

    /// Applies `cmd`, returning the next map (epoch + 1) and the command's result. On error
    /// `self` is unchanged.
    pub fn apply(&self, cmd: &Command) -> Result<(ClusterMap, CommandResult), MapError> {
        let mut next = self.clone();
        next.epoch = self.epoch + 1;
        let result = next.apply_in_place(cmd)?;
        next.track_intervals(self, cmd);
        Ok((next, result))
    }

    /// The epoch at which `pg`'s current interval began; None for a PG of a pool that has
    /// no interval starts yet (upgraded map) or that does not exist.
    pub fn interval_start(&self, pg: PgId) -> Option<Epoch> {
        self.pg_intervals
            .get(&pg.pool)
            .and_then(|v| v.get(pg.seed as usize))
            .copied()
    }

    /// Pools that have no interval starts (a map upgraded from an older format).
    pub fn pools_without_intervals(&self) -> Vec<PoolId> {
        self.pools
            .values()
            .filter(|p| {
                self.pg_intervals
                    .get(&p.id)
                    .is_none_or(|v| v.len() != p.pg_count as usize)
            })
            .map(|p| p.id)
            .collect()
    }

    /// Starts a new interval at this epoch for every PG whose interval identity `cmd`
    /// changed: its placement set, a member's incarnation (up_from, or down), or whether it
    /// has enough members to serve. Only the commands that touch those are looked at:
    /// placement depends on the OSDs' in/out state, weights and hosts and on the pool;
    /// up/down changes only the PGs that place the OSD.
    fn track_intervals(&mut self, prev: &ClusterMap, cmd: &Command) {
        let epoch = self.epoch;
        match cmd {
            Command::CreatePool { name, .. } => {
                if let Some(p) = self.pool_by_name(name) {
                    let (id, n) = (p.id, p.pg_count as usize);
                    self.pg_intervals.insert(id, vec![epoch; n]);
                }
            }
            Command::RemovePool { .. } => {
                let pools = &self.pools;
                self.pg_intervals.retain(|id, _| pools.contains_key(id));
            }
            Command::StartIntervals => {
                for id in self.pools_without_intervals() {
                    let n = self.pools[&id].pg_count as usize;
                    self.pg_intervals.insert(id, vec![epoch; n]);
                }
            }
            // Placement is unchanged (a boot that marks the OSD in again is below): only the
            // PGs placing this OSD change.
            Command::BootOsd { id, .. } | Command::MarkOsdDown { id, .. }
                if !prev.auto_out.contains(&id.0) =>
            {
                let pools: Vec<Pool> = self.pools.values().cloned().collect();
                for pool in pools {
                    let changed: Vec<u32> = crate::pg::pool_mappings(self, &pool)
                        .iter()
                        .filter(|m| m.osds.contains(id))
                        .map(|m| m.pg.seed)
                        .collect();
                    self.restart_intervals(pool.id, &changed);
                }
            }
            Command::MarkOsdFailed { .. }
            | Command::BootOsd { .. }
            | Command::AutoMarkOsdOut { .. }
            | Command::CreateOsd { .. }
            | Command::MarkOsdOut { .. }
            | Command::MarkOsdIn { .. }
            | Command::ReweightOsd { .. }
            | Command::RemoveOsd { .. }
            | Command::MarkOsdLost { .. }
            | Command::SetPoolMinSize { .. } => {
                let pools: Vec<Pool> = self.pools.values().cloned().collect();
                for pool in pools {
                    let Some(old_pool) = prev.pools.get(&pool.id) else {
                        continue;
                    };
                    let before = crate::pg::pool_mappings(prev, old_pool);
                    let after = crate::pg::pool_mappings(self, &pool);
                    let changed: Vec<u32> = before
                        .iter()
                        .zip(&after)
                        .filter(|(b, a)| {
                            b.interval_key != a.interval_key || b.is_active() != a.is_active()
                        })
                        .map(|(_, a)| a.pg.seed)
                        .collect();
                    self.restart_intervals(pool.id, &changed);
                }
            }
            _ => {}
        }
    }

    fn restart_intervals(&mut self, pool: PoolId, seeds: &[u32]) {
        let epoch = self.epoch;
        if let Some(v) = self.pg_intervals.get_mut(&pool) {
            for s in seeds {
                if let Some(e) = v.get_mut(*s as usize) {
                    *e = epoch;
                }
            }
        }
    }

    fn osd_mut(&mut self, id: OsdId) -> Result<&mut OsdInfo, MapError> {
        self.osds
            .get_mut(&id.0)
            .ok_or_else(|| not_found("osd", &id.0.to_string()))
    }

    fn apply_in_place(&mut self, cmd: &Command) -> Result<CommandResult, MapError> {
        match cmd {
            Command::CreateOsd {
                host,
                weight,
                store_uuid,
                capacity_bytes,
            } => {
                check_name("host", host)?;
                if *weight == 0 {
                    return Err(MapError::Invalid("osd weight must be > 0".into()));
                }
                if self.osds.values().any(|o| o.store_uuid == *store_uuid) {
                    return Err(MapError::Exists {
                        what: "store".into(),
                        name: crate::ids::uuid_hex(*store_uuid),
                    });
                }
                let id = self.next_osd_id;
                self.next_osd_id += 1;
                self.osds.insert(
                    id,
                    OsdInfo {
                        id: OsdId(id),
                        host: host.clone(),
                        addr: String::new(),
                        weight: *weight,
                        up: false,
                        is_in: true,
                        up_from: 0,
                        store_uuid: *store_uuid,
                        capacity_bytes: *capacity_bytes,
                        fullness: Fullness::Ok,
                        process: 0,
                    },
                );
                Ok(CommandResult::Osd(OsdId(id)))
            }
            Command::BootOsd {
                id,
                store_uuid,
                addr,
                process,
            } => {
                let epoch = self.epoch;
                let osd = self
                    .osds
                    .get_mut(&id.0)
                    .ok_or_else(|| not_found("osd", &id.0.to_string()))?;
                if osd.store_uuid != *store_uuid {
                    return Err(MapError::StoreMismatch {
                        id: id.0,
                        got: *store_uuid,
                        want: osd.store_uuid,
                    });
                }
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(MapError::Invalid(format!(
                        "osd address {addr:?} is not ip:port"
                    )));
                }
                osd.up = true;
                osd.addr = addr.clone();
                osd.up_from = epoch;
                osd.process = *process;
                if !crate::planted::active(crate::planted::Bug::NoAutoIn)
                    && self.auto_out.remove(&id.0)
                {
                    osd.is_in = true;
                }
                Ok(CommandResult::Done)
            }
            Command::MarkOsdDown { id, up_from } => {
                let osd = self
                    .osds
                    .get_mut(&id.0)
                    .ok_or_else(|| not_found("osd", &id.0.to_string()))?;
                if osd.up_from != *up_from || !osd.up {
                    return Err(MapError::StaleIncarnation {
                        id: id.0,
                        reported: *up_from,
                        current: osd.up_from,
                    });
                }
                osd.up = false;
                Ok(CommandResult::Done)
            }
            Command::MarkOsdFailed {
                id,
                up_from,
                reason: _,
            } => {
                let osd = self
                    .osds
                    .get_mut(&id.0)
                    .ok_or_else(|| not_found("osd", &id.0.to_string()))?;
                if osd.up_from != *up_from {
                    return Err(MapError::StaleIncarnation {
                        id: id.0,
                        reported: *up_from,
                        current: osd.up_from,
                    });
                }
                osd.up = false;
                osd.is_in = false;
                self.auto_out.remove(&id.0);
                Ok(CommandResult::Done)
            }
            Command::SetOsdFullness { id, fullness } => {
                let osd = self
                    .osds
                    .get_mut(&id.0)
                    .ok_or_else(|| not_found("osd", &id.0.to_string()))?;
                osd.fullness = *fullness;
                Ok(CommandResult::Done)
            }
            Command::SetFullRatios { ratios } => {
                let r = ratios;
                if !(r.nearfull <= r.backfillfull
                    && r.backfillfull <= r.full
                    && r.full <= 1000
                    && r.nearfull > 0)
                {
                    return Err(MapError::Invalid(format!(
                        "ratios must satisfy 0 < nearfull <= backfillfull <= full <= 1 (got {} {} {})",
                        r.nearfull as f64 / 1000.0,
                        r.backfillfull as f64 / 1000.0,
                        r.full as f64 / 1000.0
                    )));
                }
                self.ratios = *r;
                Ok(CommandResult::Done)
            }
            Command::CreatePool {
                name,
                size,
                min_size,
                pg_count,
                object_size,
                failure_domain,
            } => {
                check_name("pool", name)?;
                if self.pool_by_name(name).is_some() {
                    return Err(MapError::Exists {
                        what: "pool".into(),
                        name: name.clone(),
                    });
                }
                if *size == 0 || *size > MAX_POOL_SIZE {
                    return Err(MapError::Invalid(format!(
                        "pool size {size} not in 1..={MAX_POOL_SIZE}"
                    )));
                }
                if *min_size == 0 || min_size > size {
                    return Err(MapError::Invalid(format!(
                        "min_size {min_size} not in 1..={size}"
                    )));
                }
                if *pg_count == 0 || *pg_count > MAX_PG_COUNT {
                    return Err(MapError::Invalid(format!(
                        "pg_count {pg_count} not in 1..={MAX_PG_COUNT}"
                    )));
                }
                if !object_size.is_power_of_two()
                    || *object_size < MIN_OBJECT_SIZE
                    || *object_size > MAX_OBJECT_SIZE
                {
                    return Err(MapError::Invalid(format!(
                        "object size {object_size} must be a power of two in {MIN_OBJECT_SIZE}..={MAX_OBJECT_SIZE} (the largest object an OSD's store holds)"
                    )));
                }
                let id = self.next_pool_id;
                self.next_pool_id += 1;
                self.pools.insert(
                    id,
                    Pool {
                        id,
                        name: name.clone(),
                        size: *size,
                        min_size: *min_size,
                        pg_count: *pg_count,
                        object_size: *object_size,
                        failure_domain: *failure_domain,
                        placement: crate::placement::PLACEMENT_ALGORITHM,
                    },
                );
                Ok(CommandResult::Pool(id))
            }
            Command::CreateImage {
                pool,
                name,
                size_bytes,
            } => {
                check_name("image", name)?;
                let p = self
                    .pool_by_name(pool)
                    .ok_or_else(|| not_found("pool", pool))?
                    .clone();
                if self.image_by_name(p.id, name).is_some() {
                    return Err(MapError::Exists {
                        what: "image".into(),
                        name: format!("{pool}/{name}"),
                    });
                }
                check_image_size(*size_bytes)?;
                let id = self.next_image_id;
                self.next_image_id += 1;
                self.images.insert(
                    id,
                    Image {
                        id,
                        pool: p.id,
                        name: name.clone(),
                        size_bytes: *size_bytes,
                        object_size: p.object_size,
                    },
                );
                Ok(CommandResult::Image(id))
            }
            Command::ResizeImage {
                pool,
                name,
                size_bytes,
            } => {
                check_image_size(*size_bytes)?;
                let id = self.resolve_image(pool, name)?.1.id;
                if let Some(i) = self.images.get_mut(&id) {
                    i.size_bytes = *size_bytes;
                }
                Ok(CommandResult::Image(id))
            }
            Command::RemoveImage { pool, name } => {
                let id = self.resolve_image(pool, name)?.1.id;
                self.images.remove(&id);
                Ok(CommandResult::Image(id))
            }
            Command::SetMonitors { mons } => {
                if mons.is_empty() {
                    return Err(MapError::Invalid(
                        "a cluster needs at least one monitor".into(),
                    ));
                }
                for m in mons {
                    check_name("monitor", &m.name)?;
                }
                self.mons = mons.clone();
                Ok(CommandResult::Done)
            }
            Command::MarkOsdOut { id } => {
                let osd = self.osd_mut(*id)?;
                if !osd.is_in {
                    // Out already by the monitors' timer: now by the operator's word too,
                    // so a boot does not bring it in.
                    if self.auto_out.remove(&id.0) {
                        return Ok(CommandResult::Done);
                    }
                    return Err(MapError::Invalid(format!("{id} is already out")));
                }
                osd.is_in = false;
                Ok(CommandResult::Done)
            }
            Command::AutoMarkOsdOut { id, up_from } => {
                let osd = self.osd_mut(*id)?;
                if osd.up || osd.up_from != *up_from {
                    return Err(MapError::StaleIncarnation {
                        id: id.0,
                        reported: *up_from,
                        current: osd.up_from,
                    });
                }
                if !osd.is_in {
                    return Err(MapError::Invalid(format!("{id} is already out")));
                }
                osd.is_in = false;
                self.auto_out.insert(id.0);
                Ok(CommandResult::Done)
            }
            Command::MarkOsdIn { id } => {
                let osd = self.osd_mut(*id)?;
                if osd.is_in {
                    return Err(MapError::Invalid(format!("{id} is already in")));
                }
                osd.is_in = true;
                self.auto_out.remove(&id.0);
                Ok(CommandResult::Done)
            }
            Command::ReweightOsd { id, weight } => {
                if *weight == 0 {
                    return Err(MapError::Invalid(
                        "osd weight must be > 0 (mark the OSD out instead)".into(),
                    ));
                }
                let osd = self.osd_mut(*id)?;
                osd.weight = *weight;
                Ok(CommandResult::Done)
            }
            Command::RemoveOsd { id } => {
                let osd = self.osd_mut(*id)?;
                if osd.up || osd.is_in {
                    return Err(MapError::Invalid(format!(
                        "{id} is {} and {}: only an OSD that is down and out can be removed",
                        if osd.up { "up" } else { "down" },
                        if osd.is_in { "in" } else { "out" }
                    )));
                }
                self.osds.remove(&id.0);
                self.auto_out.remove(&id.0);
                Ok(CommandResult::Done)
            }
            Command::SetFlag { flag } => {
                if !self.flags.insert(*flag) {
                    return Err(MapError::Invalid(format!("flag {flag} is already set")));
                }
                Ok(CommandResult::Done)
            }
            Command::UnsetFlag { flag } => {
                if !self.flags.remove(flag) {
                    return Err(MapError::Invalid(format!("flag {flag} is not set")));
                }
                Ok(CommandResult::Done)
            }
            Command::SetPoolMinSize { pool, min_size } => {
                let id = self
                    .pool_by_name(pool)
                    .ok_or_else(|| not_found("pool", pool))?
                    .id;
                let p = self
                    .pools
                    .get_mut(&id)
                    .ok_or_else(|| not_found("pool", pool))?;
                if *min_size == 0 || *min_size > p.size {
                    return Err(MapError::Invalid(format!(
                        "min_size {min_size} not in 1..={}",
                        p.size
                    )));
                }
                p.min_size = *min_size;
                Ok(CommandResult::Pool(id))
            }
            Command::RemovePool { name } => {
                let id = self
                    .pool_by_name(name)
                    .ok_or_else(|| not_found("pool", name))?
                    .id;
                let n = self.images.values().filter(|i| i.pool == id).count();
                if n > 0 {
                    return Err(MapError::Invalid(format!(
                        "pool {name:?} still holds {n} image(s); remove them first"
                    )));
                }
                self.pools.remove(&id);
                self.pg_history.retain(|pg, _| pg.pool != id);
                Ok(CommandResult::Pool(id))
            }
            Command::PgsActivated { intervals } => {
                for (pg, interval) in intervals {
                    self.check_current_interval(*pg, interval)?;
                }
                for (pg, interval) in intervals {
                    let h = self.pg_history.entry(*pg).or_default();
                    if !h.contains(interval) {
                        h.push(interval.clone());
                        h.sort_by_key(|i| i.start);
                    }
                }
                Ok(CommandResult::Done)
            }
            Command::PgsClean { pgs } => {
                for (pg, start) in pgs {
                    let size = self.pools.get(&pg.pool).map_or(0, |p| p.size as usize);
                    if let Some(h) = self.pg_history.get_mut(pg) {
                        // The newest older interval whose acting set was full stays: its
                        // members keep their copies (strays are only what no history
                        // names), so a degraded PG still has them as a third copy.
                        let keep = if h
                            .iter()
                            .any(|i| i.start == *start && i.members.len() >= size)
                        {
                            None
                        } else {
                            h.iter()
                                .filter(|i| i.start < *start && i.members.len() >= size)
                                .map(|i| i.start)
                                .max()
                        };
                        h.retain(|i| i.start >= *start || Some(i.start) == keep);
                    }
                }
                Ok(CommandResult::Done)
            }
            Command::StartIntervals => {
                if self.pools_without_intervals().is_empty() {
                    return Err(MapError::Invalid(
                        "every pool already has interval starts".into(),
                    ));
                }
                Ok(CommandResult::Done)
            }
            Command::MarkOsdLost { id } => {
                let osd = self.osd_mut(*id)?;
                if osd.up {
                    return Err(MapError::Invalid(format!(
                        "{id} is up: only a down OSD can be declared lost"
                    )));
                }
                osd.is_in = false;
                for h in self.pg_history.values_mut() {
                    for i in h.iter_mut() {
                        i.members.retain(|m| m.osd != *id);
                    }
                    h.retain(|i| !i.members.is_empty());
                }
                self.pg_history.retain(|_, h| !h.is_empty());
                Ok(CommandResult::Done)
            }
        }
    }

    fn check_current_interval(&self, pg: PgId, interval: &PastInterval) -> Result<(), MapError> {
        let pool = self
            .pools
            .get(&pg.pool)
            .ok_or_else(|| not_found("pool", &pg.pool.to_string()))?;
        if pg.seed >= pool.pg_count {
            return Err(not_found("pg", &pg.to_string()));
        }
        let m = crate::pg::pg_mapping(self, pool, pg.seed);
        let current: Vec<(OsdId, Epoch)> = m
            .acting
            .iter()
            .map(|o| (*o, self.osd(*o).map(|i| i.up_from).unwrap_or(0)))
            .collect();
        let asked: Vec<(OsdId, Epoch)> = interval
            .members
            .iter()
            .map(|m| (m.osd, m.up_from))
            .collect();
        let by_members = crate::planted::active(crate::planted::Bug::IntervalByMembers);
        let same_start = by_members || self.interval_start(pg) == Some(interval.start);
        if current != asked || !m.is_active() || !same_start {
            return Err(MapError::Invalid(format!(
                "pg {pg}: interval {asked:?} from epoch {} is not current (acting {current:?} since epoch {:?})",
                interval.start,
                self.interval_start(pg)
            )));
        }
        Ok(())
    }
}

fn not_found(what: &str, name: &str) -> MapError {
    MapError::NotFound {
        what: what.into(),
        name: name.into(),
    }
}

/// Names of hosts, pools and images: 1..=64 characters of `[A-Za-z0-9_.-]`, not starting
/// with `.` or `-` (they appear in export names `pool/image` and in shell variables).
pub fn check_name(what: &str, name: &str) -> Result<(), MapError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(MapError::Invalid(format!(
            "{what} name {name:?} must be 1-64 characters of letters, digits, '_', '-', '.', not starting with '.' or '-'"
        )))
    }
}

fn check_image_size(size: u64) -> Result<(), MapError> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE as u64) || size > (1u64 << 50) {
        return Err(MapError::Invalid(format!(
            "image size {size} must be a non-zero multiple of {BLOCK_SIZE} bytes, at most 1 PiB"
        )));
    }
    Ok(())
}

/// Parses sizes like `4096`, `512K`, `10G`, `1.5T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                "P" => 1 << 50,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G, T)")),
            };
            (&s[..i], m)
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    if v.is_nan() || v < 0.0 || !v.is_finite() {
        return Err(format!("invalid size {s:?}"));
    }
    let bytes = v * mult as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_cmd(name: &str) -> Command {
        Command::CreatePool {
            name: name.into(),
            size: 3,
            min_size: 2,
            pg_count: 64,
            object_size: 128 << 10,
            failure_domain: FailureDomain::Host,
        }
    }

    #[test]
    fn a_pool_with_objects_larger_than_a_store_holds_is_refused() {
        let m = ClusterMap::new(7, vec![]);
        let big = |size| {
            let mut cmd = pool_cmd("big");
            if let Command::CreatePool { object_size, .. } = &mut cmd {
                *object_size = size;
            }
            cmd
        };
        let err = m.apply(&big(MAX_OBJECT_SIZE * 2)).unwrap_err().to_string();
        assert!(err.contains("largest object"), "{err}");
        assert!(m.apply(&big(MAX_OBJECT_SIZE)).is_ok());
    }

    #[test]
    fn epochs_grow_by_one_and_errors_change_nothing() {
        let m = ClusterMap::new(7, vec![]);
        let (m2, r) = m.apply(&pool_cmd("rbd")).unwrap();
        assert_eq!(r, CommandResult::Pool(1));
        assert_eq!(m2.epoch, m.epoch + 1);
        assert!(matches!(
            m2.apply(&pool_cmd("rbd")),
            Err(MapError::Exists { .. })
        ));
        let bad = Command::CreateImage {
            pool: "rbd".into(),
            name: "x".into(),
            size_bytes: 1000,
        };
        assert!(matches!(m2.apply(&bad), Err(MapError::Invalid(_))));
        let missing = Command::CreateImage {
            pool: "nope".into(),
            name: "x".into(),
            size_bytes: 4096,
        };
        assert!(matches!(m2.apply(&missing), Err(MapError::NotFound { .. })));
    }

    #[test]
    fn ids_are_never_reused() {
        let m = ClusterMap::new(7, vec![]);
        let (m, _) = m.apply(&pool_cmd("rbd")).unwrap();
        let mk = |n: &str| Command::CreateImage {
            pool: "rbd".into(),
            name: n.into(),
            size_bytes: 1 << 20,
        };
        let (m, a) = m.apply(&mk("a")).unwrap();
        let (m, _) = m
            .apply(&Command::RemoveImage {
                pool: "rbd".into(),
                name: "a".into(),
            })
            .unwrap();
        let (_, b) = m.apply(&mk("a")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn boot_needs_the_recorded_store_and_makes_a_new_incarnation() {
        let m = ClusterMap::new(7, vec![]);
        let create = Command::CreateOsd {
            host: "h1".into(),
            weight: WEIGHT_ONE,
            store_uuid: 42,
            capacity_bytes: 1 << 30,
        };
        let (m, r) = m.apply(&create).unwrap();
        assert_eq!(r, CommandResult::Osd(OsdId(0)));
        assert!(matches!(m.apply(&create), Err(MapError::Exists { .. })));
        let wrong = Command::BootOsd {
            process: 1,
            id: OsdId(0),
            store_uuid: 43,
            addr: "127.0.0.1:1".into(),
        };
        assert!(matches!(
            m.apply(&wrong),
            Err(MapError::StoreMismatch { .. })
        ));
        let boot = Command::BootOsd {
            process: 1,
            id: OsdId(0),
            store_uuid: 42,
            addr: "127.0.0.1:1".into(),
        };
        let (m, _) = m.apply(&boot).unwrap();
        let first = m.osd(OsdId(0)).unwrap().up_from;
        assert_eq!(first, m.epoch);
        let (m, _) = m.apply(&boot).unwrap();
        assert!(m.osd(OsdId(0)).unwrap().up_from > first);
        let stale = Command::MarkOsdDown {
            id: OsdId(0),
            up_from: first,
        };
        assert!(matches!(
            m.apply(&stale),
            Err(MapError::StaleIncarnation { .. })
        ));
        let down = Command::MarkOsdDown {
            id: OsdId(0),
            up_from: m.osd(OsdId(0)).unwrap().up_from,
        };
        let (m, _) = m.apply(&down).unwrap();
        assert!(!m.osd(OsdId(0)).unwrap().up);
        let (m, _) = m.apply(&boot).unwrap();
        let up_from = m.osd(OsdId(0)).unwrap().up_from;
        let failed = Command::MarkOsdFailed {
            id: OsdId(0),
            up_from,
            reason: "EIO".into(),
        };
        let (m, _) = m.apply(&failed).unwrap();
        let o = m.osd(OsdId(0)).unwrap();
        assert!(!o.up && !o.is_in, "a failed device is down and out at once");
    }

    /// Four OSDs on four hosts, each booted, and a pool of 3 copies.
    fn four_osds_and_a_pool() -> ClusterMap {
        let mut m = ClusterMap::new(7, vec![]);
        for i in 0..4u32 {
            let create = Command::CreateOsd {
                host: format!("h{i}"),
                weight: WEIGHT_ONE,
                store_uuid: 100 + i as u128,
                capacity_bytes: 1 << 30,
            };
            m = m.apply(&create).unwrap().0;
            m = m.apply(&boot_cmd(i, 1)).unwrap().0;
        }
        m.apply(&pool_cmd("rbd")).unwrap().0
    }

    fn boot_cmd(id: u32, process: u64) -> Command {
        Command::BootOsd {
            id: OsdId(id),
            store_uuid: 100 + id as u128,
            addr: format!("127.0.0.1:{}", 7000 + id),
            process,
        }
    }

    fn down(m: ClusterMap, id: u32) -> ClusterMap {
        let up_from = m.osd(OsdId(id)).unwrap().up_from;
        m.apply(&Command::MarkOsdDown {
            id: OsdId(id),
            up_from,
        })
        .unwrap()
        .0
    }

    #[test]
    fn an_osd_out_by_the_down_out_timer_is_in_again_when_it_boots() {
        let m = down(four_osds_and_a_pool(), 3);
        let up_from = m.osd(OsdId(3)).unwrap().up_from;
        // A stale incarnation, or an OSD that is up, is not marked out by the timer.
        let stale = Command::AutoMarkOsdOut {
            id: OsdId(3),
            up_from: up_from - 1,
        };
        assert!(matches!(
            m.apply(&stale),
            Err(MapError::StaleIncarnation { .. })
        ));
        let timer = Command::AutoMarkOsdOut {
            id: OsdId(3),
            up_from,
        };
        let (out, _) = m.apply(&timer).unwrap();
        assert!(!out.osd(OsdId(3)).unwrap().is_in);
        assert!(out.auto_out.contains(&3));
        // Its PGs moved: the PGs that placed it start new intervals.
        let pool = out.pool_by_name("rbd").unwrap().clone();
        let placed: Vec<u32> = crate::pg::pool_mappings(&m, &pool)
            .iter()
            .filter(|p| p.osds.contains(&OsdId(3)))
            .map(|p| p.pg.seed)
            .collect();
        assert!(!placed.is_empty());
        for seed in &placed {
            assert_eq!(out.pg_intervals[&pool.id][*seed as usize], out.epoch);
        }
        // It boots (a new process): in again, and its PGs start new intervals again.
        let (back, _) = out.apply(&boot_cmd(3, 2)).unwrap();
        let o = back.osd(OsdId(3)).unwrap();
        assert!(o.up && o.is_in, "{o:?}");
        assert!(back.auto_out.is_empty());
        for seed in &placed {
            assert_eq!(back.pg_intervals[&pool.id][*seed as usize], back.epoch);
        }
        assert_eq!(
            crate::pg::pool_mappings(&back, &pool)
                .iter()
                .map(|p| p.osds.clone())
                .collect::<Vec<_>>(),
            crate::pg::pool_mappings(&m, &pool)
                .iter()
                .map(|p| p.osds.clone())
                .collect::<Vec<_>>(),
            "the placement is what it was before the OSD went down"
        );
    }

    #[test]
    fn an_osd_the_operator_marked_out_stays_out_when_it_boots() {
        let m = down(four_osds_and_a_pool(), 3);
        let up_from = m.osd(OsdId(3)).unwrap().up_from;
        let out_cmd = Command::MarkOsdOut { id: OsdId(3) };
        // Out by the operator.
        let (op, _) = m.apply(&out_cmd).unwrap();
        let (booted, _) = op.apply(&boot_cmd(3, 2)).unwrap();
        assert!(!booted.osd(OsdId(3)).unwrap().is_in);
        // Out by the timer, then by the operator too: the operator's word stands.
        let timer = Command::AutoMarkOsdOut {
            id: OsdId(3),
            up_from,
        };
        let (auto, _) = m.apply(&timer).unwrap();
        let (both, _) = auto.apply(&out_cmd).unwrap();
        assert!(both.auto_out.is_empty());
        assert!(matches!(both.apply(&out_cmd), Err(MapError::Invalid(_))));
        let (booted, _) = both.apply(&boot_cmd(3, 2)).unwrap();
        assert!(!booted.osd(OsdId(3)).unwrap().is_in);
        // Out by the timer, then the operator's in: nothing is left to undo at boot.
        let (op_in, _) = auto.apply(&Command::MarkOsdIn { id: OsdId(3) }).unwrap();
        assert!(op_in.auto_out.is_empty());
        // Out by the timer, booted (in again), then its device failed: out for good.
        let (booted, _) = auto.apply(&boot_cmd(3, 2)).unwrap();
        let failed = Command::MarkOsdFailed {
            id: OsdId(3),
            up_from: booted.osd(OsdId(3)).unwrap().up_from,
            reason: "EIO".into(),
        };
        let (failed, _) = booted.apply(&failed).unwrap();
        let (again, _) = failed.apply(&boot_cmd(3, 3)).unwrap();
        assert!(!again.osd(OsdId(3)).unwrap().is_in);
    }

    #[test]
    fn full_ratios_classify_and_validate() {
        let r = FullRatios::default();
        assert_eq!(r.classify(0, 100), Fullness::Ok);
        assert_eq!(r.classify(86, 100), Fullness::Nearfull);
        assert_eq!(r.classify(90, 100), Fullness::Backfillfull);
        assert_eq!(r.classify(95, 100), Fullness::Full);
        assert_eq!(r.classify(1, 0), Fullness::Full);
        let m = ClusterMap::new(7, vec![]);
        let bad = FullRatios {
            nearfull: 900,
            backfillfull: 800,
            full: 950,
        };
        assert!(matches!(
            m.apply(&Command::SetFullRatios { ratios: bad }),
            Err(MapError::Invalid(_))
        ));
        let ok = FullRatios {
            nearfull: 500,
            backfillfull: 600,
            full: 700,
        };
        assert_eq!(
            m.apply(&Command::SetFullRatios { ratios: ok })
                .unwrap()
                .0
                .ratios,
            ok
        );
    }

    #[test]
    fn names_and_sizes_are_checked() {
        assert!(check_name("pool", "rbd").is_ok());
        assert!(check_name("pool", "").is_err());
        assert!(check_name("pool", "a/b").is_err());
        assert!(check_name("pool", "-x").is_err());
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1G").is_err());
    }
}
