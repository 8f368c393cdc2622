//! OSD liveness on real processes: a killed OSD is marked down within the grace period and
//! up again when it restarts; a hung OSD (SIGSTOP) is marked down, and after SIGCONT it
//! registers a new incarnation by itself; IO works afterwards.

use atlant_tests::*;
use bytes::Bytes;
use std::time::{Duration, Instant};

fn osd_up(mon: &str, id: u64) -> Option<bool> {
    let o = run("atlant", &["--mon", mon, "osd", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|o| o["id"] == id)
        .map(|o| o["up"] == true)
}

fn pid_of(dir: &std::path::Path, id: u64) -> u32 {
    cluster_pids(dir, "OSD_PIDS")[&id.to_string()]
}

/// kill -9 of osd.`id`, then waits until the map shows it down (within the grace period
/// plus the check interval and a margin).
fn kill_until_down(dir: &std::path::Path, mon: &str, id: u64) -> Duration {
    signal(pid_of(dir, id), "-KILL");
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || osd_up(mon, id) == Some(false)),
        "osd.{id} not marked down"
    );
    t.elapsed()
}

/// Starts osd.`id` again and waits until the map shows it up.
fn start_until_up(dir: &std::path::Path, mon: &str, id: u64) {
    let o = run(
        "atlant",
        &[
            "dev",
            "start",
            "--dir",
            dir.to_str().unwrap(),
            &format!("osd.{id}"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        wait_until(Duration::from_secs(10), || osd_up(mon, id) == Some(true)),
        "restarted osd.{id} not up"
    );
}

#[test]
fn killed_and_hung_osds_are_marked_down_and_come_back() {
    let dir = TempDir::new("liveness");
    let env = dev_up_small(dir.path(), &["--osd-grace-secs", "2"]);
    let mon = env["ATLANT_MON"].clone();
    let d = dir.path().to_str().unwrap();

    // kill -9: down within the grace period (plus the check interval and a margin).
    let took = kill_until_down(dir.path(), &mon, 1);
    println!("killed osd.1 marked down after {took:?}");
    let status = run("atlant", &["--mon", &mon, "status", "--format", "json"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("osds down"),
        "status does not warn"
    );
    start_until_up(dir.path(), &mon, 1);

    // SIGSTOP past the grace period: down; SIGCONT: it registers again by itself.
    let pid2 = pid_of(dir.path(), 2);
    signal(pid2, "-STOP");
    let down = wait_until(Duration::from_secs(6), || osd_up(&mon, 2) == Some(false));
    signal(pid2, "-CONT");
    assert!(down, "hung osd.2 not marked down");
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || osd_up(&mon, 2) == Some(true)),
        "osd.2 did not come back after SIGCONT"
    );
    println!("osd.2 up again {:?} after SIGCONT", t.elapsed());

    // IO works on the healed cluster.
    let rt = runtime();
    rt.block_on(async {
        let cluster = client::Cluster::connect(client::parse_addrs(&mon))
            .await
            .unwrap();
        let image = client::Image::open(&cluster, "rbd", "vm1").unwrap();
        let data = Bytes::from(vec![0x3cu8; 1 << 20]);
        image.write(0, data.clone(), false).await.unwrap();
        assert_eq!(image.read(0, 1 << 20).await.unwrap(), data);
    });
    let o = run("atlant", &["dev", "down", "--dir", d]);
    assert!(o.status.success(), "{}", text(&o));
}

fn osd_in(mon: &str, id: u64) -> Option<bool> {
    let o = run("atlant", &["--mon", mon, "osd", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|o| o["id"] == id)
        .map(|o| o["in"] == true)
}

/// One OSD's reports cannot get a healthy peer marked down; `noout` keeps a down OSD in;
/// without it the OSD is marked out after `down_out_interval`; restarted, an OSD the
/// monitors marked out is in again at once and recovery brings its PGs back to clean,
/// while one the operator marked out stays out until the operator marks it in.
#[test]
fn single_reporter_noout_and_down_out_interval() {
    let dir = TempDir::new("downout");
    let env = dev_up(
        dir.path(),
        &[
            "--osd-size",
            "64M",
            "--image-size",
            "64M",
            "--pg-count",
            "8",
            "--osd-grace-secs",
            "2",
            "--down-out-interval-secs",
            "3",
        ],
    );
    let mon = env["ATLANT_MON"].clone();
    let rt = runtime();

    // osd.1 alone claims osd.0 is dead, for longer than the grace period: ignored.
    rt.block_on(async {
        let m = client::MonClient::new(client::parse_addrs(&mon)).unwrap();
        let map = m.get_map().await.unwrap();
        let up_from = map.osd(proto::OsdId(0)).unwrap().up_from;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let req = proto::msg::ControlRequest::OsdFailure {
                reporter: proto::OsdId(1),
                target: proto::OsdId(0),
                target_up_from: up_from,
                refused: false,
            };
            m.call(&req).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert_eq!(
        osd_up(&mon, 0),
        Some(true),
        "one reporter got a healthy OSD marked down"
    );

    // noout: down, but stays in past the interval.
    let o = run("atlant", &["--mon", &mon, "osd", "set", "noout"]);
    assert!(o.status.success(), "{}", text(&o));
    kill_until_down(dir.path(), &mon, 2);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        osd_in(&mon, 2),
        Some(true),
        "noout is set but osd.2 was marked out"
    );

    // Without noout: out after the interval.
    let o = run("atlant", &["--mon", &mon, "osd", "unset", "noout"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || osd_in(&mon, 2) == Some(false)),
        "osd.2 not marked out after down_out_interval"
    );
    println!(
        "osd.2 marked out {:?} after noout was unset (interval 3 s)",
        t.elapsed()
    );
    let status = run("atlant", &["--mon", &mon, "status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["osds"]["in"], 2, "{v}");

    // Restarted, an OSD the monitors marked out is up at once (a new incarnation) and in
    // again: its PGs peer and recover it, back to active+clean with identical copies.
    start_until_up(dir.path(), &mon, 2);
    assert_eq!(
        osd_in(&mon, 2),
        Some(true),
        "osd.2, out by the down-out timer, is not in again after it booted"
    );
    let all_clean = || {
        let s = run("atlant", &["--mon", &mon, "status", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap_or_default();
        v["pgs"]["active+clean"] == v["pgs"]["total"]
            && run("atlant", &["--mon", &mon, "debug", "check-replicas"])
                .status
                .success()
    };
    assert!(
        wait_until(Duration::from_secs(30), all_clean),
        "not clean after osd.2 came back in"
    );

    // Out by the operator: restarted, it stays out until the operator marks it in.
    let o = run("atlant", &["--mon", &mon, "osd", "out", "2"]);
    assert!(o.status.success(), "osd out: {}", text(&o));
    kill_until_down(dir.path(), &mon, 2);
    start_until_up(dir.path(), &mon, 2);
    assert_eq!(
        osd_in(&mon, 2),
        Some(false),
        "osd.2, out by the operator, came in on its own"
    );
    let o = run("atlant", &["--mon", &mon, "osd", "in", "2"]);
    assert!(o.status.success(), "osd in: {}", text(&o));
    assert!(
        wait_until(Duration::from_secs(30), all_clean),
        "not clean after osd in"
    );
}
