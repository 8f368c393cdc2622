//! `atlant`: the admin CLI. Human tables by default, `--format json` for scripts; errors
//! say what was wrong and exit non-zero. Monitors are found from `--mon`, else `ATLANT_MON`,
//! else the config file (`--conf`, default `/etc/atlant/atlant.toml`, key `mon`).

mod bench;
mod dev;
mod pgs;
mod status;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use client::{Cluster, MonClient};
use proto::map::{parse_size, FailureDomain};
use proto::msg::{
    decode_control, encode_control, msg_type, ControlRequest, ControlResponse, ObjectEntry,
};
use proto::pg::pg_mapping;
use proto::placement::object_pg;
use proto::{Command, CommandResult, ObjectId, OsdId, Version};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "atlant",
    version,
    about = "Atlant distributed block storage: admin CLI"
)]
struct Cli {
    /// Monitor addresses (ip:port[,ip:port...]).
    #[arg(long, global = true)]
    mon: Option<String>,
    /// Config file with `mon = "ip:port,..."`.
    #[arg(long, global = true)]
    conf: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    format: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster health, epoch, monitors, OSDs, PGs, pools, images and capacity.
    Status,
    /// The monitor group.
    #[command(subcommand)]
    Mon(MonCmd),
    #[command(subcommand)]
    Osd(OsdCmd),
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Placement groups: state, members, recovery.
    #[command(subcommand)]
    Pg(PgCmd),
    #[command(subcommand)]
    Image(ImageCmd),
    /// Local development cluster (real processes under one directory).
    #[command(subcommand)]
    Dev(DevCmd),
    /// Checks and listings for debugging.
    #[command(subcommand)]
    Debug(DebugCmd),
    /// Load on an image through the client library (no NBD hop): IOPS and latency.
    Bench {
        /// POOL/IMAGE (written to when --write).
        spec: String,
        #[arg(long)]
        write: bool,
        /// Block size: 4K random, or 1M sequential with --sequential.
        #[arg(long, default_value = "4K")]
        bs: String,
        #[arg(long)]
        sequential: bool,
        #[arg(long, default_value_t = 1)]
        depth: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes of the image to spread the IO over.
        #[arg(long, default_value = "1G")]
        region: String,
    },
}

#[derive(Subcommand)]
enum PgCmd {
    /// Lists PGs with state, placement, acting set, objects degraded/misplaced, blocked
    /// ops, and why IO to a PG waits.
    Ls {
        /// Only PGs whose state contains this (active, clean, degraded, recovering,
        /// remapped, peering, incomplete, down, undersized).
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Subcommand)]
enum MonCmd {
    /// Lists the monitors, with quorum membership and the leader.
    Ls,
    /// Adds a monitor to the group. Create and start it first:
    /// `atlant-mon mkfs --join --fsid FSID --name NAME --addr ADDR --data DIR` and
    /// `atlant-mon run --data DIR`.
    Add { name: String, addr: String },
    /// Removes a monitor from the group (stop its process afterwards).
    Rm { name: String },
}

