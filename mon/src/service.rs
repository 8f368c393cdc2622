//! The map service: a monitor's view of the group. Map changes go through the Raft log
//! (forwarded to the leader when this monitor is not it); reads are served from this
//! monitor's applied state. The leader also runs the OSD liveness policy.
//!
//! Invariants:
//! - a command is acknowledged only once it is committed by a quorum and applied here;
//! - a retried request (same client and seq) is applied at most once (the state machine
//!   keeps each client's last answer);
//! - only the leader marks OSDs down or out, and only from its own observations: a lease
//!   that expired, or failure reports from at least `min_down_reporters` distinct OSDs.

use crate::log::Published;
use crate::raft::{MonNode, NodeId, Raft};
use bytes::Bytes;
use net::sync::lock;
use net::ConnCache;
use openraft::error::{ClientWriteError, RaftError};
use proto::map::ClusterFlag;
use proto::msg::PgStat;
use proto::msg::{
    decode_control, encode_control, msg_type, ControlRequest, ControlResponse, MonRequest,
    MonStatus, OsdStats, StatusReport,
};
use proto::{ClusterMap, Command, CommandResult, Epoch, MapError, OsdId, PgId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Refused(#[from] MapError),
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("{0}")]
    Other(String),
}

/// The leader's OSD liveness policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// An OSD incarnation silent this long (no report reached the leader) is marked down.
    pub osd_grace: Duration,
    /// A down OSD is marked out after this long, unless `noout` is set.
    pub down_out_interval: Duration,
    /// Distinct OSDs that must report a peer dead before the leader marks it down.
    pub min_down_reporters: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            osd_grace: Duration::from_secs(8),
            down_out_interval: Duration::from_secs(600),
            min_down_reporters: 2,
        }
    }
}

/// A monitor that has not been in contact with a quorum for this long serves no map.
pub const QUORUM_CONTACT: Duration = Duration::from_secs(2);
/// How long a command waits for a leader before answering "no quorum".
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// How long a follower waits for the leader it forwarded a command to.
const FORWARD_WAIT: Duration = Duration::from_secs(2);
/// Damping of an OSD marked down while its process kept running: held down for
/// `FLAP_BASE * 2^(n-1)` after its n-th such mark-down within `FLAP_WINDOW`.
const FLAP_BASE: Duration = Duration::from_secs(2);
const FLAP_MAX: Duration = Duration::from_secs(300);
const FLAP_WINDOW: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Liveness {
    /// When each OSD incarnation last reported, by OSD id.
    leases: BTreeMap<u32, (Epoch, Instant)>,
    /// Failure reports about an incarnation: reporter → when.
    failures: BTreeMap<u32, (Epoch, BTreeMap<u32, Instant>)>,
    /// Reports that an incarnation's address refused connections: (incarnation, reporter,
    /// when).
    refused: BTreeMap<u32, (Epoch, u32, Instant)>,
    /// When this leader first saw each down-and-in OSD down.
    down_since: BTreeMap<u32, Instant>,
    /// Mark-downs of running processes.
    flaps: BTreeMap<u32, Flap>,
}

struct Flap {
    /// Mark-downs of a running process within `FLAP_WINDOW` of each other.
    count: u32,
    /// The incarnation last counted (each mark-down counts once).
    counted: Epoch,
    last: Instant,
    /// A boot of the same process is refused until then.
    until: Instant,
}

pub struct MapService {
    pub node: NodeId,
    pub name: String,
    pub addr: String,
    pub raft: Raft,
    published: Arc<Published>,
    policy: Policy,
    peers: ConnCache<u64>,
    client: u128,
    seq: AtomicU64,
    stats: Mutex<BTreeMap<u32, (Epoch, OsdStats)>>,
    /// Each PG's latest report from an OSD that was its primary when it reported.
    pg_stats: Mutex<BTreeMap<PgId, PgStat>>,
    live: Mutex<Liveness>,
    /// When each other monitor last answered this one's probe.
    mon_seen: Mutex<BTreeMap<String, Instant>>,
    /// When this monitor last accepted entries (or a heartbeat) from a leader.
    leader_heard: Mutex<Option<Instant>>,
}

