//! The replica's side of replicated writes.
//!
//! A replica applies a write only on exactly the version the primary names as previous,
//! re-acknowledges a duplicate (it already holds the op's version) without applying it,
//! and otherwise answers `NeedFull`, after which the primary sends the whole object.
//! Nothing is ever applied over a gap, and a copy never moves backwards.
//!
//! Only the primary of the interval this OSD was activated in may change its copies: every
//! op carries that primary's interval start, and one from any other interval is refused,
//! both before it waits for the object and again once it holds it (then it is admitted to
//! the PG's op fence, so a peering answer for a later interval waits for its write).

use crate::daemon::Osd;
use crate::primary::store_status;
use bytes::Bytes;
use proto::checksum::verify_blocks;
use proto::msg::{op, ObjectOp, ObjectReply, Status, FLAG_FUA, FLAG_ROLLBACK, REPLY_DURABLE};

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
    // Writes, pushes and rollbacks come from the primary of the interval this OSD was
    // activated in, stamped with its start. Anything else is from an interval that ended
    // (a cut-off primary that has since caught up with the maps).
    let stamped = |i: &crate::pgs::PgInfo| i.activated == Some(op.epoch);
    let start = {
        let pgs = net::sync::lock(&osd.pgs);
        match pgs.pgs.get(&op.pg) {
            None => return reply(Status::NotPrimary, epoch),
            Some(info) if !stamped(info) => {
                tracing::debug!(pg = %op.pg, object = %op.object, op_interval = op.epoch, activated = ?info.activated, "refusing a replica op of another interval");
                return reply(Status::StaleEpoch, epoch);
            }
            Some(info) => info.interval_start,
        }
    };
    let durable = |fua: bool| {
        let mut r = ObjectReply::status(Status::Ok, epoch);
        if crate::primary::locally_durable(osd, fua) {
            r.flags |= REPLY_DURABLE;
        }
        (r, Bytes::new())
    };
    if op.op == op::FLUSH {
        // Every write this OSD took from the interval's primary is on stable media after
        // this; so are the pushes, which went through the same store.
        return match osd.store.flush().await {
            Ok(()) => durable(true),
            Err(e) => {
                tracing::error!(pg = %op.pg, "flush failed: {e}");
                reply(store_status(&e), epoch)
            }
        };
    }
    if op.carries_data() && verify_blocks(&data, &op.crcs).is_err() {
        return reply(Status::Checksum, epoch);
    }
    let _guard = osd.lock_object(&op.object).await;
    // Checked again now that the object is ours: the interval may have ended while the op
    // waited, and a peering answer for the next one may already have listed this object.
    // Admitted, the op holds back any such answer until its write is done.
    let _ticket = if crate::planted::active(crate::planted::Bug::QueryBeforeDrain) {
        None
    } else {
        match osd.admit(op.pg, start, stamped) {
            Some(t) => Some(t),
            None => {
                tracing::debug!(pg = %op.pg, object = %op.object, "the interval ended while the replica op waited");
                return reply(Status::StaleEpoch, epoch);
            }
        }
    };
    let fua = op.flags & FLAG_FUA != 0;
    let local = osd.store.version(&op.object);
    if local == op.version {
        // A duplicate: on stable media if this OSD writes durably, or once flushed now.
        if fua {
            if let Err(e) = osd.store.flush().await {
                return reply(store_status(&e), epoch);
            }
        }
        return durable(fua);
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
        Ok(()) if fua => osd.store.flush().await,
        other => other,
    };
    match result {
        Ok(()) => durable(fua),
        Err(e) => {
            tracing::error!(object = %op.object, "replica write failed: {e}");
            reply(store_status(&e), epoch)
        }
    }
}
