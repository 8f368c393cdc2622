//! Model-based tests of the object store: random streams of write / trim / read / flush /
//! crash / reopen against the store and a trivial in-memory model.
//!
//! On the simulated device a crash is a power cut at a random device operation (the write in
//! flight may land, tear or vanish; every later operation fails), after which unflushed writes
//! are lost, torn or reordered at random. After every crash the reopened store must hold every
//! write acknowledged as durable, each object's bytes must be a prefix of its write history,
//! and its version must name the last write of that prefix.
//!
//! `STORE_CRASHES` sets the number of crash points per durability mode (default 1200, so
//! `make test` runs 2400); `make test-long` runs many more. A failure prints the seed;
//! `STORE_SEED=n` replays it.

use bytes::Bytes;
use osd::store::device::{BlockDevice, FileDevice, SimDevice};
use osd::store::layout::Superblock;
use osd::store::{Durability, Store, StoreError};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const OBJECT_SIZE: usize = 64 << 10;
const BLOCK: usize = 4096;
const OBJECTS: u64 = 12;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: usize, data: Vec<u8> },
    Trim { offset: usize, len: usize },
}

#[derive(Clone, Debug, Default)]
struct ObjectModel {
    /// Every op issued, with its version, in order.
    history: Vec<(Version, Op)>,
    /// How many of `history` are acknowledged durable.
    durable: usize,
    /// How many of `history` completed (acknowledged, durable or not).
    completed: usize,
}

fn contents(history: &[(Version, Op)]) -> (Vec<u8>, Version) {
    let mut b = vec![0u8; OBJECT_SIZE];
    let mut v = Version::NONE;
    for (ver, op) in history {
        match op {
            Op::Write { offset, data } => b[*offset..offset + data.len()].copy_from_slice(data),
            Op::Trim { offset, len } => b[*offset..offset + len].fill(0),
        }
        v = *ver;
    }
    (b, v)
}

fn oid(i: u64) -> ObjectId {
    ObjectId {
        pool: 1,
        image: 9,
        index: i,
    }
}

async fn format(dev: &dyn BlockDevice) {
    let sb = Superblock::plan(7, 8, 0, dev.size()).unwrap();
    Store::format(dev, &sb).await.unwrap();
}

struct Run {
    rng: StdRng,
    model: BTreeMap<u64, ObjectModel>,
    seq: u64,
    durability: Durability,
}

impl Run {
    fn random_op(&mut self) -> (u64, Version, Op) {
        let i = self.rng.random_range(0..OBJECTS);
        let first = self.rng.random_range(0..OBJECT_SIZE / BLOCK);
        let n = self
            .rng
            .random_range(1..=(OBJECT_SIZE / BLOCK - first).min(6));
        self.seq += 1;
        let v = Version {
            epoch: 1,
            seq: self.seq,
        };
        let op = if self.rng.random_range(0..5) == 0 {
            Op::Trim {
                offset: first * BLOCK,
                len: n * BLOCK,
            }
        } else {
            let fill: u8 = self.rng.random();
            let data: Vec<u8> = (0..n * BLOCK)
                .map(|k| fill.wrapping_add((k / 512) as u8))
                .collect();
            Op::Write {
                offset: first * BLOCK,
                data,
            }
        };
        (i, v, op)
    }

