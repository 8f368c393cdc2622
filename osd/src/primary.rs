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
use proto::msg::{msg_type, op, ObjectOp, ObjectReply, Status};
use proto::placement::object_pg;
use proto::{ClusterMap, OsdId, Version};
use std::time::Duration;

pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn handle(osd: &Osd, op: ObjectOp, data: Bytes) -> (ObjectReply, Bytes) {
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
    let _guard = osd.lock_object(&op.object).await;
    // Fencing is checked under the lock so that a map change that arrived while the op
    // waited is taken into account.
    let (members, version) = {
        let mut pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(info) = pgs.pgs.get_mut(&op.pg) else {
            tracing::debug!(pg = %op.pg, epoch = map.epoch, table_epoch = pgs.epoch, "not a member of the pg");
            return refuse(Status::NotPrimary, map.epoch);
        };
        if info.mapping.primary() != Some(osd.id) {
            tracing::debug!(pg = %op.pg, osds = ?info.mapping.osds, "not the primary");
            return refuse(Status::NotPrimary, map.epoch);
        }
        if !info.mapping.is_active() {
            return refuse(Status::PgInactive, map.epoch);
        }
        if op.epoch < info.interval_start {
            tracing::debug!(pg = %op.pg, op_epoch = op.epoch, interval_start = info.interval_start, "stale epoch");
            return refuse(Status::StaleEpoch, map.epoch.max(info.interval_start));
        }
        if op.op == op::READ {
            (Vec::new(), Version::NONE)
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
                .osds
                .iter()
                .find(|o| map.osd(**o).is_some_and(|i| i.fullness == Fullness::Full));
            if op.op == op::WRITE {
                if let Some(full) = full {
                    tracing::warn!(pg = %op.pg, %full, "refusing a write: a member is full");
                    return refuse(Status::NoSpace, map.epoch);
                }
            }
            let members: Vec<OsdId> = info
                .mapping
                .osds
                .iter()
                .copied()
                .filter(|o| *o != osd.id)
                .collect();
            (members, info.next_version())
        }
    };
    match op.op {
        op::READ => read(osd, &op, map.epoch).await,
        op::WRITE | op::TRIM => {
            if op.op == op::WRITE && verify_blocks(&data, &op.crcs).is_err() {
                return refuse(Status::Checksum, map.epoch);
            }
            match replicate(osd, &map, &op, data, &members, version).await {
                Ok(()) => {
                    let mut pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(info) = pgs.pgs.get_mut(&op.pg) {
                        info.record(op.op_id, version);
                    }
                    let mut r = ObjectReply::status(Status::Ok, map.epoch);
                    r.version = version;
                    (r, Bytes::new())
                }
                Err(s) => refuse(s, map.epoch),
            }
        }
        _ => refuse(Status::Invalid, map.epoch),
    }
}

async fn read(osd: &Osd, op: &ObjectOp, epoch: u64) -> (ObjectReply, Bytes) {
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
    osd: &Osd,
    map: &ClusterMap,
    op: &ObjectOp,
    data: Bytes,
    replicas: &[OsdId],
    version: Version,
) -> Result<(), Status> {
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
    let mut rop = op.clone();
    rop.epoch = map.epoch;
    rop.version = version;
    rop.prev = prev;
    let meta = rop.encode_meta();
    let sends = join_all(
        replicas
            .iter()
            .map(|r| send(osd, map, *r, meta.clone(), data.clone())),
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
            Ok(Status::NeedFull) => push_full(osd, map, op, *replica, version).await?,
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

async fn send(
    osd: &Osd,
    map: &ClusterMap,
    replica: OsdId,
    meta: Vec<u8>,
    data: Bytes,
) -> Result<Status, String> {
    let conn = osd.peer(map, replica).await?;
    let f = conn
        .call(msg_type::REPLICA_OP, meta, data, REPLICA_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
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
        epoch: map.epoch,
        op_id: op.op_id,
        offset: 0,
        length: size,
        version,
        prev: Version::NONE,
        crcs: block_crcs(&data),
    };
    match send(osd, map, replica, push.encode_meta(), data).await {
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
