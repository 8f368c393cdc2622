//! The replica's side of replicated writes.
//!
//! A replica applies a write only on exactly the version the primary names as previous,
//! re-acknowledges a duplicate (it already holds the op's version) without applying it,
//! and otherwise answers `NeedFull`, after which the primary sends the whole object.
//! Nothing is ever applied over a gap, and a copy never moves backwards.
//!
//! Only the primary of the interval this OSD was activated in may change its copies: every
//! op carries that primary's interval start, and one from any other interval is refused.

use crate::daemon::Osd;
use crate::primary::store_status;
use bytes::Bytes;
use proto::checksum::verify_blocks;
use proto::msg::{op, ObjectOp, ObjectReply, Status, FLAG_ROLLBACK};

pub async fn handle(osd: &Osd, op: ObjectOp, data: Bytes) -> (ObjectReply, Bytes) {
    let reply = |s: Status, epoch| (ObjectReply::status(s, epoch), Bytes::new());
    if op.epoch > osd.epoch() && !osd.wait_for_epoch(op.epoch).await {
        return reply(Status::PgInactive, osd.epoch());
    }
    if !osd.is_serving() {
        return reply(Status::PgInactive, osd.epoch());
    }
    let epoch = osd.epoch();
    if op.op == op::PULL {
        // The primary recovering its own copy; any OSD holding the object answers (a
        // witness of a past interval need not act in the PG now).
        let _guard = osd.lock_object(&op.object).await;
        return crate::primary::read(osd, &op, epoch).await;
    }
    {
        let pgs = osd.pgs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(info) = pgs.pgs.get(&op.pg) else {
            return reply(Status::NotPrimary, epoch);
        };
        // Writes, pushes and rollbacks come from the primary of the interval this OSD was
        // activated in, stamped with its start. Anything else is from an interval that
        // ended (a cut-off primary that has since caught up with the maps).
        if info.activated != Some(op.epoch) {
            tracing::debug!(pg = %op.pg, object = %op.object, op_interval = op.epoch, activated = ?info.activated, "refusing a replica op of another interval");
            return reply(Status::StaleEpoch, epoch);
        }
    }
    if op.carries_data() && verify_blocks(&data, &op.crcs).is_err() {
        return reply(Status::Checksum, epoch);
    }
    let _guard = osd.lock_object(&op.object).await;
    let local = osd.store.version(&op.object);
    if local == op.version {
        return reply(Status::Ok, epoch);
    }
    tracing::trace!(pg = %op.pg, object = %op.object, op = op.op, flags = op.flags, %local, version = %op.version, epoch = op.epoch, "replica op");
    let result = match op.op {
        op::WRITE | op::TRIM if local != op.prev && op.flags & FLAG_ROLLBACK == 0 => {
            return reply(Status::NeedFull, epoch)
        }
        op::WRITE => {
            osd.store
                .write(op.object, op.offset, data, &op.crcs, op.version)
                .await
        }
        op::TRIM => {
            osd.store
                .trim(op.object, op.offset, op.length, op.version)
                .await
        }
        // A rollback (after peering) replaces a copy that was never acknowledged, even
        // though it is newer (a whole-object TRIM at `Version::NONE` removes it).
        op::PUSH if local > op.version && op.flags & FLAG_ROLLBACK == 0 => {
            tracing::warn!(object = %op.object, %local, pushed = %op.version, "refusing a push older than the local copy");
            return reply(Status::Invalid, epoch);
        }
        op::PUSH => {
            osd.store
                .write_full(op.object, data, &op.crcs, op.version)
                .await
        }
        _ => return reply(Status::Invalid, epoch),
    };
    let result = match result {
        Ok(()) if op.flags & proto::msg::FLAG_FUA != 0 => osd.store.flush().await,
        other => other,
    };
    match result {
        Ok(()) => reply(Status::Ok, epoch),
        Err(e) => {
            tracing::error!(object = %op.object, "replica write failed: {e}");
            reply(store_status(&e), epoch)
        }
    }
}
