//! The monitor's network front: control requests in, map pushes out.

use crate::service::{MapService, ServiceError};
use bytes::Bytes;
use net::conn::{OutFrame, Responder};
use proto::frame::Frame;
use proto::msg::{decode_control, encode_control, msg_type, ControlRequest, ControlResponse};
use std::sync::Arc;

pub async fn handle(svc: Arc<MapService>, f: Frame, r: Responder) {
    if f.msg_type != msg_type::CONTROL {
        reply(
            &r,
            &ControlResponse::Error(format!(
                "monitor does not serve message type {}",
                f.msg_type
            )),
        );
        return;
    }
    let req: ControlRequest = match decode_control(&f.meta) {
        Ok(req) => req,
        Err(e) => {
            reply(&r, &ControlResponse::Error(e.to_string()));
            return;
        }
    };
    match req {
        ControlRequest::GetMap { have } => reply(&r, &map_or_up_to_date(&svc, have)),
        ControlRequest::Subscribe { have } => {
            let mut rx = svc.subscribe();
            reply(&r, &map_or_up_to_date(&svc, have));
            let mut sent = have.max(svc.map().epoch);
            // Push every later map until the subscriber goes away.
            while rx.changed().await.is_ok() {
                let m = rx.borrow_and_update().clone();
                if m.epoch <= sent {
                    continue;
                }
                sent = m.epoch;
                let push =
                    OutFrame::new(msg_type::MAP_PUSH, 0, 0, encode_control(&*m), Bytes::new());
                if !r.sender.send(push) {
                    break;
                }
            }
        }
        ControlRequest::Command(cmd) => {
            let resp = match svc.apply(&cmd) {
                Ok((epoch, result)) => ControlResponse::Committed { epoch, result },
                Err(ServiceError::Refused(e)) => ControlResponse::Refused(e),
                Err(e) => {
                    tracing::error!("cannot commit {cmd:?}: {e}");
                    ControlResponse::Error(e.to_string())
                }
            };
            reply(&r, &resp);
        }
        ControlRequest::OsdReport { id, up_from, stats } => {
            let resp = if svc.report(id, up_from, stats) {
                ControlResponse::Ok
            } else {
                ControlResponse::Error(format!("{id}: report from a stale incarnation {up_from}"))
            };
            reply(&r, &resp);
        }
        ControlRequest::GetStatus => reply(&r, &ControlResponse::Status(Box::new(svc.status()))),
        ControlRequest::ListObjects { .. } | ControlRequest::Flush => reply(
            &r,
            &ControlResponse::Error("this request is served by OSDs, not monitors".into()),
        ),
    }
}

fn map_or_up_to_date(svc: &MapService, have: proto::Epoch) -> ControlResponse {
    let m = svc.map();
    if m.epoch > have {
        ControlResponse::Map(Box::new((*m).clone()))
    } else {
        ControlResponse::UpToDate { epoch: m.epoch }
    }
}

fn reply(r: &Responder, resp: &ControlResponse) {
    r.reply(msg_type::CONTROL, encode_control(resp), Bytes::new());
}
