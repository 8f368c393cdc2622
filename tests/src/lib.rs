//! Helpers for integration tests that run the real binaries (built by `make build` into
//! `target/release`) as child processes on loopback addresses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/release`, found from the test executable (`target/release/deps/NAME-HASH`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make build` (cargo build --release --bins) first",
        p.display()
    );
    p
}

/// Runs a binary to completion.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env_remove("ATLANT_MON")
        .output()
        .expect("spawn")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "atlant-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failing test keeps its daemons' logs and data for inspection.
        if std::thread::panicking() {
            eprintln!("kept {} (the test failed)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon child process, killed on drop.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn start(name: &str, args: &[&str], log: &Path) -> Daemon {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        Daemon(child)
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Creates and starts a monitor; returns it with its address.
pub fn start_mon(dir: &Path) -> (Daemon, String) {
    let addr = free_addr();
    let data = dir.join("mon");
    let o = run(
        "atlant-mon",
        &[
            "mkfs",
            "--data",
            data.to_str().unwrap_or(""),
            "--name",
            "a",
            "--addr",
            &addr,
        ],
    );
    assert!(o.status.success(), "mon mkfs: {}", text(&o));
    let d = Daemon::start(
        "atlant-mon",
        &["run", "--data", data.to_str().unwrap_or("")],
        &dir.join("mon.log"),
    );
    let ok = wait_until(Duration::from_secs(10), || {
        run("atlant", &["--mon", &addr, "status"]).status.success()
    });
    assert!(ok, "monitor did not come up");
    (d, addr)
}

/// A cluster started by `atlant dev up`; its `cluster.env` variables are indexable by name,
/// and dropping it stops the cluster, so a failing test leaves no processes behind.
pub struct DevCluster {
    dir: PathBuf,
    env: std::collections::HashMap<String, String>,
}

impl std::ops::Index<&str> for DevCluster {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("cluster.env has no {key}"))
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(d) = self.dir.to_str() {
            let _ = run("atlant", &["dev", "down", "--dir", d]);
        }
    }
}

/// Runs `atlant dev up --dir DIR ARGS...`.
pub fn dev_up(dir: &Path, args: &[&str]) -> DevCluster {
    let d = dir.to_str().expect("utf-8 path");
    let mut all = vec!["dev", "up", "--dir", d];
    all.extend_from_slice(args);
    let o = run("atlant", &all);
    // Guards whatever started, even if `dev up` then failed.
    let mut cluster = DevCluster {
        dir: dir.to_path_buf(),
        env: Default::default(),
    };
    assert!(o.status.success(), "dev up: {}", text(&o));
    let env = std::fs::read_to_string(dir.join("cluster.env")).expect("cluster.env");
    cluster.env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    cluster
}

/// `dev_up` of the small cluster most fault tests use (64 MiB OSDs and image, 8 PGs),
/// with `extra` arguments.
pub fn dev_up_small(dir: &Path, extra: &[&str]) -> DevCluster {
    let mut args = vec![
        "--osd-size",
        "64M",
        "--image-size",
        "64M",
        "--pg-count",
        "8",
    ];
    args.extend_from_slice(extra);
    dev_up(dir, &args)
}

/// A two-worker tokio runtime for tests that drive the client library.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Sends `sig` (`-KILL`, `-STOP`, ...) to a process this test started.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// A variable of `DIR/cluster.env` as it is now (`dev start` rewrites it with new PIDs).
pub fn cluster_env(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("cluster.env")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|s| s.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("no {key} in {}/cluster.env", dir.display()))
}

