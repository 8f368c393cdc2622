//! The Atlant OSD.
//!
//! - `store`: the object store on a raw device or file (`store::device` is the block-device
//!   seam, `store::layout` the on-disk records);
//! - `pgs`: PG intervals, version sequences and recently completed ops;
//! - `daemon`: shared state and dispatch; `primary` and `replica`: the two roles of a write.

pub mod daemon;
pub mod heartbeat;
pub mod lease;
pub mod peering;
pub mod pgmeta;
pub mod pgs;
pub mod primary;
pub mod replica;
pub mod store;

pub use net::planted;
pub use net::sync::lock;

use anyhow::{bail, Context};
use client::MonClient;
use proto::map::WEIGHT_ONE;
use proto::{Command, CommandResult, OsdId};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use store::device::{AlignedBuf, BlockDevice, FileDevice};
use store::layout::{Superblock, BLOCK};
pub use store::Durability;
use store::Store;

pub struct MkfsConfig {
    pub device: PathBuf,
    pub mon: Vec<String>,
    pub host: String,
    /// Creates (or grows from empty) a regular file of this size.
    pub size_bytes: Option<u64>,
    /// Capacity weight in `WEIGHT_ONE` units; derived from the capacity (1.0 per TiB) if absent.
    pub weight: Option<u32>,
    /// Overwrite a device that already holds an Atlant store.
    pub force: bool,
}

/// Formats a device as a new OSD store and registers it with the monitors; returns its id.
pub async fn mkfs(cfg: MkfsConfig) -> anyhow::Result<OsdId> {
    if let Some(size) = cfg.size_bytes {
        let exists = cfg.device.exists();
        if !exists
            || std::fs::metadata(&cfg.device)
                .map(|m| m.is_file() && m.len() == 0)
                .unwrap_or(false)
        {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&cfg.device)
                .with_context(|| format!("cannot create {}", cfg.device.display()))?;
            f.set_len(size)
                .with_context(|| format!("cannot size {}", cfg.device.display()))?;
        }
    }
    let dev = FileDevice::open(&cfg.device)
        .with_context(|| format!("cannot open {}", cfg.device.display()))?;
    let (buf, r) = dev.read(0, AlignedBuf::zeroed(BLOCK)).await;
    r.with_context(|| format!("cannot read {}", cfg.device.display()))?;
    if buf.starts_with(&store::layout::SUPERBLOCK_MAGIC.to_le_bytes()) && !cfg.force {
        let who = match Superblock::decode(&buf) {
            Ok(old) => format!(
                "the store of osd.{} (cluster {})",
                old.osd_id,
                proto::uuid_hex(old.fsid)
            ),
            Err(e) => format!("an Atlant store ({e})"),
        };
        bail!(
            "{} already holds {who}; refusing to format it without --force",
            cfg.device.display()
        );
    }
    // Lays the device out first so a device too small fails before anything is registered.
    let probe = Superblock::plan(0, 0, 0, dev.size())
        .with_context(|| format!("{}", cfg.device.display()))?;
    let capacity = probe.data_blocks * BLOCK as u64;
    let weight = cfg
        .weight
        .unwrap_or(((capacity as u128 * WEIGHT_ONE as u128) >> 40).max(1) as u32);
    let id = register_and_format(&dev, cfg.mon.clone(), &cfg.host, weight)
        .await
        .with_context(|| format!("formatting {}", cfg.device.display()))?;
    Ok(id)
}

/// Registers a new OSD with the monitors and formats `dev` as its store (the simulator
/// calls this on its simulated devices); returns its id.
pub async fn register_and_format(
    dev: &dyn BlockDevice,
    mon: Vec<String>,
    host: &str,
    weight: u32,
) -> anyhow::Result<OsdId> {
    register_and_format_sized(dev, mon, host, weight, store::layout::MAX_OBJECT_SIZE).await
}

/// `register_and_format` with a smaller largest object (a power of two from one block up):
/// the simulator's way to reach, with a few thousand objects, the limits a store meets
/// with millions (a PG's metadata larger than one object).
pub async fn register_and_format_sized(
    dev: &dyn BlockDevice,
    mon: Vec<String>,
    host: &str,
    weight: u32,
    max_object_size: u32,
) -> anyhow::Result<OsdId> {
    let probe = Superblock {
        max_object_size,
        ..Superblock::plan(0, 0, 0, dev.size())?
    };
    probe.check()?;
    let capacity = probe.data_blocks * BLOCK as u64;
    let mon = MonClient::new(mon)?;
    let map = mon.get_map().await?;
    let store_uuid: u128 = net::rt::random_u128();
    let (_, result) = mon
        .command(Command::CreateOsd {
            host: host.to_string(),
            weight,
            store_uuid,
            capacity_bytes: capacity,
        })
        .await?;
    let CommandResult::Osd(id) = result else {
        bail!("monitor answered {result:?} to CreateOsd")
    };
    let sb = Superblock {
        max_object_size,
        ..Superblock::plan(map.fsid, store_uuid, id.0, dev.size())?
    };
    Store::format(dev, &sb)
        .await
        .with_context(|| format!("{id} is registered but formatting its device failed"))?;
    Ok(id)
}

