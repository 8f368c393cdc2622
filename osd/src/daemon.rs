//! The OSD daemon's shared state and request dispatch.
//!
//! Start-up: open the store → check it against the map (cluster fsid, OSD id, store uuid)
//! → listen → register a new incarnation with the monitor → serve once the map shows that
//! incarnation. Every op carries the sender's epoch: an op from the future makes the OSD
//! wait for that map first; an op older than its PG's interval is refused with
//! `StaleEpoch` so the client refreshes its map.

use crate::peering::Batcher;
use crate::pgmeta::{self, PgMeta};
use crate::pgs::{PgInfo, PgTable};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use net::conn::Responder;
use net::{Conn, ConnCache};
use proto::frame::Frame;
use proto::msg::{
    decode_control, encode_control, msg_type, ControlRequest, ControlResponse, ObjectOp,
    ObjectReply, Status,
};
use proto::{ClusterMap, Epoch, ObjectId, OsdId, PgId, Version};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Mutex as AsyncMutex, MutexGuard, Notify, Semaphore};

/// Objects this OSD recovers at once, over all its PGs (client ops are not limited).
const RECOVERY_SLOTS: usize = 4;

/// Object lock stripes: ops on one object are serialised (reads wait for in-flight writes);
/// ops on different objects rarely share a stripe.
const LOCK_STRIPES: usize = 4096;

/// How long an op from a newer epoch waits for this OSD to get that map.
const MAP_WAIT: Duration = Duration::from_secs(5);

pub struct Osd {
    pub id: OsdId,
    pub store: Arc<Store>,
    pub map: watch::Receiver<Arc<ClusterMap>>,
    /// This process's incarnation, once the monitor has committed the boot.
    pub up_from: AtomicU64,
    pub pgs: Mutex<PgTable>,
    locks: Vec<AsyncMutex<()>>,
    peers: ConnCache<OsdId>,
    /// Records activations and clean PGs at the monitors.
    pub batcher: Batcher,
    /// Per-PG metadata (LES, missing), loaded from the store on first use.
    metas: AsyncMutex<BTreeMap<PgId, PgMeta>>,
    pub recovery: Semaphore,
    /// Woken whenever a PG changes phase (ops waiting for a peering PG).
    pub pg_event: Notify,
    /// Peering queries hold it shared, stray removal exclusively: a query never lists an
    /// object that a removal decided on an older map is about to delete.
    pub stray_gate: tokio::sync::RwLock<()>,
    pub leases: crate::lease::Leases,
    /// Ops that may still change the store, by the PG interval they were admitted in.
    pub fence: OpFence,
}

/// The ops of each PG interval that may still change this OSD's store (client writes on
/// the primary, replica writes, pushes, recovery pulls, activations).
///
/// Invariant: an op enters (under the PG table's lock) only after checking that its PG is
/// still in the interval it belongs to, and leaves when its store writes are done. A new
/// interval's peering query is answered only once no op of an earlier interval is left
/// (`drain_before`): ops that were admitted before this OSD saw the new map have finished
/// and are in what the answer lists, and any later op of an old interval fails its check.
/// So an answer is final: nothing of an ended interval lands after it.
#[derive(Default)]
pub struct OpFence {
    inflight: Mutex<BTreeMap<(PgId, Epoch), usize>>,
    left: Notify,
}

/// An admitted op; it leaves the fence when dropped.
pub struct OpTicket<'a> {
    fence: &'a OpFence,
    key: (PgId, Epoch),
}

impl OpFence {
    /// Admits an op of `pg`'s interval `start`. Call with the PG table locked, after
    /// checking that the PG is in that interval.
    pub fn enter(&self, pg: PgId, start: Epoch) -> OpTicket<'_> {
        *crate::lock(&self.inflight).entry((pg, start)).or_insert(0) += 1;
        OpTicket {
            fence: self,
            key: (pg, start),
        }
    }

    fn others(&self, pg: PgId, current: Option<Epoch>) -> usize {
        crate::lock(&self.inflight)
            .iter()
            .filter(|((p, s), n)| *p == pg && Some(*s) != current && **n > 0)
            .map(|(_, n)| *n)
            .sum()
    }
}

