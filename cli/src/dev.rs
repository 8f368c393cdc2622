//! `atlant dev up|down|start`: a local cluster of real processes under one directory, like
//! Ceph's vstart. Each OSD is on its own simulated host (so the three copies land in three
//! failure domains) and stores its data in a sparse file under the directory.
//!
//! `DIR/cluster.json` records every daemon's command line and PID; `DIR/cluster.env` is the
//! shell view of it for scripts. `dev up` on a directory that already holds a cluster starts
//! whatever is not running, with its data; it never re-creates a cluster.

use anyhow::{bail, Context};
use client::MonClient;
use proto::map::FailureDomain;
use proto::Command;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Daemon {
    /// `mon.a`, `osd.0`, `nbd`.
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub pid: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct DevCluster {
    pub dir: PathBuf,
    pub mon_addrs: Vec<String>,
    pub nbd_addr: String,
    pub nbd_socket: PathBuf,
    pub export: String,
    pub daemons: Vec<Daemon>,
}

pub struct UpOptions {
    pub dir: PathBuf,
    pub mons: u32,
    pub osds: u32,
    pub osd_size: u64,
    pub nbd_port: Option<u16>,
    pub pg_count: u32,
    pub image_size: u64,
    pub no_image: bool,
    pub timeout: Duration,
    /// Passed to the monitors (seconds without a report before an OSD is marked down) and
    /// to the OSDs (seconds of unanswered heartbeats before a peer is reported).
    pub osd_grace_secs: Option<f64>,
    /// Passed to the monitors: seconds a down OSD stays in before it is marked out.
    pub down_out_interval_secs: Option<f64>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the atlant binary's directory")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

impl DevCluster {
    pub fn load(dir: &Path) -> anyhow::Result<DevCluster> {
        let raw = std::fs::read_to_string(state_path(dir))
            .with_context(|| format!("{} holds no dev cluster (no cluster.json)", dir.display()))?;
        serde_json::from_str(&raw)
            .with_context(|| format!("{} is damaged", state_path(dir).display()))
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, state_path(&self.dir))?;
        self.write_env()
    }

    fn write_env(&self) -> anyhow::Result<()> {
        let atlant = std::env::current_exe()?.display().to_string();
        let dir = self.dir.display().to_string();
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let pids = |prefix: &str| {
            self.daemons
                .iter()
                .filter(|d| d.name.starts_with(prefix))
                .map(|d| format!("{}={}", &d.name[prefix.len()..], d.pid.unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut env = String::from("# Written by `atlant dev up`; source it in a shell.\n");
        let mons = self.mon_addrs.join(",");
        env += &format!("ATLANT_DIR={}\n", q(&dir));
        env += &format!("ATLANT_MON={}\nexport ATLANT_MON\n", q(&mons));
        env += &format!("MON_ADDRS={}\n", q(&mons));
        env += &format!(
            "NBD_URI={}\n",
            q(&format!("nbd://{}/{}", self.nbd_addr, self.export))
        );
        env += &format!("NBD_SOCKET={}\n", q(&self.nbd_socket.display().to_string()));
        env += &format!(
            "NBD_UNIX_URI={}\n",
            q(&format!(
                "nbd+unix:///{}?socket={}",
                self.export,
                self.nbd_socket.display()
            ))
        );
        env += &format!("NBD_EXPORT={}\n", q(&self.export));
        env += &format!("MON_PIDS={}\n", q(&pids("mon.")));
        env += &format!("OSD_PIDS={}\n", q(&pids("osd.")));
        env += &format!(
            "NBD_PID={}\n",
            self.daemons
                .iter()
                .find(|d| d.name == "nbd")
                .and_then(|d| d.pid)
                .unwrap_or(0)
        );
        env += &format!("ATLANT={}\n", q(&atlant));
        for d in &self.daemons {
            let var = d.name.replace('.', "_").to_uppercase();
            let var = if let Some(rest) = var.strip_prefix("MON_") {
                format!("MON_{}", rest.to_lowercase())
            } else {
                var
            };
            env += &format!(
                "{var}_CMD={}\n",
                q(&format!("{atlant} dev start --dir {dir} {}", d.name))
            );
        }
        let tmp = self.dir.join("cluster.env.tmp");
        std::fs::write(&tmp, env)?;
        std::fs::rename(&tmp, self.dir.join("cluster.env"))?;
        Ok(())
    }

    fn daemon_mut(&mut self, name: &str) -> anyhow::Result<&mut Daemon> {
        self.daemons
            .iter_mut()
            .find(|d| d.name == name)
            .with_context(|| format!("no daemon {name:?} in this cluster"))
    }

    /// Starts one daemon in the background unless it is already running.
    pub fn start(&mut self, name: &str) -> anyhow::Result<u32> {
        let log = self.dir.join("log").join(format!("{name}.log"));
        let d = self.daemon_mut(name)?;
        if let Some(pid) = d.pid.filter(|p| is_running(*p, &d.program)) {
            return Ok(pid);
        }
        std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(&d.program)
            .args(&d.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C in the shell that ran `dev up` does not stop it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", d.program))?;
        d.pid = Some(child.id());
        Ok(child.id())
    }

    /// Waits until a monitor answers, failing at once (with the reason from its log) if a
    /// monitor process exits, e.g. on a damaged or old-format store.
    async fn wait_mons(&self, timeout: Duration) -> anyhow::Result<()> {
        let mon = MonClient::new(self.mon_addrs.clone())?;
        let deadline = Instant::now() + timeout;
        loop {
            for d in self.daemons.iter().filter(|d| d.name.starts_with("mon.")) {
                if d.pid.is_some_and(has_exited) {
                    let log = self.dir.join("log").join(format!("{}.log", d.name));
                    let why = std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("Error"))
                        .unwrap_or("no error line in its log")
                        .to_string();
                    bail!("{} exited: {why} (log: {})", d.name, log.display());
                }
            }
            match tokio::time::timeout(Duration::from_secs(2), mon.get_map()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if Instant::now() > deadline => return Err(e.into()),
                Err(_) if Instant::now() > deadline => {
                    bail!("no monitor answered within {timeout:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Stops one daemon (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, name: &str, grace: Duration) -> anyhow::Result<()> {
        let d = self.daemon_mut(name)?;
        if let Some(pid) = d.pid.filter(|p| is_running(*p, &d.program)) {
            // SAFETY: plain syscalls on a PID this cluster started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let t = Instant::now();
            while is_running(pid, &d.program) && t.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_running(pid, &d.program) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        d.pid = None;
        Ok(())
    }
}

/// True once a process this command started has exited (gone, or a zombie). Unlike
/// `is_running`, a child between fork and exec does not count as exited.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

/// True if `pid` is alive and runs `program` (PIDs are reused; never signal a stranger).
fn is_running(pid: u32, program: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let first = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is not running.
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    first == program.as_bytes()
}

pub async fn up(o: UpOptions) -> anyhow::Result<DevCluster> {
    let dir = std::fs::canonicalize(&o.dir).or_else(|_| {
        std::fs::create_dir_all(&o.dir)?;
        std::fs::canonicalize(&o.dir)
    })?;
    let c = if state_path(&dir).exists() {
        let mut c = DevCluster::load(&dir)?;
        c.dir = dir.clone();
        println!("restarting the cluster in {}", dir.display());
        // Monitors first: the other daemons need them to start.
        let mut names: Vec<String> = c.daemons.iter().map(|d| d.name.clone()).collect();
        names.sort_by_key(|n| {
            if n.starts_with("mon.") {
                0
            } else if n.starts_with("osd.") {
                1
            } else {
                2
            }
        });
        let mut mons_waited = false;
        for n in names {
            if !n.starts_with("mon.") && !mons_waited {
                c.wait_mons(o.timeout).await?;
                mons_waited = true;
            }
            c.start(&n)?;
        }
        c.save()?;
        c
    } else {
        create(&o, &dir).await?
    };
    wait_healthy(&c, o.timeout).await?;
    wait_port(&c.nbd_addr, o.timeout).await?;
    c.save()?;
    Ok(c)
}

async fn create(o: &UpOptions, dir: &Path) -> anyhow::Result<DevCluster> {
    if !(1..=9).contains(&o.mons) || o.mons.is_multiple_of(2) {
        bail!(
            "--mons {}: a monitor group has an odd number of members, 1 to 9 (3 survives one failure, 5 two)",
            o.mons
        );
    }
    if o.osds == 0 {
        bail!("--osds must be at least 1");
    }
    let bins = bin_dir()?;
    let prog = |n: &str| bins.join(n).display().to_string();
    let d = dir.display().to_string();
    let names: Vec<String> = (0..o.mons)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let mut mon_addrs = Vec::new();
    for _ in &names {
        mon_addrs.push(format!("127.0.0.1:{}", free_port()?));
    }
    let initial = names
        .iter()
        .zip(&mon_addrs)
        .map(|(n, a)| format!("{n}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mon_list = mon_addrs.join(",");
    let nbd_addr = format!(
        "127.0.0.1:{}",
        match o.nbd_port {
            Some(p) => p,
            None => free_port()?,
        }
    );
    let nbd_socket = dir.join("nbd.sock");
    let mut c = DevCluster {
        dir: dir.to_path_buf(),
        mon_addrs: mon_addrs.clone(),
        nbd_addr: nbd_addr.clone(),
        nbd_socket: nbd_socket.clone(),
        export: "rbd/vm1".into(),
        daemons: Vec::new(),
    };
    // Every initial monitor gets the same cluster id and the same member list.
    let fsid = format!("{:032x}", rand::random::<u128>());
    for (name, addr) in names.iter().zip(&mon_addrs) {
        let mon_data = format!("{d}/mon.{name}");
        let out = std::process::Command::new(prog("atlant-mon"))
            .args(["mkfs", "--data", &mon_data, "--name", name, "--addr", addr])
            .args(["--fsid", &fsid, "--initial", &initial])
            .output()
            .context("cannot run atlant-mon mkfs")?;
        if !out.status.success() {
            bail!(
                "atlant-mon mkfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut args = vec!["run".to_string(), "--data".into(), mon_data];
        if let Some(g) = o.osd_grace_secs {
            args.extend(["--osd-grace-secs".to_string(), g.to_string()]);
        }
        if let Some(g) = o.down_out_interval_secs {
            args.extend(["--down-out-interval-secs".to_string(), g.to_string()]);
        }
        c.daemons.push(Daemon {
            name: format!("mon.{name}"),
            program: prog("atlant-mon"),
            args,
            pid: None,
        });
    }
    for name in &names {
        c.start(&format!("mon.{name}"))?;
    }
    c.save()?;
    let mon = MonClient::new(c.mon_addrs.clone())?;
    // The group is formed once a leader holds a quorum.
    let deadline = Instant::now() + o.timeout;
    loop {
        if let Ok(proto::msg::ControlResponse::Status(s)) =
            mon.call(&proto::msg::ControlRequest::GetStatus).await
        {
            let quorum = s.mons.iter().filter(|m| m.in_quorum).count();
            if s.mons.iter().any(|m| m.leader) && quorum * 2 > s.mons.len() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the monitors did not form a group; see {d}/log/mon.*.log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mon_addr = mon_list.clone();
    for i in 0..o.osds {
        let device = format!("{d}/osd{i}.img");
        let out = std::process::Command::new(prog("atlant-osd"))
            .args([
                "mkfs",
                "--device",
                &device,
                "--mon",
                &mon_addr,
                "--host",
                &format!("host{i}"),
            ])
            .args(["--size", &o.osd_size.to_string()])
            .output()
            .context("cannot run atlant-osd mkfs")?;
        if !out.status.success() {
            bail!(
                "atlant-osd mkfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let id: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("atlant-osd mkfs printed no id")?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let name = format!("osd.{id}");
        c.daemons.push(Daemon {
            name: name.clone(),
            program: prog("atlant-osd"),
            args: {
                let mut a: Vec<String> = [
                    "run", "--device", &device, "--mon", &mon_addr, "--addr", &addr,
                ]
                .map(String::from)
                .to_vec();
                if let Some(g) = o.osd_grace_secs {
                    a.extend(["--heartbeat-grace-secs".to_string(), g.to_string()]);
                }
                a
            },
            pid: None,
        });
        c.start(&name)?;
        c.save()?;
    }
    wait_healthy(&c, o.timeout).await?;
    if !o.no_image {
        let pool = Command::CreatePool {
            name: "rbd".into(),
            size: 3.min(o.osds as u8),
            min_size: 2.min(o.osds as u8),
            pg_count: o.pg_count,
            object_size: 128 << 10,
            failure_domain: FailureDomain::Host,
        };
        mon.command(pool).await?;
        mon.command(Command::CreateImage {
            pool: "rbd".into(),
            name: "vm1".into(),
            size_bytes: o.image_size,
        })
        .await?;
    }
    c.daemons.push(Daemon {
        name: "nbd".into(),
        program: prog("atlant-nbd"),
        args: [
            "--mon",
            &mon_addr,
            "--listen",
            &nbd_addr,
            "--socket",
            &nbd_socket.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        pid: None,
    });
    c.start("nbd")?;
    c.save()?;
    Ok(c)
}

/// Waits until every OSD is up and every PG active.
pub async fn wait_healthy(c: &DevCluster, timeout: Duration) -> anyhow::Result<()> {
    let mon = MonClient::new(c.mon_addrs.clone())?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("monitor unreachable");
    while Instant::now() < deadline {
        if let Ok(proto::msg::ControlResponse::Status(r)) =
            mon.call(&proto::msg::ControlRequest::GetStatus).await
        {
            let v = crate::status::status_json(&r);
            if v["health"]["status"] == "HEALTH_OK" {
                return Ok(());
            }
            last = v["health"]["checks"].to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "cluster in {} not healthy after {:?}: {last}; logs in {}/log",
        c.dir.display(),
        timeout,
        c.dir.display()
    )
}

async fn wait_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

pub fn down(dir: &Path) -> anyhow::Result<()> {
    let mut c = DevCluster::load(dir)?;
    // The gateway first, then OSDs, monitors last (OSDs report their shutdown to them).
    let mut order: Vec<String> = c.daemons.iter().map(|d| d.name.clone()).collect();
    order.sort_by_key(|n| {
        if n == "nbd" {
            0
        } else if n.starts_with("osd.") {
            1
        } else {
            2
        }
    });
    for n in order {
        c.stop(&n, Duration::from_secs(10))?;
    }
    c.save()?;
    Ok(())
}

/// `dev start NAME` / `dev stop NAME`: one daemon of the cluster.
pub fn start_one(dir: &Path, name: &str) -> anyhow::Result<u32> {
    let mut c = DevCluster::load(dir)?;
    let pid = c.start(name)?;
    c.save()?;
    Ok(pid)
}

pub fn stop_one(dir: &Path, name: &str) -> anyhow::Result<()> {
    let mut c = DevCluster::load(dir)?;
    c.stop(name, Duration::from_secs(10))?;
    c.save()
}
