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

const INTERVAL: Duration = Duration::from_secs(1);

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

pub fn spawn(
    me: OsdId,
    osd: Arc<Osd>,
    mon: Arc<MonClient>,
    map_rx: watch::Receiver<Arc<ClusterMap>>,
    grace: Duration,
) {
    tokio::spawn(async move {
        let conns: Arc<ConnCache<u32>> = Arc::new(ConnCache::default());
        // Per peer: its incarnation and when it last answered (or when we started watching).
        let mut last_ok: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
        let mut cached: Option<(u64, BTreeSet<OsdId>)> = None;
        loop {
            tokio::time::sleep(INTERVAL).await;
            let map = map_rx.borrow().clone();
            let my_inc = osd.up_from.load(Ordering::SeqCst);
            if !map.osd(me).is_some_and(|o| o.up && o.up_from == my_inc) {
                // Not serving: our view of others does not count.
                last_ok.clear();
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
            last_ok.retain(|id, _| ps.contains(&OsdId(*id)));
            let now = Instant::now();
            let mut probes = Vec::new();
            for p in &ps {
                let Some(info) = map.osd(*p) else { continue };
                let e = last_ok.entry(p.0).or_insert((info.up_from, now));
                if e.0 != info.up_from {
                    *e = (info.up_from, now);
                }
                let (conns, addr, id, epoch) =
                    (Arc::clone(&conns), info.addr.clone(), p.0, map.epoch);
                probes.push(async move {
                    let req = encode_control(&ControlRequest::Heartbeat { from: me, epoch });
                    let ok = async {
                        let c = conns.get(id, &addr).await.ok()?;
                        let f = c
                            .call(msg_type::CONTROL, req, Bytes::new(), INTERVAL)
                            .await
                            .ok()?;
                        matches!(decode_control(&f.meta), Ok(ControlResponse::Ok)).then_some(())
                    };
                    (
                        id,
                        tokio::time::timeout(INTERVAL, ok)
                            .await
                            .ok()
                            .flatten()
                            .is_some(),
                    )
                });
            }
            for (id, ok) in futures::future::join_all(probes).await {
                let Some(e) = last_ok.get_mut(&id) else {
                    continue;
                };
                if ok {
                    e.1 = Instant::now();
                } else if e.1.elapsed() > grace {
                    tracing::warn!(%me, peer = %OsdId(id), silent_ms = e.1.elapsed().as_millis() as u64, "peer not answering heartbeats: reporting it");
                    let req = ControlRequest::OsdFailure {
                        reporter: me,
                        target: OsdId(id),
                        target_up_from: e.0,
                    };
                    if let Err(err) = mon.call(&req).await {
                        tracing::debug!("failure report: {err}");
                    }
                }
            }
        }
    });
}