/// Checks a store offline and prints the report; Ok(true) when it is clean.
pub async fn fsck(device: &std::path::Path) -> anyhow::Result<bool> {
    let dev =
        FileDevice::open(device).with_context(|| format!("cannot open {}", device.display()))?;
    let report = store::fsck::fsck(&dev).await;
    println!("{report}");
    Ok(report.ok())
}

pub struct Config {
    pub device: PathBuf,
    pub durability: Durability,
    pub mon: Vec<String>,
    /// Address to serve on (`ip:port`; port 0 picks one).
    pub addr: String,
    pub report_interval: Duration,
    /// A peer that has not answered heartbeats for this long is reported to the monitors.
    pub heartbeat_grace: Duration,
}

/// Runs the OSD until SIGTERM/SIGINT; then marks itself down and returns.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let store = Store::open_path(&cfg.device, cfg.durability).await?;
    run_on(store, cfg, shutdown_signal(), |_| {}).await
}

/// Runs the OSD on an opened store until `stop` completes; `started` sees the daemon's
/// state once it serves (the simulator inspects PGs through it).
pub async fn run_on(
    store: Arc<Store>,
    cfg: Config,
    stop: impl std::future::Future<Output = ()>,
    started: impl FnOnce(&Arc<daemon::Osd>),
) -> anyhow::Result<()> {
    let sb = store.superblock.clone();
    tracing::info!(objects = store.list(None).len(), open_ms = store.open_ms, durability = ?cfg.durability, "store opened");
    let id = OsdId(sb.osd_id);
    match net::rdma::probe(std::path::Path::new("/")) {
        net::rdma::RdmaSupport::Devices(d) => {
            tracing::info!("RDMA devices {d:?} found; verbs transport not built yet, using TCP")
        }
        net::rdma::RdmaSupport::Absent(why) => tracing::info!("no RDMA ({why}); using TCP"),
    }
    let mon = MonClient::new(cfg.mon.clone())?;
    let map = mon.wait_for_map(client::cluster::MON_WAIT).await?;
    if map.fsid != sb.fsid {
        bail!(
            "{} belongs to cluster {}, the monitors serve cluster {}",
            cfg.device.display(),
            proto::uuid_hex(sb.fsid),
            proto::uuid_hex(map.fsid)
        );
    }
    match map.osd(id) {
        None => bail!(
            "{id} (from {}) is not in the cluster map",
            cfg.device.display()
        ),
        Some(o) if o.store_uuid != sb.store_uuid => bail!(
            "{} holds store {} but the map records store {} for {id}; this is not {id}'s device",
            cfg.device.display(),
            proto::uuid_hex(sb.store_uuid),
            proto::uuid_hex(o.store_uuid)
        ),
        Some(_) => {}
    }
    let sender = mon.subscribe(map);
    let batcher = peering::Batcher::spawn(Arc::clone(&mon));
    let osd = daemon::Osd::new(id, Arc::clone(&store), sender.subscribe(), batcher);
    // Keeps the PG table in step with every map.
    {
        let osd = Arc::clone(&osd);
        let mut rx = sender.subscribe();
        net::rt::spawn(async move {
            loop {
                let m = rx.borrow_and_update().clone();
                osd.apply_map(&m);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let listener = net::transport::Listener::bind(&cfg.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    {
        let osd = Arc::clone(&osd);
        net::rt::spawn(net::transport::serve(listener, move |f, r| {
            daemon::handle(Arc::clone(&osd), f, r)
        }));
    }
    // A new value per process: the monitors tell a restart (up at once) from a running
    // process that was marked down (damped if it keeps happening).
    let process: u64 = net::rt::random_u64();
    let (epoch, _) = mon
        .command(Command::BootOsd {
            id,
            store_uuid: sb.store_uuid,
            addr: addr.clone(),
            process,
        })
        .await?;
    osd.up_from.store(epoch, Ordering::SeqCst);
    let mut rx = sender.subscribe();
    let _ = rx.wait_for(|m| m.epoch >= epoch).await;
    osd.apply_map(&sender.borrow().clone());
    tracing::info!(%id, %addr, up_from = epoch, objects = store.list(None).len(), "OSD serving");
    started(&osd);
    // Usage reports: every interval, and at once when the usage crosses a ratio, so the
    // monitor marks a filling OSD full before its device overflows.
    {
        let (mon, store, map_rx) = (Arc::clone(&mon), Arc::clone(&store), sender.subscribe());
        let osd_for_reports = Arc::clone(&osd);
        let interval = cfg.report_interval;
        net::rt::spawn(async move {
            let mut last_sent = tokio::time::Instant::now() - interval;
            let mut last_class = None;
            let mut last_pgs = Vec::new();
            loop {
                let stats = store.stats();
                let class = map_rx
                    .borrow()
                    .ratios
                    .classify(stats.used_bytes, stats.capacity_bytes);
                let pgs = osd_for_reports.primary_stats();
                // PG changes are reported at once (within 50 ms), time in phase aside.
                let summary: Vec<_> = pgs
                    .iter()
                    .map(|p| (p.pg, p.phase, p.interval_start, p.degraded, p.recovering))
                    .collect();
                if last_sent.elapsed() >= interval
                    || last_class != Some(class)
                    || summary != last_pgs
                {
                    let req = proto::msg::ControlRequest::OsdReport {
                        id,
                        up_from: osd_for_reports.up_from.load(Ordering::SeqCst),
                        stats,
                        pgs,
                    };
                    match mon.call(&req).await {
                        Ok(_) => {
                            last_class = Some(class);
                            last_pgs = summary;
                        }
                        Err(e) => tracing::debug!("usage report failed: {e}"),
                    }
                    last_sent = tokio::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    // Wrongly marked down (the monitors missed our reports while we were stalled or cut
    // off), or our id booted after us by another process (a boot request of a process that
    // died before it committed: it names that process's address, where nothing listens):
    // register a new incarnation and serve again. The device lock guarantees no other
    // process runs on this store, so a later boot by another process is always stale.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (osd, mon, store, stopping) = (
            Arc::clone(&osd),
            Arc::clone(&mon),
            Arc::clone(&store),
            Arc::clone(&stopping),
        );
        let mut rx = sender.subscribe();
        let store_uuid = sb.store_uuid;
        let addr = addr.clone();
        net::rt::spawn(async move {
            while rx.changed().await.is_ok() {
                let current = osd.up_from.load(Ordering::SeqCst);
                let (marked_down, taken) = match rx.borrow_and_update().osd(id) {
                    Some(o) => (
                        !o.up && o.up_from == current,
                        o.up_from > current
                            && o.process != process
                            && !crate::planted::active(crate::planted::Bug::IgnoreLaterBoot),
                    ),
                    None => (false, false),
                };
                if !(marked_down || taken)
                    || stopping.load(Ordering::SeqCst)
                    || store.failure().is_some()
                {
                    continue;
                }
                if taken {
                    tracing::warn!(%id, up_from = current, "the map shows a later boot of this OSD by another (dead) process: registering again");
                } else {
                    tracing::warn!(%id, up_from = current, "the map marks this running OSD down: registering again");
                }
                // Retry until the monitors take it: they hold a flapping OSD down for a while.
                loop {
                    if stopping.load(Ordering::SeqCst) || store.failure().is_some() {
                        break;
                    }
                    match mon
                        .command(Command::BootOsd {
                            id,
                            store_uuid,
                            addr: addr.clone(),
                            process,
                        })
                        .await
                    {
                        Ok((epoch, _)) => {
                            osd.up_from.store(epoch, Ordering::SeqCst);
                            osd.apply_map(&rx.borrow().clone());
                            tracing::info!(%id, up_from = epoch, "serving again");
                            break;
                        }
                        Err(e) => tracing::warn!(%id, "could not register again: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    peering::spawn_stray_cleanup(Arc::clone(&osd));
    heartbeat::spawn(
        id,
        Arc::clone(&osd),
        Arc::clone(&mon),
        sender.subscribe(),
        cfg.heartbeat_grace,
    );
    // A failing device stops the OSD: the monitors mark it down and out at once.
    let failed = {
        let store = Arc::clone(&store);
        async move {
            loop {
                if let Some(why) = store.failure() {
                    return why;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let reason = tokio::select! {
        biased;
        _ = stop => None,
        why = failed => Some(why),
    };
    stopping.store(true, Ordering::SeqCst);
    let epoch = osd.up_from.load(Ordering::SeqCst);
    if let Some(reason) = reason {
        tracing::error!(%id, "device failed: {reason}; marking this OSD down and out and stopping");
        let cmd = mon.command(Command::MarkOsdFailed {
            id,
            up_from: epoch,
            reason: reason.clone(),
        });
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), cmd)
            .await
            .unwrap_or(Err(client::MonError::NoAddress))
        {
            tracing::warn!("could not report the failure: {e}");
        }
        bail!("{id} stopped: device failed: {reason}");
    }
    tracing::info!(%id, "stopping: marking this incarnation down");
    let down = mon.command(Command::MarkOsdDown { id, up_from: epoch });
    if let Err(e) = tokio::time::timeout(Duration::from_secs(3), down)
        .await
        .unwrap_or(Err(client::MonError::NoAddress))
    {
        tracing::warn!("could not mark down: {e}");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}