impl MapService {
    pub fn new(
        node: NodeId,
        me: &MonNode,
        raft: Raft,
        published: Arc<Published>,
        policy: Policy,
    ) -> Arc<Self> {
        Arc::new(MapService {
            node,
            name: me.name.clone(),
            addr: me.addr.clone(),
            raft,
            published,
            policy,
            peers: ConnCache::default(),
            client: net::rt::random_u128(),
            seq: AtomicU64::new(1),
            stats: Mutex::new(BTreeMap::new()),
            pg_stats: Mutex::new(BTreeMap::new()),
            live: Mutex::new(Liveness::default()),
            mon_seen: Mutex::new(BTreeMap::new()),
            leader_heard: Mutex::new(None),
        })
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.published.map()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.published.map.subscribe()
    }

    pub fn published(&self) -> &Published {
        &self.published
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node)
    }

    fn leader(&self) -> Option<(NodeId, MonNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Commits a command this monitor itself decided on (liveness policy).
    pub async fn apply_own(&self, cmd: Command) -> Result<(Epoch, CommandResult), ServiceError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.submit(
            MonRequest {
                client: self.client,
                seq,
                cmd,
            },
            true,
        )
        .await
    }

    /// Commits a request: on the leader directly, otherwise forwarded to it (once).
    pub async fn submit(
        &self,
        req: MonRequest,
        may_forward: bool,
    ) -> Result<(Epoch, CommandResult), ServiceError> {
        if let Command::SetMonitors { .. } = req.cmd {
            return Err(MapError::Invalid(
                "the monitor list changes with `atlant mon add|rm`".into(),
            )
            .into());
        }
        let mut req = req;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if self.is_leader() {
                req.cmd = self.admit(req.cmd.clone())?;
            }
            // A leader cut off from the others cannot commit: do not wait for it forever.
            // The write may still commit later; a retry carries the same (client, seq).
            let left = deadline.saturating_duration_since(Instant::now());
            let write = tokio::time::timeout(left, self.raft.client_write(req.clone())).await;
            let Ok(write) = write else {
                return Err(ServiceError::NoQuorum(format!(
                    "monitor {} could not commit within {LEADER_WAIT:?} (is it cut off from the others?)",
                    self.name
                )));
            };
            let err = match write {
                Ok(resp) => return resp.data.map_err(ServiceError::Refused),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(id), Some(node)) if id != self.node && may_forward => {
                            match self.forward(id, &node, &req).await {
                                Ok(r) => return r,
                                Err(e) => e,
                            }
                        }
                        _ => "no leader elected".to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(ServiceError::NoQuorum(format!(
                    "monitor {} could not commit within {:?}: {err}",
                    self.name, LEADER_WAIT
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn forward(
        &self,
        id: NodeId,
        node: &MonNode,
        req: &MonRequest,
    ) -> Result<Result<(Epoch, CommandResult), ServiceError>, String> {
        // The leader commits in milliseconds; one that does not answer within
        // `FORWARD_WAIT` is probably cut off, so look for the leader again (a retry carries
        // the same request id, so it applies once).
        let fwd = ControlRequest::Forwarded(req.clone());
        let call = self.call_mon(id, &node.addr, &fwd);
        let r = tokio::time::timeout(FORWARD_WAIT, call)
            .await
            .map_err(|_| {
                format!(
                    "leader {} did not answer within {FORWARD_WAIT:?}",
                    node.name
                )
            })??;
        Ok(match r {
            ControlResponse::Committed { epoch, result } => Ok((epoch, result)),
            ControlResponse::Refused(e) => Err(ServiceError::Refused(e)),
            ControlResponse::NoQuorum(e) => return Err(e),
            ControlResponse::Error(e) => Err(ServiceError::Other(e)),
            other => Err(ServiceError::Other(format!("unexpected reply {other:?}"))),
        })
    }

    async fn call_mon(
        &self,
        id: u64,
        addr: &str,
        req: &ControlRequest,
    ) -> Result<ControlResponse, String> {
        let c = self.peers.get(id, addr).await.map_err(|e| e.to_string())?;
        let f = c
            .call(
                msg_type::CONTROL,
                encode_control(req),
                Bytes::new(),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| e.to_string())?;
        decode_control(&f.meta).map_err(|e| e.to_string())
    }

    /// The leader's checks before a command enters the log; returns the command to log.
    fn admit(&self, cmd: Command) -> Result<Command, MapError> {
        let map = self.map();
        let cmd = &cmd;
        if let Command::BootOsd { id, process, .. } = cmd {
            let now = Instant::now();
            let mut live = lock(&self.live);
            if let Some(o) = map.osd(*id) {
                if !o.up && o.process == *process && o.up_from > 0 {
                    // The same process is booting again: it was marked down while running.
                    let f = live.flaps.entry(id.0).or_insert(Flap {
                        count: 0,
                        counted: 0,
                        last: now,
                        until: now,
                    });
                    if f.counted != o.up_from {
                        f.count = if now.duration_since(f.last) > FLAP_WINDOW {
                            1
                        } else {
                            f.count + 1
                        };
                        f.counted = o.up_from;
                        f.last = now;
                        let hold = FLAP_BASE * 2u32.pow((f.count - 1).min(16));
                        f.until = now + hold.min(FLAP_MAX);
                    }
                    if now < f.until {
                        return Err(MapError::Invalid(format!(
                            "{id} was marked down while running {} time(s) recently (flapping): held down for another {:.1}s",
                            f.count,
                            (f.until - now).as_secs_f64()
                        )));
                    }
                }
            }
        }
        Ok(cmd.clone())
    }

    /// Records an OSD's usage report (and renews its lease) if it is about the current
    /// incarnation. Commits a change of its fullness.
    pub async fn report(&self, id: OsdId, up_from: Epoch, s: OsdStats, pgs: Vec<PgStat>) -> bool {
        let map = self.map();
        let Some(osd) = map.osd(id).filter(|o| o.up_from == up_from) else {
            return false;
        };
        {
            let mut all = lock(&self.pg_stats);
            for p in pgs.into_iter().filter(|p| p.acting.first() == Some(&id)) {
                all.insert(p.pg, p);
            }
        }
        let fullness = map.ratios.classify(s.used_bytes, s.capacity_bytes);
        lock(&self.stats).insert(id.0, (up_from, s));
        lock(&self.live)
            .leases
            .insert(id.0, (up_from, Instant::now()));
        if osd.fullness != fullness && self.is_leader() {
            if let Err(e) = self
                .apply_own(Command::SetOsdFullness { id, fullness })
                .await
            {
                tracing::warn!(%id, "cannot record fullness {fullness:?}: {e}");
            }
        }
        true
    }

    /// Records a peer's report that `target` stopped answering heartbeats.
    pub fn failure_report(
        &self,
        reporter: OsdId,
        target: OsdId,
        target_up_from: Epoch,
        refused: bool,
    ) {
        let map = self.map();
        let reporter_ok = map.osd(reporter).is_some_and(|o| o.up);
        let target_current = map
            .osd(target)
            .is_some_and(|o| o.up && o.up_from == target_up_from);
        if !reporter_ok || !target_current || reporter == target {
            return;
        }
        let mut live = lock(&self.live);
        if refused {
            live.refused
                .insert(target.0, (target_up_from, reporter.0, Instant::now()));
        }
        let e = live
            .failures
            .entry(target.0)
            .or_insert((target_up_from, BTreeMap::new()));
        if e.0 != target_up_from {
            *e = (target_up_from, BTreeMap::new());
        }
        e.1.insert(reporter.0, Instant::now());
    }

    /// One round of the leader's liveness policy: expired leases and agreed failure
    /// reports mark OSDs down; OSDs down for `down_out_interval` are marked out.
    pub async fn tick(&self) {
        if !self.is_leader() {
            // Another monitor leads: its observations count, not ours. Forget ours so a
            // later leadership starts every lease afresh.
            let mut live = lock(&self.live);
            live.failures.clear();
            live.down_since.clear();
            return;
        }
        let map = self.map();
        if !map.pools_without_intervals().is_empty() {
            // A map upgraded from format 4: its pools serve nothing until this commits.
            match self.apply_own(Command::StartIntervals).await {
                Ok((epoch, _)) => tracing::info!(epoch, "pools given interval starts"),
                Err(e) => tracing::warn!("cannot start the pools' intervals: {e}"),
            }
        }
        let now = Instant::now();
        let mut down: Vec<(OsdId, Epoch, String)> = Vec::new();
        let mut out: Vec<(OsdId, Epoch)> = Vec::new();
        {
            let mut live = lock(&self.live);
            let grace = self.policy.osd_grace;
            for o in map.osds.values().filter(|o| o.up) {
                match live.leases.get(&o.id.0) {
                    Some((inc, t)) if *inc == o.up_from => {
                        let silent = now.duration_since(*t);
                        if silent > grace {
                            down.push((o.id, o.up_from, format!("no report for {silent:?}")));
                            continue;
                        }
                    }
                    // An incarnation not heard from yet (new boot, or leadership just
                    // changed): its lease starts now.
                    _ => {
                        live.leases.insert(o.id.0, (o.up_from, now));
                    }
                }
                if let Some((inc, reporter, t)) = live.refused.get(&o.id.0).copied() {
                    let reporter_up = map.osd(OsdId(reporter)).is_some_and(|x| x.up);
                    if inc == o.up_from && reporter_up && now.duration_since(t) <= grace {
                        down.push((
                            o.id,
                            o.up_from,
                            format!("its address refused osd.{reporter}'s connection"),
                        ));
                        continue;
                    }
                }
                if let Some((inc, reps)) = live.failures.get_mut(&o.id.0) {
                    reps.retain(|r, t| {
                        now.duration_since(*t) <= grace && map.osd(OsdId(*r)).is_some_and(|x| x.up)
                    });
                    if *inc == o.up_from && reps.len() >= self.policy.min_down_reporters {
                        let who: Vec<String> = reps.keys().map(|r| format!("osd.{r}")).collect();
                        down.push((
                            o.id,
                            o.up_from,
                            format!("reported dead by {}", who.join(", ")),
                        ));
                    }
                }
            }
            let noout = map.flags.contains(&ClusterFlag::NoOut);
            let down_in: BTreeMap<u32, Epoch> = map
                .osds
                .values()
                .filter(|o| !o.up && o.is_in)
                .map(|o| (o.id.0, o.up_from))
                .collect();
            live.down_since.retain(|id, _| down_in.contains_key(id));
            for (id, up_from) in down_in {
                let since = *live.down_since.entry(id).or_insert(now);
                if !noout && now.duration_since(since) >= self.policy.down_out_interval {
                    out.push((OsdId(id), up_from));
                }
            }
        }
        if map.flags.contains(&ClusterFlag::NoDown) {
            down.clear();
        }
        for (id, up_from, why) in down {
            tracing::warn!(%id, "marking down: {why}");
            match self.apply_own(Command::MarkOsdDown { id, up_from }).await {
                Ok(_) => {
                    let mut live = lock(&self.live);
                    live.failures.remove(&id.0);
                }
                Err(e) => tracing::debug!(%id, "mark down: {e}"),
            }
        }
        for (id, up_from) in out {
            match self
                .apply_own(Command::AutoMarkOsdOut { id, up_from })
                .await
            {
                Ok(_) => {
                    tracing::warn!(%id, "down for {:?}: marked out (in again when it boots)", self.policy.down_out_interval)
                }
                Err(e) => {
                    tracing::warn!(%id, "down for {:?} but not marked out: {e}", self.policy.down_out_interval);
                    // Try again one interval later rather than every tick.
                    lock(&self.live).down_since.insert(id.0, Instant::now());
                }
            }
        }
    }

    /// A leader's AppendEntries (entries or heartbeat) was accepted.
    pub fn heard_leader(&self) {
        *lock(&self.leader_heard) = Some(Instant::now());
    }

    /// Whether this monitor is in contact with a quorum now: as the leader, a quorum
    /// acknowledged it within `QUORUM_CONTACT`; as a follower, it heard from the leader
    /// within that. A monitor cut off from the others keeps an applied map that no longer
    /// moves: it serves no map reads or subscriptions then (clients move to another).
    pub fn in_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < QUORUM_CONTACT);
        match m.current_leader {
            Some(l) if l == self.node => {
                m.membership_config.membership().voter_ids().count() <= 1
                    || m.millis_since_quorum_ack
                        .is_some_and(|ms| ms < QUORUM_CONTACT.as_millis() as u64)
            }
            Some(_) => recent(*lock(&self.leader_heard)),
            None => false,
        }
    }

    /// Probes the other monitors (for `status`: which are in the quorum).
    pub async fn probe_mons(&self) {
        let map = self.map();
        for m in map.mons.iter().filter(|m| m.name != self.name) {
            let id = crate::raft::node_id(&m.name);
            let probe = self.call_mon(id, &m.addr, &ControlRequest::GetMap { have: u64::MAX });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(800), probe).await {
                lock(&self.mon_seen).insert(m.name.clone(), Instant::now());
            }
        }
    }

    /// This monitor's status report. Monitors not heard from in 3 s are out of the quorum.
    pub fn local_status(&self) -> StatusReport {
        let map = (*self.map()).clone();
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader;
        let has_quorum = self.in_quorum();
        let seen = lock(&self.mon_seen).clone();
        let now = Instant::now();
        let mons = map
            .mons
            .iter()
            .map(|m| {
                let id = crate::raft::node_id(&m.name);
                let me = m.name == self.name;
                let alive = me
                    || seen
                        .get(&m.name)
                        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3));
                MonStatus {
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    in_quorum: has_quorum && alive,
                    leader: leader == Some(id),
                    applied: if me {
                        metrics.last_applied.map(|l| l.index).unwrap_or(0)
                    } else {
                        0
                    },
                }
            })
            .collect();
        let stats = lock(&self.stats);
        let osd_stats = stats.iter().map(|(id, (_, s))| (*id, s.clone())).collect();
        // Only reports that match each PG's current acting set tell its state.
        let mut pg_stats = BTreeMap::new();
        {
            let all = lock(&self.pg_stats);
            for pool in map.pools.values() {
                for m in proto::pg::pool_mappings(&map, pool) {
                    if let Some(s) = all.get(&m.pg).filter(|s| s.acting == m.acting) {
                        pg_stats.insert(m.pg, s.clone());
                    }
                }
            }
        }
        StatusReport {
            map,
            mons,
            osd_stats,
            pg_stats,
        }
    }

    /// The status as the leader sees it (it has every report); this monitor's own view if
    /// the leader cannot be reached.
    pub async fn status(&self) -> StatusReport {
        if !self.is_leader() {
            if let Some((id, node)) = self.leader() {
                let r = self.call_mon(id, &node.addr, &ControlRequest::GetStatus);
                if let Ok(Ok(ControlResponse::Status(s))) =
                    tokio::time::timeout(Duration::from_secs(2), r).await
                {
                    return *s;
                }
            }
        }
        self.local_status()
    }

    /// Sends a request to the leader (admin requests a follower received).
    pub async fn call_leader(&self, req: &ControlRequest) -> Result<ControlResponse, String> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.leader() {
                Some((id, node)) if id != self.node => {
                    return self.call_mon(id, &node.addr, req).await
                }
                _ if Instant::now() >= deadline => {
                    return Err(format!("monitor {} knows no leader", self.name))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Passes an OSD's report or failure report on to the leader (fire and forget).
    pub fn relay_to_leader(self: &Arc<Self>, req: ControlRequest) {
        if self.is_leader() {
            return;
        }
        let Some((id, node)) = self.leader() else {
            return;
        };
        let me = Arc::clone(self);
        net::rt::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), me.call_mon(id, &node.addr, &req))
                .await;
        });
    }

    /// Adds a monitor to the group: as a learner first (it catches up from the log or a
    /// snapshot), then as a voter.
    pub async fn add_monitor(&self, name: &str, addr: &str) -> Result<Epoch, ServiceError> {
        proto::map::check_name("monitor", name)?;
        addr.parse::<std::net::SocketAddr>()
            .map_err(|_| MapError::Invalid(format!("monitor address {addr:?} is not ip:port")))?;
        let map = self.map();
        if map.mons.iter().any(|m| m.name == name) {
            return Err(MapError::Exists {
                what: "monitor".into(),
                name: name.into(),
            }
            .into());
        }
        if !self.is_leader() {
            return Err(ServiceError::Other(
                "mon add must be sent to the leader".into(),
            ));
        }
        let id = crate::raft::node_id(name);
        let node = MonNode {
            name: name.into(),
            addr: addr.into(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| ServiceError::Other(format!("adding {name} as a learner: {e}")))?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| ServiceError::Other(format!("adding {name} as a voter: {e}")))?;
        Ok(self.map().epoch)
    }

    /// Whether this monitor votes in the group it knows of. A monitor created to join that
    /// has not been added yet, or one that was removed, serves no requests (its map would be
    /// stale); it still takes Raft traffic.
    pub fn is_member(&self) -> bool {
        self.voters().contains(&self.node)
    }

    /// The voting members of the committed membership.
    fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().voter_ids().collect()
    }

    pub async fn remove_monitor(&self, name: &str) -> Result<Epoch, ServiceError> {
        let map = self.map();
        if !map.mons.iter().any(|m| m.name == name) {
            return Err(MapError::NotFound {
                what: "monitor".into(),
                name: name.into(),
            }
            .into());
        }
        if map.mons.len() == 1 {
            return Err(MapError::Invalid("cannot remove the last monitor".into()).into());
        }
        if !self.is_leader() {
            return Err(ServiceError::Other(
                "mon rm must be sent to the leader".into(),
            ));
        }
        let id = crate::raft::node_id(name);
        let mut voters = self.voters();
        voters.remove(&id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| ServiceError::Other(format!("removing {name}: {e}")))?;
        Ok(self.map().epoch)
    }
}
