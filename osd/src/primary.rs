//! The primary's side of client ops.
//!
//! Write path: check fencing (epoch, primary, PG active) → take the object lock → answer a
//! re-sent op from the recent-ops table → verify the data's block crcs → assign the next
//! version of the interval → write locally and forward to every replica in parallel, each
//! replica op naming the object's previous version → acknowledge only when every member
//! has the write. A replica that is not at the previous version answers `NeedFull` and
//! gets the whole object at the new version (implicit recovery). The reply says whether
//! the write is already on stable media everywhere (`REPLY_DURABLE`: every member in
//! immediate mode, or FUA); otherwise the client FLUSHes the PG before it may count on it.
//!
//! Reads are served by the primary under the same object lock, so a read never overtakes
//! a write that is still on its way to the replicas. A copy that fails its checksum here is
//! read again from another member (and replaced) instead of failing the read.
//!
//! FLUSH (per PG): every object a member still lacks is recovered first, then every member
//! flushes its device; so every write acknowledged before the FLUSH is on stable media on
//! every member of the current acting set (a member that lost it, say to a power cut, is a
//! new incarnation: it is in the acting set only as a member that lacks it, and gets it).
//!
//! FENCE: settles an op the client cancelled. The PG's table knows the ops in flight and
//! the ones completed; a FENCE waits for the first, answers the second, and otherwise
//! records the op as fenced so that it is refused if it ever arrives.

use crate::daemon::Osd;
use crate::store::{Durability, StoreError};
use bytes::Bytes;
use futures::future::join_all;
use proto::checksum::{block_crcs, verify_blocks};
use proto::map::Fullness;
use proto::msg::{msg_type, op, ObjectOp, ObjectReply, PgPhase, Status, FLAG_FUA, REPLY_DURABLE};
use proto::placement::object_pg;
use proto::{ClusterMap, Epoch, ObjectId, OpId, OsdId, PgId, Version};
use std::sync::Arc;
use std::time::Duration;

pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an op waits for its PG to finish peering before it is bounced to the client.
const PEERING_WAIT: Duration = Duration::from_secs(1);
/// Objects a FLUSH recovers at once before it flushes the members.
const FLUSH_RECOVERY: usize = 16;

