//! The monitor's network front: control requests, Raft RPCs between monitors, and map
//! pushes to subscribers.

use crate::raft::{handle_rpc, RaftRpc};
use crate::service::{MapService, ServiceError};
use bytes::Bytes;
use net::conn::{OutFrame, Responder};
use proto::frame::Frame;
use proto::msg::{
    decode_control, encode_control, map_crc, msg_type, ControlRequest, ControlResponse, MapUpdate,
};
use std::sync::Arc;

pub async fn handle(svc: Arc<MapService>, f: Frame, r: Responder) {
    match f.msg_type {
        msg_type::RAFT => {
            let reply = match decode_control::<RaftRpc>(&f.meta) {
                Ok(rpc) => {
                    let append = matches!(rpc, RaftRpc::Append(_));
                    let reply = handle_rpc(&svc.raft, rpc).await;
                    if append && accepted(&reply) {
                        svc.heard_leader();
                    }
                    encode_control(&reply)
                }
                // A malformed RPC: no reply; the sender sees a timeout and retries.
                Err(e) => {
                    tracing::warn!("bad raft rpc: {e}");
                    return;
                }
            };
            r.reply(msg_type::RAFT, reply, Bytes::new());
        }
        msg_type::CONTROL => control(svc, f, r).await,
        other => reply(
            &r,
            &ControlResponse::Error(format!("monitor does not serve message type {other}")),
        ),
    }
}

async fn control(svc: Arc<MapService>, f: Frame, r: Responder) {
    let req: ControlRequest = match decode_control(&f.meta) {
        Ok(req) => req,
        Err(e) => {
            reply(&r, &ControlResponse::Error(e.to_string()));
            return;
        }
    };
    if !svc.is_member() {
        reply(
            &r,
            &ControlResponse::NoQuorum(format!(
                "monitor {} is not a member of the monitor group (not added yet, or removed)",
                svc.name
            )),
        );
        return;
    }
    let frozen =
        || !svc.in_quorum() && !proto::planted::active(proto::planted::Bug::StayOnIsolatedMonitor);
    match req {
        ControlRequest::GetMap { .. } | ControlRequest::Subscribe { .. } if frozen() => {
            reply(
                &r,
                &ControlResponse::NoQuorum(format!(
                    "monitor {} is not in contact with a quorum: its map may be stale",
                    svc.name
                )),
            );
        }
        ControlRequest::GetMap { have } => {
            let m = svc.map();
            let resp = if m.epoch > have {
                ControlResponse::Map(Box::new((*m).clone()))
            } else {
                ControlResponse::UpToDate { epoch: m.epoch }
            };
            reply(&r, &resp);
        }
        ControlRequest::Subscribe { have } => subscription(&svc, have, &r).await,
        ControlRequest::Submit(req) => reply(&r, &committed(svc.submit(req, true).await)),
        ControlRequest::Forwarded(req) => reply(&r, &committed(svc.submit(req, false).await)),
        // Membership changes run on the leader; a follower passes them on.
        req @ (ControlRequest::AddMonitor { .. } | ControlRequest::RemoveMonitor { .. })
            if !svc.is_leader() =>
        {
            let resp = match svc.call_leader(&req).await {
                Ok(resp) => resp,
                Err(e) => ControlResponse::NoQuorum(e),
            };
            reply(&r, &resp);
        }
        ControlRequest::AddMonitor { name, addr } => {
            let res = svc.add_monitor(&name, &addr).await;
            reply(&r, &committed(res.map(|e| (e, proto::CommandResult::Done))));
        }
        ControlRequest::RemoveMonitor { name } => {
            let res = svc.remove_monitor(&name).await;
            reply(&r, &committed(res.map(|e| (e, proto::CommandResult::Done))));
        }
        ControlRequest::OsdReport {
            id,
            up_from,
            stats,
            pgs,
        } => {
            let ok = svc.report(id, up_from, stats.clone(), pgs.clone()).await;
            svc.relay_to_leader(ControlRequest::OsdReport {
                id,
                up_from,
                stats,
                pgs,
            });
            reply(
                &r,
                &if ok {
                    ControlResponse::Ok
                } else {
                    ControlResponse::Error(format!(
                        "{id}: report from a stale incarnation {up_from}"
                    ))
                },
            );
        }
        ControlRequest::OsdFailure {
            reporter,
            target,
            target_up_from,
            refused,
        } => {
            svc.failure_report(reporter, target, target_up_from, refused);
            svc.relay_to_leader(ControlRequest::OsdFailure {
                reporter,
                target,
                target_up_from,
                refused,
            });
            reply(&r, &ControlResponse::Ok);
        }
        ControlRequest::GetStatus => {
            reply(&r, &ControlResponse::Status(Box::new(svc.status().await)))
        }
        ControlRequest::ListObjects { .. }
        | ControlRequest::Flush
        | ControlRequest::Heartbeat { .. }
        | ControlRequest::PgQuery { .. }
        | ControlRequest::PgActivate { .. } => reply(
            &r,
            &ControlResponse::Error("this request is served by OSDs, not monitors".into()),
        ),
    }
}

fn committed(res: Result<(proto::Epoch, proto::CommandResult), ServiceError>) -> ControlResponse {
    match res {
        Ok((epoch, result)) => ControlResponse::Committed { epoch, result },
        Err(ServiceError::Refused(e)) => ControlResponse::Refused(e),
        Err(ServiceError::NoQuorum(e)) => ControlResponse::NoQuorum(e),
        Err(ServiceError::Other(e)) => ControlResponse::Error(e),
    }
}

/// Keeps the connection as a subscription: pushes the commands that lead from the
/// subscriber's epoch to each new map (or the full map when they are no longer kept).
async fn subscription(svc: &MapService, have: proto::Epoch, r: &Responder) {
    let mut rx = svc.subscribe();
    reply(
        r,
        &ControlResponse::Subscribed {
            epoch: svc.map().epoch,
        },
    );
    let mut sent = have;
    let mut tick = tokio::time::interval(proto::msg::SUBSCRIPTION_KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let push = |update: &MapUpdate| {
        r.sender.send(OutFrame::new(
            msg_type::MAP_PUSH,
            0,
            0,
            encode_control(update),
            Bytes::new(),
        ))
    };
    loop {
        let m = rx.borrow_and_update().clone();
        if m.epoch > sent {
            let update = match svc.published().between(sent, m.epoch) {
                Some(cmds) if sent > 0 => MapUpdate::Incremental {
                    from: sent,
                    cmds,
                    crc: map_crc(&m),
                },
                _ => MapUpdate::Full(Box::new((*m).clone())),
            };
            if !push(&update) {
                return;
            }
            sent = m.epoch;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                if proto::planted::active(proto::planted::Bug::StayOnIsolatedMonitor) {
                    continue;
                }
                let update = if svc.in_quorum() {
                    MapUpdate::Keepalive { epoch: sent }
                } else {
                    MapUpdate::NotInQuorum(format!("monitor {} lost contact with the quorum", svc.name))
                };
                let leaving = matches!(update, MapUpdate::NotInQuorum(_));
                if !push(&update) || leaving {
                    return;
                }
            }
        }
    }
}

/// Whether a reply to AppendEntries means this monitor took the sender as its leader.
fn accepted(reply: &crate::raft::RaftReply) -> bool {
    matches!(reply, crate::raft::RaftReply::Append(Ok(r)) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
}

fn reply(r: &Responder, resp: &ControlResponse) {
    r.reply(msg_type::CONTROL, encode_control(resp), Bytes::new());
}
