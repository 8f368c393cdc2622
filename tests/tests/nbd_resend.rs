//! An NBD connection dropped with writes in flight, then resent (qemu's `reconnect-delay`):
//! the writes are held by a stopped primary when the connection drops; the client
//! reconnects, resends them, writes newer data to the same blocks, and the old primary
//! resumes with the writes it still holds. No request fails, and nothing the old primary
//! held lands over the newer data (its interval ended: its replicas refuse it, and its
//! own copy is rolled back when it rejoins): `tests/nbd_resend.py` reads every block back
//! for seconds afterwards.
//!
//! This does not reproduce the orphaned-request race (a closed connection's request that
//! retries after its resend, DESIGN "the write path"): here the old requests retry on the
//! new map at the same moment as their resends, with the same data. The gateway with
//! that race put back passes this test; the simulator is what catches it (planted
//! `orphaned-requests`, where the old request waits out a connection attempt to a primary
//! whose packets are dropped).

use atlant_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn writes_of_a_dropped_connection_never_land_after_their_resends() {
    let dir = TempDir::new("resend");
    let env = dev_up_small(dir.path(), &["--osd-grace-secs", "2"]);
    let mon = env["ATLANT_MON"].clone();
    // The 16 blocks written are in the image's first object (128 KiB objects).
    let primary = primary_of_first_object(&mon);
    let pid = cluster_pids(dir.path(), "OSD_PIDS")[&primary.to_string()];
    signal(pid, "-STOP");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nbd_resend.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            env["NBD_SOCKET"].as_str(),
            env["NBD_EXPORT"].as_str(),
            "--blocks",
            "16",
            "--watch",
            "10",
            "--resume",
            &pid.to_string(),
        ])
        .output()
        .expect("run nbd_resend.py");
    // Resumed by the script; again here in case it stopped early.
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("osd.{primary} stopped under the writes: {stdout}");
    assert!(
        out.status.success(),
        "resent writes: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(60), || clean(&mon)),
        "the cluster is not clean after osd.{primary} resumed: {}",
        status(&mon)
    );
}
