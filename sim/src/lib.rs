//! The whole-cluster simulator: monitors, OSDs and clients on one thread, from one seed,
//! running the real daemon code.
//!
//! Seams:
//! - processes: every node's tasks carry its `net::rt::Node`; a crash aborts them all;
//! - network: `net::transport` hands connections of a node to [`network::Network`] (delay,
//!   reordering across connections, partitions both ways or one way that hold or reset
//!   the connections crossing them, loss bursts that reset connections);
//! - devices: each OSD's store is on the store's `SimDevice`; a crash keeps a random subset
//!   of the unsynced writes and tears some;
//! - monitors' disks: `MemDisk`, whose commits survive a crash;
//! - clock: a current-thread tokio runtime with a paused clock: time jumps to the next
//!   timer whenever every task waits, so a minute of cluster time takes about a second;
//! - randomness: faults, the workload, network delays, node identifiers (store uuids,
//!   process nonces, client ids) and the monitors' election timeouts come from the seed.
//!
//! - clients: each client host runs a VM (`nbd::Disk`, qemu's NBD driver with
//!   reconnect) and the real NBD gateway code beside it (`nbd_gateway::serve_connection`
//!   over an in-process pipe, `ClusterProvider` over the client library). VMs pipeline
//!   whole-block and sub-block writes (the gateway's read-modify-write), WRITE_ZEROES,
//!   TRIM, FUA and FLUSH; a dropped connection or a killed gateway makes them reconnect and
//!   send their requests again.
//!
//! Checked, during and after each run (see `check`): every read against the history of
//! acknowledged writes (linearizable per 512-byte unit); after the faults heal, every PG
//! active+clean, and every acting member's copy of every object identical (version and
//! bytes).

pub mod check;
pub mod nbd;
pub mod network;

use crate::check::{
    fmt_us, kind, pattern, History, VersionCheck, WriteRef, BLOCK, UNIT, UNITS_PER_BLOCK,
};
use crate::nbd::{Disk, Request};
use ::net::rt::Node;
use ::net::sync::lock;
use ::net::transport::SimNet;
use client::{Cluster, Image, MonClient};
use nbd_gateway::cluster::ClusterProvider;
use nbd_gateway::{Exports, ServerConfig};
use osd::daemon::Osd;
use osd::planted::Bug;
use osd::store::device::sim::{splitmix64, SimDevice};
use osd::store::device::BlockDevice;
use osd::store::Store;
use proto::map::{FailureDomain, WEIGHT_ONE};
use proto::{ClusterMap, Command, ObjectId, OsdId};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const POOL: &str = "rbd";
const IMAGE: &str = "vm";
/// Object size of the simulated pool: small, so that few blocks share an object.
const OBJECT_SIZE: u32 = 16 << 10;
/// The stores' largest object in a large seed, and its pool's object size: one block, so
/// that a few thousand objects make a PG's metadata larger than one object (as millions
/// do with the real 4 MiB limit).
const LARGE_OBJECT_SIZE: u32 = BLOCK as u32;
/// Blocks a large seed writes once before the load, beyond the blocks the VMs use: about
/// 770 objects in each of its 8 PGs, whose missing list (7-8 bytes an entry) a member that
/// joins empty cannot keep in one 4 KiB object.
const LARGE_FILLER: u64 = 6144;
/// How far each machine's clock may run fast or slow (a fraction of real time): read
/// leases allow two clocks 20% apart, and two at the extremes here are 17% apart.
const CLOCK_DRIFT: f64 = 0.08;
/// Half of the ops go to the first blocks (three objects): reads there often follow a
/// write, so a stale copy is read soon after it goes stale.
const HOT_BLOCKS: u64 = 12;
/// The longest a client op may take: a crashed primary is detected within the grace
/// (4 s) and the down-out interval (12 s) may pass before its data moves; peering and
/// the recovery of one object add a few seconds. An op slower than this is a violation.
const SLOW_OP: Duration = Duration::from_secs(60);
/// How long after the faults heal an op may still be pending: longer is a wedge.
const AFTER_HEAL: Duration = Duration::from_secs(30);
/// How long a running OSD that reaches a majority of the monitors may lag the newest map.
const MAP_LAG: Duration = Duration::from_secs(10);
/// Each OSD's simulated device.
const DEVICE_BYTES: u64 = 32 << 20;
/// ... and in a large seed.
const LARGE_DEVICE_BYTES: u64 = 64 << 20;
/// The load's last seconds run without new faults: the cluster heals as they begin and
/// must serve every op from then on. A wedge that the next fault's map change would have
/// cleared (peering again lists the member's real versions) shows here.
const CALM: Duration = Duration::from_secs(20);
/// In the calm, once this long has passed (returning OSDs have booted and peered, their
/// peers' disks are fast again), a client op must finish within `CALM_OP`: one that does
/// not is waiting for something no fault explains (a wedge).
const CALM_SETTLE: Duration = Duration::from_secs(8);
const CALM_OP: Duration = Duration::from_secs(8);

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Simulated seconds of load and faults (then the faults heal and the cluster must
    /// converge).
    pub secs: u64,
    pub mons: usize,
    pub osds: usize,
    pub clients: usize,
    /// PGs of the pool.
    pub pgs: u32,
    /// 4 KiB blocks of the image the clients use.
    pub blocks: u64,
    /// Blocks of the image after those, written once before the load and never again.
    pub filler: u64,
    /// The pool's object size.
    pub object_size: u32,
    /// The stores' largest object.
    pub store_object_size: u32,
    /// OSDs in lazy mode (a write is durable after a FLUSH or with FUA): the run has a
    /// whole-cluster power cycle and no single-OSD crashes, and the checker holds every
    /// durable write to survive it.
    pub lazy: bool,
    /// A whole-cluster power cycle during the load (always in lazy mode).
    pub power_cycle: bool,
    /// After the first OSD restart of the fault phase, a boot request of the process
    /// before it (killed before its request committed) commits late.
    pub stale_boot: bool,
    pub bug: Option<Bug>,
}

impl SimOptions {
    /// The options of `seed`: the cluster's shape (OSDs, one per host; VMs; PGs) varies
    /// with the seed, independently of the durability mode (`seed % 4`).
    pub fn new(seed: u64) -> Self {
        // Shape bits unrelated to seed % 4.
        let h = splitmix64(seed);
        // One seed in five of those not lazy is large: more objects per PG than one
        // object of its stores can list, and an OSD retired early (`World::retire`).
        // (Not lazy: there the power cycle follows a move, `move_then_power_cycle`.)
        let large = seed % 4 != 3 && (h / 27).is_multiple_of(5);
        SimOptions {
            seed,
            secs: 60,
            mons: 3,
            osds: if large { 6 } else { 4 + (h % 3) as usize },
            clients: 2 + (h / 3 % 3) as usize,
            pgs: if large {
                8
            } else {
                [8, 16, 32][(h / 9 % 3) as usize]
            },
            blocks: 96,
            filler: if large { LARGE_FILLER } else { 0 },
            object_size: if large {
                LARGE_OBJECT_SIZE
            } else {
                OBJECT_SIZE
            },
            store_object_size: if large {
                LARGE_OBJECT_SIZE
            } else {
                proto::map::MAX_OBJECT_SIZE
            },
            lazy: seed % 4 == 3,
            power_cycle: !seed.is_multiple_of(4),
            stale_boot: (h / 405).is_multiple_of(3),
            bug: None,
        }
    }