#[derive(Subcommand)]
enum OsdCmd {
    /// Lists OSDs.
    Ls,
    /// Marks OSDs out: their data moves to the others.
    Out {
        ids: Vec<u32>,
    },
    /// Marks OSDs in again.
    In {
        ids: Vec<u32>,
    },
    /// Sets an OSD's placement weight (1.0 = 1 TiB by convention).
    Reweight {
        id: u32,
        weight: f64,
    },
    /// Removes OSDs that are down and out from the map.
    Rm {
        ids: Vec<u32>,
    },
    /// Sets a cluster flag: noout (down OSDs are never marked out), nodown.
    Set {
        flag: proto::map::ClusterFlag,
    },
    Unset {
        flag: proto::map::ClusterFlag,
    },
    /// The placement hierarchy: root → host → osd, with weights.
    Tree,
    /// Declares a down OSD's data lost: PGs waiting for it (incomplete) go on with what the
    /// other OSDs hold. Writes only that OSD held are lost. Lists the PGs concerned, and
    /// does it only with --yes-i-really-mean-it.
    Lost {
        id: u32,
        #[arg(long)]
        yes_i_really_mean_it: bool,
    },
    /// Removes a dead OSD for good (declared lost, then removed from the map), so its
    /// device can be replaced: `atlant osd create` on the new device.
    Destroy {
        id: u32,
        #[arg(long)]
        yes_i_really_mean_it: bool,
    },
    /// Formats a device as a new OSD store and registers it (runs `atlant-osd mkfs`).
    Create {
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        host: String,
        /// Create a file of this size if the device does not exist.
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        weight: Option<f64>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PoolCmd {
    Create {
        name: String,
        #[arg(long, default_value_t = 3)]
        size: u8,
        #[arg(long, default_value_t = 2)]
        min_size: u8,
        #[arg(long, default_value_t = 64)]
        pg_count: u32,
        #[arg(long, default_value = "128K")]
        object_size: String,
        #[arg(long, default_value = "host")]
        failure_domain: FailureDomain,
    },
    Ls,
    /// Changes a pool setting: `min_size N`.
    Set {
        name: String,
        key: String,
        value: String,
    },
    /// Removes a pool that holds no images.
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Creates POOL/NAME.
    Create {
        spec: String,
        #[arg(long)]
        size: String,
    },
    /// Lists images (of one pool if given).
    Ls {
        pool: Option<String>,
    },
    Info {
        spec: String,
    },
    Resize {
        spec: String,
        #[arg(long)]
        size: String,
    },
    /// Removes an image and frees its data.
    Rm {
        spec: String,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Starts (or restarts with its data) a local cluster and writes DIR/cluster.env.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Monitors in the group (odd: 3 survives one failure).
        #[arg(long, default_value_t = 3)]
        mons: u32,
        #[arg(long, default_value_t = 3)]
        osds: u32,
        #[arg(long, default_value = "4G")]
        osd_size: String,
        #[arg(long)]
        nbd_port: Option<u16>,
        #[arg(long, default_value_t = 64)]
        pg_count: u32,
        #[arg(long, default_value = "2G")]
        image_size: String,
        /// Do not create pool `rbd` and image `vm1`.
        #[arg(long)]
        no_image: bool,
        /// Seconds without a report before the monitor marks an OSD down (monitor default if absent).
        #[arg(long)]
        osd_grace_secs: Option<f64>,
        /// Seconds a down OSD stays in before it is marked out (monitor default if absent).
        #[arg(long)]
        down_out_interval_secs: Option<f64>,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Stops every process of the cluster (data is kept).
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Starts one daemon (mon.a, osd.N, nbd) of the cluster in the background.
    Start {
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
    /// Stops one daemon of the cluster.
    Stop {
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Lists every object on every up OSD and checks that each has exactly the pool's size
    /// copies, on the OSDs placement names, all at one version. Exits 1 if not.
    CheckReplicas {
        #[arg(long)]
        pool: Option<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn mon_addrs(cli: &Cli) -> anyhow::Result<Vec<String>> {
    if let Some(m) = &cli.mon {
        return Ok(client::parse_addrs(m));
    }
    if let Ok(m) = std::env::var("ATLANT_MON") {
        if !m.trim().is_empty() {
            return Ok(client::parse_addrs(&m));
        }
    }
    let path = cli
        .conf
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/atlant/atlant.toml"));
    let raw = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no monitors given: use --mon, ATLANT_MON, or a config file ({} unreadable)",
            path.display()
        )
    })?;
    #[derive(serde::Deserialize)]
    struct Conf {
        mon: String,
    }
    let conf: Conf = toml::from_str(&raw)
        .with_context(|| format!("{}: expected `mon = \"ip:port,...\"`", path.display()))?;
    Ok(client::parse_addrs(&conf.mon))
}

fn split_spec(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once('/') {
        Some((p, i)) if !p.is_empty() && !i.is_empty() && !i.contains('/') => {
            Ok((p.into(), i.into()))
        }
        _ => bail!("image {spec:?} must be given as POOL/NAME"),
    }
}

fn size_arg(s: &str) -> anyhow::Result<u64> {
    parse_size(s).map_err(anyhow::Error::msg)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let json_out = cli.format == Format::Json;
    match &cli.cmd {
        Cmd::Dev(d) => return dev_cmd(d, json_out).await,
        Cmd::Osd(OsdCmd::Create {
            device,
            host,
            size,
            weight,
            force,
        }) => {
            let exe = std::env::current_exe()?
                .parent()
                .map(|p| p.join("atlant-osd"))
                .context("no binary dir")?;
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["mkfs", "--device"]).arg(device).args([
                "--mon",
                &mon_addrs(&cli)?.join(","),
                "--host",
                host,
            ]);
            if let Some(s) = size {
                cmd.args(["--size", s]);
            }
            if let Some(w) = weight {
                cmd.args(["--weight", &w.to_string()]);
            }
            if *force {
                cmd.arg("--force");
            }
            let status = cmd.status().context("cannot run atlant-osd")?;
            return Ok(status.code().unwrap_or(1));
        }
        _ => {}
    }
    let mon = MonClient::new(mon_addrs(&cli)?)?;
    match cli.cmd {
        Cmd::Status => {
            let ControlResponse::Status(r) = mon.call(&ControlRequest::GetStatus).await? else {
                bail!("monitor sent no status")
            };
            let v = status::status_json(&r);
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                status::print_human(&v);
            }
        }
        Cmd::Pg(PgCmd::Ls { ref state }) => {
            let ControlResponse::Status(r) = mon.call(&ControlRequest::GetStatus).await? else {
                bail!("monitor sent no status")
            };
            let rows = pgs::rows(&r);
            if json_out {
                let v: Vec<_> = rows
                    .iter()
                    .filter(|row| pgs::matches_state(row, state.as_deref()))
                    .map(pgs::row_json)
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                pgs::print_table(&rows, state.as_deref());
            }
        }
        Cmd::Osd(OsdCmd::Lost {
            id,
            yes_i_really_mean_it,
        })
        | Cmd::Osd(OsdCmd::Destroy {
            id,
            yes_i_really_mean_it,
        }) => {
            let destroy = matches!(cli.cmd, Cmd::Osd(OsdCmd::Destroy { .. }));
            let osd = OsdId(id);
            let map = mon.get_map().await?;
            let Some(info) = map.osd(osd) else {
                bail!("{osd} does not exist")
            };
            if info.up {
                bail!("{osd} is up: stop it first (only a down OSD can be declared lost)");
            }
            let concerned: Vec<String> = map
                .pg_history
                .iter()
                .filter(|(_, h)| h.iter().any(|i| i.members.iter().any(|m| m.osd == osd)))
                .map(|(pg, _)| pg.to_string())
                .collect();
            if !yes_i_really_mean_it {
                eprintln!(
                    "{osd} is a witness of {} pg(s) that are not clean: {}",
                    concerned.len(),
                    if concerned.is_empty() {
                        "none: nothing can be lost".to_string()
                    } else {
                        concerned.join(" ")
                    }
                );
                eprintln!(
                    "writes that only {osd} held in those pgs would be lost. Repeat with \
                     --yes-i-really-mean-it to go ahead."
                );
                return Ok(2);
            }
            let (epoch, _) = mon.command(Command::MarkOsdLost { id: osd }).await?;
            let mut msg = format!(
                "{osd} declared lost (epoch {epoch}); {} pg(s) no longer wait for it",
                concerned.len()
            );
            if destroy {
                let (epoch, _) = mon.command(Command::RemoveOsd { id: osd }).await?;
                msg = format!("{msg}; removed from the map (epoch {epoch})");
            }
            report(
                json_out,
                json!({"osd": id, "lost": true, "destroyed": destroy, "pgs": concerned, "epoch": epoch}),
                &msg,
            )?;
        }
        Cmd::Osd(OsdCmd::Ls) => {
            let ControlResponse::Status(r) = mon.call(&ControlRequest::GetStatus).await? else {
                bail!("monitor sent no status")
            };
            let rows: Vec<_> = r
                .map
                .osds
                .values()
                .map(|o| {
                    let s = r.osd_stats.get(&o.id.0).cloned().unwrap_or_default();
                    json!({"id": o.id.0, "host": o.host, "addr": o.addr, "up": o.up, "in": o.is_in, "up_from": o.up_from,
                           "weight": o.weight as f64 / proto::map::WEIGHT_ONE as f64, "used_bytes": s.used_bytes,
                           "capacity_bytes": o.capacity_bytes, "objects": s.objects})
                })
                .collect();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<6} {:<10} {:<22} {:<5} {:<4} {:>8} {:>10} {:>10}",
                    "ID", "HOST", "ADDR", "UP", "IN", "WEIGHT", "USED_MIB", "OBJECTS"
                );
                for r in rows {
                    println!(
                        "{:<6} {:<10} {:<22} {:<5} {:<4} {:>8.4} {:>10} {:>10}",
                        r["id"],
                        r["host"].as_str().unwrap_or(""),
                        r["addr"].as_str().unwrap_or(""),
                        if r["up"] == true { "up" } else { "down" },
                        if r["in"] == true { "in" } else { "out" },
                        r["weight"].as_f64().unwrap_or(0.0),
                        r["used_bytes"].as_u64().unwrap_or(0) >> 20,
                        r["objects"]
                    );
                }
            }
        }
        Cmd::Mon(MonCmd::Ls) => {
            let ControlResponse::Status(r) = mon.call(&ControlRequest::GetStatus).await? else {
                bail!("monitor sent no status")
            };
            if json_out {
                let v: Vec<_> = r
                    .mons
                    .iter()
                    .map(|m| {
                        json!({"name": m.name, "addr": m.addr,
                    "in_quorum": m.in_quorum, "leader": m.leader})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<10} {:<22} {:<10} ROLE", "NAME", "ADDR", "QUORUM");
                for m in &r.mons {
                    println!(
                        "{:<10} {:<22} {:<10} {}",
                        m.name,
                        m.addr,
                        if m.in_quorum { "in" } else { "out" },
                        if m.leader { "leader" } else { "" }
                    );
                }
            }
        }
        Cmd::Mon(MonCmd::Add { name, addr }) => {
            let r = mon
                .call(&ControlRequest::AddMonitor {
                    name: name.clone(),
                    addr: addr.clone(),
                })
                .await?;
            let epoch = committed(r)?;
            report(
                json_out,
                json!({"mon": name, "addr": addr, "epoch": epoch}),
                &format!("monitor {name} ({addr}) added (epoch {epoch})"),
            )?;
        }
        Cmd::Mon(MonCmd::Rm { name }) => {
            let r = mon
                .call(&ControlRequest::RemoveMonitor { name: name.clone() })
                .await?;
            let epoch = committed(r)?;
            report(
                json_out,
                json!({"mon": name, "removed": true, "epoch": epoch}),
                &format!("monitor {name} removed (epoch {epoch}); stop its process now"),
            )?;
        }
        Cmd::Osd(OsdCmd::Out { ref ids })
        | Cmd::Osd(OsdCmd::In { ref ids })
        | Cmd::Osd(OsdCmd::Rm { ref ids }) => {
            if ids.is_empty() {
                bail!("give at least one OSD id");
            }
            let (verb, make): (&str, fn(OsdId) -> Command) = match cli.cmd {
                Cmd::Osd(OsdCmd::Out { .. }) => ("marked out", |id| Command::MarkOsdOut { id }),
                Cmd::Osd(OsdCmd::In { .. }) => ("marked in", |id| Command::MarkOsdIn { id }),
                _ => ("removed", |id| Command::RemoveOsd { id }),
            };
            for id in ids {
                let (epoch, _) = mon.command(make(OsdId(*id))).await?;
                report(
                    json_out,
                    json!({"osd": id, "result": verb, "epoch": epoch}),
                    &format!("osd.{id} {verb} (epoch {epoch})"),
                )?;
            }
        }
        Cmd::Osd(OsdCmd::Reweight { id, weight }) => {
            if !(weight > 0.0 && weight < 65536.0) {
                bail!("weight {weight} must be in (0, 65536)");
            }
            let w = (weight * proto::map::WEIGHT_ONE as f64).round().max(1.0) as u32;
            let (epoch, _) = mon
                .command(Command::ReweightOsd {
                    id: OsdId(id),
                    weight: w,
                })
                .await?;
            report(
                json_out,
                json!({"osd": id, "weight": weight, "epoch": epoch}),
                &format!("osd.{id} weight {weight} (epoch {epoch})"),
            )?;
        }
        Cmd::Osd(OsdCmd::Set { flag }) | Cmd::Osd(OsdCmd::Unset { flag }) => {
            let set = matches!(cli.cmd, Cmd::Osd(OsdCmd::Set { .. }));
            let cmd = if set {
                Command::SetFlag { flag }
            } else {
                Command::UnsetFlag { flag }
            };
            let (epoch, _) = mon.command(cmd).await?;
            let verb = if set { "set" } else { "unset" };
            report(
                json_out,
                json!({"flag": flag.to_string(), "set": set, "epoch": epoch}),
                &format!("{flag} is {verb} (epoch {epoch})"),
            )?;
        }
        Cmd::Pool(PoolCmd::Set { name, key, value }) => {
            let cmd = match key.as_str() {
                "min_size" => Command::SetPoolMinSize {
                    pool: name.clone(),
                    min_size: value
                        .parse()
                        .with_context(|| format!("min_size {value:?} is not a number"))?,
                },
                other => bail!("pool setting {other:?} cannot be changed (settable: min_size)"),
            };
            let (epoch, _) = mon.command(cmd).await?;
            report(
                json_out,
                json!({"pool": name, key.clone(): value, "epoch": epoch}),
                &format!("pool {name}: {key} = {value} (epoch {epoch})"),
            )?;
        }
        Cmd::Pool(PoolCmd::Rm { name }) => {
            let (epoch, _) = mon
                .command(Command::RemovePool { name: name.clone() })
                .await?;
            report(
                json_out,
                json!({"pool": name, "removed": true, "epoch": epoch}),
                &format!("pool {name} removed (epoch {epoch})"),
            )?;
        }
        Cmd::Osd(OsdCmd::Tree) => {
            let map = mon.get_map().await?;
            let mut hosts: BTreeMap<&str, Vec<&proto::map::OsdInfo>> = BTreeMap::new();
            for o in map.osds.values() {
                hosts.entry(&o.host).or_default().push(o);
            }
            let w = |x: u64| x as f64 / proto::map::WEIGHT_ONE as f64;
            if json_out {
                let v: Vec<_> = hosts
                    .iter()
                    .map(|(h, os)| json!({"host": h, "weight": w(os.iter().map(|o| o.weight as u64).sum()),
                        "osds": os.iter().map(|o| json!({"id": o.id.0, "weight": w(o.weight as u64), "up": o.up, "in": o.is_in})).collect::<Vec<_>>()}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"root": "default", "hosts": v}))?
                );
            } else {
                let total: u64 = map.osds.values().map(|o| o.weight as u64).sum();
                println!("{:<8} {:>10}  {:<20} STATUS", "ID", "WEIGHT", "NAME");
                println!("{:<8} {:>10.4}  {:<20}", "-", w(total), "root default");
                for (h, os) in hosts {
                    println!(
                        "{:<8} {:>10.4}  {:<20}",
                        "-",
                        w(os.iter().map(|o| o.weight as u64).sum()),
                        format!("  host {h}")
                    );
                    for o in os {
                        let st = format!(
                            "{} {}",
                            if o.up { "up" } else { "down" },
                            if o.is_in { "in" } else { "out" }
                        );
                        println!(
                            "{:<8} {:>10.4}  {:<20} {}",
                            o.id.0,
                            w(o.weight as u64),
                            format!("    {}", o.id),
                            st
                        );
                    }
                }
            }
        }
        Cmd::Pool(PoolCmd::Create {
            name,
            size,
            min_size,
            pg_count,
            object_size,
            failure_domain,
        }) => {
            let object_size = size_arg(&object_size)? as u32;
            let cmd = Command::CreatePool {
                name: name.clone(),
                size,
                min_size,
                pg_count,
                object_size,
                failure_domain,
            };
            let (epoch, r) = mon.command(cmd).await?;
            report(
                json_out,
                json!({"pool": name, "result": format!("{r:?}"), "epoch": epoch}),
                &format!("pool {name} created (epoch {epoch})"),
            )?;
        }
        Cmd::Pool(PoolCmd::Ls) => {
            let map = mon.get_map().await?;
            let v: Vec<_> = map.pools.values().map(|p| json!({"id": p.id, "name": p.name, "size": p.size, "min_size": p.min_size,
                "pg_count": p.pg_count, "object_size": p.object_size, "failure_domain": p.failure_domain.to_string()})).collect();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<4} {:<16} {:>4} {:>8} {:>8} {:>11} DOMAIN",
                    "ID", "NAME", "SIZE", "MIN_SIZE", "PGS", "OBJECT_SIZE"
                );
                for p in map.pools.values() {
                    println!(
                        "{:<4} {:<16} {:>4} {:>8} {:>8} {:>11} {}",
                        p.id,
                        p.name,
                        p.size,
                        p.min_size,
                        p.pg_count,
                        p.object_size,
                        p.failure_domain
                    );
                }
            }
        }
        Cmd::Image(ImageCmd::Create { spec, size }) => {
            let (pool, name) = split_spec(&spec)?;
            let (epoch, r) = mon
                .command(Command::CreateImage {
                    pool,
                    name,
                    size_bytes: size_arg(&size)?,
                })
                .await?;
            let id = if let CommandResult::Image(id) = r {
                id
            } else {
                0
            };
            report(
                json_out,
                json!({"image": spec, "id": id, "epoch": epoch}),
                &format!("image {spec} created (id {id}, epoch {epoch})"),
            )?;
        }
        Cmd::Image(ImageCmd::Ls { pool }) => {
            let map = mon.get_map().await?;
            let mut rows = Vec::new();
            for i in map.images.values() {
                let pname = map
                    .pools
                    .get(&i.pool)
                    .map(|p| p.name.as_str())
                    .unwrap_or("?");
                if pool.as_deref().is_some_and(|p| p != pname) {
                    continue;
                }
                rows.push(
                    json!({"pool": pname, "name": i.name, "id": i.id, "size_bytes": i.size_bytes}),
                );
            }
            if json_out {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<24} {:>6} {:>14}",
                    "POOL", "NAME", "ID", "SIZE_BYTES"
                );
                for r in rows {
                    println!(
                        "{:<16} {:<24} {:>6} {:>14}",
                        r["pool"].as_str().unwrap_or(""),
                        r["name"].as_str().unwrap_or(""),
                        r["id"],
                        r["size_bytes"]
                    );
                }
            }
        }
        Cmd::Image(ImageCmd::Info { spec }) => {
            let (pool, name) = split_spec(&spec)?;
            let map = mon.get_map().await?;
            let (p, i) = map.resolve_image(&pool, &name)?;
            let v = json!({"pool": p.name, "name": i.name, "id": i.id, "size_bytes": i.size_bytes, "object_size": i.object_size,
                           "objects": i.size_bytes.div_ceil(i.object_size as u64), "pg_count": p.pg_count, "replicas": p.size});
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!(
                        "{k:>12}: {}",
                        val.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| val.to_string())
                    );
                }
            }
        }
        Cmd::Image(ImageCmd::Resize { spec, size }) => {
            let (pool, name) = split_spec(&spec)?;
            let new_size = size_arg(&size)?;
            let map = mon.get_map().await?;
            let (_, old) = map.resolve_image(&pool, &name)?;
            let old_size = old.size_bytes;
            // The new size first: from that epoch on, OSDs refuse writes past the new end
            // (a gateway with the image open may still think it larger). Then the cut-off
            // tail is freed with that epoch, so nothing lands after it and growing again
            // later reads zeroes.
            let (epoch, _) = mon
                .command(Command::ResizeImage {
                    pool: pool.clone(),
                    name: name.clone(),
                    size_bytes: new_size,
                })
                .await?;
            if new_size < old_size {
                let cluster = Cluster::connect(mon.addrs().to_vec()).await?;
                cluster
                    .wait_for_epoch(epoch, std::time::Duration::from_secs(10))
                    .await;
                let mut img = client::Image::open(&cluster, &pool, &name)?;
                img.size_bytes = old_size;
                img.trim(new_size, old_size - new_size, true).await?;
            }
            report(
                json_out,
                json!({"image": spec, "size_bytes": new_size, "epoch": epoch}),
                &format!("image {spec} resized to {new_size} bytes (epoch {epoch})"),
            )?;
        }
        Cmd::Image(ImageCmd::Rm { spec }) => {
            let (pool, name) = split_spec(&spec)?;
            let cluster = Cluster::connect(mon.addrs().to_vec()).await?;
            let img = client::Image::open(&cluster, &pool, &name)?;
            // Removed from the map first: OSDs refuse writes to it from then on (an open
            // export may still send some); then its objects are freed with that epoch.
            let (epoch, _) = mon.command(Command::RemoveImage { pool, name }).await?;
            cluster
                .wait_for_epoch(epoch, std::time::Duration::from_secs(10))
                .await;
            img.trim(0, img.size_bytes, true).await?;
            report(
                json_out,
                json!({"image": spec, "removed": true, "epoch": epoch}),
                &format!("image {spec} removed (epoch {epoch})"),
            )?;
        }
        Cmd::Debug(DebugCmd::CheckReplicas { pool }) => {
            return check_replicas(&mon, pool.as_deref(), json_out).await
        }
        Cmd::Bench {
            spec,
            write,
            bs,
            sequential,
            depth,
            seconds,
            region,
        } => {
            let (pool, image) = split_spec(&spec)?;
            anyhow::ensure!(
                (1..=1024).contains(&depth),
                "--depth {depth} must be 1..=1024"
            );
            let block_size = size_arg(&bs)?;
            anyhow::ensure!(
                block_size >= 4096 && block_size % 4096 == 0,
                "--bs must be a multiple of 4K"
            );
            let cluster = Cluster::connect(mon.addrs().to_vec()).await?;
            let args = bench::BenchArgs {
                pool,
                image,
                write,
                block_size,
                sequential,
                depth,
                seconds,
                region: size_arg(&region)?,
            };
            let v = bench::run(cluster, args).await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "{}: {} IOPS, {} MiB/s, mean {} us, p50 {} us, p99 {} us",
                    v["job"].as_str().unwrap_or(""),
                    v["iops"],
                    v["mib_s"],
                    v["mean_us"],
                    v["p50_us"],
                    v["p99_us"]
                );
            }
        }
        Cmd::Dev(_) | Cmd::Osd(OsdCmd::Create { .. }) => unreachable!("handled above"),
    }
    Ok(0)
}

