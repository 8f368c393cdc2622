//! Capacity guards on real processes: a cluster of small OSDs filled through the client
//! library refuses writes cleanly with ENOSPC, keeps serving every acknowledged byte, says
//! so in `atlant status`, and takes writes again once space is trimmed.

use atlant_tests::*;
use bytes::Bytes;
use std::time::Duration;

fn chunk(i: u64) -> Bytes {
    Bytes::from(
        (0..1u32 << 20)
            .map(|k| (i as u32).wrapping_mul(131).wrapping_add(k / 4096) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn health(mon: &str) -> serde_json::Value {
    let o = run("atlant", &["--mon", mon, "status", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["health"].clone()
}

#[test]
fn a_full_cluster_refuses_writes_with_enospc_and_loses_nothing() {
    let dir = TempDir::new("capacity");
    let d = dir.path().to_str().unwrap();
    let env = dev_up(
        dir.path(),
        &[
            "--osd-size",
            "48M",
            "--image-size",
            "256M",
            "--pg-count",
            "16",
        ],
    );
    let mon = env["ATLANT_MON"].clone();
    let rt = runtime();
    let result = rt.block_on(async {
        let cluster = client::Cluster::connect(client::parse_addrs(&mon))
            .await
            .unwrap();
        let image = client::Image::open(&cluster, "rbd", "vm1").unwrap();
        let mut written = 0u64;
        let refusal = loop {
            if written == 256 {
                break None;
            }
            match image.write(written << 20, chunk(written), false).await {
                Ok(()) => written += 1,
                Err(e) => break Some(e),
            }
        };
        let refusal = refusal.expect("a 48 MiB OSD cannot take 256 MiB");
        assert!(
            matches!(refusal, client::ClientError::NoSpace(_)),
            "expected ENOSPC, got {refusal}"
        );
        assert!(written >= 20, "refused too early, after {written} MiB");
        // Every acknowledged MiB is intact and the OSDs keep serving reads.
        for i in 0..written {
            let got = image.read(i << 20, 1 << 20).await.unwrap();
            assert_eq!(got, chunk(i), "MiB {i} after the refusal");
        }
        // Status says why.
        let full = wait_until(Duration::from_secs(10), || {
            health(&mon)["checks"].to_string().contains("full")
        });
        assert!(full, "status shows no full OSD: {}", health(&mon));
        // Trimming frees space; writes are accepted again once the OSDs report it.
        image.trim(0, 16 << 20, false).await.unwrap();
        let mut ok = false;
        for _ in 0..100 {
            if image
                .write(written << 20, chunk(written), false)
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "writes still refused after trimming 16 MiB");
        written
    });
    println!("filled after {result} MiB, refused with ENOSPC, recovered after a trim");
    let o = run("atlant", &["dev", "down", "--dir", d]);
    assert!(o.status.success(), "{}", text(&o));
}
