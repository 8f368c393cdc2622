//! The map service: applies commands to the map one at a time, persists each new map
//! before anyone sees it, and publishes it to subscribers.
//!
//! Invariant: the published map is always the latest durably stored one; a command is
//! acknowledged only after its map is on disk. The quorum issue replaces the single store
//! with a Raft log that drives the same `ClusterMap::apply`.

use crate::store::{MonStore, StoreError};
use proto::msg::{MonStatus, OsdStats, StatusReport};
use proto::{ClusterMap, Command, CommandResult, Epoch, MapError, OsdId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Refused(#[from] MapError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct MapService {
    name: String,
    addr: String,
    store: Mutex<MonStore>,
    current: watch::Sender<Arc<ClusterMap>>,
    stats: Mutex<BTreeMap<u32, (Epoch, OsdStats)>>,
    /// When each OSD incarnation last reported (its lease), by OSD id.
    last_report: Mutex<BTreeMap<u32, (Epoch, Instant)>>,
}

impl MapService {
    pub fn new(name: String, addr: String, store: MonStore, map: ClusterMap) -> Arc<Self> {
        let (current, _) = watch::channel(Arc::new(map));
        Arc::new(MapService {
            name,
            addr,
            store: Mutex::new(store),
            current,
            stats: Mutex::new(BTreeMap::new()),
            last_report: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.current.subscribe()
    }

    /// Applies a command: validated, persisted, then published.
    pub fn apply(&self, cmd: &Command) -> Result<(Epoch, CommandResult), ServiceError> {
        // The store lock serialises commands, so each applies to the latest map.
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let (next, result) = self.map().apply(cmd)?;
        store.save(&next)?;
        let epoch = next.epoch;
        tracing::info!(epoch, ?cmd, "map committed");
        self.current.send_replace(Arc::new(next));
        Ok((epoch, result))
    }

    pub fn map_at(&self, epoch: Epoch) -> Option<ClusterMap> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.map_at(epoch).ok().flatten()
    }

    /// Records an OSD's usage report if it is about the current incarnation, and commits a
    /// change of its fullness (so primaries refuse writes before a replica overflows).
    pub fn report(&self, id: OsdId, up_from: Epoch, s: OsdStats) -> bool {
        let map = self.map();
        let Some(osd) = map.osd(id).filter(|o| o.up_from == up_from) else {
            return false;
        };
        let fullness = map.ratios.classify(s.used_bytes, s.capacity_bytes);
        let changed = osd.fullness != fullness;
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.0, (up_from, s));
        if changed {
            if let Err(e) = self.apply(&Command::SetOsdFullness { id, fullness }) {
                tracing::warn!(%id, "cannot record fullness {fullness:?}: {e}");
            }
        }
        true
    }

    /// Marks down every up OSD whose incarnation has not reported for longer than `grace`
    /// (counted from when this monitor first saw the incarnation up).
    /// A restarted OSD registers a new incarnation and is up again at once; one wrongly
    /// marked down registers again itself.
    pub fn expire_leases(&self, grace: Duration) {
        let map = self.map();
        let now = Instant::now();
        let expired: Vec<(OsdId, Epoch, Duration)> = {
            let mut seen = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
            let mut expired = Vec::new();
            for o in map.osds.values().filter(|o| o.up) {
                match seen.get(&o.id.0) {
                    Some((inc, t)) if *inc == o.up_from => {
                        let silent = now.duration_since(*t);
                        if silent > grace {
                            expired.push((o.id, o.up_from, silent));
                        }
                    }
                    // An incarnation not heard from yet (new boot, or this monitor just
                    // started): its lease starts now.
                    _ => {
                        seen.insert(o.id.0, (o.up_from, now));
                    }
                }
            }
            expired
        };
        for (id, up_from, silent) in expired {
            tracing::warn!(%id, silent_ms = silent.as_millis() as u64, "no report within the grace period: marking down");
            if let Err(e) = self.apply(&Command::MarkOsdDown { id, up_from }) {
                tracing::debug!(%id, "mark down: {e}");
            }
        }
    }

    pub fn status(&self) -> StatusReport {
        let map = (*self.map()).clone();
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let osd_stats = stats.iter().map(|(id, (_, s))| (*id, s.clone())).collect();
        let mons = vec![MonStatus {
            name: self.name.clone(),
            addr: self.addr.clone(),
            in_quorum: true,
            leader: true,
        }];
        StatusReport {
            map,
            mons,
            osd_stats,
        }
    }
}