/// `name=pid` pairs of a `*_PIDS` variable of `cluster.env`.
pub fn cluster_pids(dir: &Path, key: &str) -> std::collections::BTreeMap<String, u32> {
    cluster_env(dir, key)
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Runs a command that must succeed (network setup).
pub fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Network namespaces on one bridge (the test's own namespace holds the bridge address,
/// so it reaches every namespace), removed on drop. A cut between two namespaces is a pair
/// of blackhole routes.
pub struct Fabric {
    bridge: String,
    ns: Vec<String>,
    subnet: String,
}

impl Fabric {
    pub fn new(n: usize, tag: &str) -> Fabric {
        let id = std::process::id() % 10000;
        let f = Fabric {
            bridge: format!("atl{tag}{id}"),
            ns: (1..=n).map(|i| format!("atl{tag}{id}-{i}")).collect(),
            subnet: format!("10.{}.{}", 70 + tag.len() % 20, id % 250),
        };
        sh(&["ip", "link", "add", &f.bridge, "type", "bridge"]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}.1/24", f.subnet),
            "dev",
            &f.bridge,
        ]);
        sh(&["ip", "link", "set", &f.bridge, "up"]);
        for (i, ns) in f.ns.iter().enumerate() {
            let (host, inner) = (format!("a{tag}{id}h{i}"), format!("a{tag}{id}n{i}"));
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
            ]);
            sh(&["ip", "link", "set", &inner, "netns", ns]);
            sh(&["ip", "link", "set", &host, "master", &f.bridge, "up"]);
            let ip = format!("{}/24", f.ip(i));
            sh(&[
                "ip", "netns", "exec", ns, "ip", "addr", "add", &ip, "dev", &inner,
            ]);
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", &inner, "up"]);
            sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        }
        f
    }

    /// The address of namespace `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 2)
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.ns[i]
    }

    /// Cuts (or heals) namespace `i` from every namespace in `others`, both ways.
    pub fn cut(&self, i: usize, others: &[usize], on: bool) {
        let verb = if on { "add" } else { "del" };
        for &j in others.iter().filter(|j| **j != i) {
            let (a, b) = (self.ip(i), self.ip(j));
            for (ns, to) in [(&self.ns[i], &b), (&self.ns[j], &a)] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "ip",
                    "route",
                    verb,
                    "blackhole",
                    &format!("{to}/32"),
                ]);
            }
        }
    }

    /// Starts `bin args...` inside namespace `i`, logging to `log`.
    pub fn spawn(&self, i: usize, name: &str, args: &[&str], log: &Path) -> Daemon {
        let out = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[i]])
            .arg(bin(name))
            .args(args)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn in a namespace");
        Daemon(child)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// `atlant status --format json` (Null if no monitor answered).
pub fn status(mon: &str) -> serde_json::Value {
    let o = run("atlant", &["--mon", mon, "status", "--format", "json"]);
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Whether the map shows `osd.ID` up.
pub fn osd_up(mon: &str, id: u32) -> bool {
    let o = run("atlant", &["--mon", mon, "osd", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .any(|o| o["id"] == id && o["up"] == true)
}

/// Every PG active+clean, and every object on its placement's OSDs at one version.
pub fn clean(mon: &str) -> bool {
    let s = status(mon);
    let total = s["pgs"]["total"].as_u64().unwrap_or(0);
    total > 0
        && s["pgs"]["active+clean"].as_u64() == Some(total)
        && run("atlant", &["--mon", mon, "debug", "check-replicas"])
            .status
            .success()
}

/// The primary of the PG that holds the first object of `rbd/vm1`.
pub fn primary_of_first_object(mon: &str) -> u32 {
    runtime().block_on(async {
        let m = client::MonClient::new(client::parse_addrs(mon)).expect("monitor addresses");
        let map = m.get_map().await.expect("map");
        let (pool, image) = map.resolve_image("rbd", "vm1").expect("rbd/vm1");
        let object = proto::ObjectId {
            pool: pool.id,
            image: image.id,
            index: 0,
        };
        let pg = proto::placement::object_pg(&object, pool);
        proto::pg::pg_mapping(&map, pool, pg.seed)
            .primary()
            .expect("the pg has a primary")
            .0
    })
}
