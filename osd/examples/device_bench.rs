//! Measures the block devices: 4 KiB random durable writes and reads at queue depth 1 and 32,
//! `FileDevice` against `UringDevice`, on a file preallocated with data (256 MiB) or a block
//! device. Prints IOPS, mean and p99 latency, and CPU time per op (getrusage of the whole
//! process, so ring threads, blocking-pool threads and io_uring workers count).
//!
//!     cargo run --release -p atlant-osd --example device_bench -- PATH [SECONDS [DEVICE [WORKLOAD]]]
//!
//! DEVICE is `file`, `uring` or `all`; WORKLOAD one of `randwrite-dsync-qd1`, `-qd32`,
//! `randread-qd1`, `-qd32` or `all`, so a script can interleave short runs of each device
//! (and of fio) and take medians: on a virtual disk, durable-write latency at depth 1 swings
//! by an order of magnitude from minute to minute with the host's load. The fio lines printed
//! at the end run the same workloads with `--ioengine=io_uring`. A block device is overwritten.

use osd::store::device::uring::UringDevice;
use osd::store::device::{AlignedBuf, BlockDevice, FileDevice};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILE_SIZE: u64 = 256 << 20;
type OpenFn = fn(&Path) -> std::io::Result<Arc<dyn BlockDevice>>;
const BLOCK: usize = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    DurableWrite,
    Read,
}

struct Result {
    ops: u64,
    iops: f64,
    mean_us: f64,
    p99_us: f64,
    cpu_us_per_op: f64,
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Fills a regular file with data once, so no run pays for allocating blocks or converting
/// unwritten extents.
fn prepare(path: &Path) -> std::io::Result<()> {
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() || meta.len() >= FILE_SIZE {
            return Ok(());
        }
    }
    eprintln!(
        "preparing {} ({} MiB of data)",
        path.display(),
        FILE_SIZE >> 20
    );
    let mut f = std::fs::File::create(path)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..FILE_SIZE >> 20 {
        rng.fill(&mut chunk[..]);
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

async fn run(dev: Arc<dyn BlockDevice>, op: Op, depth: usize, duration: Duration) -> Result {
    let blocks = dev.size() / BLOCK as u64;
    let cpu_start = cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..depth)
        .map(|worker| {
            let dev = Arc::clone(&dev);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64 + 7);
                let mut buf = AlignedBuf::zeroed(BLOCK);
                rng.fill(&mut buf[..]);
                let mut latencies_ns = Vec::with_capacity(1 << 16);
                while Instant::now() < deadline {
                    let offset = rng.random_range(0..blocks) * BLOCK as u64;
                    let t = Instant::now();
                    let (b, r) = match op {
                        Op::DurableWrite => dev.write(offset, buf, true).await,
                        Op::Read => dev.read(offset, buf).await,
                    };
                    latencies_ns.push(t.elapsed().as_nanos() as u64);
                    if let Err(e) = r {
                        eprintln!("io error at {offset}: {e}");
                        break;
                    }
                    buf = b;
                }
                latencies_ns
            })
        })
        .collect();
    let mut latencies_ns = Vec::new();
    for w in workers {
        latencies_ns.extend(w.await.unwrap_or_default());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_start);
    latencies_ns.sort_unstable();
    let ops = latencies_ns.len() as u64;
    let n = ops.max(1) as f64;
    Result {
        ops,
        iops: ops as f64 / elapsed.as_secs_f64(),
        mean_us: latencies_ns.iter().sum::<u64>() as f64 / n / 1000.0,
        p99_us: latencies_ns
            .get((ops as usize * 99 / 100).min(ops.saturating_sub(1) as usize))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0,
        cpu_us_per_op: cpu.as_secs_f64() * 1e6 / n,
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: device_bench PATH [SECONDS [file|uring|all [WORKLOAD|all]]]");
        std::process::exit(2);
    };
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only_device = args.next().filter(|d| d != "all");
    let only_workload = args.next().filter(|w| w != "all");
    let path = Path::new(&path);
    prepare(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{:<7} {:<14} {:>3} {:>9} {:>10} {:>10} {:>12}",
        "device", "op", "qd", "iops", "mean_us", "p99_us", "cpu_us/op"
    );
    let devices: [(&str, OpenFn); 2] = [
        ("file", |p| Ok(Arc::new(FileDevice::open(p)?))),
        ("uring", |p| Ok(Arc::new(UringDevice::open(p)?))),
    ];
    for (name, open) in devices {
        if only_device.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let dev = match open(path) {
            Ok(d) => d,
            Err(e) => {
                println!("{name:<7} unavailable: {e}");
                continue;
            }
        };
        for (op, label) in [
            (Op::DurableWrite, "randwrite-dsync"),
            (Op::Read, "randread"),
        ] {
            for depth in [1, 32] {
                if only_workload
                    .as_ref()
                    .is_some_and(|w| *w != format!("{label}-qd{depth}"))
                {
                    continue;
                }
                let r = runtime.block_on(run(
                    Arc::clone(&dev),
                    op,
                    depth,
                    Duration::from_secs(seconds),
                ));
                println!(
                    "{name:<7} {label:<14} {depth:>3} {:>9.0} {:>10.1} {:>10.1} {:>12.2}   ({} ops)",
                    r.iops, r.mean_us, r.p99_us, r.cpu_us_per_op, r.ops
                );
            }
        }
    }
    println!("\nfio, same workloads:");
    for (rw, depth) in [
        ("randwrite", 1),
        ("randwrite", 32),
        ("randread", 1),
        ("randread", 32),
    ] {
        println!(
            "fio --name={rw}-qd{depth} --filename={} --size={} --ioengine=io_uring --direct=1 --sync=dsync --rw={rw} --bs=4k --iodepth={depth} --runtime={seconds} --time_based",
            path.display(),
            FILE_SIZE
        );
    }
    Ok(())
}
