//! Failures under a verifying workload, on real processes: 3 monitors, 4 OSDs, the NBD
//! gateway, and `tests/nbd_verify.py` writing and reading 4 KiB blocks through the gateway
//! (every read must return the last acknowledged write), with a FLUSH after one write in
//! five and FUA on one in ten. Each phase ends with zero verification errors, zero IO
//! errors (reads, writes and FLUSHes ride out every fault), zero acknowledged writes lost, every PG active+clean and every
//! object on its placement's OSDs at one version; the workload's longest op (the IO stall)
//! and the time recovery took are printed.
//!
//! Phases, on one cluster:
//! 1. kill -9 a random OSD every few seconds, restart it a few seconds later;
//! 2. SIGSTOP an OSD for longer than the grace period, then SIGCONT;
//! 3. kill -9 the primary of the PG being written;
//! 4. a slow, stalling disk: one OSD's device answers late (`ATLANT_OSD_DEVICE_DELAY`, as
//!    dm-delay would) while the other OSDs are killed and restarted one at a time, under
//!    two writers on disjoint regions of the image;
//! 5. power cycle: kill -9 every process under load, `dev up` again, read everything back;
//! 6. lose a device: an OSD's backing file is corrupted while it is stopped; it refuses to
//!    start on it, is marked out after the (shortened) down-out interval, the cluster
//!    re-replicates, and `atlant osd destroy` removes it.

use atlant_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GRACE_SECS: &str = "2";
const DOWN_OUT_SECS: &str = "20";

struct Workload {
    child: Option<Child>,
    stop: PathBuf,
    name: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nbd_verify.py")
}

fn start_workload(dir: &Path, uri: &str, name: &str, extra: &[&str]) -> Workload {
    let stop = dir.join(format!("{name}.stop"));
    let _ = std::fs::remove_file(&stop);
    let child = Command::new("/usr/bin/python3")
        .arg(script())
        .arg(uri)
        .args(["--region-mib", "32", "--seconds", "600"])
        // fsync-heavy, as a guest with a journalling filesystem is: FLUSH and FUA must
        // ride out every fault like writes do.
        .args(["--flush-ratio", "0.2", "--fua-ratio", "0.1"])
        .arg("--stop-file")
        .arg(&stop)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nbd_verify.py (python3-libnbd)");
    Workload {
        child: Some(child),
        stop,
        name: name.to_string(),
    }
}

impl Workload {
    /// Stops the workload (it reads back everything it wrote) and returns its report.
    fn finish(mut self) -> Value {
        std::fs::write(&self.stop, b"").unwrap();
        let v = self.report();
        println!(
            "{:<14} writes {:>6} reads {:>6} flushes {:>5} io_errors {} verify_errors {} lost {} max_latency {} ms p99 {} ms stalls {}",
            self.name,
            v["writes"],
            v["reads"],
            v["flushes"],
            v["io_errors"],
            v["verify_errors"],
            v["lost_writes"],
            v["max_latency_ms"],
            v["p99_latency_ms"],
            v["stalls"]
        );
        assert_eq!(
            v["verify_errors"], 0,
            "{}: {}",
            self.name, v["first_errors"]
        );
        assert_eq!(v["lost_writes"], 0, "{}: {}", self.name, v["first_errors"]);
        // The gateway stayed up: no read, write or FLUSH may fail while copies remain.
        assert_eq!(v["io_errors"], 0, "{}: {}", self.name, v["first_errors"]);
        assert!(
            v["flushes"].as_u64().unwrap_or(0) > 0,
            "{}: no flushes",
            self.name
        );
        assert!(
            v["writes"].as_u64().unwrap_or(0) > 0,
            "{}: no writes",
            self.name
        );
        v
    }

