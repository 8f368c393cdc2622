//! Store benchmark: a load generator against `osd::store::Store` alone (no network, no
//! replication, no OSD), one measurement per process, one JSON line on stdout.
//! `bench/store.sh` runs it beside fio on the same file or device (`make bench-store`).
//!
//! Modes:
//! - `run`: optionally formats the device, prefills the working set (every object of it that
//!   does not exist yet is written whole, at depth 32, not measured), then runs one job at
//!   depth `--qd` for `--ramp-seconds` (not measured) plus `--seconds`, or, with `--bytes`,
//!   until that many client bytes were written (no ramp). Prints ops, IOPS, MiB/s, mean /
//!   p50 / p99 / max latency and CPU microseconds per op (user + system time of the whole
//!   process, which includes the device's threads, over the measured window).
//! - `fill`: writes whole objects of `--object-size` with increasing indexes at depth 32
//!   until `--fill-fraction` of the data capacity is used, the store has no space left, or
//!   `--max-seconds` passed; then commits. Prints the index size (`Store::index_bytes`),
//!   scaled to bytes per TB of data, and the process RSS before and after.
//! - `open`: opens the store and prints `open_ms` (index rebuild from the checkpoint plus
//!   journal replay, and the checkpoint written at open) and the RSS the open added.
//! - `journal`: writes `--writes` 4 KiB blocks at depth 1 at random places of existing
//!   objects, then commits. Each write at depth 1 takes exactly one journal block, and the
//!   open before it left the journal empty, so the default (half the ring less 16 blocks)
//!   leaves the journal just under the point where a checkpoint would start.
//!
//! Job shapes (the device is split into objects as the OSD's images are):
//! - `randwrite-4k` / `randread-4k`: 128 KiB objects covering `--working-set` of the data
//!   capacity; each op picks an object and a 4 KiB block in it uniformly at random.
//! - `seqwrite-1m` / `seqread-1m`: 1 MiB objects (the store's largest) covering the same
//!   share; each op writes or reads the next whole object, so consecutive ops touch
//!   consecutive objects (one 1 MiB device IO each when the allocator kept them contiguous).
//!
//! Operations on one object are serialised, as the OSD's object lock does: a task that
//! draws a busy object draws again. Write data comes from a pool of random blocks whose
//! crc32c were computed up front, because the OSD receives the crcs from the client.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use osd::store::device::{self, BlockDevice, FileDevice};
use osd::store::layout::{Superblock, BLOCK};
use osd::store::{Durability, Store, StoreError};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "store_bench")]
struct Args {
    /// File or block device the store lives on.
    #[arg(long)]
    device: PathBuf,
    #[arg(long, value_enum, default_value = "run")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "randwrite-4k")]
    job: Job,
    /// Operations in flight (concurrent tasks).
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Measured seconds (after the ramp).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    ramp_seconds: f64,
    /// Stops after this many client bytes instead of after `--seconds` (no ramp).
    #[arg(long)]
    bytes: Option<u64>,
    /// `immediate`: a completed write is durable; `lazy`: durable at the next flush.
    #[arg(long, default_value = "immediate")]
    durability: Durability,
    /// Formats the device first (destroys what is on it).
    #[arg(long)]
    format: bool,
    /// Share of the data capacity the jobs' objects cover.
    #[arg(long, default_value_t = 0.75)]
    working_set: f64,
    /// Object size for `fill`, in bytes.
    #[arg(long, default_value_t = 128 << 10)]
    object_size: u32,
    /// `fill`: stop once this share of the data capacity is used.
    #[arg(long, default_value_t = 1.0)]
    fill_fraction: f64,
    /// `fill`: stop after this many seconds.
    #[arg(long, default_value_t = 110.0)]
    max_seconds: f64,
    /// `journal`: writes to make (default: half the journal ring less 16 blocks).
    #[arg(long)]
    writes: Option<u64>,
    /// Device implementation: `best` is what the OSD uses (`device::open_best`).
    #[arg(long, value_enum, default_value = "best")]
    io: Io,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Run,
    Fill,
    Open,
    Journal,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Job {
    #[value(name = "randwrite-4k")]
    RandWrite4k,
    #[value(name = "randread-4k")]
    RandRead4k,
    #[value(name = "seqwrite-1m")]
    SeqWrite1m,
    #[value(name = "seqread-1m")]
    SeqRead1m,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Io {
    Best,
    File,
    Uring,
}

impl Io {
    fn name(self) -> &'static str {
        match self {
            Io::Best => "best",
            Io::File => "file",
            Io::Uring => "uring",
        }
    }
}

/// What one job does, derived from `Job`.
#[derive(Clone, Copy)]
struct Shape {
    object_size: u32,
    op_bytes: u32,
    random: bool,
    write: bool,
}

impl Job {
    fn shape(self) -> Shape {
        let (object_size, op_bytes, random, write) = match self {
            Job::RandWrite4k => (128 << 10, 4 << 10, true, true),
            Job::RandRead4k => (128 << 10, 4 << 10, true, false),
            Job::SeqWrite1m => (1 << 20, 1 << 20, false, true),
            Job::SeqRead1m => (1 << 20, 1 << 20, false, false),
        };
        Shape {
            object_size,
            op_bytes,
            random,
            write,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Job::RandWrite4k => "randwrite-4k",
            Job::RandRead4k => "randread-4k",
            Job::SeqWrite1m => "seqwrite-1m",
            Job::SeqRead1m => "seqread-1m",
        }
    }
}

/// A `Send` random generator for one task.
fn task_rng() -> StdRng {
    StdRng::from_rng(&mut rand::rng())
}

fn oid(index: u64) -> ObjectId {
    ObjectId {
        pool: 1,
        image: 1,
        index,
    }
}

/// Random write data: 1 MiB of random bytes and the crc32c of each 4 KiB block, sliced per op.
struct DataPool {
    data: Bytes,
    crcs: Vec<u32>,
}

impl DataPool {
    fn new() -> DataPool {
        let mut raw = vec![0u8; 1 << 20];
        rand::rng().fill(&mut raw[..]);
        let crcs = block_crcs(&raw);
        DataPool {
            data: Bytes::from(raw),
            crcs,
        }
    }

