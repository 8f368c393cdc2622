//! OSD ↔ OSD heartbeats: each OSD probes the OSDs it shares PGs with once a second and
//! reports a peer that has not answered for `grace` to the monitors. The monitors mark a
//! peer down only when enough distinct OSDs report it (one OSD cannot do it alone).

use crate::daemon::Osd;
use bytes::Bytes;
use client::MonClient;
use net::ConnCache;
use proto::msg::{decode_control, encode_control, msg_type, ControlRequest, ControlResponse};
use proto::{ClusterMap, OsdId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Heartbeats also renew read leases (`lease::LEASE`), so this is well below the lease.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Ok,
    /// No answer in time (hung, cut off, or slow).
    Silent,
    /// The address refused the connection: no process listens there.
    Refused,
}

impl Probe {
    fn from_connect(e: &net::NetError) -> Probe {
        match e {
            net::NetError::Connect { reason, .. } if reason.contains("refused") => Probe::Refused,
            _ => Probe::Silent,
        }
    }
}

/// The up OSDs that share at least one PG with `me`.
pub fn peers(map: &ClusterMap, me: OsdId) -> BTreeSet<OsdId> {
    let mut out = BTreeSet::new();
    for pool in map.pools.values() {
        for m in proto::pg::pool_mappings(map, pool) {
            if m.osds.contains(&me) {
                out.extend(m.osds.iter().copied().filter(|o| *o != me));
            }
        }
    }
    out.retain(|o| map.osd(*o).is_some_and(|i| i.up));
    out
}

/// One peer as the heartbeat loop tracks it.
struct Peer {
    /// Its incarnation.
    up_from: u64,
    /// When it last answered (or when we started watching this incarnation).
    last_ok: Instant,
    /// A probe is on its way: none is sent until it ends, so a hung peer costs one task.
    inflight: bool,
    /// A probe's outcome not looked at yet.
    refused: bool,
}

pub fn spawn(
    me: OsdId,
    osd: Arc<Osd>,
    mon: Arc<MonClient>,
    map_rx: watch::Receiver<Arc<ClusterMap>>,
    grace: Duration,
) {
    net::rt::spawn(async move {
        let conns: Arc<ConnCache<u32>> = Arc::new(ConnCache::default());
        let state: Arc<std::sync::Mutex<BTreeMap<u32, Peer>>> = Arc::default();
        let mut cached: Option<(u64, BTreeSet<OsdId>)> = None;
        loop {
            tokio::time::sleep(INTERVAL).await;
            let map = map_rx.borrow().clone();
            let my_inc = osd.up_from.load(Ordering::SeqCst);
            if !map.osd(me).is_some_and(|o| o.up && o.up_from == my_inc) {
                // Not serving: our view of others does not count.
                net::sync::lock(&state).clear();
                continue;
            }
            let ps = match &cached {
                Some((e, ps)) if *e == map.epoch => ps.clone(),
                _ => {
                    let ps = peers(&map, me);
                    cached = Some((map.epoch, ps.clone()));
                    ps
                }
            };
            let reports = probe_round(me, &osd, &conns, &state, &map, &ps, grace);
            send_reports(&mon, me, reports).await;
        }
    });
}

/// Starts a probe of every peer that has none on its way; returns the peers to report.
fn probe_round(
    me: OsdId,
    osd: &Arc<Osd>,
    conns: &Arc<ConnCache<u32>>,
    state: &Arc<std::sync::Mutex<BTreeMap<u32, Peer>>>,
    map: &ClusterMap,
    ps: &BTreeSet<OsdId>,
    grace: Duration,
) -> Vec<(OsdId, u64, bool)> {
    let now = Instant::now();
    let mut reports = Vec::new();
    let mut peers_now = net::sync::lock(state);
    peers_now.retain(|id, _| ps.contains(&OsdId(*id)));
    for p in ps {
        let Some(info) = map.osd(*p) else { continue };
        let e = peers_now.entry(p.0).or_insert(Peer {
            up_from: info.up_from,
            last_ok: now,
            inflight: false,
            refused: false,
        });
        if e.up_from != info.up_from {
            *e = Peer {
                up_from: info.up_from,
                last_ok: now,
                inflight: e.inflight,
                refused: false,
            };
        }
        if std::mem::take(&mut e.refused) {
            // Nothing listens at its address: the process is gone. Report at once.
            tracing::warn!(%me, peer = %p, "peer refused the connection: reporting it");
            reports.push((*p, e.up_from, true));
        } else if e.last_ok.elapsed() > grace {
            tracing::warn!(%me, peer = %p, silent_ms = e.last_ok.elapsed().as_millis() as u64, "peer not answering heartbeats: reporting it");
            reports.push((*p, e.up_from, false));
        }
        if e.inflight {
            continue;
        }
        e.inflight = true;
        let (conns, addr, id, epoch, up_from) = (
            Arc::clone(conns),
            info.addr.clone(),
            p.0,
            map.epoch,
            info.up_from,
        );
        let (osd, state) = (Arc::clone(osd), Arc::clone(state));
        net::rt::spawn(async move {
            let sent = net::rt::now();
            let req = encode_control(&ControlRequest::Heartbeat { from: me, epoch });
            let probe = async {
                let c = match conns.get(id, &addr).await {
                    Ok(c) => c,
                    Err(e) => return (Probe::from_connect(&e), false),
                };
                match c
                    .call(msg_type::CONTROL, req, Bytes::new(), PROBE_TIMEOUT)
                    .await
                    .map(|f| decode_control(&f.meta))
                {
                    Ok(Ok(ControlResponse::Ok)) => (Probe::Ok, true),
                    // Alive, but it granted no lease (it sees this incarnation down).
                    Ok(Ok(ControlResponse::Error(_))) => (Probe::Ok, false),
                    _ => (Probe::Silent, false),
                }
            };
            let (probe, granted) = tokio::time::timeout(PROBE_TIMEOUT, probe)
                .await
                .unwrap_or((Probe::Silent, false));
            if granted {
                osd.leases.hold(OsdId(id), sent);
            }
            let mut st = net::sync::lock(&state);
            if let Some(e) = st.get_mut(&id) {
                e.inflight = false;
                if e.up_from == up_from {
                    match probe {
                        Probe::Ok => e.last_ok = Instant::now(),
                        Probe::Refused => e.refused = true,
                        Probe::Silent => {}
                    }
                }
            }
        });
    }
    reports
}

async fn send_reports(mon: &MonClient, me: OsdId, reports: Vec<(OsdId, u64, bool)>) {
    for (target, target_up_from, refused) in reports {
        let req = ControlRequest::OsdFailure {
            reporter: me,
            target,
            target_up_from,
            refused,
        };
        if let Err(err) = mon.call(&req).await {
            tracing::debug!("failure report: {err}");
        }
    }
}
