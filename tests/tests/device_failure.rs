//! A failing device on real processes: an OSD whose data blocks go bad never returns bad
//! bytes (as a primary it reads another member's copy instead), marks itself down and out
//! once the checksum errors pass the limit, and stops, saying why; the monitor marks it out
//! at once, and reads are served by the remaining copies.

use atlant_tests::*;
use bytes::Bytes;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

fn chunk(i: u64) -> Bytes {
    Bytes::from(
        (0..1u32 << 20)
            .map(|k| (i as u32).wrapping_mul(77).wrapping_add(k / 512) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn osd_state(mon: &str, id: u64) -> (bool, bool) {
    let o = run("atlant", &["--mon", mon, "osd", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let osd = v
        .as_array()
        .and_then(|a| a.iter().find(|o| o["id"] == id).cloned())
        .unwrap_or_default();
    (osd["up"] == true, osd["in"] == true)
}

#[test]
fn checksum_errors_past_the_limit_take_the_osd_down_and_out() {
    let dir = TempDir::new("devfail");
    let d = dir.path().to_str().unwrap();
    let env = dev_up_small(dir.path(), &[]);
    let var = |k: &str| env[k].clone();
    let mon = var("ATLANT_MON");
    let osd0_pid: u32 = var("OSD_PIDS")
        .split(' ')
        .find_map(|kv| kv.strip_prefix("0="))
        .unwrap()
        .parse()
        .unwrap();
    let rt = runtime();
    rt.block_on(async {
        let cluster = client::Cluster::connect(client::parse_addrs(&mon))
            .await
            .unwrap();
        let image = client::Image::open(&cluster, "rbd", "vm1").unwrap();
        for i in 0..32 {
            image.write(i << 20, chunk(i), false).await.unwrap();
        }
        // Rot the data area of osd.0's device (everything past the first 16 MiB of metadata
        // and journal) behind its back.
        let dev = dir.path().join("osd0.img");
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        for at in (16u64 << 20..60 << 20).step_by(4096) {
            f.seek(SeekFrom::Start(at + 100)).unwrap();
            f.write_all(&[0xA5; 16]).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        // Reads return the right bytes, never wrong ones and never an error: a primary
        // whose copy fails its checksum reads another member's (read repair).
        for round in 0..3 {
            for i in 0..32 {
                let got = image.read(i << 20, 1 << 20).await.unwrap_or_else(|e| {
                    panic!("round {round}: reading MiB {i} failed while copies remain: {e}")
                });
                assert_eq!(got, chunk(i), "round {round}: MiB {i} returned wrong bytes");
            }
        }
        let log = std::fs::read_to_string(dir.path().join("log/osd.0.log")).unwrap();
        assert!(
            log.contains("fails its checksum"),
            "no read hit the damaged device"
        );
        // osd.0 reported itself failed: down and out at once, and its process is gone.
        assert!(
            wait_until(Duration::from_secs(15), || osd_state(&mon, 0)
                == (false, false)),
            "osd.0 is not down+out: {:?}",
            osd_state(&mon, 0)
        );
        assert!(wait_until(
            Duration::from_secs(10),
            || !std::path::Path::new(&format!("/proc/{osd0_pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{osd0_pid}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true)
        ));
        let log = std::fs::read_to_string(dir.path().join("log/osd.0.log")).unwrap();
        assert!(
            log.contains("device failed"),
            "osd.0's log does not say why it stopped"
        );
        // The remaining copies serve every byte.
        for i in 0..32 {
            let got = image.read(i << 20, 1 << 20).await.unwrap();
            assert_eq!(got, chunk(i), "MiB {i} after osd.0 left");
        }
    });
    let o = run("atlant", &["dev", "down", "--dir", d]);
    assert!(o.status.success(), "{}", text(&o));
}
