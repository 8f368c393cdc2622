//! A cluster handle: the cached map, connections to OSDs, and object ops that survive map
//! changes and connection loss.
//!
//! Each object op is sent to the PG's primary as computed from the cached map. The op keeps
//! its identity (client instance, tid) across resends, so a primary that already applied it
//! answers instead of applying it twice. Resend rules:
//! - `StaleEpoch` / `NotPrimary`: wait for a map at least as new as the OSD's, resend;
//! - `PgInactive` (a member is down, an OSD is starting): back off, resend;
//! - connection lost or timed out: back off, fetch the map, resend;
//! - anything else is returned to the caller.
//!
//! The op gives up only after `op_deadline` (a transient outage must not become an EIO in
//! the guest).

use crate::monc::{MonClient, MonError};
use bytes::Bytes;
use net::sync::Cancel;
use net::{Conn, ConnCache};
use proto::msg::{msg_type, op, ObjectOp, ObjectReply, Status};
use proto::pg::{pool_mappings, PgMapping};
use proto::placement::object_pg;
use proto::{ClusterMap, Epoch, ObjectId, OpId, OsdId, PgId, Version};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a starting client waits for a monitor to answer.
pub const MON_WAIT: Duration = Duration::from_secs(60);

pub const OSD_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Mon(#[from] MonError),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no space left in the cluster ({0})")]
    NoSpace(String),
    #[error("io error on object {object}: {reason}")]
    Io { object: ObjectId, reason: String },
    #[error("the request was cancelled (its connection closed)")]
    Cancelled,
    #[error("object {object}: gave up after {secs} s: {last}")]
    Timeout {
        object: ObjectId,
        secs: u64,
        last: String,
    },
}

/// Every PG mapping of each pool, by pool id.
type PoolMappings = HashMap<u32, Arc<Vec<PgMapping>>>;

pub struct Cluster {
    mon: Arc<MonClient>,
    map: Arc<watch::Sender<Arc<ClusterMap>>>,
    conns: ConnCache<OsdId>,
    /// PG mappings of the map at `.0`, per pool, computed once per map.
    mappings: Mutex<(Epoch, PoolMappings)>,
    client_id: u64,
    next_tid: AtomicU64,
    pub op_deadline: Duration,
    observer: OnceLock<Arc<dyn OpObserver>>,
}

/// Sees every object op that a primary answered, with the moment it started: the
/// simulator's check that the versions replies report never go backwards per object.
pub trait OpObserver: Send + Sync {
    /// An op on `object` starts (before its first attempt); the value returned is passed
    /// to `answered` with its reply.
    fn started(&self, object: &ObjectId) -> u64;
    /// The op started as `started` was answered `Status::Ok` with `reply`.
    fn answered(&self, started: u64, req: &ObjectRequest, reply: &ObjectReply);
}

/// What to do with an object.
pub struct ObjectRequest {
    pub object: ObjectId,
    pub op: u8,
    pub flags: u8,
    pub offset: u32,
    pub length: u32,
    pub data: Bytes,
    pub crcs: Vec<u32>,
}

impl Cluster {
    /// Connects to the monitors, fetches the map and subscribes to updates.
    pub async fn connect(mon_addrs: Vec<String>) -> Result<Arc<Cluster>, ClientError> {
        let mon = MonClient::new(mon_addrs)?;
        let map = mon.wait_for_map(MON_WAIT).await?;
        let map = mon.subscribe(map);
        Ok(Arc::new(Cluster {
            mon,
            map,
            conns: ConnCache::default(),
            mappings: Mutex::new((0, HashMap::new())),
            client_id: net::rt::random_u64() | 1,
            next_tid: AtomicU64::new(1),
            op_deadline: Duration::from_secs(300),
            observer: OnceLock::new(),
        }))
    }

    /// Installs the observer of this client's ops (once; later calls are ignored).
    pub fn observe(&self, observer: Arc<dyn OpObserver>) {
        let _ = self.observer.set(observer);
    }

