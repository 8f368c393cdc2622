//! A primary cut off from the monitors and its peers while the gateway still reaches it
//! (every monitor and OSD in its own network namespace on one bridge; the gateway and the
//! workload in the test's namespace). Its read leases run out, so it answers no read that
//! a new interval could have made stale; the monitors mark it down, the other members peer
//! without it, and IO goes on. After the heal it registers again, rejoins and is recovered.
//! The verifying workload (`tests/nbd_verify.py`) sees no stale read and no lost write.

use atlant_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MONS: usize = 3;
const OSDS: usize = 4;

#[test]
fn a_partitioned_primary_serves_no_stale_read_and_rejoins() {
    let dir = TempDir::new("osdpart");
    let d = dir.path();
    let fabric = Fabric::new(MONS + OSDS, "op");
    let mon_addrs: Vec<String> = (0..MONS)
        .map(|i| format!("{}:6789", fabric.ip(i)))
        .collect();
    let mon = mon_addrs.join(",");
    let names = ["a", "b", "c"];
    let initial = names
        .iter()
        .zip(&mon_addrs)
        .map(|(n, a)| format!("{n}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let fsid = format!("{:032x}", rand::random::<u128>());
    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = d.join(format!("mon.{name}"));
        let data = data.to_str().unwrap();
        let o = run(
            "atlant-mon",
            &[
                "mkfs",
                "--data",
                data,
                "--name",
                name,
                "--addr",
                &mon_addrs[i],
                "--fsid",
                &fsid,
                "--initial",
                &initial,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        daemons.push(fabric.spawn(
            i,
            "atlant-mon",
            &["run", "--data", data, "--osd-grace-secs", "2"],
            &d.join(format!("mon.{name}.log")),
        ));
    }
    assert!(
        wait_until(Duration::from_secs(30), || status(&mon)["leader"]
            .is_string()),
        "no monitor leader"
    );
    for i in 0..OSDS {
        let dev = d.join(format!("osd{i}.img"));
        let dev = dev.to_str().unwrap();
        let o = run(
            "atlant-osd",
            &[
                "mkfs",
                "--device",
                dev,
                "--mon",
                &mon,
                "--host",
                &format!("h{i}"),
                "--size",
                "256M",
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    for i in 0..OSDS {
        let dev = d.join(format!("osd{i}.img"));
        let addr = format!("{}:6800", fabric.ip(MONS + i));
        daemons.push(fabric.spawn(
            MONS + i,
            "atlant-osd",
            &[
                "run",
                "--device",
                dev.to_str().unwrap(),
                "--mon",
                &mon,
                "--addr",
                &addr,
                "--heartbeat-grace-secs",
                "2",
            ],
            &d.join(format!("osd.{i}.log")),
        ));
    }
    assert!(
        wait_until(Duration::from_secs(30), || status(&mon)["osds"]["up"]
            == OSDS),
        "OSDs not up"
    );
    for args in [
        vec!["pool", "create", "rbd", "--pg-count", "16"],
        vec!["image", "create", "rbd/vm1", "--size", "64M"],
    ] {
        let mut a = vec!["--mon", mon.as_str()];
        a.extend(args);
        let o = run("atlant", &a);
        assert!(o.status.success(), "{}", text(&o));
    }
    let nbd_addr = free_addr();
    daemons.push(Daemon::start(
        "atlant-nbd",
        &["--mon", &mon, "--listen", &nbd_addr],
        &d.join("nbd.log"),
    ));
    let uri = format!("nbd://{nbd_addr}/rbd/vm1");
    assert!(
        wait_until(Duration::from_secs(20), || clean(&mon)),
        "not clean at start"
    );

    // The workload writes and reads the first MiB: the victim's PG among others.
    let stop = d.join("stop");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nbd_verify.py");
    let workload = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&uri)
        .args([
            "--region-mib",
            "1",
            "--seconds",
            "300",
            "--read-ratio",
            "0.5",
        ])
        .arg("--stop-file")
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    std::thread::sleep(Duration::from_secs(3));

    let victim = primary_of_first_object(&mon);
    let at = MONS + victim as usize;
    let others: Vec<usize> = (0..MONS + OSDS).filter(|i| *i != at).collect();
    println!("cutting osd.{victim} (primary of the first object's pg) off from monitors and peers");
    fabric.cut(at, &others, true);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || !osd_up(&mon, victim)),
        "partitioned osd.{victim} not marked down"
    );
    println!("osd.{victim} marked down after {:?}", t.elapsed());
    let moved = wait_until(Duration::from_secs(20), || {
        primary_of_first_object(&mon) != victim
            && status(&mon)["pgs"]["inactive"].as_u64() == Some(0)
    });
    assert!(moved, "the pg did not go active on another primary");
    println!("pgs active without osd.{victim} after {:?}", t.elapsed());
    // IO goes on without it for a while; the gateway can still reach the old primary.
    std::thread::sleep(Duration::from_secs(5));

    fabric.cut(at, &others, false);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || osd_up(&mon, victim)),
        "osd.{victim} did not rejoin after the heal"
    );
    println!("osd.{victim} up again {:?} after the heal", t.elapsed());
    assert!(
        wait_until(Duration::from_secs(60), || clean(&mon)),
        "not clean after the heal: {}",
        status(&mon)
    );
    println!(
        "active+clean, replicas identical {:?} after the heal",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));

    std::fs::write(&stop, b"").unwrap();
    let out = workload.wait_with_output().expect("workload report");
    let v: Value = serde_json::from_slice(&out.stdout).expect("workload json");
    println!(
        "partition: writes {} reads {} io_errors {} verify_errors {} lost {} max_latency {} ms stalls {}",
        v["writes"], v["reads"], v["io_errors"], v["verify_errors"], v["lost_writes"],
        v["max_latency_ms"], v["stalls"]
    );
    assert_eq!(v["verify_errors"], 0, "{}", v["first_errors"]);
    assert_eq!(v["lost_writes"], 0, "{}", v["first_errors"]);
    drop(daemons);
}
