//! The monitor group on real processes:
//! - kill -9 the leader 20 times under a stream of map changes: every acknowledged change
//!   survives, no epoch is acknowledged twice or goes backwards, every monitor agrees on
//!   each epoch's map, and the next change commits within a few seconds (printed);
//! - stop all monitors and start them again: the map is intact;
//! - cut one monitor off (network namespaces): the other two keep committing, the isolated
//!   one commits nothing, and it catches up when the partition heals;
//! - add and remove a monitor while the group serves.

use atlant_tests::*;
use client::MonClient;
use proto::map::FailureDomain;
use proto::msg::{map_crc, ControlRequest, ControlResponse, StatusReport};
use proto::{ClusterMap, Command};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn status_of(addr: &str) -> Option<StatusReport> {
    let mon = MonClient::new(vec![addr.to_string()]).ok()?;
    match tokio::time::timeout(Duration::from_secs(3), mon.call(&ControlRequest::GetStatus)).await {
        Ok(Ok(ControlResponse::Status(r))) => Some(*r),
        _ => None,
    }
}

/// The map one monitor has applied (its own view, not forwarded).
async fn map_of(addr: &str) -> Option<ClusterMap> {
    let mon = MonClient::new(vec![addr.to_string()]).ok()?;
    tokio::time::timeout(Duration::from_secs(3), mon.get_map())
        .await
        .ok()?
        .ok()
}

fn pool(name: String) -> Command {
    Command::CreatePool {
        name,
        size: 1,
        min_size: 1,
        pg_count: 1,
        object_size: 1 << 20,
        failure_domain: FailureDomain::Osd,
    }
}

/// (pool, epoch, when the request was sent, when it was acknowledged)
type Acked = (String, u64, Instant, Instant);