    /// Waits for the workload to exit (stopped, or its connection died) and parses its
    /// report.
    fn report(&mut self) -> Value {
        let child = self.child.take().expect("workload already finished");
        let out = child.wait_with_output().expect("workload output");
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{}: no report ({e}): {line}", self.name))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for every PG active+clean and every object on its placement at one version;
/// returns how long that took.
fn wait_clean(mon: &str, what: &str) -> Duration {
    let t = Instant::now();
    let ok = wait_until(Duration::from_secs(90), || clean(mon));
    if !ok {
        let o = run("atlant", &["--mon", mon, "pg", "ls"]);
        let c = run("atlant", &["--mon", mon, "debug", "check-replicas"]);
        panic!(
            "{what}: not clean after 90 s\n{}\n{}\n{}",
            text(&o),
            text(&c),
            status(mon)
        );
    }
    println!(
        "{what}: active+clean and replicas identical after {:?}",
        t.elapsed()
    );
    t.elapsed()
}

fn osd_pid(dir: &Path, id: u32) -> u32 {
    cluster_pids(dir, "OSD_PIDS")[&id.to_string()]
}

fn start_osd(dir: &Path, id: u32) {
    start_osd_with(dir, id, None);
}

/// Starts osd.`id` again, its device delayed as `delay` says (`ATLANT_OSD_DEVICE_DELAY`).
fn start_osd_with(dir: &Path, id: u32, delay: Option<&str>) {
    let d = dir.to_str().unwrap();
    let mut c = Command::new(bin("atlant"));
    c.args(["dev", "start", "--dir", d, &format!("osd.{id}")])
        .env_remove("ATLANT_MON")
        .env_remove("ATLANT_OSD_DEVICE_DELAY");
    if let Some(spec) = delay {
        c.env("ATLANT_OSD_DEVICE_DELAY", spec);
    }
    let o = c.output().expect("spawn atlant dev start");
    assert!(o.status.success(), "start osd.{id}: {}", text(&o));
}

#[test]
fn osd_failures_under_a_verifying_workload() {
    let dir = TempDir::new("faults");
    let d = dir.path().to_str().unwrap().to_string();
    let env = dev_up(
        dir.path(),
        &[
            "--osds",
            "4",
            "--osd-size",
            "256M",
            "--image-size",
            "256M",
            "--pg-count",
            "32",
            "--osd-grace-secs",
            GRACE_SECS,
            "--down-out-interval-secs",
            DOWN_OUT_SECS,
        ],
    );
    let mon = env["ATLANT_MON"].clone();
    let uri = env["NBD_URI"].clone();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };

    // 1. Random kill -9 and restart, one OSD at a time.
    let w = start_workload(dir.path(), &uri, "kill-restart", &[]);
    let until = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while Instant::now() < until {
        let victim = next(4) as u32;
        signal(osd_pid(dir.path(), victim), "-KILL");
        std::thread::sleep(Duration::from_millis(2000 + next(3000)));
        start_osd(dir.path(), victim);
        assert!(
            wait_until(Duration::from_secs(45), || osd_up(&mon, victim)),
            "osd.{victim} did not come back"
        );
        std::thread::sleep(Duration::from_millis(1000 + next(2000)));
        rounds += 1;
    }
    let recovery = wait_clean(&mon, "kill-restart");
    w.finish();
    println!("kill-restart: {rounds} kills; recovery after the last restart {recovery:?}");

    // 2. A hung OSD: stopped for longer than the grace period, then continued.
    let w = start_workload(dir.path(), &uri, "sigstop", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let victim = next(4) as u32;
    let pid = osd_pid(dir.path(), victim);
    signal(pid, "-STOP");
    assert!(
        wait_until(Duration::from_secs(15), || !osd_up(&mon, victim)),
        "stopped osd.{victim} not marked down"
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(pid, "-CONT");
    let t = Instant::now();
    // A process marked down while running is held down a while before it may register
    // again (flap damping, longer if it was wrongly marked down before under load).
    assert!(
        wait_until(Duration::from_secs(90), || osd_up(&mon, victim)),
        "osd.{victim} not up again after SIGCONT"
    );
    println!(
        "sigstop: osd.{victim} up again {:?} after SIGCONT",
        t.elapsed()
    );
    wait_clean(&mon, "sigstop");
    std::thread::sleep(Duration::from_secs(1));
    w.finish();

    // 3. The primary of the PG being written dies.
    let w = start_workload(dir.path(), &uri, "kill-primary", &["--region-mib", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    let primary = primary_of_first_object(&mon);
    signal(osd_pid(dir.path(), primary), "-KILL");
    std::thread::sleep(Duration::from_secs(4));
    start_osd(dir.path(), primary);
    assert!(wait_until(Duration::from_secs(20), || osd_up(
        &mon, primary
    )));
    wait_clean(&mon, "kill-primary");
    w.finish();

    // 4. A slow, stalling disk: osd.`slow` answers every IO 2-10 ms late and one in 300
    // after 600 ms, while each other OSD in turn is killed and restarted under two
    // writers. Peering meets writes still queued on the slow disk; no op may fail.
    let slow = next(4) as u32;
    signal(osd_pid(dir.path(), slow), "-KILL");
    start_osd_with(dir.path(), slow, Some("2+8,stall=600/300"));
    assert!(
        wait_until(Duration::from_secs(45), || osd_up(&mon, slow)),
        "osd.{slow} did not come back with a slow disk"
    );
    let log =
        std::fs::read_to_string(dir.path().join(format!("log/osd.{slow}.log"))).unwrap_or_default();
    assert!(
        log.contains("every IO delayed"),
        "osd.{slow} does not say its device is delayed"
    );
    let w1 = start_workload(
        dir.path(),
        &uri,
        "slow-disk-a",
        &["--region-mib", "16", "--region-offset-mib", "0"],
    );
    let w2 = start_workload(
        dir.path(),
        &uri,
        "slow-disk-b",
        &["--region-mib", "16", "--region-offset-mib", "64"],
    );
    std::thread::sleep(Duration::from_secs(3));
    for victim in (0..4).filter(|v| *v != slow) {
        signal(osd_pid(dir.path(), victim), "-KILL");
        std::thread::sleep(Duration::from_millis(1500 + next(2000)));
        start_osd(dir.path(), victim);
        assert!(
            wait_until(Duration::from_secs(45), || osd_up(&mon, victim)),
            "osd.{victim} did not come back beside a slow disk"
        );
        std::thread::sleep(Duration::from_millis(1500 + next(1500)));
    }
    let recovery = wait_clean(&mon, "slow-disk");
    let (a, b) = (w1.finish(), w2.finish());
    println!(
        "slow-disk: osd.{slow} slow; 3 kills; recovery after the last restart {recovery:?}; longest ops {} and {} ms",
        a["max_latency_ms"], b["max_latency_ms"]
    );
    // The disk is fast again for what follows.
    signal(osd_pid(dir.path(), slow), "-KILL");
    start_osd(dir.path(), slow);
    assert!(wait_until(Duration::from_secs(45), || osd_up(&mon, slow)));
    wait_clean(&mon, "slow-disk healed");

    // 5. Power cycle under load: every process killed, the cluster started again.
    let state = dir.path().join("power.state");
    let st = state.to_str().unwrap().to_string();
    let w = start_workload(dir.path(), &uri, "power-cycle", &["--state", &st]);
    std::thread::sleep(Duration::from_secs(4));
    for (key, kind) in [("OSD_PIDS", "osd"), ("MON_PIDS", "mon")] {
        for (name, pid) in cluster_pids(dir.path(), key) {
            // Every daemon must still be running here: one that exited on its own is a bug
            // (its log says why).
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let log = dir.path().join("log").join(format!("{kind}.{name}.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                panic!(
                    "{kind}.{name} (pid {pid}) exited before the power cycle; the end of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            signal(pid, "-KILL");
        }
    }
    signal(
        cluster_env(dir.path(), "NBD_PID").parse().expect("NBD_PID"),
        "-KILL",
    );
    let mut w = w;
    let before = w.report();
    println!("power-cycle before the kill: {before}");
    assert_eq!(before["verify_errors"], 0, "{}", before["first_errors"]);
    let t = Instant::now();
    let o = run("atlant", &["dev", "up", "--dir", &d]);
    assert!(o.status.success(), "dev up after power cycle: {}", text(&o));
    println!("power-cycle: cluster up again after {:?}", t.elapsed());
    let uri = cluster_env(dir.path(), "NBD_URI");
    let v = Command::new("/usr/bin/python3")
        .arg(script())
        .arg(&uri)
        .args(["--verify-only", "--state", &st])
        .output()
        .expect("verify");
    let after: Value = serde_json::from_slice(&v.stdout).expect("verify report");
    println!("power-cycle verify after restart: {after}");
    assert_eq!(after["verify_errors"], 0, "{}", after["first_errors"]);
    assert_eq!(after["lost_writes"], 0);
    wait_clean(&mon, "power-cycle");

    // 6. A lost device: corrupted while its OSD is stopped.
    let w = start_workload(dir.path(), &uri, "device-loss", &[]);
    let victim = 3;
    signal(osd_pid(dir.path(), victim), "-KILL");
    assert!(
        wait_until(Duration::from_secs(15), || !osd_up(&mon, victim)),
        "killed osd.{victim} not marked down"
    );
    let img = dir.path().join(format!("osd{victim}.img"));
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&vec![0xa5u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let _ = run(
        "atlant",
        &["dev", "start", "--dir", &d, &format!("osd.{victim}")],
    );
    assert!(
        !wait_until(Duration::from_secs(5), || osd_up(&mon, victim)),
        "osd.{victim} started on a corrupted device"
    );
    let log = std::fs::read_to_string(dir.path().join(format!("log/osd.{victim}.log")))
        .unwrap_or_default();
    let why = log.lines().find(|l| l.starts_with("Error")).unwrap_or("");
    println!("device-loss: osd.{victim} refused to start: {why}");
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let o = run("atlant", &["--mon", &mon, "osd", "ls", "--format", "json"]);
            String::from_utf8_lossy(&o.stdout).contains("\"in\": false")
        }),
        "osd.{victim} not marked out"
    );
    println!(
        "device-loss: osd.{victim} marked out after {:?}",
        t.elapsed()
    );
    let recovery = wait_clean(&mon, "device-loss re-replication");
    println!("device-loss: re-replicated in {recovery:?}");
    w.finish();
    let o = run(
        "atlant",
        &[
            "--mon",
            &mon,
            "osd",
            "destroy",
            &victim.to_string(),
            "--yes-i-really-mean-it",
        ],
    );
    assert!(o.status.success(), "osd destroy: {}", text(&o));
    assert!(clean(&mon));
}
