//! One conformance suite for every `BlockDevice`: `FileDevice` and `UringDevice` on a sparse
//! temp file and on a loop device with direct IO (when `losetup` works), `SimDevice` in memory.
//! Each run compares the device with a byte-for-byte model after random sequential and
//! concurrent IO, checks that bad requests fail with `InvalidInput` and hand the buffer back,
//! and that data survives dropping and reopening the device (for `SimDevice`: a crash after a
//! flush). Devices opened on the same path by the other implementation must read the same bytes.

use futures::future::join_all;
use osd::store::device::uring::UringDevice;
use osd::store::device::{AlignedBuf, BlockDevice, FileDevice, SimDevice, ALIGN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const FILE_SIZE: u64 = 16 << 20;
const LOOP_SIZE: u64 = 64 << 20;
const BLOCK: u64 = ALIGN as u64;
/// Requests in flight at once in the concurrent phases.
const IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    File,
    Uring,
}

impl Kind {
    fn other(self) -> Kind {
        match self {
            Kind::File => Kind::Uring,
            Kind::Uring => Kind::File,
        }
    }
}

/// Opens `path`; `None` (with a note) if io_uring is unavailable on this machine.
fn open(kind: Kind, path: &Path) -> Option<Arc<dyn BlockDevice>> {
    match kind {
        Kind::File => Some(Arc::new(FileDevice::open(path).expect("open FileDevice"))),
        Kind::Uring => match UringDevice::open(path) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) if e.to_string().contains("io_uring is unavailable") => {
                eprintln!("note: skipping UringDevice: {e}");
                None
            }
            Err(e) => panic!("open UringDevice on {}: {e}", path.display()),
        },
    }
}