    /// `len` bytes starting at a random block, with their crcs.
    fn pick(&self, len: u32, rng: &mut impl Rng) -> (Bytes, &[u32]) {
        let blocks = len as usize / BLOCK;
        let first = rng.random_range(0..=self.crcs.len() - blocks);
        (
            self.data.slice(first * BLOCK..(first + blocks) * BLOCK),
            &self.crcs[first..first + blocks],
        )
    }
}

/// Per-object busy flags: the bench's stand-in for the OSD's object lock.
struct Locks(Vec<AtomicBool>);

impl Locks {
    fn new(n: u64) -> Locks {
        Locks((0..n).map(|_| AtomicBool::new(false)).collect())
    }

    fn try_take(&self, i: u64) -> bool {
        !self.0[i as usize].swap(true, Ordering::Acquire)
    }

    fn release(&self, i: u64) {
        self.0[i as usize].store(false, Ordering::Release);
    }
}

fn versions() -> &'static AtomicU64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    &NEXT
}

fn next_version() -> Version {
    Version {
        epoch: 1,
        seq: versions().fetch_add(1, Ordering::Relaxed),
    }
}

/// User + system CPU time of the whole process, in microseconds.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Resident set size in KiB (0 if /proc is unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The device implementation in use: `open_best` does not say, but the io_uring device runs
/// a ring thread named `uring:<file>`.
fn device_kind(io: Io) -> &'static str {
    let uring_thread = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("uring:"))
        });
    match (io, uring_thread) {
        (Io::Uring, _) | (Io::Best, true) => "uring",
        _ => "file",
    }
}

fn open_device(path: &Path, io: Io) -> std::io::Result<Arc<dyn BlockDevice>> {
    match io {
        Io::Best => device::open_best(path),
        Io::File => Ok(Arc::new(FileDevice::open(path)?)),
        Io::Uring => Ok(Arc::new(device::uring::UringDevice::open(path)?)),
    }
}

