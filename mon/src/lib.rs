//! The Atlant monitor: one member of the Raft group that keeps the cluster map.
//!
//! - `raft`: openraft types, runtime and network seam;
//! - `log`: the durable log, vote, applied map and snapshots (redb, or memory in the simulator);
//! - `service`: commands through the log, reads from the applied map, the OSD liveness policy;
//! - `server`: the network front (control requests, Raft RPCs, map subscriptions);
//! - `sim`: a deterministic simulation of a monitor group (tests).

pub mod log;
pub mod raft;
pub mod server;
pub mod service;
pub mod sim;
pub mod store;

use anyhow::Context;
use futures::future::BoxFuture;
use net::ConnCache;
use proto::map::MonInfo;
use proto::msg::{decode_control, encode_control, msg_type};
use raft::{MonNode, NodeId, RaftReply, RaftRpc, RaftTransport};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Identity;

pub struct MkfsConfig {
    pub data: PathBuf,
    pub name: String,
    pub addr: String,
    pub fsid: Option<u128>,
    /// The monitors of a new cluster (this one among them); empty to join an existing group.
    pub initial: Vec<MonInfo>,
}

/// Creates a monitor store: for a new cluster (with the initial monitor list), or to join
/// an existing one (`initial` empty; `fsid` required).
pub fn mkfs(cfg: &MkfsConfig) -> anyhow::Result<u128> {
    proto::map::check_name("monitor", &cfg.name).map_err(anyhow::Error::msg)?;
    cfg.addr
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("monitor address {:?} is not ip:port", cfg.addr))?;
    if cfg.initial.is_empty() {
        anyhow::ensure!(
            cfg.fsid.is_some(),
            "a monitor joining an existing cluster needs its --fsid"
        );
    } else {
        anyhow::ensure!(
            cfg.initial
                .iter()
                .any(|m| m.name == cfg.name && m.addr == cfg.addr),
            "the initial monitors {} do not include this one ({}={})",
            cfg.initial
                .iter()
                .map(|m| format!("{}={}", m.name, m.addr))
                .collect::<Vec<_>>()
                .join(","),
            cfg.name,
            cfg.addr
        );
        let mut ids = std::collections::BTreeSet::new();
        for m in &cfg.initial {
            proto::map::check_name("monitor", &m.name).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                ids.insert(raft::node_id(&m.name)),
                "monitor {:?} listed twice",
                m.name
            );
        }
    }
    let fsid = cfg.fsid.unwrap_or_else(rand::random);
    let id = Identity {
        name: cfg.name.clone(),
        addr: cfg.addr.clone(),
        fsid,
        initial: cfg.initial.clone(),
    };
    let disk = log::RedbDisk::create(&cfg.data).map_err(anyhow::Error::msg)?;
    log::format(&disk, &id).map_err(anyhow::Error::msg)?;
    Ok(fsid)
}

/// Parses `a=127.0.0.1:6789,b=...`.
pub fn parse_initial(s: &str) -> anyhow::Result<Vec<MonInfo>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (name, addr) = p
                .trim()
                .split_once('=')
                .with_context(|| format!("{p:?} is not name=ip:port"))?;
            Ok(MonInfo {
                name: name.into(),
                addr: addr.into(),
            })
        })
        .collect()
}

pub struct Config {
    pub data: PathBuf,
    pub policy: service::Policy,
}

/// Raft RPCs over the monitors' connections (TCP, or the simulated network inside the
/// whole-cluster simulator).
#[derive(Default)]
pub struct TcpRaftTransport {
    conns: Arc<ConnCache<u64>>,
}

impl RaftTransport for TcpRaftTransport {
    fn call(
        &self,
        target: NodeId,
        node: &MonNode,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftReply, String>> {
        let conns = Arc::clone(&self.conns);
        let addr = node.addr.clone();
        let req = encode_control(&rpc);
        Box::pin(async move {
            let c = tokio::time::timeout(timeout, conns.get(target, &addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))?
                .map_err(|e| e.to_string())?;
            let f = c
                .call(msg_type::RAFT, req, bytes::Bytes::new(), timeout)
                .await
                .map_err(|e| e.to_string())?;
            decode_control(&f.meta).map_err(|e| e.to_string())
        })
    }
}

/// Opens the store, starts Raft (forming the group on first start) and the service.
pub async fn start(
    disk: Arc<dyn log::Disk>,
    transport: Arc<dyn RaftTransport>,
    policy: service::Policy,
) -> anyhow::Result<Arc<service::MapService>> {
    start_with(disk, transport, policy, raft::SNAPSHOT_EVERY).await
}

/// [`start`] with a snapshot every `snapshot_every` log entries (the simulator snapshots
/// more often).
pub async fn start_with(
    disk: Arc<dyn log::Disk>,
    transport: Arc<dyn RaftTransport>,
    policy: service::Policy,
    snapshot_every: u64,
) -> anyhow::Result<Arc<service::MapService>> {
    let opened = log::open(disk).map_err(anyhow::Error::msg)?;
    let id = opened.identity.clone();
    let (node, me) = log::node_of(&id);
    let logstore = log::MonLog::new(&opened);
    let (sm, published) = log::MonStateMachine::new(&opened);
    let config = raft::config_with(&proto::uuid_hex(id.fsid), snapshot_every);
    let config = Arc::new(config.validate().context("raft configuration")?);
    let raft = raft::Raft::new(node, config, raft::Network { transport }, logstore, sm)
        .await
        .context("starting raft")?;
    if !id.initial.is_empty() && !raft.is_initialized().await.unwrap_or(true) {
        let members: BTreeMap<NodeId, MonNode> = id
            .initial
            .iter()
            .map(|m| {
                (
                    raft::node_id(&m.name),
                    MonNode {
                        name: m.name.clone(),
                        addr: m.addr.clone(),
                    },
                )
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {}
            // Another initial monitor formed the group first: expected.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => anyhow::bail!("forming the monitor group: {e}"),
        }
    }
    tracing::info!(name = %id.name, addr = %id.addr, node, epoch = published.map().epoch, fsid = %proto::uuid_hex(id.fsid), "monitor starting");
    Ok(service::MapService::new(node, &me, raft, published, policy))
}

/// Runs the monitor until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let disk = log::RedbDisk::open(&cfg.data).map_err(anyhow::Error::msg)?;
    let svc = start(
        Arc::new(disk),
        Arc::new(TcpRaftTransport::default()),
        cfg.policy,
    )
    .await?;
    serve(svc).await
}

/// Serves a started monitor: its ticks, its probes of the other monitors, and its
/// clients, until the task is dropped.
pub async fn serve(svc: Arc<service::MapService>) -> anyhow::Result<()> {
    let listener = net::transport::Listener::bind(&svc.addr)
        .await
        .with_context(|| format!("cannot listen on {}", svc.addr))?;
    {
        let svc = Arc::clone(&svc);
        net::rt::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                svc.tick().await;
            }
        });
    }
    {
        let svc = Arc::clone(&svc);
        net::rt::spawn(async move {
            loop {
                svc.probe_mons().await;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        });
    }
    net::transport::serve(listener, move |f, r| server::handle(Arc::clone(&svc), f, r)).await;
    Ok(())
}