/// A sparse file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, size: u64) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("atlant-device-{name}-{}", std::process::id()));
        let f = std::fs::File::create(&path).expect("create temp file");
        f.set_len(size).expect("size temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// A random aligned extent of 1..=`max_blocks` blocks inside the device.
fn extent(rng: &mut StdRng, size: u64, max_blocks: u64) -> (u64, usize) {
    let blocks = rng.random_range(1..=max_blocks);
    let first = rng.random_range(0..=size / BLOCK - blocks);
    (first * BLOCK, (blocks * BLOCK) as usize)
}

fn span(model: &[u8], offset: u64, len: usize) -> &[u8] {
    &model[offset as usize..offset as usize + len]
}

async fn read_ok(dev: &dyn BlockDevice, offset: u64, len: usize) -> AlignedBuf {
    let (buf, r) = dev.read(offset, AlignedBuf::zeroed(len)).await;
    if let Err(e) = r {
        panic!("read {offset}+{len}: {e}");
    }
    assert_eq!(buf.len(), len);
    buf
}

/// Compares the whole device with the model, 1 MiB at a time.
async fn assert_matches(dev: &dyn BlockDevice, model: &[u8], what: &str) {
    assert_eq!(dev.size(), model.len() as u64, "{what}: size");
    const CHUNK: usize = 1 << 20;
    for at in (0..model.len()).step_by(CHUNK) {
        let len = CHUNK.min(model.len() - at);
        let buf = read_ok(dev, at as u64, len).await;
        if buf[..] != model[at..at + len] {
            let first = (0..len).find(|&i| buf[i] != model[at + i]).unwrap_or(0);
            panic!(
                "{what}: device differs from the model at byte {}",
                at + first
            );
        }
    }
}

fn assert_invalid(r: io::Result<()>, what: &str) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

/// Bad requests fail with InvalidInput, hand the buffer back and change nothing.
async fn check_invalid_requests(dev: &dyn BlockDevice) {
    let size = dev.size();
    let cases: [(u64, usize, &str); 7] = [
        (512, 4096, "offset not 4 KiB aligned"),
        (100, 4096, "odd offset"),
        (BLOCK - 1, 8192, "offset one short of a block"),
        (size, 4096, "offset at the end"),
        (size - BLOCK, 8192, "extent crossing the end"),
        (size + (1 << 30), 4096, "offset far past the end"),
        (
            u64::MAX - (BLOCK - 1),
            4096,
            "offset + length overflowing u64",
        ),
    ];
    for (offset, len, what) in cases {
        let (buf, r) = dev.read(offset, AlignedBuf::zeroed(len)).await;
        assert_invalid(r, &format!("read {what} ({offset}+{len})"));
        assert_eq!(buf.len(), len, "read {what}: buffer handed back");
        for durable in [false, true] {
            let (buf, r) = dev
                .write(offset, AlignedBuf::from_slice(&vec![0xee; len]), durable)
                .await;
            assert_invalid(
                r,
                &format!("write (durable {durable}) {what} ({offset}+{len})"),
            );
            assert_eq!(buf.len(), len, "write {what}: buffer handed back");
            assert!(
                buf.iter().all(|&b| b == 0xee),
                "write {what}: buffer contents handed back"
            );
        }
    }
}

/// Random writes (durable and not), reads and flushes, one at a time, checked against the model.
async fn check_sequential(dev: &dyn BlockDevice, model: &mut [u8], rng: &mut StdRng, steps: usize) {
    let size = dev.size();
    for step in 0..steps {
        match rng.random_range(0..10) {
            0..=5 => {
                let (offset, len) = extent(rng, size, 16);
                let data = random_bytes(rng, len);
                let durable = rng.random_bool(0.5);
                let (buf, r) = dev
                    .write(offset, AlignedBuf::from_slice(&data), durable)
                    .await;
                if let Err(e) = r {
                    panic!("step {step}: write {offset}+{len} durable {durable}: {e}");
                }
                assert_eq!(
                    &buf[..],
                    &data[..],
                    "step {step}: the written buffer comes back unchanged"
                );
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
            }
            6..=8 => {
                let (offset, len) = extent(rng, size, 16);
                let buf = read_ok(dev, offset, len).await;
                assert!(
                    buf[..] == *span(model, offset, len),
                    "step {step}: read {offset}+{len} differs from the model"
                );
            }
            _ => dev
                .flush()
                .await
                .unwrap_or_else(|e| panic!("step {step}: flush: {e}")),
        }
    }
}

/// Picks `count` disjoint extents of 1..=8 blocks.
fn disjoint_extents(rng: &mut StdRng, size: u64, count: usize) -> Vec<(u64, usize)> {
    let mut taken = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < count {
        let (offset, len) = extent(rng, size, 8);
        let blocks: Vec<u64> = (offset / BLOCK..(offset + len as u64) / BLOCK).collect();
        if blocks.iter().any(|b| taken.contains(b)) {
            continue;
        }
        taken.extend(blocks);
        out.push((offset, len));
    }
    out
}

/// `IN_FLIGHT` writes at once, then reads and writes mixed, all at once, on disjoint extents.
async fn check_concurrent(dev: &dyn BlockDevice, model: &mut [u8], rng: &mut StdRng) {
    let size = dev.size();
    for round in 0..4 {
        let extents = disjoint_extents(rng, size, IN_FLIGHT);
        let writes: Vec<(u64, Vec<u8>, bool)> = extents
            .iter()
            .map(|&(o, l)| (o, random_bytes(rng, l), rng.random_bool(0.5)))
            .collect();
        let results = join_all(writes.iter().map(|(offset, data, durable)| {
            dev.write(*offset, AlignedBuf::from_slice(data), *durable)
        }))
        .await;
        for ((offset, data, _), (_, r)) in writes.iter().zip(results) {
            r.unwrap_or_else(|e| panic!("round {round}: concurrent write at {offset}: {e}"));
            model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
        }
        // Half the extents are read, the other half rewritten, all in flight together.
        let extents = disjoint_extents(rng, size, IN_FLIGHT);
        let plan: Vec<(u64, usize, Option<Vec<u8>>)> = extents
            .iter()
            .map(|&(o, l)| {
                (
                    o,
                    l,
                    if rng.random_bool(0.5) {
                        Some(random_bytes(rng, l))
                    } else {
                        None
                    },
                )
            })
            .collect();
        let results = join_all(plan.iter().map(|(offset, len, data)| match data {
            Some(d) => dev.write(*offset, AlignedBuf::from_slice(d), true),
            None => dev.read(*offset, AlignedBuf::zeroed(*len)),
        }))
        .await;
        for ((offset, len, data), (buf, r)) in plan.iter().zip(results) {
            r.unwrap_or_else(|e| panic!("round {round}: concurrent io at {offset}+{len}: {e}"));
            match data {
                Some(d) => model[*offset as usize..*offset as usize + len].copy_from_slice(d),
                None => assert!(
                    buf[..] == *span(model, *offset, *len),
                    "round {round}: concurrent read at {offset}+{len} differs"
                ),
            }
        }
    }
    dev.flush().await.expect("flush after concurrent io");
}

/// Several tasks on the multi-threaded runtime, each with 16 requests in flight on its own
/// stripe of blocks, so submissions race from different worker threads.
async fn check_many_tasks(dev: &Arc<dyn BlockDevice>, model: &mut [u8], seed: u64) {
    const TASKS: u64 = 4;
    let blocks = dev.size() / BLOCK;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let dev = Arc::clone(dev);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ task);
                let offsets: Vec<u64> = (0..16)
                    .map(|_| (rng.random_range(0..blocks / TASKS) * TASKS + task) * BLOCK)
                    .collect();
                let mut offsets = offsets;
                offsets.sort_unstable();
                offsets.dedup();
                let data: Vec<Vec<u8>> = offsets
                    .iter()
                    .map(|_| random_bytes(&mut rng, BLOCK as usize))
                    .collect();
                let writes = join_all(
                    offsets
                        .iter()
                        .zip(&data)
                        .map(|(&o, d)| dev.write(o, AlignedBuf::from_slice(d), o % 2 == 0)),
                )
                .await;
                for (_, r) in writes {
                    r.expect("write from a task");
                }
                let reads = join_all(
                    offsets
                        .iter()
                        .map(|&o| dev.read(o, AlignedBuf::zeroed(BLOCK as usize))),
                )
                .await;
                for ((buf, r), d) in reads.into_iter().zip(&data) {
                    r.expect("read from a task");
                    assert!(buf[..] == d[..], "a task reads back what it wrote");
                }
                offsets.into_iter().zip(data).collect::<Vec<_>>()
            })
        })
        .collect();
    for task in join_all(tasks).await {
        for (offset, data) in task.expect("task panicked") {
            model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        }
    }
}

