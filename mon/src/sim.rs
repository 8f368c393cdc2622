//! A deterministic simulation of a monitor group: the real Raft, log, state machine and
//! snapshot code, on one thread, from one seed.
//!
//! Seams (the whole-cluster simulator of the peering issue uses the same ones):
//! - clock: a current-thread tokio runtime with a paused clock (time jumps to the next timer
//!   when every task is idle), so 60 simulated seconds take well under a second;
//! - randomness: the election RNG (`raft::seed_thread_rng`) and every fault decision come
//!   from the seed;
//! - network: [`SimTransport`], with loss, delay, partitions and one-way partitions;
//! - disk: [`MemDisk`], which keeps what was committed across a crash.
//!
//! Checked during and after each run:
//! - no fork: every monitor that applies epoch `e` applies the same map (crc) and the same
//!   command for it;
//! - a monitor's epoch never goes backwards, across restarts too;
//! - every acknowledged change is in the final map of every monitor, and a retried request
//!   is applied once (a retried "create pool" never answers "exists");
//! - after the faults heal, every monitor converges on the same map, and the log stays
//!   bounded by snapshots.

use crate::log::{MemDisk, Tables};
use crate::raft::{handle_rpc, MonNode, NodeId, Raft, RaftReply, RaftRpc, RaftTransport};
use crate::service::{MapService, Policy};
use crate::store::Identity;
use futures::future::BoxFuture;
use net::sync::lock;
use openraft::error::{ClientWriteError, RaftError};
use proto::map::{FailureDomain, MonInfo};
use proto::msg::{map_crc, MonRequest};
use proto::{Command, Epoch, MapError};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bugs the simulation can plant, to show that its checkers catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The vote is not persisted: a restarted monitor can vote twice in one term.
    ForgetVote,
    /// A log append is acknowledged before it is durable: a crash loses the last batch.
    AckBeforeDurable,
}

type LogPut = (crate::log::Table, u64, Vec<u8>);

/// The simulator's disk, optionally with a planted bug.
#[derive(Clone)]
struct SimDisk {
    mem: MemDisk,
    bug: Option<PlantedBug>,
    /// Log writes acknowledged but not yet on the disk (`AckBeforeDurable`).
    pending: Arc<Mutex<Vec<LogPut>>>,
}

impl crate::log::Disk for SimDisk {
    fn load(&self) -> Result<Tables, String> {
        // A restart: whatever was not durable is gone.
        lock(&self.pending).clear();
        self.mem.load()
    }
    fn commit(&self, mut b: crate::log::Batch) -> Result<(), String> {
        use crate::log::{key, Table};
        match self.bug {
            Some(PlantedBug::ForgetVote) => {
                b.puts
                    .retain(|(t, k, _)| !(*t == Table::Meta && *k == key::VOTE));
            }
            Some(PlantedBug::AckBeforeDurable) => {
                let (log, rest): (Vec<_>, Vec<_>) =
                    b.puts.into_iter().partition(|(t, _, _)| *t == Table::Log);
                let mut pending = lock(&self.pending);
                b.puts = std::mem::replace(&mut *pending, log);
                b.puts.extend(rest);
            }
            None => {}
        }
        self.mem.commit(b)
    }
    fn describe(&self) -> String {
        "simulated".into()
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub mons: usize,
    /// Simulated seconds of faults and load (then faults heal and the group must converge).
    pub secs: u64,
    /// Snapshot every this many log entries (small, so snapshots and their transfer to a
    /// lagging monitor happen in every run).
    pub snapshot_every: u64,
    pub bug: Option<PlantedBug>,
    /// A fault is injected every this many simulated milliseconds (uniform in the range).
    pub fault_every_ms: (u64, u64),
}

impl SimOptions {
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            mons: if seed.is_multiple_of(3) { 5 } else { 3 },
            secs: 60,
            snapshot_every: 64,
            bug: None,
            fault_every_ms: (1000, 4000),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub ops: u64,
    pub acked: u64,
    pub refused: u64,
    pub unknown: u64,
    pub retries: u64,
    pub crashes: u64,
    pub leader_kills: u64,
    pub partitions: u64,
    pub loss_bursts: u64,
    pub final_epoch: Epoch,
    pub snapshots_installed: u64,
    /// A digest of everything every monitor applied, to check that a seed replays exactly.
    pub digest: u64,
}

impl SimReport {
    pub fn faults(&self) -> u64 {
        self.crashes + self.partitions + self.loss_bursts
    }
}

struct Net {
    rng: rand::rngs::StdRng,
    nodes: BTreeMap<NodeId, Raft>,
    cut: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
}

impl Net {
    fn delay(&mut self) -> Duration {
        // Mostly sub-millisecond, sometimes slow (reordering follows from the spread).
        if self.rng.random_bool(0.05) {
            Duration::from_millis(self.rng.random_range(5..60))
        } else {
            Duration::from_micros(self.rng.random_range(50..900))
        }
    }
    fn lost(&mut self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to)) || (self.loss > 0.0 && self.rng.random_bool(self.loss))
    }
}

