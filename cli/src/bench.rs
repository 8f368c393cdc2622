//! `atlant bench`: 4 KiB random or 1 MiB sequential IO on an image through the client
//! library directly (no NBD hop), so the gateway's share of latency can be told apart from
//! the cluster's. Prints IOPS, MiB/s and latency percentiles; `--format json` for scripts.

use bytes::Bytes;
use client::{Cluster, Image};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct BenchArgs {
    pub pool: String,
    pub image: String,
    pub write: bool,
    pub block_size: u64,
    pub sequential: bool,
    pub depth: usize,
    pub seconds: u64,
    /// Bytes of the image the IO is spread over.
    pub region: u64,
}

pub async fn run(cluster: Arc<Cluster>, a: BenchArgs) -> anyhow::Result<serde_json::Value> {
    let image = Arc::new(Image::open(&cluster, &a.pool, &a.image)?);
    let region = a.region.min(image.size_bytes) / a.block_size * a.block_size;
    anyhow::ensure!(
        region >= a.block_size,
        "image {}/{} is smaller than one block",
        a.pool,
        a.image
    );
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let next_seq = Arc::new(AtomicU64::new(0));
    let data = Bytes::from(
        (0..a.block_size)
            .map(|i| (i * 7 + 3) as u8)
            .collect::<Vec<u8>>(),
    );
    let started = Instant::now();
    let workers = (0..a.depth).map(|_| {
        let (image, data, next_seq) = (Arc::clone(&image), data.clone(), Arc::clone(&next_seq));
        let (bs, seq, write) = (a.block_size, a.sequential, a.write);
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            while Instant::now() < deadline {
                let offset = if seq {
                    (next_seq.fetch_add(1, Ordering::Relaxed) * bs) % region
                } else {
                    rng.random_range(0..region / bs) * bs
                };
                let t = Instant::now();
                let r = if write {
                    image.write(offset, data.clone(), false).await
                } else {
                    image.read(offset, bs).await.map(|_| ())
                };
                r?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<Vec<u64>, client::ClientError>(lat)
        })
    });
    let mut all = Vec::new();
    for w in futures::future::join_all(workers).await {
        all.extend(w??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = all.len() as f64;
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<u64>() as f64 / n
    };
    Ok(serde_json::json!({
        "job": format!(
            "{}{}-{}-qd{}",
            if a.sequential { "seq" } else { "rand" },
            if a.write { "write" } else { "read" },
            if a.block_size.is_multiple_of(1 << 20) { format!("{}m", a.block_size >> 20) } else { format!("{}k", a.block_size >> 10) },
            a.depth
        ),
        "target": "atlant-client",
        "iops": (n / secs).round(),
        "mib_s": ((n * a.block_size as f64 / secs) / (1u64 << 20) as f64 * 10.0).round() / 10.0,
        "mean_us": (mean * 10.0).round() / 10.0,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "ops": all.len(),
    }))
}
