//! The OSD daemon's shared state and request dispatch.
//!
//! Start-up: open the store → check it against the map (cluster fsid, OSD id, store uuid)
//! → listen → register a new incarnation with the monitor → serve once the map shows that
//! incarnation. Every op carries the sender's epoch: an op from the future makes the OSD
//! wait for that map first; an op older than its PG's interval is refused with
//! `StaleEpoch` so the client refreshes its map.

use crate::pgs::PgTable;
use crate::store::Store;
use bytes::Bytes;
use net::conn::Responder;
use net::{Conn, ConnCache};
use proto::frame::Frame;
use proto::msg::{
    decode_control, encode_control, msg_type, ControlRequest, ControlResponse, ObjectOp,
    ObjectReply, Status,
};
use proto::{ClusterMap, Epoch, ObjectId, OsdId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Mutex as AsyncMutex, MutexGuard};

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
}

impl Osd {
    pub fn new(id: OsdId, store: Arc<Store>, map: watch::Receiver<Arc<ClusterMap>>) -> Arc<Osd> {
        Arc::new(Osd {
            id,
            store,
            map,
            up_from: AtomicU64::new(0),
            pgs: Mutex::new(PgTable::default()),
            locks: (0..LOCK_STRIPES).map(|_| AsyncMutex::new(())).collect(),
            peers: ConnCache::default(),
        })
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

    /// Applies a new map to the PG table (called by the map loop for every map).
    pub fn apply_map(&self, map: &ClusterMap) {
        let mut pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
        if map.epoch > pgs.epoch {
            pgs.apply_map(self.id, map);
        }
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
                Ok(ControlRequest::ListObjects { pool }) => {
                    ControlResponse::Objects(osd.store.list(pool))
                }
                Ok(ControlRequest::Heartbeat { .. }) => ControlResponse::Ok,
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