    /// The command that replays this run.
    pub fn replay(&self) -> String {
        let mut s = format!("make sim SEED={}", self.seed);
        if let Some(b) = self.bug {
            s.push_str(&format!(" BUG={}", b.name()));
        }
        s
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub failed_ops: u64,
    pub osd_crashes: u64,
    pub mon_crashes: u64,
    pub partitions: u64,
    pub one_way: u64,
    pub loss_bursts: u64,
    pub slow_spells: u64,
    /// A host (an OSD and the client beside it) lost power.
    pub host_crashes: u64,
    /// A client died while its write was held by a primary cut off from its peers.
    pub abandoned_writes: u64,
    /// OSDs an operator marked out (and later in).
    pub drains: u64,
    /// OSDs cut from the monitors only.
    pub mon_cuts: u64,
    /// Monitors cut off from the other monitors only.
    pub mon_isolations: u64,
    /// Every node lost power at once (and came back).
    pub power_cycles: u64,
    /// Boot requests of dead OSD processes that committed late.
    pub stale_boots: u64,
    /// Acknowledged writes that were not durable yet when the power went (allowed lost).
    pub exposed_writes: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
    pub segments: u64,
    pub resets: u64,
    pub final_epoch: u64,
    /// Simulated ms from the heal to all PGs active+clean.
    pub clean_ms: u64,
    pub objects_compared: u64,
    /// Replies whose object version was checked against earlier answered ops.
    pub versions_checked: u64,
    /// The longest any client op took (simulated ms).
    pub max_op_ms: u64,
    /// Bytes of a primary's copy that decayed.
    pub bit_rot: u64,
    /// FLUSH requests the writers sent.
    pub flushes: u64,
    /// Gateways killed under their running VM (and restarted).
    pub gateway_restarts: u64,
    /// VM-to-gateway connections dropped with requests in flight.
    pub connection_drops: u64,
    /// Requests the VMs sent again on a new connection.
    pub resends: u64,
    /// Spells of an OSD's device being slow (every operation delayed).
    pub slow_disks: u64,
    /// OSD devices that ran out of room (writes needing new space failed with ENOSPC).
    pub full_devices: u64,
    /// NBD sub-block writes (the gateway's read-modify-write), zeroings and trims.
    pub partial_writes: u64,
    pub zeroings: u64,
    /// A digest of the run's history (ops, values, times): equal digests, same run.
    pub digest: u64,
}

impl Report {
    /// Crashes and partitions (what the issue counts).
    pub fn crashes_and_partitions(&self) -> u64 {
        self.osd_crashes + self.mon_crashes + self.partitions + self.one_way + self.mon_cuts
    }
}

struct MonSlot {
    name: String,
    disk: mon::log::MemDisk,
    node: Option<Arc<Node>>,
}

struct OsdSlot {
    name: String,
    host: String,
    dev: Arc<SimDevice>,
    node: Option<Arc<Node>>,
    daemon: Option<Arc<Osd>>,
    generation: u64,
    id: Option<OsdId>,
}

/// Until when a client only reads, and which blocks.
type Quiet = (Instant, std::ops::Range<u64>);

/// One client host: a VM (the simulator's qemu, `nbd::Disk`) and the NBD gateway beside it
/// (node `client.K`: the real gateway code over the client library). The VM survives a
/// gateway restart (it reconnects and sends its requests again); both die with the host.
struct ClientSlot {
    /// The gateway's process.
    node: Option<Arc<Node>>,
    /// The running gateway's exports (None while it starts or after it died).
    exports: Option<Arc<Exports<ClusterProvider>>>,
    /// The VM.
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
    disk: Option<Arc<Disk>>,
    /// VM restarts so far (part of every value it writes, so values stay unique).
    incarnation: u64,
}

struct World {
    opts: SimOptions,
    /// The OSD the operator took out for good (`retire`), until the heal.
    retired: Mutex<Option<OsdId>>,
    /// Whether the stale boot request (`SimOptions::stale_boot`) is still to come.
    stale_boot: Mutex<bool>,
    /// When the load and the faults stop.
    until: Mutex<Option<Instant>>,
    clients: Mutex<Vec<ClientSlot>>,
    /// Per client: a block its writer writes next (a fault steering the workload).
    steer: Mutex<Vec<Option<u64>>>,
    /// Per client: the blocks its writers have a request in flight on.
    writing: Mutex<Vec<BTreeMap<u64, usize>>>,
    /// Per client: its writer pauses until then, and its reader reads only this block
    /// range (a read-only spell on one object).
    quiet: Mutex<Vec<Option<Quiet>>>,
    /// The operator's node (pool set-up, `osd out` and `osd in`).
    admin: Mutex<Option<Arc<Node>>>,
    net: Arc<network::Network>,
    rng: Mutex<rand::rngs::StdRng>,
    t0: Instant,
    mon_addrs: Vec<String>,
    mons: Mutex<Vec<MonSlot>>,
    osds: Mutex<Vec<OsdSlot>>,
    history: Mutex<History>,
    /// The per-object check of the versions replies report, shared by every client.
    versions: Arc<VersionCheck>,
    report: Mutex<Report>,
    /// Problems that are not history violations (a store that does not open, ...).
    violations: Mutex<Vec<String>>,
    incarnations: Mutex<u64>,
    /// Until when a monitor is cut off from the others (kind 15).
    mon_isolated_until: Mutex<Option<Instant>>,
    /// When the faults healed.
    healed_at: Mutex<Option<Instant>>,
    /// When the calm began (see `CALM`).
    calm_at: Mutex<Option<Instant>>,
    /// A block the next reader reads (one with a decayed copy).
    read_next: Mutex<Option<u64>>,
}

impl World {
    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn rand<T>(&self, f: impl FnOnce(&mut rand::rngs::StdRng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    fn node(&self, name: &str) -> Arc<Node> {
        let n = {
            let mut i = lock(&self.incarnations);
            *i += 1;
            *i
        };
        let seed = self.opts.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let node = Node::new(name, Arc::clone(&self.net) as Arc<dyn SimNet>, seed);
        node.set_clock_rate(self.clock_rate(name));
        node
    }

    /// The rate of the clock of the machine `name` runs on, the same for each of its
    /// processes: `CLOCK_DRIFT` fast or slow (the extremes, where a margin too small
    /// shows), within the read leases' allowance (`osd::lease::DRIFT`).
    fn clock_rate(&self, name: &str) -> f64 {
        let h = name
            .bytes()
            .fold(self.opts.seed ^ 0xc10c, |h, b| splitmix64(h ^ u64::from(b)));
        if h & 1 == 0 {
            1.0 + CLOCK_DRIFT
        } else {
            1.0 - CLOCK_DRIFT
        }
    }

    /// Records a violation of `kind` (one of `check::kind`).
    fn violation(&self, kind: &str, v: String) {
        lock(&self.violations).push(format!("{kind}: [{}] {v}", fmt_us(self.now_us())));
    }

    fn policy() -> mon::service::Policy {
        mon::service::Policy {
            osd_grace: Duration::from_secs(4),
            down_out_interval: Duration::from_secs(12),
            min_down_reporters: 2,
        }
    }

    fn start_mon(self: &Arc<Self>, i: usize) {
        let node = {
            let mons = lock(&self.mons);
            if mons[i].node.is_some() {
                return;
            }
            self.node(&mons[i].name)
        };
        let disk = {
            let mut mons = lock(&self.mons);
            mons[i].node = Some(Arc::clone(&node));
            mons[i].disk.clone()
        };
        let me = Arc::clone(self);
        node.spawn(async move {
            let started = mon::start(
                Arc::new(disk),
                Arc::new(mon::TcpRaftTransport::default()),
                World::policy(),
            )
            .await;
            match started {
                Ok(svc) => {
                    if let Err(e) = mon::serve(svc).await {
                        me.violation(kind::DAEMON, format!("mon.{i} stopped serving: {e:#}"));
                    }
                }
                Err(e) => me.violation(kind::DAEMON, format!("mon.{i} does not start: {e:#}")),
            }
        });
    }

    fn crash_mon(&self, i: usize) -> bool {
        let node = lock(&self.mons)[i].node.take();
        match node {
            Some(n) => {
                n.kill();
                tracing::info!(target: "sim", "fault: crash mon.{i}");
                true
            }
            None => false,
        }
    }

    fn start_osd(self: &Arc<Self>, i: usize) {
        let (node, dev, generation) = {
            let mut osds = lock(&self.osds);
            if osds[i].node.is_some() {
                return;
            }
            let node = self.node(&osds[i].name);
            osds[i].node = Some(Arc::clone(&node));
            osds[i].generation += 1;
            (node, Arc::clone(&osds[i].dev), osds[i].generation)
        };
        let me = Arc::clone(self);
        let mon = self.mon_addrs.clone();
        node.spawn(async move {
            let durability = if me.opts.lazy {
                osd::Durability::Lazy
            } else {
                osd::Durability::Immediate
            };
            let store =
                match Store::open(Arc::clone(&dev) as Arc<dyn BlockDevice>, durability).await {
                    Ok(s) => s,
                    // A device out of room may refuse the writes of opening (replay,
                    // checkpoint): the service manager tries again, and it opens once the
                    // operator has added room.
                    Err(e) if dev.space_limited() => {
                        tracing::info!("osd.{i}'s store does not open on a full device: {e}");
                        let mut osds = lock(&me.osds);
                        if osds[i].generation == generation {
                            osds[i].node = None;
                            drop(osds);
                            me.start_later(i, Duration::from_secs(2));
                        }
                        return;
                    }
                    Err(e) => {
                        me.violation(
                            kind::DAEMON,
                            format!("osd.{i}'s store does not open after a crash: {e}"),
                        );
                        return;
                    }
                };
            let cfg = osd::Config {
                device: format!("sim-osd.{i}").into(),
                durability,
                mon,
                addr: format!("10.0.1.{}:0", i + 1),
                report_interval: Duration::from_secs(1),
                heartbeat_grace: Duration::from_secs(2),
            };
            let w = Arc::clone(&me);
            let r = osd::run_on(store, cfg, std::future::pending(), move |o| {
                let mut osds = lock(&w.osds);
                if osds[i].generation == generation {
                    osds[i].daemon = Some(Arc::clone(o));
                }
            })
            .await;
            // The daemon gave up (no monitor for a minute, refused boot): it is restarted,
            // as a service manager would.
            let reason = match r {
                Ok(()) => "stopped".to_string(),
                Err(e) => format!("{e:#}"),
            };
            tracing::info!("osd.{i} exited: {reason}");
            let restart = {
                let mut osds = lock(&me.osds);
                if osds[i].generation == generation {
                    osds[i].node = None;
                    osds[i].daemon = None;
                    true
                } else {
                    false
                }
            };
            if restart {
                me.start_later(i, Duration::from_secs(1));
            }
        });
    }

    /// Starts OSD slot `i` again after `after`, as a service manager would.
    fn start_later(self: &Arc<Self>, i: usize, after: Duration) {
        let again = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            again.start_osd(i);
        });
    }

    /// Starts client host `k` (again): its gateway, and a VM of a new incarnation.
    fn start_client(self: &Arc<Self>, k: usize) {
        let Some(until) = *lock(&self.until) else {
            return;
        };
        if Instant::now() >= until {
            return;
        }
        let incarnation = {
            let mut c = lock(&self.clients);
            if c[k].handle.as_ref().is_some_and(|h| !h.is_finished()) {
                return;
            }
            c[k].incarnation += 1;
            c[k].incarnation
        };
        self.start_gateway(k);
        let weak = Arc::downgrade(self);
        let connect: nbd::Connector = Box::new(move || weak.upgrade()?.gateway_pipe(k));
        let disk = Arc::new(Disk::new(
            connect,
            &format!("{POOL}/{IMAGE}"),
            Duration::from_secs(1),
        ));
        let w = Arc::clone(self);
        let d = Arc::clone(&disk);
        let handle = tokio::spawn(async move {
            w.client(k, incarnation, d, until).await;
            Ok::<(), String>(())
        });
        let mut c = lock(&self.clients);
        c[k].disk = Some(disk);
        c[k].handle = Some(handle);
    }

