//! The primary's side of client ops.
//!
//! Write path: check fencing (epoch, primary, PG active) → take the object lock → answer a
//! re-sent op from the recent-ops table → verify the data's block crcs → assign the next
//! version of the interval → write locally and forward to every replica in parallel, each
//! replica op naming the object's previous version → acknowledge only when every member
//! has the write durably. A replica that is not at the previous version answers `NeedFull`
//! and gets the whole object at the new version (implicit recovery).
//!
//! Reads are served by the primary under the same object lock, so a read never overtakes
//! a write that is still on its way to the replicas.

use crate::daemon::Osd;
use crate::store::StoreError;
use bytes::Bytes;
use futures::future::join_all;
use proto::checksum::{block_crcs, verify_blocks};
use proto::map::Fullness;
use proto::msg::{msg_type, op, ObjectOp, ObjectReply, PgPhase, Status};
use proto::placement::object_pg;
use proto::{ClusterMap, OsdId, Version};
use std::sync::Arc;
use std::time::Duration;

pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an op waits for its PG to finish peering before it is bounced to the client.
const PEERING_WAIT: Duration = Duration::from_secs(1);

/// Returns once `pg` is no longer in the interval `start` on this OSD as its primary.
async fn interval_ends(osd: &Osd, pg: proto::PgId, start: proto::Epoch) {
    loop {
        let notified = osd.pg_event.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let current = {
            let pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
            pgs.pgs
                .get(&pg)
                .is_some_and(|i| i.interval_start == start && i.mapping.primary() == Some(osd.id))
        };
        if !current {
            return;
        }
        notified.await;
    }
}