/// Never-written regions of a fresh device read as zeroes.
async fn check_fresh_reads_zero(dev: &dyn BlockDevice, rng: &mut StdRng) {
    let size = dev.size();
    let mut extents = vec![(0, 8192), (size - 4 * BLOCK, 4 * BLOCK as usize)];
    extents.extend((0..16).map(|_| extent(rng, size, 32)));
    for (offset, len) in extents {
        let buf = read_ok(dev, offset, len).await;
        assert!(
            buf.iter().all(|&b| b == 0),
            "never-written {offset}+{len} is not zero"
        );
    }
}

/// The whole suite on one open device. `model` is what the device holds now.
async fn check_device(dev: &Arc<dyn BlockDevice>, model: &mut [u8], seed: u64, fresh: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    assert_eq!(dev.size(), model.len() as u64);
    if fresh {
        check_fresh_reads_zero(dev.as_ref(), &mut rng).await;
    }
    check_invalid_requests(dev.as_ref()).await;
    check_sequential(dev.as_ref(), model, &mut rng, 400).await;
    check_concurrent(dev.as_ref(), model, &mut rng).await;
    check_many_tasks(dev, model, seed).await;
    check_invalid_requests(dev.as_ref()).await;
    dev.flush().await.expect("flush");
    assert_matches(dev.as_ref(), model, "after the suite").await;
}