    /// Starts host `k`'s gateway unless it runs: the real gateway code (`Exports` over the
    /// client library) in node `client.K`, retried until it reaches the monitors, as a
    /// service manager would.
    fn start_gateway(self: &Arc<Self>, k: usize) {
        let node = {
            let mut c = lock(&self.clients);
            if c[k].node.is_some() {
                return;
            }
            let node = self.node(&format!("client.{k}"));
            c[k].node = Some(Arc::clone(&node));
            node
        };
        let w = Arc::clone(self);
        let mon = self.mon_addrs.clone();
        let me = Arc::clone(&node);
        node.spawn(async move {
            let cluster = loop {
                match Cluster::connect(mon.clone()).await {
                    Ok(c) => {
                        c.observe(w.versions.clone());
                        break c;
                    }
                    Err(e) => {
                        tracing::info!(target: "sim", "client.{k}: gateway cannot connect yet: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            let exports = Arc::new(Exports::new(
                ClusterProvider {
                    cluster,
                },
                ServerConfig::default(),
            ));
            let mut c = lock(&w.clients);
            if c[k].node.as_ref().is_some_and(|n| Arc::ptr_eq(n, &me)) {
                c[k].exports = Some(exports);
            }
        });
    }

    /// A new connection from host `k`'s VM to its gateway, or None while none runs.
    fn gateway_pipe(&self, k: usize) -> Option<tokio::io::DuplexStream> {
        let c = lock(&self.clients);
        let (node, exports) = (c[k].node.as_ref()?, c[k].exports.as_ref()?);
        let (vm, gateway) = tokio::io::duplex(1 << 20);
        node.spawn(nbd_gateway::serve_connection(
            gateway,
            format!("vm.{k}"),
            Arc::clone(exports),
        ));
        Some(vm)
    }

    /// Host `k`'s gateway process dies (its tasks, connections and requests with it).
    fn kill_gateway(&self, k: usize) -> bool {
        let node = {
            let mut c = lock(&self.clients);
            c[k].exports = None;
            c[k].node.take()
        };
        let Some(node) = node else { return false };
        node.kill();
        true
    }

    /// Host `k`'s VM and gateway die at once, with whatever they had on the wire.
    fn kill_client(&self, k: usize) -> bool {
        let vm = {
            let mut c = lock(&self.clients);
            c[k].disk = None;
            c[k].handle.take()
        };
        let Some(vm) = vm.filter(|h| !h.is_finished()) else {
            return false;
        };
        vm.abort();
        self.kill_gateway(k);
        self.net.power_off(&format!("client.{k}"));
        true
    }

    /// A host loses power: OSD slot `k` and client `k` die at once, and whatever they had
    /// on the wire is lost. The client's write in flight is never retried.
    fn crash_host(self: &Arc<Self>, k: usize, hold: Duration) -> bool {
        if !self.kill_client(k) {
            return false;
        }
        let osd_name = lock(&self.osds)[k].name.clone();
        if self.crash_osd(k) {
            self.net.power_off(&osd_name);
            self.restart_later(Restart::Osd(k), hold);
        }
        tracing::info!(target: "sim", "fault: host of client.{k} and {osd_name} lost power");
        lock(&self.report).host_crashes += 1;
        self.restart_later(Restart::Client(k), hold);
        true
    }

    /// Every node loses power at once: VMs and gateways die, every OSD's device keeps a
    /// random part of its unsynced writes, the monitors keep what they committed. All come
    /// back after `hold`.
    fn power_cycle(self: &Arc<Self>, hold: Duration) {
        self.power_cycle_with(hold, false);
    }

    /// `power_cycle`; with `volatile`, every device loses every write not flushed.
    fn power_cycle_with(self: &Arc<Self>, hold: Duration, volatile: bool) {
        tracing::info!(target: "sim", "fault: every node loses power for {hold:?}");
        for k in 0..self.opts.clients {
            if self.kill_client(k) {
                self.restart_later(Restart::Client(k), hold);
            }
        }
        for i in 0..self.opts.osds {
            let name = lock(&self.osds)[i].name.clone();
            if self.crash_osd_with(i, volatile) {
                self.net.power_off(&name);
                self.restart_later(Restart::Osd(i), hold);
            }
        }
        for i in 0..self.opts.mons {
            if self.crash_mon(i) {
                self.restart_later(Restart::Mon(i), hold);
            }
        }
        lock(&self.history).power_lost(self.now_us());
        self.versions.power_lost();
        lock(&self.report).power_cycles += 1;
    }

    /// The VMs only read (their writers idle, none flushes) while the operator drains every
    /// member of a hot block's PG; as soon as the PG's history no longer names them (it
    /// was recovered onto its new members and recorded clean), every node loses power,
    /// and every disk loses all it had not flushed. The moved copies are then the only
    /// ones peering asks for: had they not been flushed before the PG was called clean
    /// (planted `unflushed-recovery`), the power cut loses writes that completed FLUSHes
    /// covered, which the VMs read after it. The drained OSDs stay out a while longer.
    async fn move_then_power_cycle(self: &Arc<Self>) {
        let Some(map) = self.map() else { return };
        let b = self.rand(|r| r.random_range(0..HOT_BLOCKS.min(self.opts.blocks)));
        let Some(obj) = self.image_object(&map, b) else {
            return;
        };
        let Some(pool) = map.pools.get(&obj.pool) else {
            return;
        };
        let pg = proto::placement::object_pg(&obj, pool);
        let members = proto::pg::pool_mappings(&map, pool)
            .get(pg.seed as usize)
            .map(|m| m.osds.clone())
            .unwrap_or_default();
        let slots: Vec<usize> = {
            let osds = lock(&self.osds);
            (0..osds.len())
                .filter(|i| osds[*i].id.is_some_and(|id| members.contains(&id)))
                .collect()
        };
        let quiet_for = Duration::from_secs(30);
        for q in lock(&self.quiet).iter_mut() {
            *q = Some((Instant::now() + quiet_for, 0..self.opts.blocks));
        }
        tracing::info!(target: "sim", "fault: the VMs idle while the operator moves {pg} off {members:?}");
        // Out until well after the power returns; `drain` marks them in then.
        let hold = Duration::from_secs(20);
        self.drain(slots, hold);
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(map) = self.map() else { continue };
            let Some(pool) = map.pools.get(&pg.pool) else {
                return;
            };
            let placed = proto::pg::pool_mappings(&map, pool)
                .get(pg.seed as usize)
                .is_some_and(|m| !m.osds.iter().any(|o| members.contains(o)));
            let named = map.pg_history.get(&pg).is_some_and(|h| {
                h.iter()
                    .any(|i| i.members.iter().any(|m| members.contains(&m.osd)))
            });
            if placed && !named {
                // At once: any other PG's activation on the new members flushes their
                // devices, which would hide copies recovery left unflushed. (Peering never
                // asks the old members again, whether their stray copies are gone or not.)
                tracing::info!(target: "sim", "{pg} moved and recorded clean at epoch {}", map.epoch);
                break;
            }
        }
        let hold = Duration::from_millis(self.rand(|r| r.random_range(1_000..3_000)));
        for q in lock(&self.quiet).iter_mut() {
            *q = None;
        }
        // Disks whose volatile caches lose everything not flushed: the moved copies
        // survive only if recovery flushed them.
        self.power_cycle_with(hold, true);
    }

    /// The operator marks OSDs out (draining their hosts), and in again after `hold`.
    fn drain(self: &Arc<Self>, slots: Vec<usize>, hold: Duration) {
        let retired = *lock(&self.retired);
        let ids: Vec<OsdId> = {
            let osds = lock(&self.osds);
            slots
                .iter()
                .filter_map(|i| osds[*i].id)
                .filter(|id| Some(*id) != retired)
                .collect()
        };
        let Some(admin) = lock(&self.admin).clone() else {
            return;
        };
        let mon = self.mon_addrs.clone();
        tracing::info!(target: "sim", "fault: operator marks {ids:?} out for {hold:?}");
        lock(&self.report).drains += ids.len() as u64;
        admin.spawn(async move {
            let Ok(mon) = MonClient::new(mon) else { return };
            for id in &ids {
                let _ = mon.command(Command::MarkOsdOut { id: *id }).await;
            }
            tokio::time::sleep(hold).await;
            for id in &ids {
                let _ = mon.command(Command::MarkOsdIn { id: *id }).await;
            }
        });
    }

    /// The operator takes OSD `i` out for good (its disk is to be replaced): its PGs move
    /// to members that join them empty, and must activate and serve there however many
    /// objects they have to recover (the heal marks it in again).
    fn retire(self: &Arc<Self>, i: usize) {
        let Some(id) = lock(&self.osds)[i].id else {
            return;
        };
        *lock(&self.retired) = Some(id);
        let Some(admin) = lock(&self.admin).clone() else {
            return;
        };
        let mon = self.mon_addrs.clone();
        tracing::info!(target: "sim", "fault: operator retires {id}");
        lock(&self.report).drains += 1;
        admin.spawn(async move {
            let Ok(mon) = MonClient::new(mon) else { return };
            // The monitors may be between leaders: the operator tries again.
            for _ in 0..20 {
                match mon.command(Command::MarkOsdOut { id }).await {
                    Ok(_) => return,
                    Err(e) if e.to_string().contains("already out") => return,
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A boot request for OSD slot `i` from the process before its current one commits
    /// 1.5 s after the restart, once the new process has booted: it was sent by a process
    /// that was killed while it waited (a monitor cut from its quorum held it), and names
    /// that process's address, where nothing listens now. The running process must see a
    /// later boot of its id by another process and register again, or it stays down for
    /// good (`kind::STRANDED`).
    fn stale_boot(self: &Arc<Self>, i: usize) {
        let Some(admin) = lock(&self.admin).clone() else {
            return;
        };
        let mon = self.mon_addrs.clone();
        let w = Arc::clone(self);
        let process = splitmix64(self.opts.seed ^ 0x5ba1e);
        admin.spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let Some(id) = lock(&w.osds)[i].id else {
                return;
            };
            let Ok(mon) = MonClient::new(mon) else { return };
            let Ok(map) = mon.get_map().await else { return };
            let Some(store_uuid) = map.osd(id).map(|o| o.store_uuid) else {
                return;
            };
            tracing::info!(target: "sim", "fault: a dead process's boot request for {id} commits late");
            lock(&w.report).stale_boots += 1;
            let boot = Command::BootOsd {
                id,
                store_uuid,
                addr: format!("10.0.1.{}:1", i + 1),
                process,
            };
            if let Err(e) = mon.command(boot).await {
                tracing::info!(target: "sim", "the stale boot request was refused: {e}");
            }
        });
    }

    /// Kills OSD `i` and powers its device off (unsynced writes lost or torn).
    fn crash_osd(&self, i: usize) -> bool {
        self.crash_osd_with(i, false)
    }

    /// `crash_osd`; with `volatile`, the device loses every write not flushed.
    fn crash_osd_with(&self, i: usize, volatile: bool) -> bool {
        let mut osds = lock(&self.osds);
        let Some(node) = osds[i].node.take() else {
            return false;
        };
        node.kill();
        tracing::info!(target: "sim", "fault: crash {}", osds[i].name);
        osds[i].daemon = None;
        // What survives the power cut: from its own generator, as the number of draws
        // depends on how many writes were in flight.
        let crash_seed = self.rand(|r| r.random());
        let (dev, stats) = if volatile {
            osds[i].dev.crash_volatile()
        } else {
            osds[i]
                .dev
                .crash(&mut rand::rngs::StdRng::seed_from_u64(crash_seed))
        };
        osds[i].dev = dev;
        let mut r = lock(&self.report);
        r.osd_crashes += 1;
        r.torn_writes += stats.torn as u64;
        r.lost_writes += stats.lost as u64;
        true
    }

    fn restart_later(self: &Arc<Self>, what: Restart, after: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let name = match what {
                Restart::Osd(i) => format!("osd slot {i}"),
                Restart::Mon(i) => format!("mon.{i}"),
                Restart::Client(k) => format!("client.{k}"),
                Restart::Gateway(k) => format!("client.{k}'s gateway"),
            };
            tracing::info!(target: "sim", "restart {name}");
            match what {
                Restart::Osd(i) => {
                    me.start_osd(i);
                    me.stall_a_peer(i);
                    let calm = lock(&me.calm_at).is_some();
                    if !calm && std::mem::take(&mut *lock(&me.stale_boot)) {
                        me.stale_boot(i);
                    }
                }
                Restart::Mon(i) => me.start_mon(i),
                Restart::Client(k) => me.start_client(k),
                Restart::Gateway(k) => me.start_gateway(k),
            }
        });
    }

    /// The faults stop under load: partitions heal, devices are fast and roomy again,
    /// crashed monitors and OSDs return (the OSDs while a peer's disk stalls, see
    /// `stall_a_peer`). Scheduled restarts and heals still run, to no effect.
    fn calm_down(self: &Arc<Self>) {
        tracing::info!(target: "sim", "calm: the faults stop, the load goes on");
        *lock(&self.calm_at) = Some(Instant::now());
        self.net.heal();
        self.heal_devices();
        for i in 0..self.opts.mons {
            self.start_mon(i);
        }
        for i in 0..self.opts.osds {
            if lock(&self.osds)[i].node.is_none() {
                self.start_osd(i);
                self.stall_peers(i);
            }
        }
    }

    /// Every OSD's device fast and roomy again.
    fn heal_devices(&self) {
        for o in lock(&self.osds).iter() {
            o.dev.set_latency(None, 0);
            o.dev.limit_space(None);
        }
    }

    /// While OSD slot `i` returns into the calm, every other OSD's disk stalls for a few
    /// seconds (hundreds of ms per operation): the writes of the interval that is ending
    /// are still in their stores when `i` peers. A wedge this causes (a member answered
    /// with a version its store then replaced) is not cleared by a later fault.
    fn stall_peers(self: &Arc<Self>, i: usize) {
        let hold = Duration::from_millis(self.rand(|r| r.random_range(2000..4000)));
        for j in (0..self.opts.osds).filter(|j| *j != i) {
            let latency = (
                Duration::from_millis(self.rand(|r| r.random_range(300..900))),
                Duration::from_millis(self.rand(|r| r.random_range(0..300))),
            );
            let seed = self.rand(|r| r.random());
            lock(&self.osds)[j].dev.set_latency(Some(latency), seed);
        }
        tracing::info!(target: "sim", "calm: every disk but osd slot {i}'s stalls for {hold:?} while it returns");
        lock(&self.report).slow_disks += 1;
        let w = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            for o in lock(&w.osds).iter() {
                o.dev.set_latency(None, 0);
            }
        });
    }