async fn open_store(args: &Args) -> anyhow::Result<Arc<Store>> {
    let dev = open_device(&args.device, args.io)?;
    if args.format {
        let sb = Superblock::plan(1, 2, 0, dev.size())?;
        Store::format(&*dev, &sb).await?;
    }
    Ok(Store::open(dev, args.durability).await?)
}

/// A JSON object written by hand (the osd crate does not link serde_json).
struct Json(Vec<String>);

impl Json {
    fn new() -> Json {
        Json(Vec::new())
    }
    fn str(mut self, k: &str, v: &str) -> Json {
        self.0.push(format!("\"{k}\": \"{v}\""));
        self
    }
    fn num(mut self, k: &str, v: impl std::fmt::Display) -> Json {
        self.0.push(format!("\"{k}\": {v}"));
        self
    }
    fn float(self, k: &str, v: f64) -> Json {
        let v = if v.is_finite() { v } else { 0.0 };
        self.num(k, format!("{v:.2}"))
    }
    fn print(self) {
        println!("{{{}}}", self.0.join(", "));
    }
}

/// Writes every object in `0..objects` that does not exist yet, whole, at depth 32.
async fn prefill(store: &Arc<Store>, objects: u64, object_size: u32) -> anyhow::Result<u64> {
    let missing: Vec<u64> = (0..objects)
        .filter(|i| store.version(&oid(*i)) == Version::NONE)
        .collect();
    let missing = Arc::new(missing);
    let next = Arc::new(AtomicU64::new(0));
    let pool = Arc::new(DataPool::new());
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, missing, next, pool) = (
            Arc::clone(store),
            Arc::clone(&missing),
            Arc::clone(&next),
            Arc::clone(&pool),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&i) = missing.get(k) else {
                    return Ok::<(), StoreError>(());
                };
                let (data, crcs) = pool.pick(object_size, &mut rng);
                store.write(oid(i), 0, data, crcs, next_version()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(missing.len() as u64)
}

/// Latencies in nanoseconds and the number of ops, from one task.
struct TaskResult {
    latencies_ns: Vec<u64>,
    last_done: Instant,
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let job = args.job;
    let shape = job.shape();
    let store = open_store(args).await?;
    let capacity = store.stats().capacity_bytes;
    let objects = ((capacity as f64 * args.working_set) as u64 / shape.object_size as u64).max(1);
    anyhow::ensure!(
        objects >= args.qd as u64,
        "{objects} objects cannot keep {} ops in flight",
        args.qd
    );
    let prefilled = prefill(&store, objects, shape.object_size).await?;
    if args.durability == Durability::Lazy {
        store.commit().await?;
    }

