use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Atlant monitor daemon.
#[derive(Parser)]
#[command(name = "atlant-mon", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates a monitor store for a new cluster.
    Mkfs {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// Address to serve on, ip:port.
        #[arg(long)]
        addr: String,
        /// Cluster id as 32 hex digits (random if absent).
        #[arg(long)]
        fsid: Option<String>,
    },
    /// Runs the monitor on an existing store.
    Run {
        #[arg(long)]
        data: PathBuf,
        /// Seconds without a report after which an OSD is marked down.
        #[arg(long, default_value_t = 8.0)]
        osd_grace_secs: f64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Mkfs {
            data,
            name,
            addr,
            fsid,
        } => {
            let fsid = match fsid {
                Some(s) => Some(
                    u128::from_str_radix(&s, 16)
                        .map_err(|e| anyhow::anyhow!("--fsid {s:?}: {e}"))?,
                ),
                None => None,
            };
            let fsid = mon::mkfs(&mon::MkfsConfig {
                data,
                name,
                addr,
                fsid,
            })?;
            println!("{}", proto::uuid_hex(fsid));
            Ok(())
        }
        Cmd::Run {
            data,
            osd_grace_secs,
        } => {
            anyhow::ensure!(
                osd_grace_secs > 0.0 && osd_grace_secs < 3600.0,
                "--osd-grace-secs must be in (0, 3600)"
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let osd_grace = std::time::Duration::from_secs_f64(osd_grace_secs);
            rt.block_on(mon::run(mon::Config { data, osd_grace }))
        }
    }
}