/// Waits (a little) until `pg` is active on this primary; false if it is not.
async fn wait_active(osd: &Osd, pg: proto::PgId) -> bool {
    let deadline = tokio::time::Instant::now() + PEERING_WAIT;
    loop {
        let notified = osd.pg_event.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let phase = {
            let pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
            pgs.pgs.get(&pg).map(|i| i.phase)
        };
        match phase {
            Some(PgPhase::Active) => return true,
            // Not a member (yet): let the fencing below answer.
            None => return true,
            Some(_) => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

pub async fn handle(osd: &Arc<Osd>, op: ObjectOp, data: Bytes) -> (ObjectReply, Bytes) {
    let refuse = |s: Status, epoch| (ObjectReply::status(s, epoch), Bytes::new());
    if op.epoch > osd.epoch() && !osd.wait_for_epoch(op.epoch).await {
        return refuse(Status::PgInactive, osd.epoch());
    }
    if !osd.is_serving() {
        return refuse(Status::PgInactive, osd.epoch());
    }
    let map = osd.current_map();
    if op.op == op::PUSH {
        return refuse(Status::Invalid, map.epoch);
    }
    let Some(pool) = map.pools.get(&op.object.pool) else {
        return refuse(Status::Invalid, map.epoch);
    };
    if object_pg(&op.object, pool) != op.pg
        || op.object_size != pool.object_size
        || pool.object_size > osd.store.max_object_size()
    {
        return refuse(Status::Invalid, map.epoch);
    }
    // A PG still peering holds the op a little rather than bounce it: activation usually
    // follows within milliseconds.
    if !wait_active(osd, op.pg).await {
        osd.note_blocked(op.pg);
        return refuse(Status::PgInactive, osd.epoch());
    }
    let _guard = osd.lock_object(&op.object).await;
    let map = osd.current_map();
    // Fencing is checked under the lock so that a map change that arrived while the op
    // waited is taken into account.
    let (members, version, start, lacking) = {
        let mut pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(info) = pgs.pgs.get_mut(&op.pg) else {
            tracing::debug!(pg = %op.pg, epoch = map.epoch, table_epoch = pgs.epoch, "not a member of the pg");
            return refuse(Status::NotPrimary, map.epoch);
        };
        if info.mapping.primary() != Some(osd.id) {
            tracing::debug!(pg = %op.pg, osds = ?info.mapping.acting, "not the primary");
            return refuse(Status::NotPrimary, map.epoch);
        }
        if !info.mapping.is_active() || info.phase != PgPhase::Active {
            info.blocked_ops += 1;
            return refuse(Status::PgInactive, map.epoch);
        }
        if op.epoch < info.interval_start {
            tracing::debug!(pg = %op.pg, op_epoch = op.epoch, interval_start = info.interval_start, "stale epoch");
            return refuse(Status::StaleEpoch, map.epoch.max(info.interval_start));
        }
        let lacking = info
            .missing
            .get(&osd.id)
            .and_then(|m| m.get(&op.object))
            .copied();
        let others: Vec<OsdId> = info
            .mapping
            .acting
            .iter()
            .copied()
            .filter(|o| *o != osd.id)
            .collect();
        if op.op == op::READ {
            // Only under a lease from every other member: a primary that the others may
            // already have replaced must not answer reads. Nor a copy that a failed write
            // left only here.
            if !osd.leases.holds_all(&others) || info.unresolved.contains(&op.object) {
                info.blocked_ops += 1;
                return refuse(Status::PgInactive, map.epoch);
            }
            (Vec::new(), Version::NONE, info.interval_start, lacking)
        } else if let Some(v) = info.completed(&op.op_id) {
            // A re-sent op that already completed: answer it, never apply it twice.
            let mut r = ObjectReply::status(Status::Ok, map.epoch);
            r.version = v;
            return (r, Bytes::new());
        } else {
            // Capacity guard: a write that any member cannot take is refused before anything
            // is applied anywhere. Trims free space and always pass.
            let full = info
                .mapping
                .acting
                .iter()
                .find(|o| map.osd(**o).is_some_and(|i| i.fullness == Fullness::Full));
            if op.op == op::WRITE {
                if let Some(full) = full {
                    tracing::warn!(pg = %op.pg, %full, "refusing a write: a member is full");
                    return refuse(Status::NoSpace, map.epoch);
                }
            }
            (others, info.next_version(), info.interval_start, lacking)
        }
    };
    // Implicit recovery: the primary's own copy is brought up to date before it is read or
    // written, from a member that holds the authoritative one.
    if let Some(needed) = lacking {
        if let Err(e) = crate::peering::pull_locked(osd, &map, op.pg, op.object, needed).await {
            tracing::info!(pg = %op.pg, object = %op.object, "cannot recover the primary's copy yet: {e}");
            return refuse(Status::PgInactive, map.epoch);
        }
        osd.update_pg(op.pg, start, |i| {
            if let Some(m) = i.missing.get_mut(&osd.id) {
                m.remove(&op.object);
            }
        });
    }
    tracing::trace!(pg = %op.pg, object = %op.object, op = op.op, offset = op.offset, start, local = %osd.store.version(&op.object), "client op");
    match op.op {
        op::READ => read(osd, &op, map.epoch).await,
        op::WRITE | op::TRIM => {
            if op.op == op::WRITE && verify_blocks(&data, &op.crcs).is_err() {
                return refuse(Status::Checksum, map.epoch);
            }
            let created = osd.store.version(&op.object).is_none();
            match replicate(osd, &map, &op, data, &members, version, start).await {
                Ok(()) => {
                    // Every member now holds the object at this version.
                    osd.update_pg(op.pg, start, |info| {
                        info.record(op.op_id, version);
                        if created {
                            info.objects += 1;
                        }
                        for m in info.missing.values_mut() {
                            m.remove(&op.object);
                        }
                        info.missing.retain(|_, m| !m.is_empty());
                        info.unresolved.remove(&op.object);
                    });
                    let mut r = ObjectReply::status(Status::Ok, map.epoch);
                    r.version = version;
                    (r, Bytes::new())
                }
                Err(s) => {
                    // The local copy may hold the write while a member does not: recovery
                    // puts it on every member before the object is read again.
                    if osd.store.version(&op.object) == version {
                        let marked = osd.update_pg(op.pg, start, |info| {
                            for m in &members {
                                info.missing
                                    .entry(*m)
                                    .or_default()
                                    .insert(op.object, version);
                            }
                            info.unresolved.insert(op.object);
                        });
                        if marked {
                            crate::peering::ensure_recovery(osd, op.pg, start);
                        }
                    }
                    refuse(s, map.epoch)
                }
            }
        }
        _ => refuse(Status::Invalid, map.epoch),
    }
}

pub async fn read(osd: &Osd, op: &ObjectOp, epoch: u64) -> (ObjectReply, Bytes) {
    match osd.store.read(op.object, op.offset, op.length).await {
        Ok((data, crcs, version)) => (
            ObjectReply {
                status: Status::Ok as u32,
                epoch,
                version,
                crcs,
            },
            data,
        ),
        Err(e) => {
            tracing::error!(object = %op.object, "read failed: {e}");
            (ObjectReply::status(store_status(&e), epoch), Bytes::new())
        }
    }
}

pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NoSpace(_) => Status::NoSpace,
        StoreError::Range { .. } => Status::Invalid,
        StoreError::Checksum { .. } => Status::Io,
        _ => Status::Io,
    }
}

/// Applies the write locally and on every replica; Ok only when all have it durably.
async fn replicate(
    osd: &Arc<Osd>,
    map: &Arc<ClusterMap>,
    op: &ObjectOp,
    data: Bytes,
    replicas: &[OsdId],
    version: Version,
    start: proto::Epoch,
) -> Result<(), Status> {
    let fence = (op.pg, start);
    let prev = osd.store.version(&op.object);
    let local = async {
        let r = if op.op == op::WRITE {
            osd.store
                .write(op.object, op.offset, data.clone(), &op.crcs, version)
                .await
        } else {
            osd.store
                .trim(op.object, op.offset, op.length, version)
                .await
        };
        r.map_err(|e| {
            tracing::error!(object = %op.object, "local write failed: {e}");
            store_status(&e)
        })
    };
    // Stamped with the interval, not the map: a replica takes ops only from the primary of
    // the interval it was activated in.
    let mut rop = op.clone();
    rop.epoch = start;
    rop.version = version;
    rop.prev = prev;
    let meta = rop.encode_meta();
    if crate::planted::active(crate::planted::Bug::AckLocalOnly) {
        local.await?;
        let (osd, map, replicas) = (Arc::clone(osd), Arc::clone(map), replicas.to_vec());
        net::rt::spawn(async move {
            join_all(
                replicas
                    .iter()
                    .map(|r| send(&osd, &map, *r, meta.clone(), data.clone(), fence)),
            )
            .await
        });
        return Ok(());
    }
    let sends = join_all(
        replicas
            .iter()
            .map(|r| send(osd, map, *r, meta.clone(), data.clone(), fence)),
    );
    let (local, remote) = tokio::join!(local, sends);
    local?;
    if op.flags & proto::msg::FLAG_FUA != 0 {
        osd.store.flush().await.map_err(|e| store_status(&e))?;
    }
    // Replicas that missed an earlier write get the whole object, now that the local copy
    // holds this write too.
    for (replica, status) in replicas.iter().zip(remote) {
        match status {
            Ok(Status::Ok) => {}
            Ok(Status::NeedFull) => {
                tracing::debug!(object = %op.object, %replica, %version, "replica needs the whole object");
                push_full(osd, map, op, *replica, version, fence).await?
            }
            Ok(s) => {
                tracing::warn!(object = %op.object, %replica, "replica refused write: {s:?}");
                return Err(if s == Status::NoSpace {
                    s
                } else {
                    Status::PgInactive
                });
            }
            Err(e) => {
                tracing::warn!(object = %op.object, %replica, "replica unreachable: {e}");
                return Err(Status::PgInactive);
            }
        }
    }
    Ok(())
}

/// Sends a replica op and waits for the answer, or until the PG's interval ends (a hung
/// replica marked down must not hold the client's op until the timeout: the client
/// resends it to the new interval).
async fn send(
    osd: &Osd,
    map: &ClusterMap,
    replica: OsdId,
    meta: Vec<u8>,
    data: Bytes,
    fence: (proto::PgId, proto::Epoch),
) -> Result<Status, String> {
    let conn = osd.peer(map, replica).await?;
    let call = conn.call(msg_type::REPLICA_OP, meta, data, REPLICA_TIMEOUT);
    let f = tokio::select! {
        biased;
        r = call => r.map_err(|e| e.to_string())?,
        _ = interval_ends(osd, fence.0, fence.1) => {
            return Err(format!("the interval of pg {} ended", fence.0));
        }
    };
    let reply = ObjectReply::decode(&f.meta, f.data.len()).map_err(|e| e.to_string())?;
    Status::from_u32(reply.status).ok_or_else(|| format!("unknown status {}", reply.status))
}

/// Sends the whole local object at `version` to a replica.
async fn push_full(
    osd: &Osd,
    map: &ClusterMap,
    op: &ObjectOp,
    replica: OsdId,
    version: Version,
    fence: (proto::PgId, proto::Epoch),
) -> Result<(), Status> {
    let size = op.object_size;
    let (data, _, _) = osd
        .store
        .read(op.object, 0, size)
        .await
        .map_err(|e| store_status(&e))?;
    let push = ObjectOp {
        op: op::PUSH,
        flags: 0,
        object: op.object,
        pg: op.pg,
        object_size: op.object_size,
        epoch: fence.1,
        op_id: op.op_id,
        offset: 0,
        length: size,
        version,
        prev: Version::NONE,
        crcs: block_crcs(&data),
    };
    match send(osd, map, replica, push.encode_meta(), data, fence).await {
        Ok(Status::Ok) => Ok(()),
        Ok(s) => {
            tracing::warn!(object = %op.object, %replica, "replica refused full push: {s:?}");
            Err(Status::PgInactive)
        }
        Err(e) => {
            tracing::warn!(object = %op.object, %replica, "full push failed: {e}");
            Err(Status::PgInactive)
        }
    }
}
