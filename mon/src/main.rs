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
    /// Creates a monitor store, for a new cluster or to join an existing one.
    Mkfs {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// Address to serve on, ip:port.
        #[arg(long)]
        addr: String,
        /// Cluster id as 32 hex digits (random for a new cluster; required with --join).
        #[arg(long)]
        fsid: Option<String>,
        /// The monitors of a new cluster, `name=ip:port,...`, this one included (every
        /// initial monitor gets the same list). Without it, a one-monitor cluster.
        #[arg(long, conflicts_with = "join")]
        initial: Option<String>,
        /// Create a monitor that joins an existing cluster (then `atlant mon add`).
        #[arg(long)]
        join: bool,
    },
    /// Runs the monitor on an existing store.
    Run {
        #[arg(long)]
        data: PathBuf,
        /// Seconds without a report after which an OSD is marked down.
        #[arg(long, default_value_t = 8.0)]
        osd_grace_secs: f64,
        /// Seconds after which a down OSD is marked out (unless the noout flag is set).
        #[arg(long, default_value_t = 600.0)]
        down_out_interval_secs: f64,
        /// Distinct OSDs that must report a peer dead before it is marked down.
        #[arg(long, default_value_t = 2)]
        min_down_reporters: usize,
    },
}

fn secs(name: &str, v: f64, max: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(v > 0.0 && v < max, "--{name} must be in (0, {max})");
    Ok(std::time::Duration::from_secs_f64(v))
}

fn main() -> anyhow::Result<()> {
    net::sync::abort_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Mkfs {
            data,
            name,
            addr,
            fsid,
            initial,
            join,
        } => {
            let fsid = match fsid {
                Some(s) => Some(
                    u128::from_str_radix(&s, 16)
                        .map_err(|e| anyhow::anyhow!("--fsid {s:?}: {e}"))?,
                ),
                None => None,
            };
            let initial = match (initial, join) {
                (_, true) => Vec::new(),
                (Some(s), false) => mon::parse_initial(&s)?,
                (None, false) => vec![proto::map::MonInfo {
                    name: name.clone(),
                    addr: addr.clone(),
                }],
            };
            let fsid = mon::mkfs(&mon::MkfsConfig {
                data,
                name,
                addr,
                fsid,
                initial,
            })?;
            println!("{}", proto::uuid_hex(fsid));
            Ok(())
        }
        Cmd::Run {
            data,
            osd_grace_secs,
            down_out_interval_secs,
            min_down_reporters,
        } => {
            anyhow::ensure!(
                min_down_reporters >= 1,
                "--min-down-reporters must be at least 1"
            );
            let policy = mon::service::Policy {
                osd_grace: secs("osd-grace-secs", osd_grace_secs, 3600.0)?,
                down_out_interval: secs("down-out-interval-secs", down_out_interval_secs, 1e7)?,
                min_down_reporters,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(mon::run(mon::Config { data, policy }))
        }
    }
}