/// The suite on `path`, then reopens: the same implementation and the other one must both
/// see the data; a second round of writes goes through the reopened device.
async fn check_path(kind: Kind, path: &Path, seed: u64) {
    let Some(dev) = open(kind, path) else { return };
    let mut model = vec![0u8; dev.size() as usize];
    check_device(&dev, &mut model, seed, true).await;
    // Unflushed non-durable writes just before the drop: the reopen reads them back (the page
    // cache or the device has them; only a crash could lose them).
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let (offset, len) = extent(&mut rng, dev.size(), 8);
    let data = random_bytes(&mut rng, len);
    dev.write(offset, AlignedBuf::from_slice(&data), false)
        .await
        .1
        .expect("last write");
    model[offset as usize..offset as usize + len].copy_from_slice(&data);
    drop(dev);

    let dev = open(kind, path).expect("reopen");
    assert_matches(dev.as_ref(), &model, &format!("{kind:?} after reopen")).await;
    check_device(&dev, &mut model, seed + 2, false).await;
    drop(dev);

    if let Some(other) = open(kind.other(), path) {
        assert_matches(
            other.as_ref(),
            &model,
            &format!("{:?} reading {kind:?}'s writes", kind.other()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_device_conforms() {
    let file = TempFile::new("file", FILE_SIZE);
    check_path(Kind::File, &file.0, 0xf11e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_device_conforms() {
    let file = TempFile::new("uring", FILE_SIZE);
    check_path(Kind::Uring, &file.0, 0x0b1e).await;
}

/// A device is opened by one process (and one open) at a time: a second open is refused,
/// saying why, whichever implementation holds it; dropping the device releases it.
#[test]
fn a_device_is_opened_exclusively() {
    let file = TempFile::new("exclusive", 8 << 20);
    let first = FileDevice::open(&file.0).expect("first open");
    let busy = |r: std::io::Result<()>| {
        let e = r.expect_err("a second open of an open device succeeded");
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
    };
    busy(FileDevice::open(&file.0).map(drop));
    busy(UringDevice::open(&file.0).map(drop));
    drop(first);
    if let Ok(uring) = UringDevice::open(&file.0) {
        busy(FileDevice::open(&file.0).map(drop));
        drop(uring);
    }
    FileDevice::open(&file.0).expect("open after the holder closed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_device_conforms() {
    let sim = SimDevice::new(FILE_SIZE);
    let dev: Arc<dyn BlockDevice> = sim.clone();
    let mut model = vec![0u8; FILE_SIZE as usize];
    check_device(&dev, &mut model, 0x5133, true).await;
    // The sim's "reopen" is a crash: after the flush in the suite, everything survives.
    let (after, stats) = sim.crash(&mut StdRng::seed_from_u64(7));
    assert_eq!(stats.pending, 0, "nothing pending after a flush");
    let after: Arc<dyn BlockDevice> = after;
    assert_matches(after.as_ref(), &model, "SimDevice after a crash").await;
    check_device(&after, &mut model, 0x5134, false).await;
}

/// A loop device over a sparse file, with direct IO, detached on drop.
struct LoopDevice {
    device: PathBuf,
    _backing: TempFile,
}

impl LoopDevice {
    fn attach() -> Result<LoopDevice, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let backing = TempFile::new("loop", LOOP_SIZE);
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&backing.0)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice {
            device,
            _backing: backing,
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.device).status() {
            Ok(s) if s.success() => {}
            other => eprintln!(
                "warning: losetup -d {} failed: {other:?}",
                self.device.display()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_device_conforms() {
    for kind in [Kind::File, Kind::Uring] {
        // A fresh loop device (and backing file) per implementation, so reads of
        // never-written regions return zeroes for both.
        let dev = match LoopDevice::attach() {
            Ok(d) => d,
            Err(why) => {
                eprintln!("note: skipping the loop device suite: {why}");
                return;
            }
        };
        eprintln!("{kind:?} on {}", dev.device.display());
        check_path(kind, &dev.device, 0x100b + kind as u64).await;
    }
}

/// After a flush, a crash must keep the latest write of every block, even when an older
/// non-durable write to the same block was still pending when a durable one replaced it.
#[tokio::test]
async fn sim_flush_keeps_the_latest_write() {
    let sim = SimDevice::new(1 << 20);
    sim.write(0, AlignedBuf::from_slice(&[1; 4096]), false)
        .await
        .1
        .expect("write");
    sim.write(0, AlignedBuf::from_slice(&[2; 4096]), true)
        .await
        .1
        .expect("durable write");
    sim.flush().await.expect("flush");
    let (after, _) = sim.crash(&mut StdRng::seed_from_u64(1));
    let buf = read_ok(after.as_ref(), 0, 4096).await;
    assert!(
        buf.iter().all(|&b| b == 2),
        "the flush made an older non-durable write stable over a later durable one"
    );
}