/// The simulated network as one monitor sees it.
pub struct SimTransport {
    from: NodeId,
    net: Arc<Mutex<Net>>,
}

impl RaftTransport for SimTransport {
    fn call(
        &self,
        target: NodeId,
        _node: &MonNode,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftReply, String>> {
        let (net, from) = (Arc::clone(&self.net), self.from);
        Box::pin(async move {
            let (d, lost) = {
                let mut n = lock(&net);
                (n.delay(), n.lost(from, target))
            };
            tokio::time::sleep(d).await;
            let raft = if lost {
                None
            } else {
                lock(&net).nodes.get(&target).cloned()
            };
            let Some(raft) = raft else {
                tokio::time::sleep(timeout.min(Duration::from_millis(500))).await;
                return Err(format!("{target} unreachable"));
            };
            let reply = handle_rpc(&raft, rpc).await;
            let (d, lost) = {
                let mut n = lock(&net);
                (n.delay(), n.lost(target, from))
            };
            tokio::time::sleep(d).await;
            if lost {
                return Err(format!("reply from {target} lost"));
            }
            Ok(reply)
        })
    }
}

struct Mon {
    name: String,
    id: NodeId,
    disk: SimDisk,
    svc: Option<Arc<MapService>>,
}

#[derive(Default)]
struct Checker {
    /// epoch → (map crc, first monitor to apply it).
    by_epoch: BTreeMap<Epoch, (u32, String)>,
    /// Last epoch each monitor applied (across its restarts).
    last: BTreeMap<String, Epoch>,
    violations: Vec<String>,
    digest: u64,
}

impl Checker {
    fn saw(&mut self, mon: &str, epoch: Epoch, crc: u32) {
        if let Some(last) = self.last.get(mon) {
            if epoch < *last {
                self.violations.push(format!(
                    "{mon}: epoch went backwards from {last} to {epoch}"
                ));
            }
        }
        self.last.insert(mon.to_string(), epoch);
        match self.by_epoch.get(&epoch) {
            Some((c, who)) if *c != crc => self.violations.push(format!(
                "fork at epoch {epoch}: {who} applied map crc {c:08x}, {mon} applied {crc:08x}"
            )),
            Some(_) => {}
            None => {
                self.by_epoch.insert(epoch, (crc, mon.to_string()));
            }
        }
        self.digest = self
            .digest
            .wrapping_mul(0x100_0000_01b3)
            .wrapping_add(epoch ^ ((crc as u64) << 20) ^ mon.len() as u64);
    }
}

struct World {
    opts: SimOptions,
    net: Arc<Mutex<Net>>,
    mons: Mutex<Vec<Mon>>,
    checker: Arc<Mutex<Checker>>,
    report: Mutex<SimReport>,
    /// Acknowledged pool creations, checked against every monitor's final map.
    acked: Mutex<Vec<(String, Epoch)>>,
}

impl World {
    async fn start(self: &Arc<Self>, i: usize) {
        let (name, id, disk) = {
            let mons = lock(&self.mons);
            (mons[i].name.clone(), mons[i].id, mons[i].disk.clone())
        };
        let transport = Arc::new(SimTransport {
            from: id,
            net: Arc::clone(&self.net),
        });
        let svc = crate::start_with(
            Arc::new(disk),
            transport,
            Policy::default(),
            self.opts.snapshot_every,
        )
        .await
        .unwrap_or_else(|e| panic!("seed {}: starting {name}: {e:#}", self.opts.seed));
        lock(&self.net).nodes.insert(id, svc.raft.clone());
        // Observe every map this incarnation publishes.
        let mut rx = svc.subscribe();
        let checker = Arc::clone(&self.checker);
        tokio::spawn(async move {
            loop {
                let m = rx.borrow_and_update().clone();
                lock(&checker).saw(&name, m.epoch, map_crc(&m));
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        lock(&self.mons)[i].svc = Some(svc);
    }

    async fn crash(&self, i: usize) {
        let svc = {
            let mut mons = lock(&self.mons);
            lock(&self.net).nodes.remove(&mons[i].id);
            mons[i].svc.take()
        };
        if let Some(svc) = svc {
            let _ = svc.raft.shutdown().await;
        }
    }

    fn live(&self) -> Vec<usize> {
        lock(&self.mons)
            .iter()
            .enumerate()
            .filter(|(_, m)| m.svc.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        let mons = lock(&self.mons);
        mons.iter().position(|m| {
            m.svc
                .as_ref()
                .is_some_and(|s| s.raft.metrics().borrow().current_leader == Some(m.id))
        })
    }

    fn svc_by_id(&self, id: NodeId) -> Option<Arc<MapService>> {
        lock(&self.mons)
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.svc.clone())
    }

    fn rand<T>(&self, f: impl FnOnce(&mut rand::rngs::StdRng) -> T) -> T {
        f(&mut lock(&self.net).rng)
    }

    fn isolate(&self, group: &[NodeId], others: &[NodeId], both_ways: bool) {
        let mut n = lock(&self.net);
        for a in group {
            for b in others {
                n.cut.insert((*a, *b));
                if both_ways {
                    n.cut.insert((*b, *a));
                }
            }
        }
    }

    /// One client: a stream of changes, each retried (same client and seq) until it is
    /// answered or its deadline passes.
    async fn client(self: Arc<Self>, c: u128, until: tokio::time::Instant) {
        let mut seq = 0u64;
        while tokio::time::Instant::now() < until {
            seq += 1;
            let pool = format!("c{c}-p{seq}");
            let cmd = match self.rand(|r| r.random_range(0..10)) {
                0 => Command::SetFlag {
                    flag: proto::map::ClusterFlag::NoOut,
                },
                1 => Command::UnsetFlag {
                    flag: proto::map::ClusterFlag::NoOut,
                },
                _ => Command::CreatePool {
                    name: pool.clone(),
                    size: 3,
                    min_size: 2,
                    pg_count: 8,
                    object_size: 4 << 20,
                    failure_domain: FailureDomain::Host,
                },
            };
            let creates = matches!(cmd, Command::CreatePool { .. });
            let req = MonRequest {
                client: c,
                seq,
                cmd,
            };
            lock(&self.report).ops += 1;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut target: Option<NodeId> = None;
            let outcome = loop {
                if tokio::time::Instant::now() >= deadline {
                    break None;
                }
                let svc = match target.and_then(|t| self.svc_by_id(t)) {
                    Some(s) => s,
                    None => {
                        let live = self.live();
                        if live.is_empty() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        let i = live[self.rand(|r| r.random_range(0..live.len()))];
                        match lock(&self.mons)[i].svc.clone() {
                            Some(s) => s,
                            None => continue,
                        }
                    }
                };
                let w = tokio::time::timeout(
                    Duration::from_secs(3),
                    svc.raft.client_write(req.clone()),
                )
                .await;
                match w {
                    Ok(Ok(resp)) => break Some(resp.data),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                        // A node may name itself while it is still becoming leader: pause
                        // either way, so the simulated clock can move.
                        target = f.leader_id;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(Err(_)) | Err(_) => {
                        target = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                lock(&self.report).retries += 1;
            };
            match outcome {
                Some(Ok((epoch, _))) => {
                    let mut rep = lock(&self.report);
                    rep.acked += 1;
                    drop(rep);
                    if creates {
                        lock(&self.acked).push((pool, epoch));
                    }
                }
                Some(Err(MapError::Exists { name, .. })) if creates => {
                    lock(&self.checker).violations.push(format!(
                        "request ({c}, {seq}) creating pool {name} answered 'exists': a retry was applied twice"
                    ));
                }
                Some(Err(_)) => lock(&self.report).refused += 1,
                None => lock(&self.report).unknown += 1,
            }
            let pause = self.rand(|r| r.random_range(20..200));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Injects a random fault every 1-4 s, healing each after a while.
    async fn faults(self: Arc<Self>, until: tokio::time::Instant) {
        let ids: Vec<NodeId> = lock(&self.mons).iter().map(|m| m.id).collect();
        let n = ids.len();
        while tokio::time::Instant::now() < until {
            let (lo, hi) = self.opts.fault_every_ms;
            let wait = self.rand(|r| r.random_range(lo..hi));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let kind = self.rand(|r| r.random_range(0..6));
            let hold = Duration::from_millis(self.rand(|r| r.random_range(500..6000)));
            match kind {
                // Crash a monitor (the leader half of the time), restart it later.
                0 | 1 => {
                    let live = self.live();
                    let victim = if kind == 0 {
                        self.leader()
                    } else {
                        live.get(self.rand(|r| r.random_range(0..live.len().max(1))))
                            .copied()
                    };
                    let Some(i) = victim else { continue };
                    // Keep a majority's disks around: never more than a minority down at once.
                    if n - live.len() >= (n - 1) / 2 {
                        continue;
                    }
                    self.crash(i).await;
                    {
                        let mut r = lock(&self.report);
                        r.crashes += 1;
                        if kind == 0 {
                            r.leader_kills += 1;
                        }
                    }
                    let me = Arc::clone(&self);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        me.start(i).await;
                    });
                }
                // Isolate one monitor (often the leader), both ways.
                2 | 3 => {
                    let i = if kind == 2 {
                        self.leader().unwrap_or(0)
                    } else {
                        self.rand(|r| r.random_range(0..n))
                    };
                    let others: Vec<NodeId> =
                        ids.iter().copied().filter(|x| *x != ids[i]).collect();
                    self.isolate(&[ids[i]], &others, true);
                    lock(&self.report).partitions += 1;
                    self.heal_after(hold);
                }
                // A one-way partition, or a split of the group into two sides.
                4 => {
                    let a = self.rand(|r| r.random_range(0..n));
                    let b = (a + 1 + self.rand(|r| r.random_range(0..n - 1))) % n;
                    if self.rand(|r| r.random_bool(0.5)) {
                        self.isolate(&[ids[a]], &[ids[b]], false);
                    } else {
                        let mut side: Vec<NodeId> = Vec::new();
                        let mut rest: Vec<NodeId> = Vec::new();
                        for (k, id) in ids.iter().enumerate() {
                            if k == a || (k != b && self.rand(|r| r.random_bool(0.5))) {
                                side.push(*id);
                            } else {
                                rest.push(*id);
                            }
                        }
                        self.isolate(&side, &rest, true);
                    }
                    lock(&self.report).partitions += 1;
                    self.heal_after(hold);
                }
                // A burst of message loss.
                _ => {
                    lock(&self.net).loss = 0.2;
                    lock(&self.report).loss_bursts += 1;
                    let net = Arc::clone(&self.net);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        lock(&net).loss = 0.0;
                    });
                }
            }
        }
    }

    fn heal_after(&self, hold: Duration) {
        let net = Arc::clone(&self.net);
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            lock(&net).cut.clear();
        });
    }
}

/// Runs one seed; `Err` describes the first violations found and how to replay.
pub fn run(opts: SimOptions) -> Result<SimReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    crate::raft::seed_thread_rng(opts.seed);
    let seed = opts.seed;
    let res = rt.block_on(run_inner(opts));
    res.map_err(|e| format!("seed {seed}: {e}\n  replay: make sim-mon SEED={seed}"))
}

async fn run_inner(opts: SimOptions) -> Result<SimReport, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let fsid: u128 = rng.random();
    let initial: Vec<MonInfo> = (0..opts.mons)
        .map(|i| MonInfo {
            name: format!("m{i}"),
            addr: format!("10.0.0.{}:6789", i + 1),
        })
        .collect();
    let mut mons = Vec::new();
    for m in &initial {
        let disk = SimDisk {
            mem: MemDisk(Arc::new(Mutex::new(Tables::default()))),
            bug: opts.bug,
            pending: Arc::new(Mutex::new(Vec::new())),
        };
        crate::log::format(
            &disk,
            &Identity {
                name: m.name.clone(),
                addr: m.addr.clone(),
                fsid,
                initial: initial.clone(),
            },
        )?;
        mons.push(Mon {
            name: m.name.clone(),
            id: crate::raft::node_id(&m.name),
            disk,
            svc: None,
        });
    }
    let world = Arc::new(World {
        opts: opts.clone(),
        net: Arc::new(Mutex::new(Net {
            rng,
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0.0,
        })),
        mons: Mutex::new(mons),
        checker: Arc::new(Mutex::new(Checker::default())),
        report: Mutex::new(SimReport::default()),
        acked: Mutex::new(Vec::new()),
    });
    for i in 0..opts.mons {
        world.start(i).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(opts.secs);
    let clients: Vec<_> = (1..=2u128)
        .map(|c| tokio::spawn(Arc::clone(&world).client(c, until)))
        .collect();
    let faults = tokio::spawn(Arc::clone(&world).faults(until));
    let _ = faults.await;
    for c in clients {
        let _ = c.await;
    }
    // Heal everything and let the group converge.
    {
        let mut n = lock(&world.net);
        n.cut.clear();
        n.loss = 0.0;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    for i in 0..opts.mons {
        if lock(&world.mons)[i].svc.is_none() {
            world.start(i).await;
        }
    }
    // One final change must commit once everything is healed.
    let mut final_ok = false;
    for _ in 0..100 {
        if let Some(i) = world.leader() {
            let svc = lock(&world.mons)[i].svc.clone();
            if let Some(svc) = svc {
                let req = MonRequest {
                    client: 99,
                    seq: 1,
                    cmd: Command::SetFlag {
                        flag: proto::map::ClusterFlag::NoDown,
                    },
                };
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(3), svc.raft.client_write(req)).await
                {
                    final_ok = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut violations = std::mem::take(&mut lock(&world.checker).violations);
    if !final_ok {
        violations.push("no change could be committed after every fault healed".into());
    }
    // Convergence: every monitor at the same map; every acknowledged creation in it; the
    // recent history identical; the log bounded.
    let svcs: Vec<(String, Arc<MapService>)> = lock(&world.mons)
        .iter()
        .filter_map(|m| m.svc.clone().map(|s| (m.name.clone(), s)))
        .collect();
    let maps: Vec<(String, Arc<proto::ClusterMap>)> =
        svcs.iter().map(|(n, s)| (n.clone(), s.map())).collect();
    let (first_name, first) = &maps[0];
    for (name, m) in &maps[1..] {
        if map_crc(m) != map_crc(first) {
            violations.push(format!(
                "after healing, {name} is at epoch {} but {first_name} at {}",
                m.epoch, first.epoch
            ));
        }
    }
    for (pool, epoch) in lock(&world.acked).iter() {
        for (name, m) in &maps {
            if m.pool_by_name(pool).is_none() {
                violations.push(format!(
                    "pool {pool} acknowledged at epoch {epoch} is missing on {name}"
                ));
            }
        }
    }
    let mut snapshots = 0;
    for (name, s) in &svcs {
        let metrics = s.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map(|l| l.index).unwrap_or(0);
        let purged = metrics.purged.map(|l| l.index).unwrap_or(0);
        if applied > 4 * opts.snapshot_every + purged + 200 {
            violations.push(format!(
                "{name}: log not bounded: applied {applied}, purged up to {purged}"
            ));
        }
        if metrics.snapshot.is_some() {
            snapshots += 1;
        }
    }
    // History: for each epoch two monitors both still hold, the same command.
    let hists: Vec<BTreeMap<Epoch, Command>> = svcs
        .iter()
        .map(|(_, s)| lock(&s.published().history).clone())
        .collect();
    for (k, h) in hists.iter().enumerate().skip(1) {
        for (e, c) in h {
            if let Some(c0) = hists[0].get(e) {
                if c0 != c {
                    violations.push(format!(
                        "epoch {e}: {} holds command {c:?}, {} holds {c0:?}",
                        svcs[k].0, svcs[0].0
                    ));
                }
            }
        }
    }
    for (_, s) in &svcs {
        let _ = s.raft.shutdown().await;
    }
    let mut report = lock(&world.report).clone();
    report.final_epoch = first.epoch;
    report.snapshots_installed = snapshots;
    report.digest = lock(&world.checker).digest;
    if violations.is_empty() {
        Ok(report)
    } else {
        violations.truncate(10);
        Err(format!(
            "{} violation(s):\n  {}\n  counters: {report:?}",
            violations.len(),
            violations.join("\n  ")
        ))
    }
}