    let pool = Arc::new(DataPool::new());
    let locks = Arc::new(Locks::new(objects));
    let seq_next = Arc::new(AtomicU64::new(0));
    let claimed = Arc::new(AtomicU64::new(0));
    let total_ops = args.bytes.map(|b| b.div_ceil(shape.op_bytes as u64));
    let ramp = if total_ops.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(args.ramp_seconds)
    };
    let started = Instant::now();
    let measure_from = started + ramp;
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let cpu_at_start = Arc::new(AtomicU64::new(cpu_us()));
    if !ramp.is_zero() {
        let cpu_at_start = Arc::clone(&cpu_at_start);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            cpu_at_start.store(cpu_us(), Ordering::Relaxed);
        });
    }

    let mut tasks = Vec::new();
    for _ in 0..args.qd {
        let (store, pool, locks, seq_next, claimed) = (
            Arc::clone(&store),
            Arc::clone(&pool),
            Arc::clone(&locks),
            Arc::clone(&seq_next),
            Arc::clone(&claimed),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut latencies_ns = Vec::with_capacity(1 << 16);
            let blocks_per_object = shape.object_size / shape.op_bytes;
            loop {
                match total_ops {
                    Some(total) => {
                        if claimed.fetch_add(1, Ordering::Relaxed) >= total {
                            break;
                        }
                    }
                    None => {
                        if Instant::now() >= end {
                            break;
                        }
                    }
                }
                let object = loop {
                    let i = if shape.random {
                        rng.random_range(0..objects)
                    } else {
                        seq_next.fetch_add(1, Ordering::Relaxed) % objects
                    };
                    if locks.try_take(i) {
                        break i;
                    }
                };
                let offset = rng.random_range(0..blocks_per_object) * shape.op_bytes;
                let t0 = Instant::now();
                let r = if shape.write {
                    let (data, crcs) = pool.pick(shape.op_bytes, &mut rng);
                    store
                        .write(oid(object), offset, data, crcs, next_version())
                        .await
                } else {
                    store
                        .read(oid(object), offset, shape.op_bytes)
                        .await
                        .map(|_| ())
                };
                locks.release(object);
                r?;
                if t0 >= measure_from {
                    latencies_ns.push(t0.elapsed().as_nanos() as u64);
                }
            }
            Ok::<TaskResult, StoreError>(TaskResult {
                latencies_ns,
                last_done: Instant::now(),
            })
        }));
    }
    let mut latencies = Vec::new();
    let mut last_done = measure_from;
    for t in tasks {
        let r = t.await??;
        latencies.extend(r.latencies_ns);
        last_done = last_done.max(r.last_done);
    }
    let cpu = cpu_us().saturating_sub(cpu_at_start.load(Ordering::Relaxed));
    if args.durability == Durability::Lazy && shape.write {
        store.flush().await?;
    }
    let seconds = last_done.duration_since(measure_from).as_secs_f64();
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let k = ((p * ops as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[k] as f64 / 1000.0
    };
    let mean_us = latencies.iter().sum::<u64>() as f64 / ops.max(1) as f64 / 1000.0;
    let stats = store.stats();
    Json::new()
        .str("mode", "run")
        .str("job", job.name())
        .num("qd", args.qd)
        .str("io", args.io.name())
        .str("device", device_kind(args.io))
        .str("durability", durability_name(args.durability))
        .num("ops", ops)
        .float("seconds", seconds)
        .float("iops", ops as f64 / seconds)
        .float(
            "mib_s",
            ops as f64 * shape.op_bytes as f64 / seconds / 1048576.0,
        )
        .float("mean_us", mean_us)
        .float("p50_us", pct(0.50))
        .float("p99_us", pct(0.99))
        .float("max_us", pct(1.0))
        .float("cpu_us_per_op", cpu as f64 / ops.max(1) as f64)
        .num("client_bytes", ops * shape.op_bytes as u64)
        .num("prefilled_objects", prefilled)
        .num("objects", objects)
        .num("object_size", shape.object_size)
        .num("capacity_bytes", capacity)
        .num("used_bytes", stats.used_bytes)
        .num("open_ms", store.open_ms)
        .num("checksum_errors", store.checksum_errors())
        .print();
    Ok(())
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Immediate => "immediate",
        Durability::Lazy => "lazy",
    }
}

/// How a fill ended.
const STOP_FRACTION: u8 = 1;
const STOP_FULL: u8 = 2;
const STOP_TIME: u8 = 3;