/// Returns once `pg` is no longer in the interval `start` on this OSD as its primary.
pub async fn interval_ends(osd: &Osd, pg: PgId, start: Epoch) {
    loop {
        let notified = osd.pg_event.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let current = {
            let pgs = net::sync::lock(&osd.pgs);
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
async fn wait_active(osd: &Osd, pg: PgId) -> bool {
    let deadline = tokio::time::Instant::now() + PEERING_WAIT;
    loop {
        let notified = osd.pg_event.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let phase = {
            let pgs = net::sync::lock(&osd.pgs);
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

fn refuse(s: Status, epoch: Epoch) -> (ObjectReply, Bytes) {
    (ObjectReply::status(s, epoch), Bytes::new())
}

/// An op the PG table counts as in flight (for FENCE); leaves the table when dropped.
struct InFlight<'a> {
    osd: &'a Osd,
    pg: PgId,
    start: Epoch,
    id: OpId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let id = self.id;
        self.osd
            .update_pg(self.pg, self.start, |i| i.op_finished(&id));
        self.osd.pg_event.notify_waiters();
    }
}

pub async fn handle(osd: &Arc<Osd>, op: ObjectOp, data: Bytes) -> (ObjectReply, Bytes) {
    if op.epoch > osd.epoch() && !osd.wait_for_epoch(op.epoch).await {
        return refuse(Status::PgInactive, osd.epoch());
    }
    if !osd.is_serving() {
        return refuse(Status::PgInactive, osd.epoch());
    }
    let map = osd.current_map();
    if matches!(op.op, op::PUSH | op::PULL) {
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
    match op.op {
        op::FLUSH => flush_pg(osd, &op).await,
        op::FENCE => fence(osd, &op).await,
        _ => object_op(osd, op, data).await,
    }
}

/// What admission found: the PG's interval, its other members, and whether the primary's
/// own copy must be recovered first.
struct Admitted {
    start: Epoch,
    others: Vec<OsdId>,
    lacking: Option<Version>,
}

/// The fencing checks every client op passes (under the PG table's lock): this OSD is the
/// PG's primary, the PG is active, and the op is not from before the interval.
fn check_fencing(
    osd: &Osd,
    op: &ObjectOp,
    map: &ClusterMap,
    info: &mut crate::pgs::PgInfo,
) -> Result<Admitted, Status> {
    if info.mapping.primary() != Some(osd.id) {
        tracing::debug!(pg = %op.pg, osds = ?info.mapping.acting, "not the primary");
        return Err(Status::NotPrimary);
    }
    if !info.mapping.can_serve() || info.phase != PgPhase::Active {
        info.blocked_ops += 1;
        return Err(Status::PgInactive);
    }
    if op.epoch < info.interval_start {
        tracing::debug!(pg = %op.pg, op_epoch = op.epoch, interval_start = info.interval_start, map = map.epoch, "stale epoch");
        return Err(Status::StaleEpoch);
    }
    Ok(Admitted {
        start: info.interval_start,
        others: info
            .mapping
            .acting
            .iter()
            .copied()
            .filter(|o| *o != osd.id)
            .collect(),
        lacking: info
            .missing
            .get(&osd.id)
            .and_then(|m| m.get(&op.object))
            .copied(),
    })
}

/// The answer to a refused op: `StaleEpoch` carries the epoch the client must reach.
fn refusal(s: Status, map: &ClusterMap, start: Option<Epoch>) -> (ObjectReply, Bytes) {
    let epoch = match s {
        Status::StaleEpoch => map.epoch.max(start.unwrap_or(0)),
        _ => map.epoch,
    };
    refuse(s, epoch)
}

/// READ, WRITE and TRIM.
async fn object_op(osd: &Arc<Osd>, op: ObjectOp, data: Bytes) -> (ObjectReply, Bytes) {
    let _guard = osd.lock_object(&op.object).await;
    let map = osd.current_map();
    // Fencing is checked under the lock so that a map change that arrived while the op
    // waited is taken into account.
    let (admitted, version, _ticket, _inflight) = {
        let mut pgs = net::sync::lock(&osd.pgs);
        let table_epoch = pgs.epoch;
        let Some(info) = pgs.pgs.get_mut(&op.pg) else {
            tracing::debug!(pg = %op.pg, epoch = map.epoch, table_epoch, "not a member of the pg");
            return refuse(Status::NotPrimary, map.epoch);
        };
        let a = match check_fencing(osd, &op, &map, info) {
            Ok(a) => a,
            Err(s) => return refusal(s, &map, Some(info.interval_start)),
        };
        if op.op == op::READ {
            // Only under a lease from every other member: a primary that the others may
            // already have replaced must not answer reads. Nor a copy that a failed write
            // left only here.
            if !osd.leases.holds_all(&a.others) || info.unresolved.contains(&op.object) {
                info.blocked_ops += 1;
                return refuse(Status::PgInactive, map.epoch);
            }
            let ticket = osd.fence.enter(op.pg, a.start);
            (a, Version::NONE, ticket, None)
        } else {
            if info.is_fenced(&op.op_id) {
                tracing::debug!(pg = %op.pg, object = %op.object, op_id = ?op.op_id, "refusing an op its client cancelled");
                return refuse(Status::Cancelled, map.epoch);
            }
            if let Some(v) = info.completed(&op.op_id) {
                // A re-sent op that already completed: answer it, never apply it twice.
                let mut r = ObjectReply::status(Status::Ok, map.epoch);
                r.version = v;
                return (r, Bytes::new());
            }
            // A write must fall inside its image as this map has it: a shrink or a removal
            // fences writers that still have the old size (the trim that frees the cut-off
            // objects comes with the new map, so nothing lands after it). Trims always pass.
            if op.op == op::WRITE {
                if let Err(why) = inside_image(&map, &op) {
                    tracing::info!(pg = %op.pg, object = %op.object, "refusing a write: {why}");
                    return refuse(Status::Invalid, map.epoch);
                }
            }
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
            info.op_started(op.op_id);
            let version = info.next_version();
            let ticket = osd.fence.enter(op.pg, a.start);
            let inflight = InFlight {
                osd,
                pg: op.pg,
                start: a.start,
                id: op.op_id,
            };
            (a, version, ticket, Some(inflight))
        }
    };
    let start = admitted.start;
    // Implicit recovery: the primary's own copy is brought up to date before it is read or
    // written, from a member that holds the authoritative one.
    if let Some(needed) = admitted.lacking {
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
    if op.op == op::READ {
        return read_repairing(osd, &op, &map, start, &admitted.others).await;
    }
    if op.op == op::WRITE && verify_blocks(&data, &op.crcs).is_err() {
        return refuse(Status::Checksum, map.epoch);
    }
    let members = admitted.others;
    let created = osd.store.version(&op.object).is_none();
    match replicate(osd, &map, &op, data, &members, version, start).await {
        Ok(durable) => {
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
            if durable {
                r.flags |= REPLY_DURABLE;
            }
            (r, Bytes::new())
        }
        Err(s) => {
            // The local copy may hold the write while a member does not: recovery puts it
            // on every member before the object is read again.
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

/// Whether a write's range starts inside its image (which must exist) in `map`.
fn inside_image(map: &ClusterMap, op: &ObjectOp) -> Result<(), String> {
    let Some(image) = map.images.get(&op.object.image) else {
        return Err(format!(
            "image {} does not exist (removed?)",
            op.object.image
        ));
    };
    let at = op.object.index * op.object_size as u64 + op.offset as u64;
    if image.pool != op.object.pool || at >= image.size_bytes {
        return Err(format!(
            "offset {at} is past the end of image {} ({} bytes)",
            image.name, image.size_bytes
        ));
    }
    Ok(())
}

/// A read on the primary; a local copy that fails its checksum (bit rot) is replaced by a
/// member's copy of the same version and read again (caller holds the object lock).
async fn read_repairing(
    osd: &Arc<Osd>,
    op: &ObjectOp,
    map: &ClusterMap,
    start: Epoch,
    others: &[OsdId],
) -> (ObjectReply, Bytes) {
    match osd.store.read(op.object, op.offset, op.length).await {
        Err(StoreError::Checksum { offset, .. })
            if !crate::planted::active(crate::planted::Bug::NoReadRepair) =>
        {
            let version = osd.store.version(&op.object);
            tracing::warn!(object = %op.object, offset, %version, "the local copy fails its checksum: reading it from another member");
            if let Err(e) =
                crate::peering::pull_from(osd, map, op.pg, op.object, version, others).await
            {
                tracing::warn!(object = %op.object, "cannot repair the local copy yet: {e}");
                osd.note_bad_copy(op.pg, start, op.object, version);
                return refuse(Status::PgInactive, map.epoch);
            }
            read(osd, op, map.epoch).await
        }
        r => reply_read(op, map.epoch, r),
    }
}

pub async fn read(osd: &Osd, op: &ObjectOp, epoch: u64) -> (ObjectReply, Bytes) {
    let r = osd.store.read(op.object, op.offset, op.length).await;
    reply_read(op, epoch, r)
}

fn reply_read(
    op: &ObjectOp,
    epoch: u64,
    r: Result<(Bytes, Vec<u32>, Version), StoreError>,
) -> (ObjectReply, Bytes) {
    match r {
        Ok((data, crcs, version)) => (
            ObjectReply {
                status: Status::Ok as u32,
                flags: 0,
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
        // The device failed (a write or read error, ENOSPC from a thin volume, too many
        // bad blocks): this OSD stops and the monitors mark it down and out at once, so
        // the client resends to the PG's next primary instead of failing the tenant's IO.
        StoreError::DeviceFailed(_) => Status::ShuttingDown,
        StoreError::Range { .. } => Status::Invalid,
        StoreError::Checksum { .. } => Status::Io,
        _ => Status::Io,
    }
}

/// Whether a write the store completed is on stable media (immediate mode, or flushed for
/// FUA).
pub fn locally_durable(osd: &Osd, fua: bool) -> bool {
    fua || osd.store.durability == Durability::Immediate
}

/// FLUSH of a PG: recover what any member lacks, then flush every member.
async fn flush_pg(osd: &Arc<Osd>, op: &ObjectOp) -> (ObjectReply, Bytes) {
    let map = osd.current_map();
    let (admitted, work) = {
        let mut pgs = net::sync::lock(&osd.pgs);
        let Some(info) = pgs.pgs.get_mut(&op.pg) else {
            return refuse(Status::NotPrimary, map.epoch);
        };
        let a = match check_fencing(osd, op, &map, info) {
            Ok(a) => a,
            Err(s) => return refusal(s, &map, Some(info.interval_start)),
        };
        let work: Vec<(OsdId, ObjectId, Version)> = info
            .missing
            .iter()
            .flat_map(|(m, objs)| objs.iter().map(move |(o, v)| (*m, *o, *v)))
            .collect();
        (a, work)
    };
    let (pg, start) = (op.pg, admitted.start);
    // The primary's own copies first: pushes to the others read them.
    let (mine, theirs): (Vec<_>, Vec<_>) = work.into_iter().partition(|(m, _, _)| *m == osd.id);
    for batch in [mine, theirs] {
        use futures::StreamExt;
        let results: Vec<Result<(), String>> = futures::stream::iter(batch)
            .map(|(m, o, v)| crate::peering::recover_object(osd, pg, start, m, o, v))
            .buffer_unordered(FLUSH_RECOVERY)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            tracing::info!(%pg, "flush waits for recovery: {e}");
            return refuse(Status::PgInactive, map.epoch);
        }
    }
    let flush = crate::peering::whole_object_op(
        op::FLUSH,
        0,
        op.object,
        pg,
        op.object_size,
        start,
        Version::NONE,
        Vec::new(),
    );
    let meta = flush.encode_meta();
    let remote = join_all(
        admitted
            .others
            .iter()
            .map(|m| send(osd, &map, *m, meta.clone(), Bytes::new(), (pg, start))),
    );
    let (local, remote) = tokio::join!(osd.store.flush(), remote);
    if let Err(e) = local {
        tracing::error!(%pg, "flush failed: {e}");
        return refuse(store_status(&e), map.epoch);
    }
    for (m, r) in admitted.others.iter().zip(remote) {
        match r {
            Ok((Status::Ok, _)) => {}
            other => {
                tracing::info!(%pg, member = %m, "flush not confirmed: {other:?}");
                return refuse(Status::PgInactive, map.epoch);
            }
        }
    }
    let mut r = ObjectReply::status(Status::Ok, map.epoch);
    r.flags |= REPLY_DURABLE;
    (r, Bytes::new())
}

/// FENCE: waits for the named op if it is in flight here, else answers, recording it as
/// fenced unless it completed.
async fn fence(osd: &Arc<Osd>, op: &ObjectOp) -> (ObjectReply, Bytes) {
    loop {
        let notified = osd.pg_event.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let map = osd.current_map();
        {
            let mut pgs = net::sync::lock(&osd.pgs);
            let Some(info) = pgs.pgs.get_mut(&op.pg) else {
                return refuse(Status::NotPrimary, map.epoch);
            };
            if let Err(s) = check_fencing(osd, op, &map, info) {
                return refusal(s, &map, Some(info.interval_start));
            }
            if !info.is_in_flight(&op.op_id) {
                if info.completed(&op.op_id).is_none() {
                    info.fence_op(op.op_id);
                }
                return refuse(Status::Ok, map.epoch);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

/// Applies the write locally and on every replica; Ok only when all have it, with whether
/// it is on stable media on all of them.
async fn replicate(
    osd: &Arc<Osd>,
    map: &Arc<ClusterMap>,
    op: &ObjectOp,
    data: Bytes,
    replicas: &[OsdId],
    version: Version,
    start: Epoch,
) -> Result<bool, Status> {
    let fence = (op.pg, start);
    let fua = op.flags & FLAG_FUA != 0;
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
        let r = match r {
            Ok(()) if fua => osd.store.flush().await,
            other => other,
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
        return Ok(false);
    }
    let sends = join_all(
        replicas
            .iter()
            .map(|r| send(osd, map, *r, meta.clone(), data.clone(), fence)),
    );
    let (local, remote) = tokio::join!(local, sends);
    local?;
    let mut durable = locally_durable(osd, fua);
    // Replicas that missed an earlier write get the whole object, now that the local copy
    // holds this write too.
    for (replica, status) in replicas.iter().zip(remote) {
        match status {
            Ok((Status::Ok, flags)) => durable &= flags & REPLY_DURABLE != 0,
            Ok((Status::NeedFull, _)) => {
                tracing::debug!(object = %op.object, %replica, %version, "replica needs the whole object");
                durable &= push_full(osd, map, op, *replica, version, fence).await?;
            }
            Ok((s, _)) => {
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
    Ok(durable)
}

/// Sends a replica op and waits for the answer (its status and reply flags), or until the
/// PG's interval ends (a hung replica marked down must not hold the client's op until the
/// timeout: the client resends it to the new interval).
pub async fn send(
    osd: &Osd,
    map: &ClusterMap,
    replica: OsdId,
    meta: Vec<u8>,
    data: Bytes,
    fence: (PgId, Epoch),
) -> Result<(Status, u32), String> {
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
    let status =
        Status::from_u32(reply.status).ok_or_else(|| format!("unknown status {}", reply.status))?;
    Ok((status, reply.flags))
}

/// Sends the whole local object at `version` to a replica (with the write's FUA); returns
/// whether the replica has it on stable media.
async fn push_full(
    osd: &Arc<Osd>,
    map: &ClusterMap,
    op: &ObjectOp,
    replica: OsdId,
    version: Version,
    fence: (PgId, Epoch),
) -> Result<bool, Status> {
    let size = op.object_size;
    let data = match osd
        .read_copy_to_push(op.pg, fence.1, op.object, version, size)
        .await
    {
        Ok(data) => data,
        // Recovery pulls the damaged copy from another member, and the client's retry
        // finds it whole (an IO error would reach a guest).
        Err(StoreError::Checksum { .. }) => return Err(Status::PgInactive),
        Err(e) => return Err(store_status(&e)),
    };
    let push = ObjectOp {
        op: op::PUSH,
        flags: op.flags & FLAG_FUA,
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
        Ok((Status::Ok, flags)) => Ok(flags & REPLY_DURABLE != 0),
        Ok((s, _)) => {
            tracing::warn!(object = %op.object, %replica, "replica refused full push: {s:?}");
            Err(Status::PgInactive)
        }
        Err(e) => {
            tracing::warn!(object = %op.object, %replica, "full push failed: {e}");
            Err(Status::PgInactive)
        }
    }
}