impl Drop for OpTicket<'_> {
    fn drop(&mut self) {
        let mut m = crate::lock(&self.fence.inflight);
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
        drop(m);
        self.fence.left.notify_waiters();
    }
}

impl Osd {
    pub fn new(
        id: OsdId,
        store: Arc<Store>,
        map: watch::Receiver<Arc<ClusterMap>>,
        batcher: Batcher,
    ) -> Arc<Osd> {
        Arc::new(Osd {
            id,
            store,
            map,
            up_from: AtomicU64::new(0),
            pgs: Mutex::new(PgTable::default()),
            locks: (0..LOCK_STRIPES).map(|_| AsyncMutex::new(())).collect(),
            peers: ConnCache::default(),
            batcher,
            metas: AsyncMutex::new(BTreeMap::new()),
            recovery: Semaphore::new(RECOVERY_SLOTS),
            pg_event: Notify::new(),
            stray_gate: tokio::sync::RwLock::new(()),
            leases: Default::default(),
            fence: OpFence::default(),
        })
    }

    /// Admits an op of `pg` if the PG is in the interval `start` here and `ok` holds for it.
    pub fn admit(
        &self,
        pg: PgId,
        start: Epoch,
        ok: impl FnOnce(&PgInfo) -> bool,
    ) -> Option<OpTicket<'_>> {
        let pgs = crate::lock(&self.pgs);
        pgs.pgs
            .get(&pg)
            .filter(|i| i.interval_start == start && ok(i))
            .map(|_| self.fence.enter(pg, start))
    }

    /// Returns once no op of an interval of `pg` other than the current one is left.
    pub async fn drain_before(&self, pg: PgId) {
        let began = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            let left = self.fence.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            let current = crate::lock(&self.pgs)
                .pgs
                .get(&pg)
                .map(|i| i.interval_start);
            let n = self.fence.others(pg, current);
            if n == 0 {
                return;
            }
            if !warned && began.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(%pg, ops = n, "a peering answer still waits for ops of an ended interval");
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), left).await;
        }
    }

    /// Runs `f` on the PG if it is still in the interval `start`; false if it is not.
    pub fn update_pg(&self, pg: PgId, start: Epoch, f: impl FnOnce(&mut PgInfo)) -> bool {
        let mut pgs = net::sync::lock(&self.pgs);
        match pgs.pgs.get_mut(&pg).filter(|i| i.interval_start == start) {
            Some(i) => {
                f(i);
                true
            }
            None => false,
        }
    }

    /// The primary's copy of `object` is damaged (it failed its checksum): recovery pulls
    /// it from the other members before anything reads or pushes it.
    pub fn note_bad_copy(
        self: &Arc<Self>,
        pg: PgId,
        start: Epoch,
        object: ObjectId,
        version: Version,
    ) {
        let me = self.id;
        let marked = self.update_pg(pg, start, |i| {
            let others: Vec<OsdId> = i
                .mapping
                .acting
                .iter()
                .copied()
                .filter(|o| *o != me && !i.is_missing(*o, &object))
                .collect();
            i.missing.entry(me).or_default().insert(object, version);
            i.sources.insert(object, others);
        });
        if marked {
            crate::peering::ensure_recovery(self, pg, start);
        }
    }

    /// Reads the primary's whole copy of `object` (at `version`) to push it to a member. A
    /// copy that fails its checksum is marked bad (recovery pulls it from another member
    /// before anything pushes it) rather than read again and again, each time counting
    /// towards the device's error limit.
    pub async fn read_copy_to_push(
        self: &Arc<Self>,
        pg: PgId,
        start: Epoch,
        object: ObjectId,
        version: Version,
        size: u32,
    ) -> Result<Bytes, StoreError> {
        match self.store.read(object, 0, size).await {
            Ok((data, _, _)) => Ok(data),
            Err(e @ StoreError::Checksum { .. }) => {
                self.note_bad_copy(pg, start, object, version);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The state of every PG this OSD is the primary of, for the monitors.
    pub fn primary_stats(&self) -> Vec<proto::msg::PgStat> {
        let map = self.current_map();
        let pgs = net::sync::lock(&self.pgs);
        let mut v: Vec<_> = pgs
            .pgs
            .values()
            .filter(|i| i.mapping.primary() == Some(self.id))
            .map(|i| {
                let size = map.pools.get(&i.mapping.pg.pool).map_or(0, |p| p.size);
                i.stat(size as usize)
            })
            .collect();
        v.sort_by_key(|s| s.pg);
        v
    }

    /// Counts a client op the PG could not serve (shown as blocked ops in `atlant status`).
    pub fn note_blocked(&self, pg: PgId) {
        let mut pgs = net::sync::lock(&self.pgs);
        if let Some(i) = pgs.pgs.get_mut(&pg) {
            i.blocked_ops += 1;
        }
    }

    pub async fn pg_meta(&self, pg: PgId) -> Result<PgMeta, StoreError> {
        let mut metas = self.metas.lock().await;
        if let Some(m) = metas.get(&pg) {
            return Ok(m.clone());
        }
        let m = pgmeta::load(&self.store, pg).await?;
        metas.insert(pg, m.clone());
        Ok(m)
    }

    pub async fn forget_pg_meta(&self, pg: PgId) {
        self.metas.lock().await.remove(&pg);
    }

    /// Persists `meta`. Its `last_epoch_started` never goes back: an activation of an
    /// older interval than the one this OSD last helped activate is refused (`unchecked`:
    /// the planted bug that wrote it anyway).
    pub async fn set_pg_meta(&self, pg: PgId, meta: PgMeta, unchecked: bool) -> Result<(), String> {
        let mut metas = self.metas.lock().await;
        let old = match metas.get(&pg) {
            Some(m) => m.last_epoch_started,
            None => {
                pgmeta::load(&self.store, pg)
                    .await
                    .map_err(|e| e.to_string())?
                    .last_epoch_started
            }
        };
        if meta.last_epoch_started < old && !unchecked {
            return Err(format!(
                "{}: pg {pg}: refusing an activation for the interval from epoch {}: this OSD already activated the one from epoch {old}",
                self.id, meta.last_epoch_started
            ));
        }
        pgmeta::save(&self.store, pg, &meta)
            .await
            .map_err(|e| e.to_string())?;
        metas.insert(pg, meta);
        Ok(())
    }

    pub fn current_map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    pub fn epoch(&self) -> Epoch {
        self.map.borrow().epoch
    }

    /// True once the map shows this process's incarnation up.
    pub fn is_serving(&self) -> bool {
        let up_from = self.up_from.load(Ordering::SeqCst);
        up_from != 0
            && self
                .current_map()
                .osd(self.id)
                .is_some_and(|o| o.up && o.up_from == up_from)
    }

    pub async fn lock_object(&self, object: &ObjectId) -> MutexGuard<'_, ()> {
        let stripe = (object.stable_hash() % LOCK_STRIPES as u64) as usize;
        self.locks[stripe].lock().await
    }

    /// Applies a new map to the PG table (called by the map loop for every map, and once
    /// more when this process's incarnation is known) and starts peering the PGs whose new
    /// interval this OSD leads. Until the map shows this incarnation up, the OSD acts in no
    /// PG: a map that still shows the previous incarnation is not this process's to serve.
    pub fn apply_map(self: &Arc<Self>, map: &ClusterMap) {
        let up_from = self.up_from.load(Ordering::SeqCst);
        let serving = up_from != 0
            && map
                .osd(self.id)
                .is_some_and(|o| o.up && o.up_from == up_from);
        let to_peer = {
            let mut pgs = net::sync::lock(&self.pgs);
            if !serving {
                pgs.pgs.clear();
                return;
            }
            if map.epoch <= pgs.epoch && !pgs.pgs.is_empty() {
                return;
            }
            pgs.apply_map(self.id, map)
        };
        for (pg, start) in to_peer {
            crate::peering::start(self, pg, start);
        }
        self.pg_event.notify_waiters();
    }

    /// Waits until this OSD has a map of at least `epoch`; false on timeout.
    pub async fn wait_for_epoch(&self, epoch: Epoch) -> bool {
        if self.epoch() >= epoch {
            return true;
        }
        let mut rx = self.map.clone();
        let done = tokio::time::timeout(MAP_WAIT, rx.wait_for(|m| m.epoch >= epoch)).await;
        matches!(done, Ok(Ok(_)))
    }

    /// A connection to a peer OSD at its address in `map`.
    pub async fn peer(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<Conn>, String> {
        let addr = map
            .osd(osd)
            .map(|o| o.addr.as_str())
            .ok_or_else(|| format!("{osd} is not in the map"))?;
        self.peers.get(osd, addr).await.map_err(|e| e.to_string())
    }
}

/// Entry point for every frame the OSD receives.
pub async fn handle(osd: Arc<Osd>, f: Frame, r: Responder) {
    match f.msg_type {
        msg_type::OBJECT_OP | msg_type::REPLICA_OP => {
            let (reply, data) = match ObjectOp::decode(&f.meta, f.data.len()) {
                Ok(op) => {
                    if f.msg_type == msg_type::OBJECT_OP {
                        crate::primary::handle(&osd, op, f.data).await
                    } else {
                        crate::replica::handle(&osd, op, f.data).await
                    }
                }
                Err(e) => {
                    tracing::warn!("malformed object op: {e}");
                    (
                        ObjectReply::status(Status::Invalid, osd.epoch()),
                        Bytes::new(),
                    )
                }
            };
            r.reply(msg_type::OBJECT_REPLY, reply.encode_meta(), data);
        }
        msg_type::CONTROL => {
            let resp = match decode_control::<ControlRequest>(&f.meta) {
                Ok(ControlRequest::ListObjects { pool }) => ControlResponse::Objects(
                    osd.store
                        .list(pool)
                        .into_iter()
                        .filter(|e| !e.object.is_pg_meta() && !e.version.is_none())
                        .collect(),
                ),
                Ok(ControlRequest::PgQuery {
                    pg, epoch, primary, ..
                }) => match crate::peering::on_query(&osd, pg, epoch, primary).await {
                    Ok(info) => ControlResponse::PgPeerInfo(Box::new(info)),
                    Err(e) => ControlResponse::Error(e),
                },
                Ok(ControlRequest::PgActivate {
                    pg,
                    epoch,
                    interval_start,
                    missing,
                }) => match crate::peering::on_activate(&osd, pg, epoch, interval_start, missing)
                    .await
                {
                    Ok(()) => ControlResponse::Ok,
                    Err(e) => ControlResponse::Error(e),
                },
                Ok(ControlRequest::Heartbeat { from, epoch }) => {
                    // Answering renews the sender's read lease (if the map has that
                    // incarnation up); the answer says whether it did.
                    if osd.leases.grant(&osd.current_map(), from, epoch) {
                        ControlResponse::Ok
                    } else {
                        ControlResponse::Error(format!(
                            "{} grants {from} no read lease: the map of epoch {} does not show that incarnation up",
                            osd.id,
                            osd.epoch()
                        ))
                    }
                }
                Ok(ControlRequest::Flush) => match osd.store.flush().await {
                    Ok(()) => ControlResponse::Ok,
                    Err(e) => ControlResponse::Error(e.to_string()),
                },
                Ok(other) => ControlResponse::Error(format!("an OSD does not serve {other:?}")),
                Err(e) => ControlResponse::Error(e.to_string()),
            };
            r.reply(msg_type::CONTROL, encode_control(&resp), Bytes::new());
        }
        other => {
            tracing::warn!("unknown message type {other}");
            let resp = ControlResponse::Error(format!("unknown message type {other}"));
            r.reply(msg_type::CONTROL, encode_control(&resp), Bytes::new());
        }
    }
}