/// The epoch of a committed admin request, or its refusal as an error.
fn committed(r: ControlResponse) -> anyhow::Result<u64> {
    match r {
        ControlResponse::Committed { epoch, .. } => Ok(epoch),
        ControlResponse::Refused(e) => bail!("{e}"),
        ControlResponse::Error(e) | ControlResponse::NoQuorum(e) => bail!("monitor: {e}"),
        other => bail!("unexpected monitor reply {other:?}"),
    }
}

fn report(json_out: bool, v: serde_json::Value, human: &str) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{human}");
    }
    Ok(())
}

async fn check_replicas(
    mon: &Arc<MonClient>,
    pool: Option<&str>,
    json_out: bool,
) -> anyhow::Result<i32> {
    let map = mon.get_map().await?;
    let pool_id = match pool {
        Some(p) => Some(
            map.pool_by_name(p)
                .with_context(|| format!("pool {p:?} does not exist"))?
                .id,
        ),
        None => None,
    };
    let mut copies: BTreeMap<ObjectId, Vec<(OsdId, Version)>> = BTreeMap::new();
    for o in map.osds.values() {
        if !o.up && !o.is_in {
            continue; // down and out: its copies no longer count
        }
        if !o.up {
            bail!("{} is down; cannot list its objects", o.id);
        }
        let conn = net::transport::connect(&o.addr).await?;
        let req = encode_control(&ControlRequest::ListObjects { pool: pool_id });
        let f = conn
            .call(
                msg_type::CONTROL,
                req,
                Bytes::new(),
                Duration::from_secs(30),
            )
            .await?;
        let ControlResponse::Objects(list) = decode_control(&f.meta)? else {
            bail!("{} did not list its objects", o.id)
        };
        for ObjectEntry {
            object, version, ..
        } in list
        {
            copies.entry(object).or_default().push((o.id, version));
        }
    }
    let mut problems = Vec::new();
    for (object, held) in &copies {
        let Some(p) = map.pools.get(&object.pool) else {
            problems.push(format!("{object}: pool {} no longer exists", object.pool));
            continue;
        };
        let want = pg_mapping(&map, p, object_pg(object, p).seed).osds;
        let mut have: Vec<OsdId> = held.iter().map(|(o, _)| *o).collect();
        have.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        if have != want_sorted {
            problems.push(format!("{object}: on {have:?}, placement is {want:?}"));
        }
        if held.iter().any(|(_, v)| *v != held[0].1) {
            problems.push(format!("{object}: versions differ: {held:?}"));
        }
    }
    let distinct_ok = copies.values().all(|h| {
        let mut ids: Vec<_> = h.iter().map(|(o, _)| o.0).collect();
        ids.sort();
        ids.dedup();
        ids.len() == h.len()
    });
    let v = json!({"objects": copies.len(), "problems": problems, "ok": problems.is_empty() && distinct_ok});
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} objects checked, {} problems",
            copies.len(),
            problems.len()
        );
        for p in problems.iter().take(50) {
            println!("  {p}");
        }
    }
    Ok(if problems.is_empty() && distinct_ok {
        0
    } else {
        1
    })
}

