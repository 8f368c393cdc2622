//! Daemon behaviour on real processes: the monitor's map survives kill -9, a damaged
//! monitor store refuses to start, an OSD never starts on a device that is not its own,
//! garbage on a daemon's socket closes only that connection, and the CLI explains bad input.

use atlant_tests::*;
use bytes::Bytes;
use std::io::Write;
use std::time::Duration;

fn status_json(mon: &str) -> serde_json::Value {
    let o = run("atlant", &["--mon", mon, "status", "--format", "json"]);
    assert!(o.status.success(), "status: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status json")
}

#[test]
fn monitor_map_survives_kill_9_and_damage_is_refused() {
    let dir = TempDir::new("mon");
    let (mut mon, addr) = start_mon(dir.path());
    let o = run(
        "atlant",
        &["--mon", &addr, "pool", "create", "p1", "--pg-count", "8"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "atlant",
        &["--mon", &addr, "image", "create", "p1/img", "--size", "1G"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let before = status_json(&addr);
    mon.kill();

    let data = dir.path().join("mon");
    let mut mon = Daemon::start(
        "atlant-mon",
        &["run", "--data", data.to_str().unwrap()],
        &dir.path().join("mon2.log"),
    );
    assert!(wait_until(Duration::from_secs(10), || run(
        "atlant",
        &["--mon", &addr, "status"]
    )
    .status
    .success()));
    let after = status_json(&addr);
    assert_eq!(before["epoch"], after["epoch"]);
    assert_eq!(before["images"], after["images"]);
    assert_eq!(before["pools"], after["pools"]);
    mon.kill();

    // Flip bytes throughout the store: the monitor must refuse to start, saying why.
    let path = data.join("mon.redb");
    let mut raw = std::fs::read(&path).unwrap();
    let n = raw.len();
    for i in (4096..n).step_by(97) {
        raw[i] ^= 0x5a;
    }
    std::fs::write(&path, raw).unwrap();
    let mut bad = Daemon::start(
        "atlant-mon",
        &["run", "--data", data.to_str().unwrap()],
        &dir.path().join("mon3.log"),
    );
    let status = bad
        .wait_exit(Duration::from_secs(10))
        .expect("a damaged monitor must exit, not serve");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("mon3.log")).unwrap();
    assert!(
        log.contains("Error") || log.contains("damaged") || log.contains("error"),
        "{log}"
    );
}

#[test]
fn osd_refuses_a_device_that_is_not_its_own() {
    let dir = TempDir::new("osddev");
    let (_mon, addr) = start_mon(dir.path());
    let dev = dir.path().join("osd0.img");
    let d = dev.to_str().unwrap();
    let o = run(
        "atlant-osd",
        &[
            "mkfs", "--device", d, "--mon", &addr, "--host", "h0", "--size", "64M",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    // Formatting again is refused without --force.
    let o = run(
        "atlant-osd",
        &["mkfs", "--device", d, "--mon", &addr, "--host", "h0"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already holds the store of osd.0"),
        "{}",
        text(&o)
    );

    // A device formatted for another cluster must not start here.
    let other = TempDir::new("osddev2");
    let (_mon2, addr2) = start_mon(other.path());
    let dev2 = other.path().join("osd.img");
    let o = run(
        "atlant-osd",
        &[
            "mkfs",
            "--device",
            dev2.to_str().unwrap(),
            "--mon",
            &addr2,
            "--host",
            "h0",
            "--size",
            "64M",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        "atlant-osd",
        &["run", "--device", dev2.to_str().unwrap(), "--mon", &addr],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("belongs to cluster"), "{}", text(&o));

    // A device that is not a store at all.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let o = run(
        "atlant-osd",
        &["run", "--device", junk.to_str().unwrap(), "--mon", &addr],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no Atlant superblock"), "{}", text(&o));
}

#[test]
fn garbage_closes_one_connection_and_the_monitor_keeps_serving() {
    let dir = TempDir::new("garbage");
    let (_mon, addr) = start_mon(dir.path());
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nUser-Agent: test\r\n\r\n"[..],
        &[0xffu8; 100][..],
        &[0u8; 40][..],
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(junk);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        // The monitor closes the connection (EOF or reset), it does not hang or crash.
        let r = std::io::Read::read(&mut s, &mut buf);
        assert!(matches!(r, Ok(0) | Err(_)), "expected close, got {r:?}");
    }
    // A well-formed client still gets answers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = net::transport::connect(&addr).await.unwrap();
        let req = proto::msg::encode_control(&proto::msg::ControlRequest::GetMap { have: 0 });
        let f = conn
            .call(
                proto::msg::msg_type::CONTROL,
                req,
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(!f.meta.is_empty());
    });
    assert!(run("atlant", &["--mon", &addr, "status"]).status.success());
}

#[test]
fn cli_explains_bad_input() {
    let o = run("atlant", &["status"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no monitors given"), "{}", text(&o));
    let dir = TempDir::new("cli");
    let (_mon, addr) = start_mon(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (&["image", "create", "noslash", "--size", "1G"], "POOL/NAME"),
        (
            &["image", "create", "nopool/x", "--size", "1G"],
            "does not exist",
        ),
        (&["pool", "create", "p", "--size", "0"], "pool size"),
        (&["pool", "create", "bad/name"], "name"),
        (
            &["image", "create", "p/x", "--size", "12Q"],
            "unknown size unit",
        ),
        (
            &["pool", "create", "p", "--object-size", "3000"],
            "power of two",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["--mon", addr.as_str()];
        full.extend_from_slice(args);
        let o = run("atlant", &full);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            text(&o).contains(want),
            "{args:?}: expected {want:?} in {}",
            text(&o)
        );
    }
    // The config file is the last place monitors are looked up.
    let conf = dir.path().join("atlant.toml");
    std::fs::write(&conf, format!("mon = \"{addr}\"\n")).unwrap();
    let o = run(
        "atlant",
        &[
            "--conf",
            conf.to_str().unwrap(),
            "status",
            "--format",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}
