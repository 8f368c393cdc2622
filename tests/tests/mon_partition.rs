//! A monitor cut off from the other two (network namespaces joined by a bridge; the cut is
//! a pair of blackhole routes, so the test itself still reaches every monitor): the two
//! keep committing, the isolated one commits nothing and answers "no quorum", and after
//! the partition heals it catches up with every change. The leader is the one cut off, so
//! a new one must be elected.

use atlant_tests::*;
use bytes::Bytes;
use client::MonClient;
use proto::map::FailureDomain;
use proto::msg::{
    decode_control, encode_control, map_crc, msg_type, ControlRequest, ControlResponse, MonRequest,
};
use proto::Command;
use std::process::Command as Proc;
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let o = Proc::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Three namespaces on one bridge, removed on drop.
struct Fabric {
    bridge: String,
    ns: Vec<String>,
    subnet: String,
}

impl Fabric {
    fn new() -> Fabric {
        let tag = std::process::id() % 10000;
        let subnet = format!("10.77.{}", tag % 250);
        let f = Fabric {
            bridge: format!("atlbr{tag}"),
            ns: (1..=3).map(|i| format!("atlmon{tag}-{i}")).collect(),
            subnet,
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
            let (host, inner) = (format!("atlvh{tag}{i}"), format!("atlvn{tag}{i}"));
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

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 2)
    }

    /// Cuts monitor `i` off from the other monitors (both ways).
    fn cut(&self, i: usize, on: bool) {
        let verb = if on { "add" } else { "del" };
        for j in 0..self.ns.len() {
            if j == i {
                continue;
            }
            let (a, b) = (self.ip(i), self.ip(j));
            sh(&[
                "ip",
                "netns",
                "exec",
                &self.ns[i],
                "ip",
                "route",
                verb,
                "blackhole",
                &format!("{b}/32"),
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &self.ns[j],
                "ip",
                "route",
                verb,
                "blackhole",
                &format!("{a}/32"),
            ]);
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Proc::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Proc::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

fn pool(name: &str) -> Command {
    Command::CreatePool {
        name: name.into(),
        size: 1,
        min_size: 1,
        pg_count: 1,
        object_size: 1 << 20,
        failure_domain: FailureDomain::Osd,
    }
}

/// One request to one monitor, no failover.
async fn submit_to(addr: &str, cmd: Command) -> Result<ControlResponse, String> {
    let c = net::transport::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = ControlRequest::Submit(MonRequest {
        client: 424242,
        seq: 1,
        cmd,
    });
    let f = c
        .call(
            msg_type::CONTROL,
            encode_control(&req),
            Bytes::new(),
            Duration::from_secs(20),
        )
        .await
        .map_err(|e| e.to_string())?;
    decode_control(&f.meta).map_err(|e| e.to_string())
}

async fn epoch_of(addr: &str) -> u64 {
    let m = MonClient::new(vec![addr.to_string()]).unwrap();
    m.get_map().await.map(|m| m.epoch).unwrap_or(0)
}

#[test]
fn an_isolated_monitor_commits_nothing_and_catches_up() {
    let dir = TempDir::new("monpart");
    let fabric = Fabric::new();
    let addrs: Vec<String> = (0..3).map(|i| format!("{}:6789", fabric.ip(i))).collect();
    let initial = ["a", "b", "c"]
        .iter()
        .zip(&addrs)
        .map(|(n, a)| format!("{n}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let fsid = format!("{:032x}", rand::random::<u128>());
    let mut mons = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let data = dir.path().join(format!("mon.{name}"));
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
                &addrs[i],
                "--fsid",
                &fsid,
                "--initial",
                &initial,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let log = std::fs::File::create(dir.path().join(format!("mon.{name}.log"))).unwrap();
        let child = Proc::new("ip")
            .args(["netns", "exec", &fabric.ns[i]])
            .arg(bin("atlant-mon"))
            .args(["run", "--data", data])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn monitor in its namespace");
        mons.push(Daemon(child));
    }
    let rt = runtime();
    rt.block_on(async {
        let all = MonClient::new(addrs.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while all.command(pool("first")).await.is_err() {
            assert!(Instant::now() < deadline, "the group did not form");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Cut off the leader.
        let status = match all.call(&ControlRequest::GetStatus).await.unwrap() {
            ControlResponse::Status(s) => s,
            other => panic!("{other:?}"),
        };
        let leader = status.mons.iter().position(|m| m.leader).expect("a leader");
        let others: Vec<String> = (0..3)
            .filter(|i| *i != leader)
            .map(|i| addrs[i].clone())
            .collect();
        let isolated = addrs[leader].clone();
        let cut_epoch = epoch_of(&isolated).await;
        fabric.cut(leader, true);
        let cut_at = Instant::now();

        // The majority elects a leader and keeps committing.
        let majority = MonClient::new(others.clone()).unwrap();
        let mut committed = Vec::new();
        for i in 0..10 {
            let name = format!("during{i}");
            let (epoch, _) = majority
                .command(pool(&name))
                .await
                .unwrap_or_else(|e| panic!("the majority could not commit {name}: {e}"));
            if i == 0 {
                println!(
                    "majority committed {:.1}s after the leader was cut off",
                    cut_at.elapsed().as_secs_f64()
                );
            }
            committed.push((name, epoch));
        }
        // The isolated monitor commits nothing: it answers "no quorum", its map stands still.
        let r = submit_to(&isolated, pool("minority")).await;
        assert!(
            matches!(r, Ok(ControlResponse::NoQuorum(_))),
            "isolated monitor answered {r:?}"
        );
        assert_eq!(
            epoch_of(&isolated).await,
            cut_epoch,
            "the isolated monitor's map moved"
        );

        // Heal: it catches up with every change, and the minority's request never applied.
        fabric.cut(leader, false);
        let target = committed.last().unwrap().1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while epoch_of(&isolated).await < target {
            assert!(
                Instant::now() < deadline,
                "the isolated monitor did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut maps = Vec::new();
        for a in &addrs {
            maps.push(
                MonClient::new(vec![a.clone()])
                    .unwrap()
                    .get_map()
                    .await
                    .unwrap(),
            );
        }
        let e = maps.iter().map(|m| m.epoch).min().unwrap();
        for (a, m) in addrs.iter().zip(&maps) {
            for (name, epoch) in &committed {
                assert!(
                    m.pool_by_name(name).is_some(),
                    "{a} lacks {name} (epoch {epoch})"
                );
            }
            if m.epoch == e {
                assert_eq!(map_crc(m), map_crc(&maps[0]), "{a} differs at epoch {e}");
            }
            // The change the cut-off monitor could not commit never appears: its log entry,
            // if it took one, is replaced by the new leader's.
            assert!(
                m.pool_by_name("minority").is_none(),
                "{a} applied the minority's change"
            );
        }
        // And the healed group commits again, through the formerly isolated monitor.
        let r = submit_to(&isolated, pool("after")).await;
        assert!(matches!(r, Ok(ControlResponse::Committed { .. })), "{r:?}");
    });
    drop(mons);
}
