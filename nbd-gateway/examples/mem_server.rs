//! Serves an in-memory export over NBD, so the gateway's protocol layer can be checked on its
//! own (for example with `shared/tools/nbd-conformance`).
//!
//! ```text
//! cargo run --release -p atlant-nbd-gateway --example mem_server -- \
//!     --tcp 127.0.0.1:10900 --unix /tmp/atlant-nbd.sock --export rbd/vm1 --size 1G
//! nbd-conformance nbd://127.0.0.1:10900/rbd/vm1
//! ```

use clap::Parser;
use nbd_gateway::mem::MemProvider;
use nbd_gateway::{serve_tcp, serve_unix, Exports, ServerConfig};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "Serve in-memory NBD exports (for testing the gateway)")]
struct Args {
    /// TCP address to listen on, e.g. 127.0.0.1:10900.
    #[arg(long)]
    tcp: Option<String>,
    /// Unix socket path to listen on (removed first if it exists).
    #[arg(long)]
    unix: Option<std::path::PathBuf>,
    /// Export name(s), `pool/image`; each gets its own memory of --size bytes.
    #[arg(long = "export", default_value = "rbd/vm1")]
    exports: Vec<String>,
    /// Export size: bytes, or with a K/M/G/T suffix (powers of 1024).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Serve the exports read-only.
    #[arg(long)]
    read_only: bool,
    /// Do not advertise NBD_FLAG_SEND_FAST_ZERO.
    #[arg(long)]
    no_fast_zero: bool,
}

fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, shift) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 10),
        Some('M') => (&text[..text.len() - 1], 20),
        Some('G') => (&text[..text.len() - 1], 30),
        Some('T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.parse()?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| anyhow::anyhow!("size {text} overflows"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.tcp.is_none() && args.unix.is_none() {
        anyhow::bail!("give --tcp ADDR and/or --unix PATH");
    }
    let size = parse_size(&args.size)?;
    let mut provider = MemProvider::new();
    for name in &args.exports {
        provider = provider.with_export(name, size);
    }
    let config = ServerConfig {
        read_only: args.read_only,
        fast_zero: !args.no_fast_zero,
        ..ServerConfig::default()
    };
    let exports = Arc::new(Exports::new(provider, config));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = &args.tcp {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "listening on TCP");
        tasks.spawn(serve_tcp(listener, exports.clone()));
    }
    if let Some(path) = &args.unix {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        tracing::info!(path = %path.display(), "listening on unix socket");
        tasks.spawn(serve_unix(listener, exports.clone()));
    }
    tokio::select! {
        _ = tasks.join_next() => anyhow::bail!("a listener stopped"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("interrupted"); Ok(()) }
    }
}
