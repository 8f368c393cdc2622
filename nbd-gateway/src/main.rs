//! `atlant-nbd`: serves the cluster's images over NBD (export name `pool/image`) on a TCP
//! address and/or a unix socket.

use anyhow::Context;
use clap::Parser;
use nbd_gateway::{serve_tcp, serve_unix, Exports, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "atlant-nbd", version, about = "Atlant NBD gateway")]
struct Args {
    /// Monitor addresses, comma separated.
    #[arg(long, env = "ATLANT_MON")]
    mon: String,
    /// TCP address to listen on, ip:port.
    #[arg(long)]
    listen: Option<String>,
    /// Unix socket path to listen on.
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    net::sync::abort_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if args.listen.is_none() && args.socket.is_none() {
        anyhow::bail!("give --listen ADDR and/or --socket PATH");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cluster = client::Cluster::connect(client::parse_addrs(&args.mon)).await?;
        let exports = Arc::new(Exports::new(
            nbd_gateway::cluster::ClusterProvider { cluster },
            ServerConfig::default(),
        ));
        let mut tasks = Vec::new();
        if let Some(addr) = &args.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!("serving NBD on {addr}");
            tasks.push(tokio::spawn(serve_tcp(l, Arc::clone(&exports))));
        }
        if let Some(path) = &args.socket {
            // A socket left by a previous run would make bind fail.
            if path.exists() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            tracing::info!("serving NBD on {}", path.display());
            tasks.push(tokio::spawn(serve_unix(l, Arc::clone(&exports))));
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping");
        if let Some(path) = &args.socket {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
}
