//! The monitor client: finds a live monitor among the known addresses, sends control
//! requests, and keeps a subscription that delivers every new map.

use bytes::Bytes;
use net::sync::lock;
use net::{Conn, NetError};
use proto::msg::{
    decode_control, encode_control, map_crc, msg_type, ControlRequest, ControlResponse, MapUpdate,
    MonRequest,
};
use proto::{ClusterMap, Command, CommandResult, Epoch, MapError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum MonError {
    #[error("no monitor address given (use --mon, ATLANT_MON or a config file)")]
    NoAddress,
    #[error("no monitor reachable at {addrs}: {last}")]
    Unreachable { addrs: String, last: String },
    #[error("{0}")]
    Refused(#[from] MapError),
    #[error("monitor error: {0}")]
    Remote(String),
    #[error("unexpected monitor reply: {0}")]
    Unexpected(String),
}

pub struct MonClient {
    /// The monitors to try: those given, then the group the map lists once one is known
    /// (so `mon add` / `mon rm` reach clients without a restart).
    addrs: Mutex<Vec<String>>,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Which address to try first: moves on when a monitor fails or has no quorum.
    next: AtomicUsize,
    /// This client's identity for map changes: a retry of (client, seq) applies once.
    client: u128,
    seq: AtomicU64,
}

/// Splits `a,b,c` into addresses.
pub fn parse_addrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

impl MonClient {
    pub fn new(addrs: Vec<String>) -> Result<Arc<MonClient>, MonError> {
        if addrs.is_empty() {
            return Err(MonError::NoAddress);
        }
        Ok(Arc::new(MonClient {
            next: AtomicUsize::new(net::rt::random_u64() as usize % addrs.len()),
            addrs: Mutex::new(addrs),
            conn: Mutex::new(None),
            client: net::rt::random_u128(),
            seq: AtomicU64::new(1),
        }))
    }

    pub fn addrs(&self) -> Vec<String> {
        lock(&self.addrs).clone()
    }

    /// Adopts the monitor group a map lists (ignored if it lists none).
    pub fn learn(&self, map: &ClusterMap) {
        let listed: Vec<String> = map.mons.iter().map(|m| m.addr.clone()).collect();
        if listed.is_empty() {
            return;
        }
        let mut a = lock(&self.addrs);
        if *a != listed {
            tracing::info!("monitors are now {}", listed.join(","));
            *a = listed;
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, MonError> {
        if let Some(c) = lock(&self.conn).clone() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let start = self.next.load(Ordering::Relaxed);
        let (c, i) = connect_any(&self.addrs(), start).await?;
        self.next.store(i, Ordering::Relaxed);
        *lock(&self.conn) = Some(c.clone());
        Ok(c)
    }

    fn move_on(&self) {
        *lock(&self.conn) = None;
        let n = self.addrs().len().max(1);
        let _ = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }

    /// Sends a control request to a live monitor, moving on to the others when one fails
    /// or answers that it has no quorum.
    pub async fn call(&self, req: &ControlRequest) -> Result<ControlResponse, MonError> {
        let mut last = String::new();
        for _ in 0..(2 * self.addrs().len()).max(3) {
            let c = match self.connection().await {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match c
                .call(
                    msg_type::CONTROL,
                    encode_control(req),
                    Bytes::new(),
                    CALL_TIMEOUT,
                )
                .await
            {
                Ok(f) => match decode_control(&f.meta) {
                    Ok(ControlResponse::NoQuorum(why)) => {
                        last = why;
                        self.move_on();
                    }
                    Ok(r) => return Ok(r),
                    Err(e) => return Err(MonError::Unexpected(e.to_string())),
                },
                Err(e) => {
                    last = e.to_string();
                    self.move_on();
                }
            }
        }
        Err(MonError::Unreachable {
            addrs: self.addrs().join(","),
            last,
        })
    }

    pub async fn get_map(&self) -> Result<ClusterMap, MonError> {
        match self.call(&ControlRequest::GetMap { have: 0 }).await? {
            ControlResponse::Map(m) => Ok(*m),
            other => Err(unexpected(other)),
        }
    }

    /// The map, waiting up to `timeout` for a monitor to answer (daemons starting beside
    /// their monitors use this instead of failing at once).
    pub async fn wait_for_map(&self, timeout: Duration) -> Result<ClusterMap, MonError> {
        let start = tokio::time::Instant::now();
        let mut warned = Duration::ZERO;
        loop {
            match self.get_map().await {
                Ok(m) => return Ok(m),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(e) => {
                    if start.elapsed() >= warned + Duration::from_secs(5) {
                        warned = start.elapsed();
                        tracing::warn!("waiting for a monitor: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Commits a map change; returns the epoch that holds it and the result.
    /// A retry after a monitor failed or lost its quorum carries the same request id, so
    /// the change is applied once.
    pub async fn command(&self, cmd: Command) -> Result<(Epoch, CommandResult), MonError> {
        let req = ControlRequest::Submit(MonRequest {
            client: self.client,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            cmd,
        });
        match self.call(&req).await? {
            ControlResponse::Committed { epoch, result } => Ok((epoch, result)),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a background subscription that keeps the returned channel at the newest map,
    /// reconnecting (to any monitor) whenever the connection drops.
    /// The sender is shared so a caller that fetched a newer map directly can publish it.
    pub fn subscribe(self: &Arc<Self>, initial: ClusterMap) -> Arc<watch::Sender<Arc<ClusterMap>>> {
        self.learn(&initial);
        let (tx, _) = watch::channel(Arc::new(initial));
        let tx = Arc::new(tx);
        let me = Arc::clone(self);
        let sender = Arc::clone(&tx);
        net::rt::spawn(async move {
            let tx = sender;
            let mut backoff = Duration::from_millis(50);
            loop {
                let have = tx.borrow().epoch;
                match me.subscription(have, &tx).await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e) => {
                        tracing::debug!("map subscription: {e}");
                        me.move_on();
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
        tx
    }

    async fn subscription(
        &self,
        have: Epoch,
        tx: &watch::Sender<Arc<ClusterMap>>,
    ) -> Result<(), MonError> {
        let start = self.next.load(Ordering::Relaxed);
        let (conn, _) = connect_any(&self.addrs(), start).await?;
        let mut pushes = conn
            .take_pushes()
            .ok_or_else(|| MonError::Unexpected("push channel taken".into()))?;
        let req = encode_control(&ControlRequest::Subscribe { have });
        let f = conn
            .call(msg_type::CONTROL, req, Bytes::new(), CALL_TIMEOUT)
            .await
            .map_err(|e| MonError::Unreachable {
                addrs: conn.peer().to_string(),
                last: e.to_string(),
            })?;
        match decode_control::<ControlResponse>(&f.meta) {
            Ok(ControlResponse::Subscribed { .. }) => {}
            Ok(ControlResponse::Map(m)) => publish(tx, *m),
            Ok(ControlResponse::UpToDate { .. }) => {}
            Ok(other) => return Err(unexpected(other)),
            Err(e) => return Err(MonError::Unexpected(e.to_string())),
        }
        // A monitor in the quorum pushes at least a keepalive every second; one that says
        // nothing for longer is cut off or hung (its map may be frozen): move on.
        let silent = proto::msg::SUBSCRIPTION_KEEPALIVE * 3;
        let stay = proto::planted::active(proto::planted::Bug::StayOnIsolatedMonitor);
        loop {
            let f = if stay {
                pushes.recv().await
            } else {
                match tokio::time::timeout(silent, pushes.recv()).await {
                    Ok(f) => f,
                    Err(_) => {
                        return Err(MonError::Unreachable {
                            addrs: conn.peer().to_string(),
                            last: format!("subscription silent for {silent:?}"),
                        })
                    }
                }
            };
            let Some(f) = f else { break };
            if f.msg_type != msg_type::MAP_PUSH {
                continue;
            }
            match decode_control::<MapUpdate>(&f.meta) {
                Ok(MapUpdate::Keepalive { .. }) => {}
                Ok(MapUpdate::NotInQuorum(why)) => {
                    return Err(MonError::Unreachable {
                        addrs: conn.peer().to_string(),
                        last: why,
                    })
                }
                Ok(MapUpdate::Full(m)) => publish(tx, *m),
                Ok(MapUpdate::Incremental { from, cmds, crc }) => {
                    let cur = tx.borrow().clone();
                    if cur.epoch >= from + cmds.len() as u64 {
                        continue; // already have it (e.g. fetched directly)
                    }
                    match apply_incremental(&cur, from, &cmds, crc) {
                        Ok(m) => publish(tx, m),
                        Err(why) => {
                            tracing::warn!(
                                "map update {from}+{}: {why}; fetching the full map",
                                cmds.len()
                            );
                            publish(tx, self.get_map().await?);
                        }
                    }
                }
                Err(e) => tracing::warn!("bad map push: {e}"),
            }
            let newest = tx.borrow().clone();
            self.learn(&newest);
        }
        Ok(())
    }
}

/// Applies the commands of an incremental update to `cur` (which must be at `from`) and
/// checks the result against the monitor's crc.
pub fn apply_incremental(
    cur: &ClusterMap,
    from: Epoch,
    cmds: &[Command],
    crc: u32,
) -> Result<ClusterMap, String> {
    if cur.epoch != from {
        return Err(format!(
            "our map is at epoch {}, the update starts at {from}",
            cur.epoch
        ));
    }
    let mut m = cur.clone();
    for c in cmds {
        m = m
            .apply(c)
            .map_err(|e| format!("command of epoch {} refused here: {e}", m.epoch + 1))?
            .0;
    }
    if map_crc(&m) != crc {
        return Err(format!(
            "map of epoch {} differs from the monitors' (crc)",
            m.epoch
        ));
    }
    Ok(m)
}

/// Publishes `m` if it is newer than the current map.
pub fn publish(tx: &watch::Sender<Arc<ClusterMap>>, m: ClusterMap) {
    tx.send_if_modified(|cur| {
        if m.epoch > cur.epoch {
            *cur = Arc::new(m);
            true
        } else {
            false
        }
    });
}

/// Connects to the first reachable monitor, starting at `start`; returns its index.
async fn connect_any(addrs: &[String], start: usize) -> Result<(Arc<Conn>, usize), MonError> {
    let mut last = String::from("no address");
    for k in 0..addrs.len() {
        let i = (start + k) % addrs.len();
        let a = &addrs[i];
        let connect = net::transport::connect(a);
        match tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .unwrap_or_else(|_| {
                Err(NetError::Connect {
                    addr: a.clone(),
                    reason: "timed out".into(),
                })
            }) {
            Ok(c) => return Ok((c, i)),
            Err(e @ NetError::Connect { .. }) | Err(e) => last = e.to_string(),
        }
    }
    Err(MonError::Unreachable {
        addrs: addrs.join(","),
        last,
    })
}

fn unexpected(r: ControlResponse) -> MonError {
    match r {
        ControlResponse::Refused(e) => MonError::Refused(e),
        ControlResponse::Error(s) => MonError::Remote(s),
        other => MonError::Unexpected(format!("{other:?}").chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::map::{ClusterFlag, FullRatios};

    #[test]
    fn incremental_updates_apply_only_on_the_right_map_and_crc() {
        let m0 = ClusterMap::new(7, vec![]);
        let cmds = vec![
            Command::SetFlag {
                flag: ClusterFlag::NoOut,
            },
            Command::SetFullRatios {
                ratios: FullRatios {
                    nearfull: 800,
                    backfillfull: 850,
                    full: 900,
                },
            },
        ];
        let want = m0.apply(&cmds[0]).unwrap().0.apply(&cmds[1]).unwrap().0;
        let crc = map_crc(&want);
        assert_eq!(apply_incremental(&m0, m0.epoch, &cmds, crc).unwrap(), want);
        // Wrong base epoch, wrong result, or a command this map refuses: fetch the full map.
        assert!(apply_incremental(&m0, m0.epoch + 1, &cmds, crc).is_err());
        assert!(apply_incremental(&m0, m0.epoch, &cmds, crc ^ 1).is_err());
        let twice = vec![cmds[0].clone(), cmds[0].clone()];
        assert!(apply_incremental(&m0, m0.epoch, &twice, crc).is_err());
    }
}
