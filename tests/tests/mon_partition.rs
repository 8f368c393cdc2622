//! A monitor cut off from the other two (network namespaces joined by a bridge; the cut is
//! a pair of blackhole routes, so the test itself still reaches every monitor): the two
//! keep committing, the isolated one commits nothing and answers "no quorum" (to map
//! requests too), a subscriber that was on it moves to the majority within seconds, and
//! after the partition heals it catches up with every change. The leader is the one cut off, so
//! a new one must be elected.

use atlant_tests::*;
use bytes::Bytes;
use client::MonClient;
use proto::map::FailureDomain;
use proto::msg::{
    decode_control, encode_control, map_crc, msg_type, ControlRequest, ControlResponse, MonRequest,
};
use proto::Command;
use std::time::{Duration, Instant};

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

/// One change submitted to one monitor, no failover.
async fn submit_to(addr: &str, cmd: Command) -> Result<ControlResponse, String> {
    let req = ControlRequest::Submit(MonRequest {
        client: 424242,
        seq: 1,
        cmd,
    });
    call_one(addr, req).await
}

/// One request to one monitor, no failover.
async fn call_one(addr: &str, req: ControlRequest) -> Result<ControlResponse, String> {
    let c = net::transport::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
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
    let fabric = Fabric::new(3, "mp");
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
        mons.push(fabric.spawn(
            i,
            "atlant-mon",
            &["run", "--data", data],
            &dir.path().join(format!("mon.{name}.log")),
        ));
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
        // A subscriber (as every OSD and gateway is) that starts on the monitor to be cut off.
        let first_isolated: Vec<String> = std::iter::once(isolated.clone())
            .chain(others.iter().cloned())
            .collect();
        let watcher = MonClient::new(first_isolated).unwrap();
        let initial = watcher.get_map().await.unwrap();
        let map_rx = watcher.subscribe(initial).subscribe();
        fabric.cut(leader, &[0, 1, 2], true);
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
        // The isolated monitor commits nothing and serves no map: it answers "no quorum"
        // (its map would be frozen).
        let r = submit_to(&isolated, pool("minority")).await;
        assert!(
            matches!(r, Ok(ControlResponse::NoQuorum(_))),
            "isolated monitor answered {r:?}"
        );
        let r = call_one(&isolated, ControlRequest::GetMap { have: 0 }).await;
        assert!(
            matches!(r, Ok(ControlResponse::NoQuorum(_))),
            "isolated monitor served a map: {r:?}"
        );
        // The subscriber noticed (keepalives stopped, or the monitor said it is outside the
        // quorum) and moved to a monitor that has every change.
        let target = committed.last().unwrap().1;
        let deadline = Instant::now() + Duration::from_secs(15);
        while map_rx.borrow().epoch < target {
            assert!(
                Instant::now() < deadline,
                "a subscriber of the isolated monitor stayed at epoch {} (majority at {target})",
                map_rx.borrow().epoch
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Heal: it catches up with every change, and the minority's request never applied.
        fabric.cut(leader, &[0, 1, 2], false);
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