async fn dev_cmd(d: &DevCmd, json_out: bool) -> anyhow::Result<i32> {
    match d {
        DevCmd::Up {
            dir,
            mons,
            osds,
            osd_size,
            nbd_port,
            pg_count,
            image_size,
            no_image,
            timeout_secs,
            osd_grace_secs,
            down_out_interval_secs,
        } => {
            let c = dev::up(dev::UpOptions {
                dir: dir.clone(),
                mons: *mons,
                osds: *osds,
                osd_size: size_arg(osd_size)?,
                nbd_port: *nbd_port,
                pg_count: *pg_count,
                image_size: size_arg(image_size)?,
                no_image: *no_image,
                timeout: Duration::from_secs(*timeout_secs),
                osd_grace_secs: *osd_grace_secs,
                down_out_interval_secs: *down_out_interval_secs,
            })
            .await?;
            let env = c.dir.join("cluster.env");
            if json_out {
                println!(
                    "{}",
                    json!({"dir": c.dir, "env": env, "nbd": format!("nbd://{}/{}", c.nbd_addr, c.export)})
                );
            } else {
                println!("cluster is up in {}", c.dir.display());
                println!(
                    "  source {}   # ATLANT_MON, NBD_URI, PIDs and restart commands",
                    env.display()
                );
                println!(
                    "  export: nbd://{}/{}  (unix socket {})",
                    c.nbd_addr,
                    c.export,
                    c.nbd_socket.display()
                );
            }
        }
        DevCmd::Down { dir } => {
            dev::down(dir)?;
            if !json_out {
                println!(
                    "cluster in {} stopped (data kept; `atlant dev up --dir {}` starts it again)",
                    dir.display(),
                    dir.display()
                );
            }
        }
        DevCmd::Start { dir, name } => {
            let pid = dev::start_one(dir, name)?;
            println!("{name} running as pid {pid}");
        }
        DevCmd::Stop { dir, name } => {
            dev::stop_one(dir, name)?;
            println!("{name} stopped");
        }
    }
    Ok(0)
}
