//! A PG whose last active interval has no member left is incomplete: it serves nothing
//! (never a guess from older copies), `atlant status` and `atlant pg ls` say which OSDs it
//! waits for, and `atlant osd lost` is the operator's confirmed way out.

use atlant_tests::*;
use serde_json::Value;
use std::time::Duration;

fn pgs(mon: &str, state: &str) -> Vec<Value> {
    let o = run(
        "atlant",
        &[
            "--mon", mon, "pg", "ls", "--state", state, "--format", "json",
        ],
    );
    serde_json::from_slice::<Value>(&o.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn write_some(uri: &str, dir: &std::path::Path, name: &str) {
    let f = dir.join(name);
    std::fs::write(
        &f,
        (0..8 << 20)
            .map(|i| (i * 7 + name.len()) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&f)
        .arg(uri)
        .output()
        .expect("qemu-img");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn an_interval_with_no_member_left_waits_until_its_osds_are_declared_lost() {
    let dir = TempDir::new("incomplete");
    let env = dev_up(
        dir.path(),
        &[
            "--osds",
            "4",
            "--osd-size",
            "128M",
            "--image-size",
            "64M",
            "--pg-count",
            "8",
            "--osd-grace-secs",
            "2",
        ],
    );
    let mon = env["ATLANT_MON"].clone();
    let uri = env["NBD_URI"].clone();
    let d = dir.path().to_str().unwrap();
    let pid = |id: u32| cluster_pids(dir.path(), "OSD_PIDS")[&id.to_string()];
    write_some(&uri, dir.path(), "a");
    assert!(wait_until(Duration::from_secs(30), || clean(&mon)));

    // The first object's PG: its placement is [a, b, c]; c dies, {a, b} go on and take
    // writes; then a and b die too and are marked out, and c comes back.
    let first: Vec<Value> = pgs(&mon, "active");
    let victim_pg = first
        .iter()
        .find(|p| p["primary"] == primary_of_first_object(&mon))
        .expect("a pg")
        .clone();
    let set: Vec<u32> = victim_pg["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let (a, b, c) = (set[0], set[1], set[2]);
    signal(pid(c), "-KILL");
    assert!(wait_until(Duration::from_secs(15), || !osd_up(&mon, c)));
    write_some(&uri, dir.path(), "bb");
    for x in [a, b] {
        signal(pid(x), "-KILL");
    }
    assert!(wait_until(Duration::from_secs(15), || !osd_up(&mon, a)
        && !osd_up(&mon, b)));
    let o = run(
        "atlant",
        &["--mon", &mon, "osd", "out", &a.to_string(), &b.to_string()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run("atlant", &["dev", "start", "--dir", d, &format!("osd.{c}")]);
    assert!(o.status.success(), "{}", text(&o));

    // Incomplete, waiting for a and b, and says so.
    assert!(
        wait_until(Duration::from_secs(20), || !pgs(&mon, "incomplete")
            .is_empty()),
        "no pg incomplete: {}",
        text(&run("atlant", &["--mon", &mon, "pg", "ls"]))
    );
    let inc = pgs(&mon, "incomplete");
    let waiting: Vec<u64> = inc[0]["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(
        waiting.contains(&(a as u64)) && waiting.contains(&(b as u64)),
        "{inc:?}"
    );
    let s = status(&mon);
    assert_eq!(s["health"]["status"], "HEALTH_ERR", "{s}");
    let checks = s["health"]["checks"].to_string();
    assert!(checks.contains("incomplete"), "{checks}");
    println!("incomplete: {} pgs, e.g. {}", inc.len(), inc[0]["why"]);

    // `osd lost` lists what may be lost and does nothing without confirmation.
    let o = run("atlant", &["--mon", &mon, "osd", "lost", &a.to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&victim_pg["pgid"].as_str().unwrap().to_string()),
        "{}",
        text(&o)
    );
    assert!(!pgs(&mon, "incomplete").is_empty());
    for x in [a, b] {
        let o = run(
            "atlant",
            &[
                "--mon",
                &mon,
                "osd",
                "lost",
                &x.to_string(),
                "--yes-i-really-mean-it",
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    assert!(
        wait_until(Duration::from_secs(30), || pgs(&mon, "incomplete")
            .is_empty()
            && status(&mon)["pgs"]["inactive"] == 0),
        "still inactive after osd lost: {}",
        text(&run("atlant", &["--mon", &mon, "pg", "ls"]))
    );
}