    /// Half of the time, while OSD slot `i` returns and peers, another OSD's disk stalls
    /// (hundreds of ms per operation): peering then meets writes of the interval that
    /// just ended still in that member's store (planted `query-before-drain`: it answers
    /// with a version its store is about to replace, and recovery waits for it forever).
    fn stall_a_peer(self: &Arc<Self>, i: usize) {
        let n = self.opts.osds;
        if n < 2 || self.rand(|r| r.random_bool(0.5)) {
            return;
        }
        let j = (i + self.rand(|r| r.random_range(1..n))) % n;
        let after = Duration::from_millis(self.rand(|r| r.random_range(500..2500)));
        let hold = Duration::from_millis(self.rand(|r| r.random_range(1500..4000)));
        let latency = (
            Duration::from_millis(self.rand(|r| r.random_range(300..900))),
            Duration::from_millis(self.rand(|r| r.random_range(0..300))),
        );
        let seed = self.rand(|r| r.random());
        let w = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::info!(target: "sim", "fault: osd slot {j}'s device stalls ({latency:?} per operation) for {hold:?} while osd slot {i} returns");
            lock(&w.report).slow_disks += 1;
            lock(&w.osds)[j].dev.set_latency(Some(latency), seed);
            tokio::time::sleep(hold).await;
            lock(&w.osds)[j].dev.set_latency(None, 0);
        });
    }

    fn heal_later(self: &Arc<Self>, pairs: Vec<(String, String)>, after: Duration) {
        let net = Arc::clone(&self.net);
        tracing::info!(target: "sim", "fault: cut {pairs:?} for {after:?}");
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::info!(target: "sim", "heal: {pairs:?}");
            net.uncut(&pairs);
        });
    }

    /// Sets up a cut of OSD slot `i` (the primary of `block`'s PG) from the monitors that
    /// comes while it peers: the operator marks out an OSD outside that PG, and once `i`
    /// holds the map that says so, that OSD is cut from `i` (the pairs returned; the
    /// caller cuts `i` from the monitors). `i` peers the PGs the change moved, asks that
    /// OSD (a witness of their past intervals) in vain, and retries, asking its other
    /// peers again and again while it still serves `block`'s PG under the leases they
    /// granted, until the monitors mark it down. Answers given after its peers saw it down
    /// grant no lease (planted `lease-ignored` takes one anyway).
    async fn peering_when_cut(
        self: &Arc<Self>,
        block: u64,
        i: usize,
        hold: Duration,
    ) -> Vec<(String, String)> {
        let Some(map) = self.map() else {
            return Vec::new();
        };
        let Some(obj) = self.image_object(&map, block) else {
            return Vec::new();
        };
        let Some(pool) = map.pools.get(&obj.pool) else {
            return Vec::new();
        };
        let pg = proto::placement::object_pg(&obj, pool);
        let mappings = proto::pg::pool_mappings(&map, pool);
        let Some(members) = mappings.get(pg.seed as usize).map(|m| m.acting.clone()) else {
            return Vec::new();
        };
        let outside: Vec<usize> = {
            let osds = lock(&self.osds);
            (0..osds.len())
                .filter(|j| {
                    osds[*j].daemon.is_some()
                        && osds[*j].id.is_some_and(|id| !members.contains(&id))
                        && map
                            .osd(osds[*j].id.unwrap())
                            .is_some_and(|o| o.up && o.is_in)
                })
                .collect()
        };
        if outside.is_empty() {
            return Vec::new();
        }
        // The OSD whose PGs (those `i` is primary of) have members covering the most of
        // `block`'s PG: `i` asks them all at each try, and each answer renews a lease.
        let primary = members.first().copied();
        let others: Vec<OsdId> = members
            .iter()
            .copied()
            .filter(|m| Some(*m) != primary)
            .collect();
        let reach = |q: OsdId| {
            let asked: std::collections::BTreeSet<OsdId> = mappings
                .iter()
                .filter(|m| m.primary() == primary && m.acting.contains(&q))
                .flat_map(|m| m.acting.iter().copied())
                .collect();
            others.iter().filter(|o| asked.contains(o)).count()
        };
        let id_of = |j: usize| lock(&self.osds)[j].id;
        let best = outside
            .iter()
            .map(|j| id_of(*j).map_or(0, reach))
            .max()
            .unwrap_or(0);
        let outside: Vec<usize> = outside
            .into_iter()
            .filter(|j| id_of(*j).map_or(0, reach) == best)
            .collect();
        let q = outside[(splitmix64(self.opts.seed ^ block) % outside.len() as u64) as usize];
        let epoch = |j: usize| lock(&self.osds)[j].daemon.as_ref().map_or(0, |d| d.epoch());
        let before = epoch(i);
        tracing::info!(target: "sim", "fault: the next cut from the monitors comes while osd slot {i} peers");
        self.drain(vec![q], hold + Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(3);
        while epoch(i) <= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Gone at once, so that every try fails fast (a cut would leave each connection
        // attempt to time out); in lazy mode only a power loss may take an OSD down.
        let down = lock(&self.osds).iter().filter(|o| o.node.is_none()).count();
        if !self.opts.lazy && down < 2 && self.crash_osd(q) {
            self.restart_later(Restart::Osd(q), hold);
            return Vec::new();
        }
        let names = self.osd_names();
        self.net
            .cut(&[names[i].clone()], &[names[q].clone()], true, true)
    }

    /// The newest map any running OSD holds.
    fn map(&self) -> Option<Arc<ClusterMap>> {
        lock(&self.osds)
            .iter()
            .filter_map(|o| o.daemon.as_ref().map(|d| d.current_map()))
            .max_by_key(|m| m.epoch)
    }

    fn image_object(&self, map: &ClusterMap, block: u64) -> Option<ObjectId> {
        let (pool, image) = map.resolve_image(POOL, IMAGE).ok()?;
        Some(ObjectId {
            pool: pool.id,
            image: image.id,
            index: block * BLOCK as u64 / self.opts.object_size as u64,
        })
    }

    /// The slot index of the OSD that is primary for the object holding `block`.
    fn primary_of(&self, block: u64) -> Option<usize> {
        let map = self.map()?;
        let obj = self.image_object(&map, block)?;
        let pool = map.pools.get(&obj.pool)?;
        let pg = proto::placement::object_pg(&obj, pool);
        let mappings = proto::pg::pool_mappings(&map, pool);
        let primary = mappings.get(pg.seed as usize)?.primary()?;
        let name = format!("osd.{}", primary.0);
        lock(&self.osds).iter().position(|o| o.name == name)
    }

    /// Watches the running OSDs' maps until `until`: one that reaches a majority of the
    /// monitors yet stays behind the newest map any OSD holds for `MAP_LAG` is a violation
    /// (it listens to a monitor whose map is frozen, and never moves on).
    async fn watch_maps(self: Arc<Self>, until: Instant) {
        let mut behind: BTreeMap<String, (Instant, u64)> = BTreeMap::new();
        let mut reported = std::collections::BTreeSet::new();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let osds: Vec<(String, u64)> = lock(&self.osds)
                .iter()
                .filter_map(|o| o.daemon.as_ref().map(|d| (o.name.clone(), d.epoch())))
                .collect();
            let Some(newest) = osds.iter().map(|(_, e)| *e).max() else {
                continue;
            };
            let n_mons = self.opts.mons;
            let running_mons: Vec<String> = lock(&self.mons)
                .iter()
                .filter(|m| m.node.is_some())
                .map(|m| m.name.clone())
                .collect();
            let linked = |a: &str, b: &str| !self.net.is_cut(a, b) && !self.net.is_cut(b, a);
            for (name, epoch) in osds {
                // The monitors it reaches (both ways) that are in a majority with the others
                // it reaches: if they are a majority themselves, it reaches a quorum.
                let reached: Vec<&String> =
                    running_mons.iter().filter(|m| linked(&name, m)).collect();
                let in_majority = |m: &str| {
                    let peers = reached
                        .iter()
                        .filter(|o| o.as_str() != m && linked(m, o))
                        .count();
                    (peers + 1) * 2 > n_mons
                };
                let quorum = reached.iter().filter(|m| in_majority(m)).count() * 2 > n_mons;
                if epoch >= newest || !quorum {
                    behind.remove(&name);
                    continue;
                }
                let (since, at) = *behind
                    .entry(name.clone())
                    .or_insert((Instant::now(), epoch));
                if at != epoch {
                    behind.insert(name.clone(), (Instant::now(), epoch));
                } else if since.elapsed() > MAP_LAG && reported.insert(name.clone()) {
                    self.violation(
                        kind::STALE_MAP,
                        format!(
                            "{name} stayed at epoch {epoch} for {:.1} s while it reached a quorum of monitors and epoch {newest} was out",
                            since.elapsed().as_secs_f64()
                        ),
                    );
                }
            }
        }
    }

    /// Whether a monitor is cut off from the others now (kind 15).
    fn mon_isolated(&self) -> bool {
        lock(&self.mon_isolated_until).is_some_and(|t| t > Instant::now())
    }

    fn osd_names(&self) -> Vec<String> {
        lock(&self.osds).iter().map(|o| o.name.clone()).collect()
    }

    fn mon_names(&self) -> Vec<String> {
        lock(&self.mons).iter().map(|m| m.name.clone()).collect()
    }

    fn client_names(&self) -> Vec<String> {
        (0..self.opts.clients)
            .map(|k| format!("client.{k}"))
            .collect()
    }

    /// A write abandoned half-way: client `k` writes one of its cold blocks while that
    /// block's primary is cut off from its peers and the monitors (so only the primary's
    /// copy takes the write), and dies before it can retry. The primary comes back after
    /// `hold`; its copy must then be rolled back. The VM starts again after `restart`.
    fn abandon_write(self: &Arc<Self>, k: usize, hold: Duration, restart: Duration) {
        let cold = self
            .owned(k)
            .into_iter()
            .filter(|b| *b >= HOT_BLOCKS)
            .collect::<Vec<_>>();
        if cold.is_empty() || lock(&self.clients)[k].handle.is_none() {
            return;
        }
        let b = cold[self.rand(|r| r.random_range(0..cold.len()))];
        let Some(i) = self.primary_of(b) else { return };
        lock(&self.steer)[k] = Some(b);
        let w = Arc::clone(self);
        tokio::spawn(async move {
            // The writer may be busy with another write for a while. Once it has taken the
            // block (it waits 30 ms before writing), the primary is cut off, then the
            // client dies with the write held there.
            for _ in 0..500 {
                if lock(&w.steer)[k].is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if lock(&w.steer)[k].take().is_some() {
                return;
            }
            let me = vec![w.osd_names()[i].clone()];
            let mut rest = w.osd_names();
            rest.extend(w.mon_names());
            let pairs = w.net.cut(&me, &rest, true, false);
            w.heal_later(pairs, hold);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.kill_client(k) {
                tracing::info!(target: "sim", "fault: client.{k} dies writing block {b}");
                lock(&w.report).abandoned_writes += 1;
                w.restart_later(Restart::Client(k), restart);
            }
        });
    }

    /// The primary of one of VM `k`'s hot blocks is cut off from every node (connection
    /// attempts to it hang until their 3 s timeout), long enough to be replaced. Once the
    /// map names a new primary, the VM's connection to its gateway drops: qemu reconnects
    /// and sends its requests again, and they go straight to the new primary while the old
    /// requests may still wait for their connection attempt to time out. The old ones must
    /// be settled before the new ones run (planted `orphaned-requests`: an old write lands
    /// after a newer one).
    fn drop_connection(self: &Arc<Self>, k: usize) {
        let hot: Vec<u64> = self
            .owned(k)
            .into_iter()
            .filter(|b| *b < HOT_BLOCKS)
            .collect();
        if hot.is_empty() {
            return;
        }
        let b = hot[self.rand(|r| r.random_range(0..hot.len()))];
        let Some(i) = self.primary_of(b) else { return };
        let hold = Duration::from_millis(self.rand(|r| r.random_range(8_000..12_000)));
        let me = vec![self.osd_names()[i].clone()];
        let mut rest = self.osd_names();
        rest.extend(self.mon_names());
        rest.extend(self.client_names());
        let pairs = self.net.cut(&me, &rest, true, true);
        lock(&self.report).partitions += 1;
        self.heal_later(pairs, hold);
        let w = Arc::clone(self);
        tokio::spawn(async move {
            let deadline = Instant::now() + hold;
            while Instant::now() < deadline && w.primary_of(b) == Some(i) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let disk = lock(&w.clients)[k].disk.clone();
            let in_flight: Vec<u64> = lock(&w.writing)[k].keys().copied().collect();
            if disk.is_some_and(|d| d.drop_connection()) {
                tracing::info!(target: "sim", "fault: client.{k}'s NBD connection drops with writes in flight on blocks {in_flight:?}");
                lock(&w.report).connection_drops += 1;
                // A newer write of a block whose old request may still be pending, and
                // reads of it while that request could still land.
                let Some(&first) = in_flight.first() else {
                    return;
                };
                lock(&w.steer)[k] = Some(first);
                for n in 0..16 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    *lock(&w.read_next) = Some(in_flight[n % in_flight.len()]);
                }
            }
        });
    }

    /// The blocks client `k` writes: its share of the hot blocks, and every block of its
    /// share of the other objects (so nobody else rewrites an object it abandoned).
    fn owned(&self, k: usize) -> Vec<u64> {
        let per_object = self.opts.object_size as u64 / BLOCK as u64;
        (0..self.opts.blocks)
            .filter(|b| {
                let owner = if *b < HOT_BLOCKS { *b } else { *b / per_object };
                owner as usize % self.opts.clients == k
            })
            .collect()
    }

    /// Injects a random fault every 1-4 s until `until`, each healed or restarted later,
    /// and abandons a write shortly before the load ends at `end`.
    async fn faults(self: Arc<Self>, until: Instant, end: Instant) {
        if self.opts.lazy && self.opts.osds >= 5 {
            // The power cycle comes right after data moved (see `move_then_power_cycle`).
            let w = Arc::clone(&self);
            let at = Duration::from_millis(self.rand(|r| r.random_range(12_000..18_000)));
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                w.move_then_power_cycle().await;
            });
        } else if self.opts.power_cycle {
            let w = Arc::clone(&self);
            // Done and recovered from well before the calm.
            let last = (until - Instant::now())
                .as_secs()
                .saturating_sub(10)
                .max(16);
            let at = Duration::from_millis(self.rand(|r| r.random_range(15_000..last * 1000)));
            let hold = Duration::from_millis(self.rand(|r| r.random_range(1_000..5_000)));
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                w.power_cycle(hold);
            });
        }
        if self.opts.filler > 0 {
            let w = Arc::clone(&self);
            let at = Duration::from_millis(self.rand(|r| r.random_range(4_000..9_000)));
            let i = self.rand(|r| r.random_range(0..self.opts.osds));
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                w.retire(i);
            });
        }
        // One write abandoned shortly before the calm, by a VM that stays dead until the
        // load ends: nothing rewrites its object after the primary returns, so its copy
        // must be rolled back for the copies to agree at the end.
        {
            let w = Arc::clone(&self);
            let k = self.rand(|r| r.random_range(0..self.opts.clients));
            tokio::spawn(async move {
                // It may wait up to 5 s for the writer to take the block: cut off and
                // dead before the calm begins.
                tokio::time::sleep_until(until - Duration::from_secs(10)).await;
                let back = end - Instant::now();
                w.abandon_write(k, Duration::from_secs(4), back);
            });
        }
        // The last fault: a hot block's primary crashes shortly before the calm and
        // returns as it begins (`calm_down`). (Not in lazy mode, as for every crash of
        // one OSD.)
        {
            let w = Arc::clone(&self);
            tokio::spawn(async move {
                tokio::time::sleep_until(until - Duration::from_secs(4)).await;
                let down = lock(&w.osds).iter().filter(|o| o.node.is_none()).count();
                if w.opts.lazy || down >= 2 {
                    return;
                }
                let b = w.rand(|r| r.random_range(0..HOT_BLOCKS.min(w.opts.blocks)));
                if let Some(i) = w.primary_of(b) {
                    w.crash_osd(i);
                }
            });
        }
        while Instant::now() < until {
            let wait = self.rand(|r| r.random_range(1000..4000));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if Instant::now() >= until {
                break;
            }
            let hold = Duration::from_millis(self.rand(|r| r.random_range(300..6000)));
            // Kind 10 (an OSD cut from the monitors only) twice as often as the others.
            let kind = match self.rand(|r| r.random_range(0..21)) {
                13 => 10,
                k => k,
            };
            let n_osds = self.opts.osds;
            let down_osds = lock(&self.osds).iter().filter(|o| o.node.is_none()).count();
            match kind {
                // Crash an OSD: a random one, or the primary of a block in use. (Not in lazy
                // mode: there only a whole-cluster power loss may lose writes not yet
                // flushed, and the checker knows which.)
                0..=2 => {
                    if down_osds >= 2 || self.opts.lazy {
                        continue;
                    }
                    let victim = if kind == 0 {
                        let b = self.rand(|r| r.random_range(0..self.opts.blocks));
                        self.primary_of(b)
                    } else {
                        Some(self.rand(|r| r.random_range(0..n_osds)))
                    };
                    // Now and then for longer than the down-out interval: its data moves.
                    let hold = if self.rand(|r| r.random_bool(0.15)) {
                        Duration::from_millis(self.rand(|r| r.random_range(14_000..25_000)))
                    } else {
                        hold
                    };
                    if let Some(i) = victim {
                        if self.crash_osd(i) {
                            self.restart_later(Restart::Osd(i), hold);
                        }
                    }
                }
                // Crash a monitor (never more than a minority, counting one cut off).
                3 => {
                    let down = lock(&self.mons).iter().filter(|m| m.node.is_none()).count()
                        + self.mon_isolated() as usize;
                    if down >= (self.opts.mons - 1) / 2 {
                        continue;
                    }
                    let i = self.rand(|r| r.random_range(0..self.opts.mons));
                    if self.crash_mon(i) {
                        lock(&self.report).mon_crashes += 1;
                        self.restart_later(Restart::Mon(i), hold);
                    }
                }
                // Isolate an OSD from every node, both ways.
                4 | 5 => {
                    let i = self.rand(|r| r.random_range(0..n_osds));
                    let me = vec![self.osd_names()[i].clone()];
                    let mut rest = self.osd_names();
                    rest.extend(self.mon_names());
                    rest.extend(self.client_names());
                    let reset = self.rand(|r| r.random_bool(0.5));
                    let pairs = self.net.cut(&me, &rest, true, reset);
                    lock(&self.report).partitions += 1;
                    self.heal_later(pairs, hold);
                }
                // Split a primary from the monitors and its peers while the clients still
                // reach it, and keep one client on the old map (cut from the monitors).
                6 => {
                    let b = self.rand(|r| r.random_range(0..self.opts.blocks));
                    let Some(i) = self.primary_of(b) else {
                        continue;
                    };
                    let me = vec![self.osd_names()[i].clone()];
                    let mut rest = self.osd_names();
                    rest.extend(self.mon_names());
                    let reset = self.rand(|r| r.random_bool(0.5));
                    let mut pairs = self.net.cut(&me, &rest, true, reset);
                    let k = self.rand(|r| r.random_range(0..self.opts.clients));
                    let client = vec![format!("client.{k}")];
                    pairs.extend(self.net.cut(&client, &self.mon_names(), true, reset));
                    lock(&self.report).partitions += 1;
                    self.heal_later(pairs, hold);
                }
                // A one-way partition between two nodes.
                7 => {
                    let mut all = self.osd_names();
                    all.extend(self.mon_names());
                    let a = self.rand(|r| r.random_range(0..all.len()));
                    let b = (a + 1 + self.rand(|r| r.random_range(0..all.len() - 1))) % all.len();
                    let pairs = self
                        .net
                        .cut(&[all[a].clone()], &[all[b].clone()], false, false);
                    lock(&self.report).one_way += 1;
                    self.heal_later(pairs, hold);
                }
                // A burst of loss: connections reset.
                8 => {
                    self.net.set_loss(0.003);
                    lock(&self.report).loss_bursts += 1;
                    let net = Arc::clone(&self.net);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold.min(Duration::from_secs(2))).await;
                        net.set_loss(0.0);
                    });
                }
                // An OSD (the primary of a hot block) cut from the monitors only, and a
                // client too: the OSD keeps its peers (and its read leases) until the
                // monitors mark it down; the client keeps reading on the old map.
                10 => {
                    let b = self.rand(|r| r.random_range(0..HOT_BLOCKS.min(self.opts.blocks)));
                    let Some(i) = self.primary_of(b) else {
                        continue;
                    };
                    let n = lock(&self.report).mon_cuts;
                    let peering = splitmix64(self.opts.seed ^ 0x10_c07 ^ n).is_multiple_of(2);
                    // Long enough for the new primary to take over while this one peers.
                    let hold = if peering {
                        hold.max(Duration::from_secs(8))
                    } else {
                        hold
                    };
                    let also = if peering {
                        self.peering_when_cut(b, i, hold).await
                    } else {
                        Vec::new()
                    };
                    let me = vec![self.osd_names()[i].clone()];
                    let mut pairs = self.net.cut(&me, &self.mon_names(), true, false);
                    pairs.extend(also);
                    let k = self.rand(|r| r.random_range(0..self.opts.clients));
                    pairs.extend(self.net.cut(
                        &[format!("client.{k}")],
                        &self.mon_names(),
                        true,
                        false,
                    ));
                    lock(&self.report).mon_cuts += 1;
                    let hold = hold.max(Duration::from_secs(5));
                    // The client only reads meanwhile, and only that object: a failed
                    // write would make the old primary stop serving reads of the object
                    // (rightly), and a read of another PG would wait for a map it cannot
                    // get; either would hide a read served without a lease.
                    let per_object = self.opts.object_size as u64 / BLOCK as u64;
                    let first = b / per_object * per_object;
                    lock(&self.quiet)[k] = Some((Instant::now() + hold, first..first + per_object));
                    self.heal_later(pairs, hold);
                }
                // A host (an OSD and the client beside it) loses power.
                11 => {
                    if down_osds >= 2 || self.opts.lazy {
                        continue;
                    }
                    let k = self.rand(|r| r.random_range(0..self.opts.clients.min(n_osds)));
                    self.crash_host(k, hold);
                }
                // The operator drains one or two hosts, then brings them back.
                12 => {
                    let n = self.rand(|r| r.random_range(1..=2));
                    let first = self.rand(|r| r.random_range(0..n_osds));
                    let slots: Vec<usize> = (0..n).map(|j| (first + j) % n_osds).collect();
                    let hold = Duration::from_millis(self.rand(|r| r.random_range(5_000..20_000)));
                    self.drain(slots, hold);
                }
                // A write abandoned half-way (see `abandon_write`).
                14 => {
                    let k = self.rand(|r| r.random_range(0..self.opts.clients));
                    let hold = hold.max(Duration::from_secs(6));
                    self.abandon_write(k, hold, hold + Duration::from_secs(3));
                }
                // A monitor cut from the other monitors only, for long: OSDs and clients
                // still reach it, and those subscribed to it must notice that its map is
                // frozen and move on. An OSD crashes meanwhile, so the map moves.
                15 => {
                    let down = lock(&self.mons).iter().filter(|m| m.node.is_none()).count();
                    if down > 0 || self.mon_isolated() || self.opts.mons < 3 {
                        continue;
                    }
                    let i = self.rand(|r| r.random_range(0..self.opts.mons));
                    let names = self.mon_names();
                    let me = vec![names[i].clone()];
                    let pairs = self.net.cut(&me, &names, true, false);
                    let hold = Duration::from_millis(self.rand(|r| r.random_range(20_000..35_000)));
                    *lock(&self.mon_isolated_until) = Some(Instant::now() + hold);
                    lock(&self.report).mon_isolations += 1;
                    self.heal_later(pairs, hold);
                    let victim = self.rand(|r| r.random_range(0..n_osds));
                    if down_osds < 2 && !self.opts.lazy && self.crash_osd(victim) {
                        self.restart_later(Restart::Osd(victim), Duration::from_secs(3));
                    }
                }
                // Bit rot: a byte of a hot block's copy on its primary decays (the other
                // copies are intact). Reads must still return the right bytes.
                16 => {
                    // Not with OSDs in lazy mode: a power cycle may leave the decayed copy
                    // the only one (its peers' copies were never flushed), a loss no
                    // store survives.
                    if self.opts.lazy {
                        continue;
                    }
                    let b = self.rand(|r| r.random_range(0..HOT_BLOCKS.min(self.opts.blocks)));
                    let (Some(i), Some(map)) = (self.primary_of(b), self.map()) else {
                        continue;
                    };
                    let Some(obj) = self.image_object(&map, b) else {
                        continue;
                    };
                    let (daemon, dev) = {
                        let osds = lock(&self.osds);
                        (osds[i].daemon.clone(), Arc::clone(&osds[i].dev))
                    };
                    let Some(daemon) = daemon else { continue };
                    // Only where every member holds the current version: rot on the only
                    // current copy is a loss no store survives.
                    let pool = map.pools.get(&obj.pool);
                    let clean = pool.is_some_and(|p| {
                        let pg = proto::placement::object_pg(&obj, p);
                        daemon
                            .primary_stats()
                            .iter()
                            .any(|s| s.pg == pg && s.state_name(p.size as usize) == "active+clean")
                    });
                    if !clean {
                        continue;
                    }
                    let in_object =
                        (b * BLOCK as u64 % self.opts.object_size as u64) as usize / BLOCK;
                    if let Some(at) = daemon.store.block_location(&obj, in_object) {
                        let byte = self.rand(|r| r.random_range(0..BLOCK as u64));
                        dev.rot(at + byte);
                        tracing::info!(target: "sim", "fault: bit rot in block {b} ({obj}) on osd slot {i}");
                        lock(&self.report).bit_rot += 1;
                        // Read soon, as a scrub would: the primary must serve the right
                        // bytes (from another member) and repair its copy.
                        *lock(&self.read_next) = Some(b);
                    }
                }
                // A VM's NBD connection drops with requests in flight.
                17 => {
                    let k = self.rand(|r| r.random_range(0..self.opts.clients));
                    self.drop_connection(k);
                }
                // A gateway killed under its running VM, restarted shortly after.
                18 => {
                    let k = self.rand(|r| r.random_range(0..self.opts.clients));
                    if self.kill_gateway(k) {
                        tracing::info!(target: "sim", "fault: client.{k}'s gateway is killed");
                        lock(&self.report).gateway_restarts += 1;
                        self.restart_later(Restart::Gateway(k), hold.min(Duration::from_secs(3)));
                    }
                }
                // A slow disk (a few ms to tens of ms per operation) or a stalling one
                // (seconds per operation), on a hot block's primary or any OSD.
                19 => {
                    let victim = if self.rand(|r| r.random_bool(0.5)) {
                        let b = self.rand(|r| r.random_range(0..HOT_BLOCKS.min(self.opts.blocks)));
                        self.primary_of(b)
                    } else {
                        Some(self.rand(|r| r.random_range(0..n_osds)))
                    };
                    let Some(i) = victim else { continue };
                    let (base, jitter) = if self.rand(|r| r.random_bool(0.7)) {
                        (
                            self.rand(|r| r.random_range(1..20)),
                            self.rand(|r| r.random_range(0..50)),
                        )
                    } else {
                        (
                            self.rand(|r| r.random_range(200..1500)),
                            self.rand(|r| r.random_range(0..500)),
                        )
                    };
                    let latency = (Duration::from_millis(base), Duration::from_millis(jitter));
                    let seed = self.rand(|r| r.random());
                    lock(&self.osds)[i].dev.set_latency(Some(latency), seed);
                    tracing::info!(target: "sim", "fault: osd slot {i}'s device takes {base}+{jitter} ms per operation for {hold:?}");
                    lock(&self.report).slow_disks += 1;
                    let w = Arc::clone(&self);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        lock(&w.osds)[i].dev.set_latency(None, 0);
                    });
                }
                // An OSD's device runs out of room (a thin pool or a full filesystem):
                // writes needing new space fail with ENOSPC until the operator adds room.
                20 => {
                    let i = self.rand(|r| r.random_range(0..n_osds));
                    let extra = self.rand(|r| r.random_range(0..256));
                    lock(&self.osds)[i].dev.limit_space(Some(extra));
                    tracing::info!(target: "sim", "fault: osd slot {i}'s device has room for {extra} more pages for {hold:?}");
                    lock(&self.report).full_devices += 1;
                    let w = Arc::clone(&self);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        lock(&w.osds)[i].dev.limit_space(None);
                    });
                }
                // A slow network.
                _ => {
                    let d = Duration::from_millis(self.rand(|r| r.random_range(5..40)));
                    self.net.set_slow(d);
                    lock(&self.report).slow_spells += 1;
                    let net = Arc::clone(&self.net);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        net.set_slow(Duration::ZERO);
                    });
                }
            }
        }
    }

    /// One VM: two writer lanes (pipelined requests on one connection, never two on one
    /// unit) and a reader, until `until`; then it disconnects.
    async fn client(self: Arc<Self>, k: usize, incarnation: u64, disk: Arc<Disk>, until: Instant) {
        let vm = Arc::new(Vm::default());
        tokio::join!(
            Arc::clone(&self).writer(k, incarnation, 0, Arc::clone(&disk), Arc::clone(&vm), until),
            Arc::clone(&self).writer(k, incarnation, 1, Arc::clone(&disk), Arc::clone(&vm), until),
            Arc::clone(&self).reader(k, incarnation, Arc::clone(&disk), until)
        );
        disk.close().await;
        let mut r = lock(&self.report);
        r.resends += disk.resent.load(std::sync::atomic::Ordering::Relaxed);
    }

    fn client_rng(&self, k: usize, incarnation: u64, role: u64) -> rand::rngs::StdRng {
        // Its own generator: the workload does not shift with the fault schedule.
        rand::rngs::StdRng::seed_from_u64(
            self.opts.seed
                ^ (k as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)
                ^ incarnation.wrapping_mul(0xE703_7ED1_A0B4_28DB)
                ^ role.wrapping_mul(0x8EBC_6AF0_9C88_C6E3),
        )
    }

    /// A client op that returned an error: counted, and a violation of `kind`.
    fn op_failed(&self, kind: &str, what: String) {
        lock(&self.report).failed_ops += 1;
        self.violation(kind, what);
    }

    /// Counts a finished op; one slower than `SLOW_OP` is a violation (a wedge that healed
    /// by luck, or a stall longer than detection, peering and recovery take). `what`
    /// describes the op, built only for a violation.
    fn op_done(&self, started: Instant, what: impl FnOnce() -> String) {
        let took = started.elapsed();
        {
            let mut r = lock(&self.report);
            r.ops += 1;
            r.max_op_ms = r.max_op_ms.max(took.as_millis() as u64);
        }
        let healed = *lock(&self.healed_at);
        if let Some(h) = healed.filter(|h| started < *h + AFTER_HEAL) {
            if Instant::now() > h + AFTER_HEAL {
                self.violation(
                    kind::WEDGE,
                    format!(
                        "{} was still pending {:.1} s after the faults healed",
                        what(),
                        (Instant::now() - h).as_secs_f64()
                    ),
                );
                return;
            }
        }
        let calm = *lock(&self.calm_at);
        let until = *lock(&self.until);
        if let (Some(c), Some(u)) = (calm, until) {
            if started >= c + CALM_SETTLE && started + CALM_OP <= u && took > CALM_OP {
                self.violation(
                    kind::WEDGE,
                    format!(
                        "{} took {:.1} s, started {:.1} s into the calm (every fault healed)",
                        what(),
                        took.as_secs_f64(),
                        (started - c).as_secs_f64()
                    ),
                );
                return;
            }
        }
        if took > SLOW_OP {
            self.violation(
                kind::SLOW_OP,
                format!(
                    "{} took {:.1} s (bound {:?})",
                    what(),
                    took.as_secs_f64(),
                    SLOW_OP
                ),
            );
        }
    }

    /// One writer lane of VM `k`: writes, zeroes and trims ranges of the blocks it owns
    /// (whole blocks, sub-block ranges the gateway read-modify-writes, ranges across two
    /// blocks), half of them in the hot blocks, now and then with FUA or followed by a
    /// FLUSH. A unit is in at most one lane's request at a time, so its writes are ordered.
    async fn writer(
        self: Arc<Self>,
        k: usize,
        incarnation: u64,
        lane: u64,
        disk: Arc<Disk>,
        vm: Arc<Vm>,
        until: Instant,
    ) {
        const UPB: u64 = UNITS_PER_BLOCK;
        let me = format!("client.{k}");
        let mut rng = self.client_rng(k, incarnation, 1 + 2 * lane);
        let owned = self.owned(k);
        let owned_set: std::collections::BTreeSet<u64> = owned.iter().copied().collect();
        let hot = HOT_BLOCKS.min(self.opts.blocks);
        let owned_hot: Vec<u64> = owned.iter().copied().filter(|b| *b < hot).collect();
        while Instant::now() < until {
            let quiet = lock(&self.quiet)[k].as_ref().map(|(t, _)| *t);
            if let Some(t) = quiet.filter(|t| *t > Instant::now()) {
                tokio::time::sleep_until(t.min(until)).await;
                continue;
            }
            let started = Instant::now();
            let steered = lock(&self.steer)[k].take();
            if steered.is_some() {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let block = match steered {
                Some(b) => b,
                None if !owned_hot.is_empty() && rng.random_bool(0.5) => {
                    owned_hot[rng.random_range(0..owned_hot.len())]
                }
                None => owned[rng.random_range(0..owned.len())],
            };
            let u0 = block * UPB;
            let next_owned = owned_set.contains(&(block + 1));
            let (op, first, n) = match steered.map_or(rng.random_range(0..100), |_| 0) {
                0..45 => (Op::Write, u0, UPB),
                45..75 => {
                    let s = rng.random_range(0..UPB);
                    (Op::Write, u0 + s, rng.random_range(1..=UPB - s))
                }
                75..85 if next_owned => {
                    let s = rng.random_range(1..UPB);
                    (Op::Write, u0 + s, UPB - s + rng.random_range(1..UPB))
                }
                85..93 => {
                    let s = rng.random_range(0..UPB);
                    (Op::Zero, u0 + s, rng.random_range(1..=UPB - s))
                }
                93.. if next_owned && rng.random_bool(0.5) => {
                    let s = rng.random_range(1..UPB);
                    (Op::Trim, u0 + s, UPB - s + UPB)
                }
                93.. => (Op::Trim, u0, UPB),
                _ => (Op::Write, u0, UPB),
            };
            let units = first..first + n;
            if !vm.claim(units.clone()) {
                // The other lane has a request on one of these units: choose again.
                if let Some(b) = steered {
                    lock(&self.steer)[k] = Some(b);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let fua = op != Op::Trim && rng.random_bool(0.05);
            let issued = self.now_us();
            let mut writes: Vec<WriteRef> = Vec::with_capacity(n as usize);
            let mut data = Vec::new();
            {
                let mut h = lock(&self.history);
                for u in units.clone() {
                    match op {
                        Op::Write => {
                            let value =
                                ((k as u64 + 1) << 48) | (incarnation << 32) | vm.next_value();
                            data.extend_from_slice(&pattern(value));
                            writes.push(h.write_started(u, value, issued));
                        }
                        Op::Zero => writes.push(h.write_started(u, 0, issued)),
                        // A trim zeroes the blocks it covers whole; partial blocks keep
                        // their data.
                        Op::Trim => {
                            let b = u / UPB;
                            if b * UPB >= first && (b + 1) * UPB <= first + n {
                                writes.push(h.write_started(u, 0, issued));
                            }
                        }
                    }
                }
            }
            let offset = first * UNIT as u64;
            let len = (n * UNIT as u64) as u32;
            let req = match op {
                Op::Write => Request::Write {
                    offset,
                    data: data.into(),
                    fua,
                },
                Op::Zero => Request::WriteZeroes { offset, len, fua },
                Op::Trim => Request::Trim { offset, len },
            };
            {
                let mut r = lock(&self.report);
                match op {
                    Op::Write if n != UPB || first % UPB != 0 => r.partial_writes += 1,
                    Op::Write => {}
                    Op::Zero | Op::Trim => r.zeroings += 1,
                }
            }
            let what = || {
                format!(
                    "{me}: {op:?} of units {first}..{} (block {block})",
                    first + n
                )
            };
            tracing::debug!(target: "sim", "{}", what());
            *lock(&self.writing)[k].entry(block).or_default() += 1;
            let answer = disk.call(&req).await;
            {
                let mut writing = lock(&self.writing);
                if let Some(c) = writing[k].get_mut(&block) {
                    *c -= 1;
                    if *c == 0 {
                        writing[k].remove(&block);
                    }
                }
            }
            match answer {
                Ok(_) => {
                    let at = self.now_us();
                    let durable = fua || !self.opts.lazy;
                    let mut h = lock(&self.history);
                    for w in writes {
                        h.write_acked(w, at, durable, &me);
                    }
                }
                // Reported; the units are written again later, and the checker allows the
                // failed write only in its place in each unit's order.
                Err(errno) => self.op_failed(
                    kind::FAILED_WRITE,
                    format!("{} failed: errno {errno}", what()),
                ),
            }
            vm.release(units);
            self.op_done(started, what);
            // Now and then a FLUSH, as a guest's fsync: it must ride out every fault.
            if rng.random_bool(0.1) {
                let started = Instant::now();
                let sent = self.now_us();
                match disk.call(&Request::Flush).await {
                    Ok(_) => lock(&self.history).flushed(&me, sent),
                    Err(errno) => self.op_failed(
                        kind::FAILED_FLUSH,
                        format!("{me}: FLUSH failed: errno {errno}"),
                    ),
                }
                lock(&self.report).flushes += 1;
                self.op_done(started, || format!("{me}: FLUSH"));
            }
            let pause = rng.random_range(1..40);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// VM `k`'s reader: whole blocks, or unaligned ranges of units across blocks, half of
    /// the time in the hot blocks.
    async fn reader(self: Arc<Self>, k: usize, incarnation: u64, disk: Arc<Disk>, until: Instant) {
        const UPB: u64 = UNITS_PER_BLOCK;
        let me = format!("client.{k}");
        let mut rng = self.client_rng(k, incarnation, 2);
        let hot = HOT_BLOCKS.min(self.opts.blocks);
        while Instant::now() < until {
            let started = Instant::now();
            let focus = lock(&self.quiet)[k]
                .clone()
                .filter(|(t, _)| *t > Instant::now())
                .map(|(_, r)| r);
            let next = lock(&self.read_next).take();
            let limit = focus.as_ref().map_or(self.opts.blocks, |r| r.end) * UPB;
            let whole = next.is_some() || rng.random_bool(0.5);
            let block = next.unwrap_or_else(|| match focus {
                Some(r) => rng.random_range(r),
                None if rng.random_bool(0.5) => rng.random_range(0..hot),
                None => rng.random_range(0..self.opts.blocks),
            });
            let (first, n) = if whole {
                (block * UPB, UPB)
            } else {
                let first = block * UPB + rng.random_range(0..UPB);
                (first, rng.random_range(1..=2 * UPB).min(limit - first))
            };
            let start = self.now_us();
            let req = Request::Read {
                offset: first * UNIT as u64,
                len: (n * UNIT as u64) as u32,
            };
            match disk.call(&req).await {
                Ok(data) => {
                    let end = self.now_us();
                    lock(&self.history).read_range(first, start, end, &data, &me);
                }
                Err(errno) => self.op_failed(
                    kind::FAILED_READ,
                    format!(
                        "{me}: read of units {first}..{} failed: errno {errno}",
                        first + n
                    ),
                ),
            }
            self.op_done(started, || {
                format!("{me}: read of units {first}..{}", first + n)
            });
            let pause = rng.random_range(1..40);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Whether every PG is active+clean on a full acting set, as the primaries see it.
    fn clean(&self, map: &ClusterMap) -> Result<(), String> {
        let pool = map
            .pool_by_name(POOL)
            .ok_or_else(|| "no pool".to_string())?;
        let daemons: BTreeMap<OsdId, Arc<Osd>> = lock(&self.osds)
            .iter()
            .filter_map(|o| o.daemon.clone())
            .map(|d| (d.id, d))
            .collect();
        for m in proto::pg::pool_mappings(map, pool) {
            let Some(primary) = m.primary().filter(|_| m.is_active()) else {
                return Err(format!("pg {} is {}", m.pg, m.state.name()));
            };
            if m.acting.len() < pool.size as usize {
                return Err(format!("pg {} has acting set {:?}", m.pg, m.acting));
            }
            let Some(d) = daemons.get(&primary) else {
                return Err(format!("pg {}: primary {primary} is not running", m.pg));
            };
            let stat = d.primary_stats().into_iter().find(|s| s.pg == m.pg);
            match stat {
                Some(s) if s.state_name(pool.size as usize) == "active+clean" => {}
                Some(s) => {
                    return Err(format!(
                        "pg {} is {} on {primary}",
                        m.pg,
                        s.state_name(pool.size as usize)
                    ))
                }
                None => return Err(format!("pg {}: {primary} has no state for it", m.pg)),
            }
        }
        Ok(())
    }

    /// Every acting member of every PG holds the same objects, at the same versions, with
    /// the same bytes.
    async fn compare_copies(&self, map: &ClusterMap) -> Vec<String> {
        let mut out = Vec::new();
        let Some(pool) = map.pool_by_name(POOL) else {
            return vec!["no pool".into()];
        };
        let stores: BTreeMap<OsdId, Arc<Store>> = lock(&self.osds)
            .iter()
            .filter_map(|o| o.daemon.as_ref().map(|d| (d.id, Arc::clone(&d.store))))
            .collect();
        for m in proto::pg::pool_mappings(map, pool) {
            let mut copies: BTreeMap<OsdId, BTreeMap<ObjectId, proto::Version>> = BTreeMap::new();
            for o in &m.acting {
                let Some(s) = stores.get(o) else {
                    out.push(format!("pg {}: {o} is not running", m.pg));
                    continue;
                };
                let objs = s
                    .list(Some(pool.id))
                    .into_iter()
                    .filter(|e| !e.object.is_pg_meta() && !e.version.is_none())
                    .filter(|e| proto::placement::object_pg(&e.object, pool) == m.pg)
                    .map(|e| (e.object, e.version))
                    .collect();
                copies.insert(*o, objs);
            }
            let mut iter = copies.iter();
            let Some((first, objs)) = iter.next() else {
                continue;
            };
            for (other, theirs) in iter {
                if theirs != objs {
                    let diff: Vec<String> = objs
                        .iter()
                        .filter(|(o, v)| theirs.get(*o) != Some(*v))
                        .map(|(o, v)| format!("{o} at {v:?} vs {:?}", theirs.get(o)))
                        .chain(
                            theirs
                                .iter()
                                .filter(|(o, _)| !objs.contains_key(*o))
                                .map(|(o, v)| format!("{o} only on {other} at {v:?}")),
                        )
                        .take(3)
                        .collect();
                    out.push(format!(
                        "pg {}: {first} and {other} hold different objects: {}",
                        m.pg,
                        diff.join("; ")
                    ));
                }
            }
            for obj in objs.keys() {
                let mut first_bytes: Option<(OsdId, bytes::Bytes)> = None;
                for o in &m.acting {
                    let Some(s) = stores.get(o) else { continue };
                    let bytes = match s.read(*obj, 0, pool.object_size).await {
                        Ok((b, _, _)) => b,
                        Err(e) => {
                            out.push(format!("{obj} on {o}: {e}"));
                            continue;
                        }
                    };
                    lock(&self.report).objects_compared += 1;
                    match &first_bytes {
                        None => first_bytes = Some((*o, bytes)),
                        Some((f, fb)) if *fb != bytes => out.push(format!(
                            "{obj}: the copies on {f} and {o} differ in their bytes"
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Restart {
    Osd(usize),
    Mon(usize),
    Client(usize),
    Gateway(usize),
}

/// What a writer does to its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    Zero,
    Trim,
}

/// A VM's state shared by its lanes.
#[derive(Default)]
struct Vm {
    /// Units in a request of some lane.
    busy: Mutex<std::collections::BTreeSet<u64>>,
    /// Values written so far.
    seq: std::sync::atomic::AtomicU64,
}

impl Vm {
    /// Takes `units` for one request unless another one has any of them.
    fn claim(&self, units: std::ops::Range<u64>) -> bool {
        let mut busy = lock(&self.busy);
        if busy.range(units.clone()).next().is_some() {
            return false;
        }
        busy.extend(units);
        true
    }

    fn release(&self, units: std::ops::Range<u64>) {
        let mut busy = lock(&self.busy);
        for u in units {
            busy.remove(&u);
        }
    }

    fn next_value(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// The outcome of one seed run in its own process (see [`run_in_process`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub seed: u64,
    pub result: Result<Report, String>,
}

/// Runs each seed of `seeds` in its own process (`exe --seed N --json`), `jobs` at a time,
/// calling `done` as each finishes; stops starting new ones once `done` returns false.
///
/// One process per seed makes a seed's run the same in a batch as in its replay: the
/// thread-local generators behind `futures::select!` (which openraft uses) start from the
/// same state in every fresh process.
pub fn run_in_processes(
    exe: &std::path::Path,
    seeds: Vec<u64>,
    bug: Option<Bug>,
    secs: Option<u64>,
    jobs: usize,
    mut done: impl FnMut(Outcome) -> bool,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    let queue = Arc::new(Mutex::new(
        seeds.into_iter().collect::<std::collections::VecDeque<_>>(),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (queue, stop, tx, exe) = (
                Arc::clone(&queue),
                Arc::clone(&stop),
                tx.clone(),
                exe.to_path_buf(),
            );
            std::thread::spawn(move || loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Some(seed) = lock(&queue).pop_front() else { return };
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["--seed", &seed.to_string(), "--json"]);
                if let Some(b) = bug {
                    cmd.args(["--bug", b.name()]);
                }
                if let Some(secs) = secs {
                    cmd.args(["--secs", &secs.to_string()]);
                }
                let outcome = match cmd.stderr(std::process::Stdio::inherit()).output() {
                    Ok(out) => String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .find_map(|l| serde_json::from_str::<Outcome>(l).ok())
                        .unwrap_or_else(|| Outcome {
                            seed,
                            result: Err(format!(
                                "seed {seed}: the simulator process ended ({}) without a result\n  replay: make sim SEED={seed}",
                                out.status
                            )),
                        }),
                    Err(e) => Outcome {
                        seed,
                        result: Err(format!("seed {seed}: cannot start {}: {e}", exe.display())),
                    },
                };
                if tx.send(outcome).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    for outcome in rx {
        if !done(outcome) {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Log lines stamped with the simulated time and the node that wrote them.
struct SimStamp(std::sync::OnceLock<Instant>);

impl tracing_subscriber::fmt::time::FormatTime for SimStamp {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t0 = *self.0.get_or_init(Instant::now);
        let node = ::net::rt::current().map_or_else(|| "sim".to_string(), |n| n.name.clone());
        write!(w, "{} {node:>12}", fmt_us(t0.elapsed().as_micros() as u64))
    }
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a failing seed's log goes (with `SIM_LOG` set).
pub fn log_path(seed: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("target/sim/seed-{seed}.log"))
}

/// Runs one seed; `Err` lists what went wrong and how to replay it. With `SIM_LOG` set (a
/// tracing filter such as `info` or `osd=debug`), the daemons' log of a failing run is
/// written to [`log_path`].
pub fn run(opts: SimOptions) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(
            &opts.seed.to_le_bytes(),
        ))
        .build()
        .map_err(|e| e.to_string())?;
    let log = std::env::var("SIM_LOG").ok().filter(|f| !f.is_empty());
    let buf = LogBuf::default();
    let _guard = log.map(|filter| {
        let writer = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimStamp(Default::default()))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    });
    osd::planted::plant(opts.bug);
    mon::raft::seed_thread_rng(opts.seed);
    let replay = opts.replay();
    let seed = opts.seed;
    let r = rt.block_on(run_inner(opts));
    osd::planted::plant(None);
    // Dropping the runtime drops every task still parked in it.
    drop(rt);
    // With `SIM_LOG`, a failing run leaves its log (every run does with `SIM_KEEP_LOG`).
    let bytes = lock(&buf.0);
    let keep = r.is_err() || std::env::var_os("SIM_KEEP_LOG").is_some();
    let written = if bytes.is_empty() || !keep {
        None
    } else {
        let path = log_path(seed);
        let _ = std::fs::create_dir_all("target/sim");
        Some(match std::fs::write(&path, &*bytes) {
            Ok(()) => format!("log: {}", path.display()),
            Err(e) => format!("log not written to {}: {e}", path.display()),
        })
    };
    r.map_err(|e| {
        let mut msg = format!("seed {seed}: {e}\n  replay: {replay}");
        if let Some(w) = written {
            msg.push_str(&format!("\n  {w}"));
        }
        msg
    })
}

async fn run_inner(opts: SimOptions) -> Result<Report, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let fsid: u128 = rng.random();
    let initial: Vec<proto::map::MonInfo> = (0..opts.mons)
        .map(|i| proto::map::MonInfo {
            name: format!("mon.{i}"),
            addr: format!("10.0.0.{}:6789", i + 1),
        })
        .collect();
    let mut mons = Vec::new();
    for m in &initial {
        let disk = mon::log::MemDisk(Default::default());
        mon::log::format(
            &disk,
            &mon::store::Identity {
                name: m.name.clone(),
                addr: m.addr.clone(),
                fsid,
                initial: initial.clone(),
            },
        )?;
        mons.push(MonSlot {
            name: m.name.clone(),
            disk,
            node: None,
        });
    }
    let osds = (0..opts.osds)
        .map(|i| OsdSlot {
            name: String::new(),
            host: format!("host{i}"),
            dev: SimDevice::new(if opts.filler > 0 {
                LARGE_DEVICE_BYTES
            } else {
                DEVICE_BYTES
            }),
            node: None,
            daemon: None,
            generation: 0,
            id: None,
        })
        .collect();
    let t0 = Instant::now();
    let world = Arc::new(World {
        net: network::Network::new(rng.random()),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(rng.random())),
        t0,
        mon_addrs: initial.iter().map(|m| m.addr.clone()).collect(),
        mons: Mutex::new(mons),
        osds: Mutex::new(osds),
        history: Mutex::new(History::default()),
        versions: Arc::new(VersionCheck::new(t0)),
        report: Mutex::new(Report::default()),
        violations: Mutex::new(Vec::new()),
        incarnations: Mutex::new(0),
        mon_isolated_until: Mutex::new(None),
        healed_at: Mutex::new(None),
        calm_at: Mutex::new(None),
        read_next: Mutex::new(None),
        until: Mutex::new(None),
        clients: Mutex::new(
            (0..opts.clients)
                .map(|_| ClientSlot {
                    node: None,
                    exports: None,
                    handle: None,
                    disk: None,
                    incarnation: 0,
                })
                .collect(),
        ),
        admin: Mutex::new(None),
        steer: Mutex::new(vec![None; opts.clients]),
        writing: Mutex::new(vec![BTreeMap::new(); opts.clients]),
        quiet: Mutex::new(vec![None; opts.clients]),
        retired: Mutex::new(None),
        stale_boot: Mutex::new(opts.stale_boot),
        opts: opts.clone(),
    });
    for i in 0..opts.mons {
        world.start_mon(i);
    }
    // The operator's set-up: OSDs formatted and registered, a pool, an image.
    let admin = world.node("admin");
    *lock(&world.admin) = Some(Arc::clone(&admin));
    let setup = {
        let w = Arc::clone(&world);
        admin.spawn(async move { setup(&w).await })
    };
    setup
        .await
        .map_err(|e| format!("set-up task: {e}"))?
        .map_err(|e| format!("set-up: {e:#}"))?;
    for i in 0..opts.osds {
        world.start_osd(i);
    }
    wait_clean(&world, Duration::from_secs(60))
        .await
        .map_err(|e| format!("the new cluster never became clean: {e}"))?;
    if opts.filler > 0 {
        let w = Arc::clone(&world);
        admin
            .spawn(async move { fill(&w).await })
            .await
            .map_err(|e| format!("fill task: {e}"))?
            .map_err(|e| format!("fill: {e:#}"))?;
    }

    // Load and faults.
    let until = Instant::now() + Duration::from_secs(opts.secs);
    *lock(&world.until) = Some(until);
    for k in 0..opts.clients {
        world.start_client(k);
    }
    let calm = until - CALM.min(Duration::from_secs(opts.secs / 4));
    let faults = tokio::spawn(Arc::clone(&world).faults(calm, until));
    let maps = tokio::spawn(Arc::clone(&world).watch_maps(until));
    let _ = faults.await;
    tokio::time::sleep_until(calm).await;
    world.calm_down();
    let _ = maps.await;
    tokio::time::sleep_until(until).await;

    // Heal: every partition, every crashed daemon back.
    let healed = Instant::now();
    *lock(&world.healed_at) = Some(healed);
    world.net.heal();
    world.heal_devices();
    for i in 0..opts.mons {
        world.start_mon(i);
    }
    for i in 0..opts.osds {
        world.start_osd(i);
    }
    for k in 0..opts.clients {
        let vm_runs = lock(&world.clients)[k]
            .handle
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        if vm_runs {
            world.start_gateway(k);
        }
    }
    // Every OSD the operator took out in again (drained, retired, or with a device that
    // failed), until all are up and in. Those the monitors marked out for being down
    // (`ClusterMap::auto_out`) are left alone: their boot marks them in again, and one
    // that stays out is reported below.
    let again = admin.spawn({
        let mon = world.mon_addrs.clone();
        async move {
            let mon = MonClient::new(mon).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let map = mon
                    .wait_for_map(Duration::from_secs(60))
                    .await
                    .map_err(|e| e.to_string())?;
                if map.osds.values().all(|o| o.is_in && o.up) || Instant::now() > deadline {
                    return Ok::<(), String>(());
                }
                for o in map
                    .osds
                    .values()
                    .filter(|o| !o.is_in && !map.auto_out.contains(&o.id.0))
                {
                    // A drain ending at this moment may have marked it in already.
                    match mon.command(Command::MarkOsdIn { id: o.id }).await {
                        Ok(_) => {}
                        Err(e) if e.to_string().contains("already in") => {}
                        Err(e) => return Err(format!("osd in {}: {e}", o.id)),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(120), again).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => world.violation(
            kind::FAILED_OP,
            format!("marking every OSD in after the heal: {e}"),
        ),
        other => world.violation(
            kind::WEDGE,
            format!("marking every OSD in after the heal: {other:?}"),
        ),
    }
    // Every OSD process is running and reaches the monitors again: each must be serving
    // (the loop above ends with every OSD up, or after 90 s). One still down registered
    // no incarnation of its own (planted nowhere: a stale boot request of a dead process
    // that committed after its successor's boot left the successor down for good).
    if let Some(map) = world.map() {
        let running: Vec<OsdId> = lock(&world.osds)
            .iter()
            .filter(|o| o.daemon.is_some())
            .filter_map(|o| o.id)
            .collect();
        for id in running {
            let Some(o) = map.osd(id) else { continue };
            if !o.up {
                world.violation(
                    kind::STRANDED,
                    format!(
                        "{id} running and reachable but down in the map (epoch {}) 90 s after the heal",
                        map.epoch
                    ),
                );
            } else if !o.is_in {
                world.violation(
                    kind::STRANDED,
                    format!(
                        "{id} up but still out (epoch {}) 90 s after the heal: out by the monitors' timer, it was not marked in when it booted",
                        map.epoch
                    ),
                );
            }
        }
    }
    let handles: Vec<_> = lock(&world.clients)
        .iter_mut()
        .map(|c| c.handle.take())
        .collect();
    for (k, c) in handles.into_iter().enumerate() {
        let Some(c) = c else { continue };
        match tokio::time::timeout(Duration::from_secs(400), c).await {
            Ok(Ok(Ok(()))) => {}
            // Killed with its host.
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Ok(Err(e))) => world.violation(kind::FAILED_OP, format!("client.{k}: {e}")),
            Ok(Err(e)) => world.violation(kind::DAEMON, format!("client.{k} task: {e}")),
            Err(_) => world.violation(
                kind::WEDGE,
                format!("client.{k}: an op never finished after the heal"),
            ),
        }
    }
    if let Err(e) = wait_clean(&world, Duration::from_secs(120)).await {
        world.violation(
            kind::NOT_CLEAN,
            format!("not every PG active+clean 120 s after the faults healed: {e}"),
        );
    }
    let clean_ms = healed.elapsed().as_millis() as u64;
    // A last read of every block through a new client, then the copies themselves.
    let node = world.node("client.final");
    let w = Arc::clone(&world);
    let last = node.spawn(async move {
        let cluster = Cluster::connect(w.mon_addrs.clone())
            .await
            .map_err(|e| e.to_string())?;
        cluster.observe(w.versions.clone());
        let image = Image::open(&cluster, POOL, IMAGE).map_err(|e| e.to_string())?;
        for block in 0..w.opts.blocks {
            let start = w.now_us();
            let data = image
                .read(block * BLOCK as u64, BLOCK as u64)
                .await
                .map_err(|e| format!("final read of block {block}: {e}"))?;
            let end = w.now_us();
            lock(&w.history).read_range(block * UNITS_PER_BLOCK, start, end, &data, "client.final");
        }
        Ok::<(), String>(())
    });
    match tokio::time::timeout(Duration::from_secs(60), last).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => world.violation(kind::FAILED_READ, e),
        Ok(Err(e)) => world.violation(kind::DAEMON, format!("final reader: {e}")),
        Err(_) => world.violation(
            kind::WEDGE,
            "the final read pass did not finish in 60 s".into(),
        ),
    }
    if let Some(map) = world.map() {
        for v in world.compare_copies(&map).await {
            world.violation(kind::COPIES_DIFFER, v);
        }
        lock(&world.report).final_epoch = map.epoch;
    }
    // Stop every node before the runtime goes.
    for m in lock(&world.mons).iter_mut() {
        if let Some(n) = m.node.take() {
            n.kill();
        }
    }
    for o in lock(&world.osds).iter_mut() {
        o.daemon = None;
        if let Some(n) = o.node.take() {
            n.kill();
        }
    }
    for c in lock(&world.clients).iter_mut() {
        if let Some(n) = c.node.take() {
            n.kill();
        }
    }
    node_kill_all(&[admin]);

    let mut history = std::mem::take(&mut *lock(&world.history));
    history.check_order();
    let mut violations = std::mem::take(&mut *lock(&world.violations));
    let (versions_checked, version_violations) = world.versions.results();
    violations.extend(history.violations.iter().cloned());
    violations.extend(version_violations);
    let mut report = lock(&world.report).clone();
    report.reads = history.reads;
    report.writes = history.writes;
    report.clean_ms = clean_ms;
    report.versions_checked = versions_checked;
    (report.segments, report.resets) = world.net.counters();
    report.digest = history.digest();
    report.exposed_writes = history.exposed;
    if violations.is_empty() {
        Ok(report)
    } else {
        let n = violations.len();
        violations.truncate(8);
        Err(format!(
            "{n} violation(s):\n  {}\n  counters: {report:?}",
            violations.join("\n  ")
        ))
    }
}

fn node_kill_all(nodes: &[Arc<Node>]) {
    for n in nodes {
        n.kill();
    }
}

async fn setup(w: &Arc<World>) -> anyhow::Result<()> {
    let mon = MonClient::new(w.mon_addrs.clone())?;
    mon.wait_for_map(Duration::from_secs(60)).await?;
    for i in 0..w.opts.osds {
        let (dev, host) = {
            let osds = lock(&w.osds);
            (Arc::clone(&osds[i].dev), osds[i].host.clone())
        };
        let id = osd::register_and_format_sized(
            &*dev as &dyn BlockDevice,
            w.mon_addrs.clone(),
            &host,
            WEIGHT_ONE,
            w.opts.store_object_size,
        )
        .await?;
        let mut osds = lock(&w.osds);
        osds[i].name = format!("osd.{}", id.0);
        osds[i].id = Some(id);
    }
    mon.command(Command::CreatePool {
        name: POOL.into(),
        size: 3,
        min_size: 2,
        pg_count: w.opts.pgs,
        object_size: w.opts.object_size,
        failure_domain: FailureDomain::Host,
    })
    .await?;
    mon.command(Command::CreateImage {
        pool: POOL.into(),
        name: IMAGE.into(),
        size_bytes: (w.opts.blocks + w.opts.filler) * BLOCK as u64,
    })
    .await?;
    Ok(())
}

/// Writes the filler blocks once (with FUA), 64 KiB at a time: data the VMs never touch
/// but recovery must move.
async fn fill(w: &Arc<World>) -> anyhow::Result<()> {
    let cluster = Cluster::connect(w.mon_addrs.clone()).await?;
    let image = Image::open(&cluster, POOL, IMAGE)?;
    const CHUNK: u64 = 16;
    let mut b = w.opts.blocks;
    let end = w.opts.blocks + w.opts.filler;
    while b < end {
        let n = CHUNK.min(end - b);
        let data: Vec<u8> = (0..n * BLOCK as u64).map(|i| (b + i / 512) as u8).collect();
        image
            .write(b * BLOCK as u64, bytes::Bytes::from(data), true)
            .await
            .map_err(|e| anyhow::anyhow!("filler block {b}: {e}"))?;
        b += n;
    }
    Ok(())
}

async fn wait_clean(w: &Arc<World>, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no OSD running");
    loop {
        if let Some(map) = w.map() {
            match w.clean(&map) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