async fn fill(args: &Args) -> anyhow::Result<()> {
    let rss_before = rss_kib();
    let store = open_store(args).await?;
    let rss_opened = rss_kib();
    let capacity = store.stats().capacity_bytes;
    let target = (capacity as f64 * args.fill_fraction) as u64;
    let object_size = args.object_size;
    let first = store.stats().objects;
    let next = Arc::new(AtomicU64::new(first));
    let stop = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let pool = Arc::new(DataPool::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.max_seconds);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, next, stop, pool) = (
            Arc::clone(&store),
            Arc::clone(&next),
            Arc::clone(&stop),
            Arc::clone(&pool),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut written = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                if store.stats().used_bytes + object_size as u64 > target {
                    stop.store(STOP_FRACTION, Ordering::Relaxed);
                    break;
                }
                if Instant::now() >= deadline {
                    stop.store(STOP_TIME, Ordering::Relaxed);
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (data, crcs) = pool.pick(object_size, &mut rng);
                match store.write(oid(i), 0, data, crcs, next_version()).await {
                    Ok(()) => written += object_size as u64,
                    Err(StoreError::NoSpace(_)) => {
                        stop.store(STOP_FULL, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(written)
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    store.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = store.stats();
    let index = store.index_bytes();
    let stopped = match stop.load(Ordering::Relaxed) {
        STOP_FULL => "full",
        STOP_TIME => "time",
        _ => "fraction",
    };
    Json::new()
        .str("mode", "fill")
        .str("io", args.io.name())
        .str("device", device_kind(args.io))
        .str("stopped_by", stopped)
        .num("object_size", object_size)
        .num("objects", stats.objects)
        .num("capacity_bytes", capacity)
        .num("device_bytes", store.superblock.device_size)
        .num("used_bytes", stats.used_bytes)
        .float("used_fraction", stats.used_bytes as f64 / capacity as f64)
        .num("written_bytes", written)
        .float("seconds", seconds)
        .float("mib_s", written as f64 / seconds / 1048576.0)
        .num("index_bytes", index)
        .float(
            "index_bytes_per_tb",
            index as f64 * 1e12 / stats.used_bytes.max(1) as f64,
        )
        .num("rss_before_open_kib", rss_before)
        .num("rss_after_open_kib", rss_opened)
        .num("rss_after_fill_kib", rss_kib())
        .num("journal_blocks", store.superblock.journal_blocks)
        .print();
    Ok(())
}

async fn open_only(args: &Args) -> anyhow::Result<()> {
    let rss_before = rss_kib();
    let started = Instant::now();
    let store = open_store(args).await?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_after = rss_kib();
    // Returns the open's transient buffers (checkpoint body, decoded entries) to the system,
    // so what remains is the index itself.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let rss_trimmed = rss_kib();
    let stats = store.stats();
    Json::new()
        .str("mode", "open")
        .str("io", args.io.name())
        .str("device", device_kind(args.io))
        .num("open_ms", store.open_ms)
        .float("wall_ms", wall_ms)
        .num("objects", stats.objects)
        .num("used_bytes", stats.used_bytes)
        .num("capacity_bytes", stats.capacity_bytes)
        .num("device_bytes", store.superblock.device_size)
        .num("index_bytes", store.index_bytes())
        .float(
            "index_bytes_per_tb",
            store.index_bytes() as f64 * 1e12 / stats.used_bytes.max(1) as f64,
        )
        .num("rss_delta_kib", rss_after.saturating_sub(rss_before))
        .num(
            "rss_delta_trimmed_kib",
            rss_trimmed.saturating_sub(rss_before),
        )
        .num("journal_blocks", store.superblock.journal_blocks)
        .print();
    Ok(())
}

async fn journal(args: &Args) -> anyhow::Result<()> {
    let store = open_store(args).await?;
    let objects: Vec<ObjectId> = store.list(None).iter().map(|e| e.object).collect();
    anyhow::ensure!(
        !objects.is_empty(),
        "the store holds no objects to write to"
    );
    let journal_blocks = store.superblock.journal_blocks;
    let writes = args
        .writes
        .unwrap_or((journal_blocks / 2).saturating_sub(16));
    let pool = DataPool::new();
    let mut rng = task_rng();
    let started = Instant::now();
    for _ in 0..writes {
        let object = objects[rng.random_range(0..objects.len())];
        let offset = rng.random_range(0..(args.object_size as usize / BLOCK)) * BLOCK;
        let (data, crcs) = pool.pick(BLOCK as u32, &mut rng);
        store
            .write(object, offset as u32, data, crcs, next_version())
            .await?;
    }
    store.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    Json::new()
        .str("mode", "journal")
        .num("writes", writes)
        .num("journal_blocks", journal_blocks)
        .num("journal_blocks_used", writes + 1)
        .float("seconds", seconds)
        .float("iops", writes as f64 / seconds)
        .print();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.mode {
            Mode::Run => run(&args).await,
            Mode::Fill => fill(&args).await,
            Mode::Open => open_only(&args).await,
            Mode::Journal => journal(&args).await,
        }
    })
}