#[test]
fn leader_kills_lose_no_change_and_a_full_restart_keeps_the_map() {
    let dir = TempDir::new("quorum");
    let d = dir.path().to_str().unwrap().to_string();
    let _cluster = dev_up(
        dir.path(),
        &["--osds", "1", "--no-image", "--osd-size", "64M"],
    );
    let addrs: Vec<String> = cluster_env(dir.path(), "MON_ADDRS")
        .split(',')
        .map(String::from)
        .collect();
    assert_eq!(addrs.len(), 3, "dev up starts three monitors by default");
    let rt = runtime();
    let mon = MonClient::new(addrs.clone()).unwrap();

    // A stream of changes: every acknowledged one is recorded with its epoch.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (mon, stop, acked, errors) = (
            Arc::clone(&mon),
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&errors),
        );
        rt.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let name = format!("p{i}");
                let sent = Instant::now();
                match mon.command(pool(name.clone())).await {
                    Ok((epoch, _)) => {
                        acked
                            .lock()
                            .unwrap()
                            .push((name, epoch, sent, Instant::now()))
                    }
                    Err(e) => errors.lock().unwrap().push(format!("{name}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Every map any monitor shows for an epoch must be the same map.
    let seen: Arc<Mutex<BTreeMap<u64, (u32, String)>>> = Arc::default();
    let forks: Arc<Mutex<Vec<String>>> = Arc::default();
    let observer = {
        let (addrs, stop, seen, forks) = (
            addrs.clone(),
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&forks),
        );
        rt.spawn(async move {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                for a in &addrs {
                    let Some(m) = map_of(a).await else { continue };
                    let crc = map_crc(&m);
                    let mut s = seen.lock().unwrap();
                    match s.get(&m.epoch) {
                        Some((c, who)) if *c != crc => forks.lock().unwrap().push(format!(
                            "epoch {}: {who} and {a} hold different maps",
                            m.epoch
                        )),
                        Some(_) => {}
                        None => {
                            s.insert(m.epoch, (crc, a.clone()));
                        }
                    }
                    if let Some(prev) = last.insert(a.clone(), m.epoch) {
                        if m.epoch < prev {
                            forks
                                .lock()
                                .unwrap()
                                .push(format!("{a} went back from epoch {prev} to {}", m.epoch));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut failover = Vec::new();
    for round in 0..20 {
        // Find the leader, kill it, time the first change sent after the kill.
        let leader = rt.block_on(async {
            for _ in 0..100 {
                for a in &addrs {
                    if let Some(s) = status_of(a).await {
                        if let Some(l) = s.mons.iter().find(|m| m.leader) {
                            return l.name.clone();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no leader")
        });
        let pid = cluster_pids(dir.path(), "MON_PIDS")[&leader];
        let before = acked.lock().unwrap().len();
        let killed = Instant::now();
        signal(pid, "-KILL");
        let ok = wait_until(Duration::from_secs(30), || {
            acked
                .lock()
                .unwrap()
                .iter()
                .skip(before)
                .any(|(_, _, sent, _)| *sent > killed)
        });
        assert!(
            ok,
            "round {round}: no change committed within 30 s after killing mon.{leader}"
        );
        let t = acked
            .lock()
            .unwrap()
            .iter()
            .skip(before)
            .find(|(_, _, sent, _)| *sent > killed)
            .map(|(_, _, _, t)| t.duration_since(killed))
            .unwrap();
        failover.push(t);
        let o = run(
            "atlant",
            &["dev", "start", "--dir", &d, &format!("mon.{leader}")],
        );
        assert!(o.status.success(), "{}", text(&o));
        // Wait for the restarted monitor to rejoin before the next kill.
        let back = wait_until(Duration::from_secs(20), || {
            rt.block_on(async {
                match status_of(&addrs[0]).await {
                    Some(s) => s.mons.iter().filter(|m| m.in_quorum).count() == 3,
                    None => false,
                }
            })
        });
        assert!(back, "round {round}: mon.{leader} did not rejoin");
    }
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        let _ = writer.await;
        let _ = observer.await;
    });
    let ms = |d: &Duration| d.as_millis();
    println!(
        "leader kill → next committed change, by round (ms): {:?}",
        failover.iter().map(ms).collect::<Vec<_>>()
    );
    failover.sort();
    println!(
        "leader kill → next committed change, 20 kills: median {} ms, max {} ms, min {} ms",
        ms(&failover[failover.len() / 2]),
        ms(failover.last().unwrap()),
        ms(&failover[0])
    );
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "user-visible errors: {errors:?}");
    let forks = forks.lock().unwrap().clone();
    assert!(forks.is_empty(), "{forks:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 40,
        "only {} changes acknowledged",
        acked.len()
    );
    for w in acked.windows(2) {
        assert!(
            w[1].1 > w[0].1,
            "epochs acknowledged out of order: {} at {}, then {} at {}",
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
    let check_all = |label: &str| {
        let maps: Vec<ClusterMap> = rt.block_on(async {
            let mut out = Vec::new();
            for a in &addrs {
                // Each monitor catches up on its own.
                let mut m = None;
                for _ in 0..100 {
                    m = map_of(a).await;
                    if m.as_ref()
                        .is_some_and(|m| m.epoch >= acked.last().unwrap().1)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                out.push(m.unwrap_or_else(|| panic!("{label}: {a} does not answer")));
            }
            out
        });
        for (a, m) in addrs.iter().zip(&maps) {
            for (name, epoch, _, _) in &acked {
                assert!(
                    m.pool_by_name(name).is_some(),
                    "{label}: pool {name} acknowledged at epoch {epoch} is missing on {a}"
                );
            }
        }
        let e = maps[0].epoch;
        for (a, m) in addrs.iter().zip(&maps) {
            if m.epoch == e {
                assert_eq!(
                    map_crc(m),
                    map_crc(&maps[0]),
                    "{label}: {a} differs at epoch {e}"
                );
            }
        }
        maps[0].clone()
    };
    let before = check_all("after the kills");

    // Stop everything and start again: the map is intact.
    let o = run("atlant", &["dev", "down", "--dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run("atlant", &["dev", "up", "--dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    let after = check_all("after a full restart");
    assert!(after.epoch >= before.epoch);
    assert_eq!(after.pools.len(), before.pools.len());
}

#[test]
fn monitors_join_and_leave_without_downtime() {
    let dir = TempDir::new("monadd");
    let d = dir.path().to_str().unwrap().to_string();
    let _cluster = dev_up(
        dir.path(),
        &["--osds", "1", "--no-image", "--osd-size", "64M"],
    );
    let mon_env = cluster_env(dir.path(), "ATLANT_MON");
    let status = |m: &str| -> serde_json::Value {
        let o = run("atlant", &["--mon", m, "status", "--format", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let fsid = status(&mon_env)["fsid"].as_str().unwrap().to_string();
    // A fourth monitor: created to join, started, then added.
    let addr = free_addr();
    let data = format!("{d}/mon.x");
    let o = run(
        "atlant-mon",
        &[
            "mkfs", "--join", "--fsid", &fsid, "--name", "x", "--addr", &addr, "--data", &data,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let _x = Daemon::start(
        "atlant-mon",
        &["run", "--data", &data],
        &dir.path().join("mon.x.log"),
    );
    let o = run("atlant", &["--mon", &mon_env, "mon", "add", "x", &addr]);
    assert!(o.status.success(), "mon add: {}", text(&o));
    let o = run("atlant", &["--mon", &mon_env, "osd", "set", "noout"]);
    assert!(o.status.success(), "{}", text(&o));
    // The new monitor serves the current map and is in the quorum.
    let ok = wait_until(Duration::from_secs(15), || {
        let v = status(&addr);
        v["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "noout"))
            && v["mons"]
                .as_array()
                .is_some_and(|m| m.len() == 4 && m.iter().all(|m| m["in_quorum"] == true))
    });
    assert!(ok, "mon.x did not catch up: {}", status(&addr));
    // Remove one of the original monitors; the group keeps committing.
    let o = run("atlant", &["--mon", &mon_env, "mon", "rm", "a"]);
    assert!(o.status.success(), "mon rm: {}", text(&o));
    let all = format!("{mon_env},{addr}");
    let o = run("atlant", &["--mon", &all, "osd", "unset", "noout"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = status(&all);
    let names: Vec<&str> = v["mons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["b", "c", "x"], "{v}");
    assert!(v["flags"].as_array().unwrap().is_empty());

    // A client given one monitor learns the group from the map: with that monitor stopped
    // it still commits through the others, including the one added after it started.
    let b_addr = v["mons"][0]["addr"].as_str().unwrap().to_string();
    let rt = runtime();
    rt.block_on(async {
        let mon = MonClient::new(vec![b_addr.clone()]).unwrap();
        let map = mon.get_map().await.unwrap();
        let _sub = mon.subscribe(map);
        let learned = async {
            while mon.addrs().len() != 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), learned)
            .await
            .expect("the client did not learn the monitor group from the map");
        assert!(mon.addrs().contains(&addr), "{:?}", mon.addrs());
        let o = run("atlant", &["dev", "stop", "--dir", &d, "mon.b"]);
        assert!(o.status.success(), "{}", text(&o));
        mon.command(Command::SetFlag {
            flag: proto::map::ClusterFlag::NoDown,
        })
        .await
        .expect("commit with the only given monitor stopped");
    });
}
