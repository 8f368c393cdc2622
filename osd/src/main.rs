use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Atlant OSD daemon.
#[derive(Parser)]
#[command(name = "atlant-osd", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Formats a device (or file) as a new OSD store and registers it; prints the OSD id.
    Mkfs {
        #[arg(long)]
        device: PathBuf,
        /// Monitor addresses, comma separated.
        #[arg(long, env = "ATLANT_MON")]
        mon: String,
        /// Failure-domain host of this OSD.
        #[arg(long)]
        host: String,
        /// Create a file of this size (e.g. 4G) if the device does not exist.
        #[arg(long)]
        size: Option<String>,
        /// Capacity weight (1.0 = 1 TiB); from the capacity if absent.
        #[arg(long)]
        weight: Option<f64>,
        /// Destroy an existing Atlant store on the device.
        #[arg(long)]
        force: bool,
    },
    /// Runs the OSD on a formatted device.
    Run {
        #[arg(long)]
        device: PathBuf,
        #[arg(long, env = "ATLANT_MON")]
        mon: String,
        /// Address to serve on, ip:port.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: String,
        /// `immediate`: a completed write is durable; `lazy`: durable at the next flush.
        #[arg(long, default_value = "immediate")]
        durability: osd::Durability,
        /// Seconds a peer may leave heartbeats unanswered before it is reported dead.
        #[arg(long, default_value_t = 6.0, value_parser = grace_secs)]
        heartbeat_grace_secs: f64,
    },
    /// Checks a store offline: every checksum and index invariant. Exits 1 on errors.
    Fsck {
        #[arg(long)]
        device: PathBuf,
    },
}

fn grace_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v > 0.0 && v < 3600.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 3600)"))
    }
}

fn main() -> anyhow::Result<()> {
    net::sync::abort_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match Cli::parse().cmd {
        Cmd::Mkfs {
            device,
            mon,
            host,
            size,
            weight,
            force,
        } => {
            let size_bytes = size
                .map(|s| proto::map::parse_size(&s))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let weight = match weight {
                Some(w) if !(w > 0.0 && w < 65536.0) => {
                    anyhow::bail!("--weight {w} must be in (0, 65536)")
                }
                Some(w) => Some((w * proto::map::WEIGHT_ONE as f64).round().max(1.0) as u32),
                None => None,
            };
            let cfg = osd::MkfsConfig {
                device,
                mon: client::parse_addrs(&mon),
                host,
                size_bytes,
                weight,
                force,
            };
            let id = rt.block_on(osd::mkfs(cfg))?;
            println!("{}", id.0);
            Ok(())
        }
        Cmd::Fsck { device } => {
            if !rt.block_on(osd::fsck(&device))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Run {
            device,
            mon,
            addr,
            durability,
            heartbeat_grace_secs,
        } => rt.block_on(osd::run(osd::Config {
            device,
            durability,
            mon: client::parse_addrs(&mon),
            addr,
            report_interval: Duration::from_secs(1),
            heartbeat_grace: Duration::from_secs_f64(heartbeat_grace_secs),
        })),
    }
}