    pub fn mon(&self) -> &Arc<MonClient> {
        &self.mon
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// A receiver that sees every new map.
    pub fn watch_map(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map.subscribe()
    }

    /// Waits (up to `timeout`) for a map of at least `epoch`; asks the monitor directly if
    /// the subscription is slow.
    pub async fn wait_for_epoch(&self, epoch: Epoch, timeout: Duration) -> Arc<ClusterMap> {
        let mut rx = self.map.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|m| m.epoch >= epoch)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::debug!(
                epoch,
                "map subscription behind; map now {}",
                self.map().epoch
            );
        }
        self.map()
    }

    async fn osd_conn(&self, map: &ClusterMap, osd: OsdId) -> Result<Arc<Conn>, String> {
        let addr = map
            .osd(osd)
            .map(|o| o.addr.as_str())
            .ok_or_else(|| format!("{osd} not in map"))?;
        self.conns.get(osd, addr).await.map_err(|e| e.to_string())
    }

    /// Runs one object op to completion (see the module header for the resend rules).
    pub async fn object_op(
        &self,
        req: &ObjectRequest,
    ) -> Result<(ObjectReply, Bytes), ClientError> {
        self.object_op_cancellable(req, &Cancel::never()).await
    }

    /// Like `object_op`, but stops resending once `cancel` is set, and returns only when
    /// the op can no longer change anything (`ClientError::Cancelled`): a write whose
    /// attempt is on its way waits for its answer, or for the PG's interval to end (an op
    /// of an ended interval cannot land once the next one is active, and nothing is served
    /// before that); one whose answer was lost is fenced at the primary (`op::FENCE`). So a
    /// cancelled write never lands after a write that follows it.
    pub async fn object_op_cancellable(
        &self,
        req: &ObjectRequest,
        cancel: &Cancel,
    ) -> Result<(ObjectReply, Bytes), ClientError> {
        let op_id = OpId {
            client: self.client_id,
            tid: self.next_tid.fetch_add(1, Ordering::Relaxed),
        };
        self.run_op(req, op_id, cancel).await
    }

    async fn run_op(
        &self,
        req: &ObjectRequest,
        op_id: OpId,
        cancel: &Cancel,
    ) -> Result<(ObjectReply, Bytes), ClientError> {
        let start = Instant::now();
        let observed = self.observer.get().map(|o| (o, o.started(&req.object)));
        let mut backoff = Duration::from_millis(5);
        let mut last = String::new();
        let mut attempts = 0u32;
        // The interval of the last attempt whose fate is unknown (its answer was lost):
        // it may still land while that interval lasts.
        let mut unknown: Option<(PgId, Epoch)> = None;
        let mutates = req.op != op::READ;
        let cancelled = |unknown: Option<(PgId, Epoch)>| async move {
            match unknown.filter(|_| mutates) {
                Some((pg, interval)) => self.settle(req, op_id, pg, interval).await,
                None => Err(ClientError::Cancelled),
            }
        };
        loop {
            attempts += 1;
            if attempts.is_multiple_of(50) {
                tracing::warn!(object = %req.object, attempts, secs = start.elapsed().as_secs(), "op still waiting: {last}");
            }
            if cancel.is_cancelled() {
                return cancelled(unknown).await;
            }
            if start.elapsed() > self.op_deadline {
                return Err(ClientError::Timeout {
                    object: req.object,
                    secs: start.elapsed().as_secs(),
                    last,
                });
            }
            let map = self.map();
            let pool = map
                .pools
                .get(&req.object.pool)
                .ok_or_else(|| ClientError::NotFound(format!("pool {}", req.object.pool)))?;
            if !proto::placement::supports(pool) {
                return Err(ClientError::Invalid(format!(
                    "pool {} uses placement algorithm {}, this client knows {}: upgrade it",
                    pool.name,
                    pool.placement,
                    proto::placement::PLACEMENT_ALGORITHM
                )));
            }
            let pg = object_pg(&req.object, pool);
            let mappings = self.mappings_of(&map, pool);
            let Some(mapping) = mappings.get(pg.seed as usize) else {
                return Err(ClientError::Invalid(format!(
                    "pg {pg} outside pool {}",
                    pool.name
                )));
            };
            // An unknown attempt of an interval that has ended can no longer land.
            if unknown.is_some_and(|(_, i)| i != mapping.interval) {
                unknown = None;
            }
            let Some(primary) = mapping.primary().filter(|_| mapping.can_serve()) else {
                last = format!("pg {pg} is {}", mapping.state.name());
                self.pause_or_cancel(&mut backoff, &map, cancel).await;
                continue;
            };
            let op = ObjectOp {
                op: req.op,
                flags: req.flags,
                object: req.object,
                pg,
                object_size: pool.object_size,
                epoch: map.epoch,
                op_id,
                offset: req.offset,
                length: req.length,
                version: Version::NONE,
                prev: Version::NONE,
                crcs: req.crcs.clone(),
            };
            let conn = match self.osd_conn(&map, primary).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{primary}: {e}");
                    self.pause_or_cancel(&mut backoff, &map, cancel).await;
                    continue;
                }
            };
            let call = conn.call(
                msg_type::OBJECT_OP,
                op.encode_meta(),
                req.data.clone(),
                OSD_CALL_TIMEOUT,
            );
            // A primary the map has replaced (cut off, hung) may never answer: the op goes
            // to the new interval at once. The old one cannot complete it any more (its
            // replicas refuse ops of an ended interval), and the op keeps its identity.
            let replaced = self.interval_changes(&map, pool.id, pg.seed, mapping.interval);
            tokio::pin!(call, replaced);
            let orphaned = proto::planted::active(proto::planted::Bug::OrphanedRequests);
            let answered = tokio::select! {
                biased;
                r = &mut call => Some(r),
                _ = &mut replaced => None,
                _ = cancel.cancelled(), if !orphaned => {
                    // Cancelled with this attempt on its way: it is settled by its answer
                    // or by the end of its interval.
                    let answer = tokio::select! {
                        biased;
                        r = &mut call => Some(r),
                        _ = &mut replaced => None,
                    };
                    match answer {
                        // Its interval ended: nothing of it lands any more.
                        None => unknown = None,
                        // Lost on the way back: it may still land.
                        Some(Err(_)) => unknown = Some((pg, mapping.interval)),
                        // Applied (a re-sent copy of it is answered, never applied), or
                        // refused: then an earlier attempt that was lost may be queued.
                        Some(Ok(f)) => {
                            let applied = ObjectReply::decode(&f.meta, f.data.len())
                                .is_ok_and(|r| r.status == Status::Ok as u32);
                            if applied {
                                unknown = None;
                            }
                        }
                    }
                    return cancelled(unknown).await;
                }
            };
            let Some(answered) = answered else {
                last = format!("{primary} was replaced as the primary of pg {pg}");
                unknown = None;
                continue;
            };
            let frame = match answered {
                Ok(f) => f,
                Err(e) => {
                    last = format!("{primary}: {e}");
                    unknown = Some((pg, mapping.interval));
                    self.pause_or_cancel(&mut backoff, &map, cancel).await;
                    continue;
                }
            };
            let reply = match ObjectReply::decode(&frame.meta, frame.data.len()) {
                Ok(r) => r,
                Err(e) => {
                    return Err(ClientError::Io {
                        object: req.object,
                        reason: format!("bad reply from {primary}: {e}"),
                    })
                }
            };
            match Status::from_u32(reply.status) {
                Some(Status::Ok) => {
                    if let Some((o, started)) = observed {
                        o.answered(started, req, &reply);
                    }
                    return Ok((reply, frame.data));
                }
                Some(s @ (Status::StaleEpoch | Status::NotPrimary)) => {
                    last = format!("{primary}: {s:?} at epoch {}", reply.epoch);
                    let want = reply.epoch.max(map.epoch + 1);
                    let newer = self.wait_for_epoch(want, Duration::from_millis(500)).await;
                    if newer.epoch < want {
                        self.refresh_map().await;
                    }
                }
                Some(s) if s.is_retryable() => {
                    last = format!("{primary}: {s:?}");
                    self.pause_or_cancel(&mut backoff, &map, cancel).await;
                }
                Some(Status::NoSpace) => {
                    return Err(ClientError::NoSpace(format!("{primary} refused the write")))
                }
                Some(Status::Cancelled) => return Err(ClientError::Cancelled),
                Some(Status::Invalid) => {
                    return Err(ClientError::Invalid(format!(
                        "{primary} refused op on {}",
                        req.object
                    )))
                }
                other => {
                    return Err(ClientError::Io {
                        object: req.object,
                        reason: format!("{primary} answered {other:?}"),
                    })
                }
            }
        }
    }

    /// Settles a cancelled op whose last attempt (in `interval` of `pg`) may still land:
    /// a FENCE at the PG's primary waits for it or makes sure it is refused. Returns
    /// `Cancelled` once settled.
    async fn settle(
        &self,
        req: &ObjectRequest,
        op_id: OpId,
        pg: PgId,
        interval: Epoch,
    ) -> Result<(ObjectReply, Bytes), ClientError> {
        tracing::debug!(object = %req.object, ?op_id, %pg, interval, "fencing a cancelled op");
        let fence = ObjectRequest {
            object: req.object,
            op: op::FENCE,
            flags: 0,
            offset: 0,
            length: req.length,
            data: Bytes::new(),
            crcs: Vec::new(),
        };
        match Box::pin(self.run_op(&fence, op_id, &Cancel::never())).await {
            Ok(_) => Err(ClientError::Cancelled),
            Err(e) => {
                tracing::error!(object = %req.object, ?op_id, "a cancelled op could not be fenced: {e}");
                Err(e)
            }
        }
    }

    async fn pause_or_cancel(&self, backoff: &mut Duration, map: &ClusterMap, cancel: &Cancel) {
        tokio::select! {
            _ = self.pause(backoff, map) => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// Returns once a map newer than `map` gives PG `seed` of `pool` another interval.
    async fn interval_changes(
        &self,
        map: &ClusterMap,
        pool: proto::PoolId,
        seed: u32,
        interval: Epoch,
    ) {
        let mut rx = self.map.subscribe();
        let mut seen = map.epoch;
        loop {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            let m = rx.borrow_and_update().clone();
            if m.epoch <= seen {
                continue;
            }
            seen = m.epoch;
            let Some(p) = m.pools.get(&pool) else { return };
            let now = self.mappings_of(&m, p);
            if now
                .get(seed as usize)
                .is_none_or(|g| g.interval != interval)
            {
                return;
            }
        }
    }

    fn mappings_of(&self, map: &ClusterMap, pool: &proto::map::Pool) -> Arc<Vec<PgMapping>> {
        let mut cache = net::sync::lock(&self.mappings);
        if cache.0 != map.epoch {
            *cache = (map.epoch, HashMap::new());
        }
        cache
            .1
            .entry(pool.id)
            .or_insert_with(|| Arc::new(pool_mappings(map, pool)))
            .clone()
    }

    /// FLUSH as it was before it went through the PGs' primaries: asks every OSD the map
    /// shows up, once, and fails if any does not answer. Kept only as the simulator's
    /// planted bug `flush-up-osds-once` (`Image::flush` is the flush).
    pub async fn flush_all(&self) -> Result<(), ClientError> {
        let map = self.map();
        let req = proto::msg::encode_control(&proto::msg::ControlRequest::Flush);
        let calls = map.osds.values().filter(|o| o.up).map(|o| {
            let req = req.clone();
            async move {
                let conn = self
                    .conns
                    .get(o.id, &o.addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let f = conn
                    .call(msg_type::CONTROL, req, Bytes::new(), OSD_CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                match proto::msg::decode_control::<proto::msg::ControlResponse>(&f.meta) {
                    Ok(proto::msg::ControlResponse::Ok) => Ok(()),
                    Ok(other) => Err(format!("{}: {other:?}", o.id)),
                    Err(e) => Err(format!("{}: {e}", o.id)),
                }
            }
        });
        for r in futures::future::join_all(calls).await {
            r.map_err(|reason| ClientError::Io {
                object: ObjectId {
                    pool: 0,
                    image: 0,
                    index: 0,
                },
                reason: format!("flush: {reason}"),
            })?;
        }
        Ok(())
    }

    async fn pause(&self, backoff: &mut Duration, map: &ClusterMap) {
        // A newer map may already explain the failure; otherwise wait a little.
        let _ = tokio::time::timeout(
            *backoff,
            self.map.subscribe().wait_for(|m| m.epoch > map.epoch),
        )
        .await;
        *backoff = (*backoff * 2).min(Duration::from_millis(500));
        if *backoff >= Duration::from_millis(160) {
            self.refresh_map().await;
        }
    }

    /// Fetches the map from a monitor when the subscription may have missed an update.
    async fn refresh_map(&self) {
        if let Ok(m) = self.mon.get_map().await {
            crate::monc::publish(&self.map, m);
        }
    }
}