    /// Runs up to 4 ops on distinct objects concurrently; records what completed.
    async fn step(&mut self, store: &Arc<Store>) -> Result<(), StoreError> {
        let k = self.rng.random_range(1..=4);
        let mut ops: Vec<(u64, Version, Op)> = Vec::new();
        for _ in 0..k {
            let op = self.random_op();
            if !ops.iter().any(|(i, _, _)| *i == op.0) {
                ops.push(op);
            }
        }
        for (i, v, op) in &ops {
            self.model
                .entry(*i)
                .or_default()
                .history
                .push((*v, op.clone()));
        }
        let futs = ops.iter().map(|(i, v, op)| {
            let store = Arc::clone(store);
            let (i, v, op) = (*i, *v, op.clone());
            async move {
                match op {
                    Op::Write { offset, data } => {
                        let crcs = block_crcs(&data);
                        store
                            .write(oid(i), offset as u32, Bytes::from(data), &crcs, v)
                            .await
                    }
                    Op::Trim { offset, len } => {
                        store.trim(oid(i), offset as u32, len as u32, v).await
                    }
                }
            }
        });
        let results = futures::future::join_all(futs).await;
        let mut first_err = None;
        for ((i, _, _), r) in ops.iter().zip(results) {
            let m = self.model.get_mut(i).unwrap();
            match r {
                Ok(()) => {
                    m.completed = m.history.len();
                    if self.durability == Durability::Immediate {
                        m.durable = m.completed;
                    }
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn flush(&mut self, store: &Store) -> Result<(), StoreError> {
        store.flush().await?;
        for m in self.model.values_mut() {
            m.durable = m.completed;
        }
        Ok(())
    }

    /// Reads every object and checks it against the model. After a crash (`recovered`) an
    /// object may hold any prefix from its durable point on; the model adopts it.
    async fn verify(&mut self, store: &Store, recovered: bool, ctx: &str) {
        for (i, m) in self.model.iter_mut() {
            let (data, _, version) = store
                .read(oid(*i), 0, OBJECT_SIZE as u32)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: read {i}: {e}"));
            let lo = if recovered {
                m.durable
            } else {
                m.history.len()
            };
            let hi = m.history.len();
            let found = (lo..=hi).rev().find(|p| {
                let (want, v) = contents(&m.history[..*p]);
                want[..] == data[..] && v == version
            });
            match found {
                Some(p) => {
                    m.history.truncate(p);
                    m.durable = p;
                    m.completed = p;
                }
                None => panic!(
                    "{ctx}: object {i} (version {version}) is no prefix of its history from {lo} to {hi} (versions {:?})",
                    m.history.iter().map(|(v, _)| v.seq).collect::<Vec<_>>()
                ),
            }
            assert_eq!(store.version(&oid(*i)), version);
        }
    }
}

async fn crash_run(seed: u64, crashes: usize, durability: Durability) -> (usize, usize) {
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        model: BTreeMap::new(),
        seq: 0,
        durability,
    };
    let mut dev = SimDevice::new(8 << 20);
    format(&*dev).await;
    let mut store = Store::open(dev.clone(), durability).await.unwrap();
    let (mut torn, mut lost) = (0, 0);
    for c in 0..crashes {
        let ctx = format!("seed {seed} {durability:?} crash {c}");
        // Some operations, with flushes, then a power cut somewhere in the next ones.
        for _ in 0..run.rng.random_range(0..8) {
            run.step(&store)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            if run.rng.random_range(0..4) == 0 {
                run.flush(&store).await.unwrap();
            }
        }
        dev.power_cut_after(run.rng.random_range(1..12));
        for _ in 0..6 {
            if run.step(&store).await.is_err() {
                break;
            }
            if run.rng.random_bool(0.3) && run.flush(&store).await.is_err() {
                break;
            }
        }
        drop(store);
        let (next, stats) = dev.crash(&mut run.rng);
        torn += stats.torn;
        lost += stats.lost;
        dev = next;
        store = Store::open(dev.clone(), durability)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        run.verify(&store, true, &ctx).await;
    }
    (torn, lost)
}

fn crashes() -> usize {
    std::env::var("STORE_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1200)
}

fn seed() -> u64 {
    std::env::var("STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_immediate() {
    let n = crashes();
    let (torn, lost) = crash_run(seed(), n, Durability::Immediate).await;
    println!("immediate: {n} crash points, {torn} torn and {lost} lost unflushed writes, every acknowledged write survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_lazy() {
    let n = crashes();
    let (torn, lost) = crash_run(seed() + 1, n, Durability::Lazy).await;
    println!("lazy: {n} crash points, {torn} torn and {lost} lost unflushed writes, every flushed write survived");
}

/// Opens the store on `path` again once the dropped one has let go of the device (its
/// background tasks end after the last handle is dropped, and the device lock with them).
async fn reopen(path: &std::path::Path) -> Arc<Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open_path(path, Durability::Immediate).await {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("reopen {}: {e}", path.display()),
        }
    }
}

/// The same streams (without crashes, with reopens) on a real file and, where losetup
/// works, on a loop device.
async fn real_device_run(path: &std::path::Path, steps: usize) {
    {
        // Closed before the store opens it: a device is opened once at a time.
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path).unwrap());
        format(&*dev).await;
    }
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed()),
        model: BTreeMap::new(),
        seq: 0,
        durability: Durability::Immediate,
    };
    let mut store = Store::open_path(path, Durability::Immediate).await.unwrap();
    for s in 0..steps {
        run.step(&store).await.unwrap();
        if run.rng.random_range(0..20) == 0 {
            drop(store);
            store = reopen(path).await;
            run.verify(&store, false, &format!("{} step {s}", path.display()))
                .await;
        }
    }
    run.verify(&store, false, "end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_on_a_real_file() {
    let dir = std::env::temp_dir().join(format!("atlant-store-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    real_device_run(&path, 600).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_on_a_loop_device() {
    let dir = std::env::temp_dir().join(format!("atlant-store-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let backing = dir.join("backing.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&backing)
        .output();
    let loopdev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            println!("SKIP: losetup unavailable here ({other:?})");
            return;
        }
    };
    real_device_run(std::path::Path::new(&loopdev), 400).await;
    let _ = std::process::Command::new("losetup")
        .args(["-d", &loopdev])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A formatted, open store in immediate mode on a new simulated device of `bytes`.
async fn fresh_store(bytes: u64) -> (Arc<SimDevice>, Arc<Store>) {
    let dev = SimDevice::new(bytes);
    format(&*dev).await;
    let store = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    (dev, store)
}

/// Writes `data` at offset 0 of object `i`, version 1'1.
async fn put(store: &Arc<Store>, i: u64, data: &[u8]) {
    store
        .write(
            oid(i),
            0,
            Bytes::copy_from_slice(data),
            &block_crcs(data),
            Version { epoch: 1, seq: 1 },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_flipped_bit_on_disk_is_a_checksum_error_not_bad_bytes() {
    let (dev, store) = fresh_store(8 << 20).await;
    let data = vec![0x5au8; OBJECT_SIZE];
    put(&store, 0, &data).await;
    // Finds the block holding object offset 4096 by its content and flips a bit in it.
    let sb = store.superblock.clone();
    let mut flipped = false;
    for b in 0..sb.data_blocks as u32 {
        let (buf, r) = dev
            .read(
                sb.data_block_offset(b),
                osd::store::device::AlignedBuf::zeroed(4096),
            )
            .await;
        r.unwrap();
        if buf.iter().all(|&x| x == 0x5a) {
            let mut bad = osd::store::device::AlignedBuf::from_slice(&buf);
            bad[100] ^= 1;
            dev.write(sb.data_block_offset(b), bad, true)
                .await
                .1
                .unwrap();
            flipped = true;
            break;
        }
    }
    assert!(flipped);
    let mut errors = 0;
    for k in 0..OBJECT_SIZE / BLOCK {
        match store.read(oid(0), (k * BLOCK) as u32, BLOCK as u32).await {
            Ok((d, _, _)) => assert!(d.iter().all(|&x| x == 0x5a)),
            Err(StoreError::Checksum { object, offset }) => {
                assert_eq!(object, oid(0));
                assert_eq!(offset % BLOCK as u64, 0);
                errors += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(store.checksum_errors(), 1);
}

/// The device is declared failing after `CHECKSUM_ERROR_LIMIT` distinct bad blocks, not
/// after that many reads of one: a rotted block that is the last copy of its object is read
/// again by every recovery attempt and client retry, and must not fail a healthy device.
#[tokio::test]
async fn the_checksum_limit_counts_distinct_blocks_not_repeated_reads() {
    let (dev, store) = fresh_store(8 << 20).await;
    let limit = osd::store::CHECKSUM_ERROR_LIMIT;
    let data = vec![0x5au8; BLOCK];
    for i in 0..limit {
        put(&store, i, &data).await;
    }
    // Every data block holding 0x5a belongs to one of the objects: rot each of them.
    let sb = store.superblock.clone();
    let mut rotted = Vec::new();
    for b in 0..sb.data_blocks as u32 {
        let at = sb.data_block_offset(b);
        let (buf, r) = dev
            .read(at, osd::store::device::AlignedBuf::zeroed(BLOCK))
            .await;
        r.unwrap();
        if buf.iter().all(|&x| x == 0x5a) {
            rotted.push(at);
        }
    }
    assert_eq!(rotted.len() as u64, limit);
    let read = |i: u64| {
        let store = &store;
        async move { store.read(oid(i), 0, BLOCK as u32).await }
    };
    dev.rot(rotted[0] + 7);
    for _ in 0..limit * 3 {
        assert!(matches!(read(0).await, Err(StoreError::Checksum { .. })));
    }
    assert_eq!(store.checksum_errors(), limit * 3);
    assert_eq!(store.bad_blocks(), 1);
    assert_eq!(
        store.failure(),
        None,
        "one bad block read again is not a failing device"
    );
    assert!(read(1).await.is_ok());
    for &at in &rotted[1..] {
        dev.rot(at + 7);
    }
    for i in 1..limit {
        let _ = read(i).await;
    }
    assert_eq!(store.bad_blocks(), limit);
    let why = store
        .failure()
        .expect("the device fails at the limit of distinct bad blocks");
    assert!(why.contains("distinct blocks"), "{why}");
}

#[tokio::test]
async fn a_full_store_refuses_writes_and_keeps_serving_reads() {
    let dev = SimDevice::new(6 << 20);
    format(&*dev).await;
    let store = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    let data = vec![7u8; OBJECT_SIZE];
    let crcs = block_crcs(&data);
    let mut written = Vec::new();
    for i in 0.. {
        match store
            .write(
                oid(i),
                0,
                Bytes::from(data.clone()),
                &crcs,
                Version {
                    epoch: 1,
                    seq: i + 1,
                },
            )
            .await
        {
            Ok(()) => written.push(i),
            Err(StoreError::NoSpace(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!written.is_empty());
    for i in &written {
        let (d, _, _) = store.read(oid(*i), 0, OBJECT_SIZE as u32).await.unwrap();
        assert_eq!(&d[..], &data[..]);
    }
    // Trimming frees space: one more object fits afterwards, also across a reopen.
    store
        .trim(
            oid(written[0]),
            0,
            OBJECT_SIZE as u32,
            Version {
                epoch: 1,
                seq: 1000,
            },
        )
        .await
        .unwrap();
    let used_before = store.stats().used_bytes;
    drop(store);
    let store = Store::open(dev, Durability::Immediate).await.unwrap();
    assert!(store.stats().used_bytes <= used_before);
    store
        .write(
            oid(10_000),
            0,
            Bytes::from(data.clone()),
            &crcs,
            Version {
                epoch: 1,
                seq: 1001,
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_device_error_fails_the_store_with_a_reason() {
    let dev = SimDevice::new(8 << 20);
    format(&*dev).await;
    let store = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    dev.power_cut_after(1);
    let data = vec![1u8; BLOCK];
    let r = store
        .write(
            oid(0),
            0,
            Bytes::from(data.clone()),
            &block_crcs(&data),
            Version { epoch: 1, seq: 1 },
        )
        .await;
    assert!(matches!(r, Err(StoreError::DeviceFailed(_))), "{r:?}");
    assert!(store.failure().is_some());
    assert!(matches!(
        store.read(oid(0), 0, 4096).await,
        Err(StoreError::DeviceFailed(_))
    ));
}

#[tokio::test]
async fn overwrites_never_run_out_of_space_while_live_data_fits() {
    for durability in [Durability::Immediate, Durability::Lazy] {
        let dev = SimDevice::new(6 << 20);
        format(&*dev).await;
        let store = Store::open(dev.clone(), durability).await.unwrap();
        let capacity = store.stats().capacity_bytes as usize;
        // Live data is half the capacity; it is overwritten four times without a flush,
        // so freed blocks must be reclaimed on demand.
        let objects = capacity / 2 / OBJECT_SIZE;
        let mut seq = 0;
        for round in 0..4u8 {
            for i in 0..objects as u64 {
                let data = vec![round.wrapping_add(i as u8); OBJECT_SIZE];
                seq += 1;
                store
                    .write(
                        oid(i),
                        0,
                        Bytes::from(data.clone()),
                        &block_crcs(&data),
                        Version { epoch: 1, seq },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{durability:?} round {round} object {i}: {e}"));
            }
        }
    }
}
