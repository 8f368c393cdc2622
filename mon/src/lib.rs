//! The Atlant monitor.
//!
//! - `store`: the durable map store (redb), checked at start;
//! - `service`: the map state machine driver: apply, persist, publish;
//! - `server`: the network front (control requests, subscriptions).
//!
//! One monitor for now; the quorum issue makes it a Raft group driving the same service.

pub mod server;
pub mod service;
pub mod store;

use anyhow::Context;
use proto::map::MonInfo;
use proto::ClusterMap;
use std::path::PathBuf;
use std::sync::Arc;
use store::{Identity, MonStore};

pub struct MkfsConfig {
    pub data: PathBuf,
    pub name: String,
    pub addr: String,
    pub fsid: Option<u128>,
}

/// Creates a monitor store holding the first map of a new cluster.
pub fn mkfs(cfg: &MkfsConfig) -> anyhow::Result<u128> {
    proto::map::check_name("monitor", &cfg.name).map_err(anyhow::Error::msg)?;
    cfg.addr
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("monitor address {:?} is not ip:port", cfg.addr))?;
    let fsid = cfg.fsid.unwrap_or_else(rand::random);
    let id = Identity {
        name: cfg.name.clone(),
        addr: cfg.addr.clone(),
        fsid,
    };
    let map = ClusterMap::new(
        fsid,
        vec![MonInfo {
            name: cfg.name.clone(),
            addr: cfg.addr.clone(),
        }],
    );
    MonStore::create(&cfg.data, &id, &map)?;
    Ok(fsid)
}

pub struct Config {
    pub data: PathBuf,
    /// An OSD that has not reported for this long is marked down.
    pub osd_grace: std::time::Duration,
}

/// Runs the monitor until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let (store, id, map) = MonStore::open(&cfg.data)?;
    tracing::info!(name = %id.name, addr = %id.addr, epoch = map.epoch, fsid = %proto::uuid_hex(id.fsid), "monitor starting");
    let listener = tokio::net::TcpListener::bind(&id.addr)
        .await
        .with_context(|| format!("cannot listen on {}", id.addr))?;
    let svc = service::MapService::new(id.name.clone(), id.addr.clone(), store, map);
    {
        let svc = Arc::clone(&svc);
        let grace = cfg.osd_grace;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                svc.expire_leases(grace);
            }
        });
    }
    net::transport::serve(listener, move |f, r| server::handle(Arc::clone(&svc), f, r)).await;
    Ok(())
}
