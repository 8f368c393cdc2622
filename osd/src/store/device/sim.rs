//! A simulated device for crash tests. Writes that are not durable stay pending until a
//! flush; a crash keeps a random subset of them, tears some (applies only some of their
//! 512-byte sectors) and applies them in random order. A power cut can be scheduled at the
//! N-th device operation: that write is left pending (it may or may not survive) and every
//! later operation fails with EIO, as on a device that lost power mid-stream.
//! Read errors can be injected to test the store's handling of a failing device, and so
//! can slowness (every operation waits a while before it runs: a slow disk, a latency
//! spike) and a medium that runs out of room (a thin-provisioned volume or a sparse file on
//! a full filesystem: writes that need new space fail with ENOSPC).

use super::{check_aligned, AlignedBuf, BlockDevice, IoFuture};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SplitMix64's increment.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 of `x`: well-mixed bits from a counter or a seed, with no generator state.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const SECTOR: usize = 512;
const PAGE: usize = 4096;

/// A medium held sparsely: only pages ever written take memory, the rest read as zeros.
/// A simulated cluster has several devices and copies each at every crash; dense images
/// made the simulator spend half its time faulting in and copying zero pages.
#[derive(Clone, Default)]
struct Medium {
    pages: BTreeMap<u64, Box<[u8; PAGE]>>,
}

impl Medium {
    fn read(&self, offset: usize, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let at = offset + done;
            let (page, within) = ((at / PAGE) as u64, at % PAGE);
            let n = (PAGE - within).min(out.len() - done);
            match self.pages.get(&page) {
                Some(p) => out[done..done + n].copy_from_slice(&p[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let at = offset + done;
            let (page, within) = ((at / PAGE) as u64, at % PAGE);
            let n = (PAGE - within).min(data.len() - done);
            let p = self
                .pages
                .entry(page)
                .or_insert_with(|| Box::new([0; PAGE]));
            p[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Pages of `offset..offset + len` that hold nothing yet.
    fn new_pages(&self, offset: usize, len: usize) -> usize {
        let (first, last) = (offset / PAGE, (offset + len).div_ceil(PAGE));
        (first..last)
            .filter(|p| !self.pages.contains_key(&(*p as u64)))
            .count()
    }

    fn flip(&mut self, offset: usize) {
        let mut b = [0u8];
        self.read(offset, &mut b);
        self.write(offset, &[b[0] ^ 0xFF]);
    }
}

struct State {
    /// What survives a crash for certain.
    stable: Medium,
    /// What reads see.
    current: Medium,
    /// Sectors written since the last flush and not yet durable: sector → (write id, bytes).
    /// A later write of a sector replaces its pending value, as a device cache would.
    pending: BTreeMap<u64, (u64, Vec<u8>)>,
    next_write: u64,
    ops: u64,
    cut_at: Option<u64>,
    cut: bool,
    /// Fail reads of this byte offset (and count them).
    bad_read: Option<u64>,
    /// Every operation waits `.0` plus up to `.1` before it runs.
    latency: Option<(Duration, Duration)>,
    /// Draws the jitter of each delayed operation (SplitMix64 state).
    jitter_state: u64,
    /// The medium holds at most this many pages: a write needing more fails with ENOSPC.
    capacity_pages: Option<usize>,
}

pub struct SimDevice {
    size: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CrashStats {
    pub pending: usize,
    pub applied: usize,
    pub torn: usize,
    pub lost: usize,
}

impl SimDevice {
    pub fn new(size: u64) -> Arc<SimDevice> {
        Self::with_image(size, Medium::default())
    }

    /// A powered-on device whose medium holds `image`, with nothing pending.
    fn with_image(size: u64, image: Medium) -> Arc<SimDevice> {
        Arc::new(SimDevice {
            size,
            state: Mutex::new(State {
                stable: image.clone(),
                current: image,
                pending: BTreeMap::new(),
                next_write: 0,
                ops: 0,
                cut_at: None,
                cut: false,
                bad_read: None,
                latency: None,
                jitter_state: 0,
                capacity_pages: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        net::sync::lock(&self.state)
    }

    /// Device operations so far.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Loses power at the `n`-th operation from now.
    pub fn power_cut_after(&self, n: u64) {
        let mut s = self.state();
        s.cut_at = Some(s.ops + n);
    }

    pub fn is_cut(&self) -> bool {
        self.state().cut
    }

    /// Makes reads of the block at `offset` fail with EIO.
    pub fn fail_reads_at(&self, offset: Option<u64>) {
        self.state().bad_read = offset;
    }

    /// Makes every later operation wait `base` plus up to `jitter` (drawn from `seed`)
    /// before it runs, as on a slow or stalling disk; `None` makes it fast again.
    pub fn set_latency(&self, latency: Option<(Duration, Duration)>, seed: u64) {
        let mut s = self.state();
        s.latency = latency;
        s.jitter_state = seed;
    }

    /// Limits the medium to `extra` pages more than it holds now (`None`: unlimited), as a
    /// thin pool or a filesystem running out of room: a write that needs a page beyond the
    /// limit fails with ENOSPC and changes nothing.
    pub fn limit_space(&self, extra: Option<usize>) {
        let mut s = self.state();
        s.capacity_pages = extra.map(|e| s.current.pages.len() + e);
    }

    /// Whether the medium is short of room (`limit_space`).
    pub fn space_limited(&self) -> bool {
        self.state().capacity_pages.is_some()
    }

    /// How long the next operation waits before it runs.
    fn delay(&self) -> Option<Duration> {
        let mut s = self.state();
        let (base, jitter) = s.latency?;
        let z = splitmix64(s.jitter_state);
        s.jitter_state = s.jitter_state.wrapping_add(GOLDEN_GAMMA);
        let spread = jitter.as_micros() as u64;
        let extra = if spread == 0 { 0 } else { z % (spread + 1) };
        Some(base + Duration::from_micros(extra))
    }

    /// Waits the injected latency, if any (a simulated clock makes this free in real time).
    async fn wait(&self) {
        if let Some(d) = self.delay() {
            tokio::time::sleep(d).await;
        }
    }

    /// Bit rot: flips the bits of the byte at `offset` on the medium, as the page cache
    /// and the stable copy hold it (a flushed block decaying).
    pub fn rot(&self, offset: u64) {
        let mut s = self.state();
        let at = offset as usize;
        if offset < self.size {
            s.current.flip(at);
            s.stable.flip(at);
        }
    }

    /// The device as it would come back after losing power now, with a volatile write
    /// cache that loses every write not flushed (the worst a power cut can do).
    pub fn crash_volatile(&self) -> (Arc<SimDevice>, CrashStats) {
        let s = self.state();
        let writes: BTreeSet<u64> = s.pending.values().map(|(w, _)| *w).collect();
        let stats = CrashStats {
            pending: writes.len(),
            lost: writes.len(),
            ..Default::default()
        };
        (self.revived(&s, s.stable.clone()), stats)
    }

    /// The device as it would come back after losing power now.
    pub fn crash(&self, rng: &mut impl Rng) -> (Arc<SimDevice>, CrashStats) {
        let s = self.state();
        let mut image = s.stable.clone();
        // Each pending write independently survives whole, is lost, or is torn (a random
        // subset of its sectors lands); that also reorders writes.
        let writes: BTreeSet<u64> = s.pending.values().map(|(w, _)| *w).collect();
        let mut stats = CrashStats {
            pending: writes.len(),
            ..Default::default()
        };
        let mut fate = BTreeMap::new();
        for w in writes {
            let f = rng.random_range(0..4u8);
            match f {
                0 => stats.lost += 1,
                1 => stats.torn += 1,
                _ => stats.applied += 1,
            }
            fate.insert(w, f);
        }
        for (sector, (w, data)) in &s.pending {
            let keep = match fate.get(w).copied().unwrap_or(0) {
                0 => false,
                1 => rng.random_bool(0.5),
                _ => true,
            };
            if keep {
                image.write(*sector as usize * SECTOR, data);
            }
        }
        (self.revived(&s, image), stats)
    }

    /// The same disk with `image` on it: as slow, and as short of room, as it was.
    fn revived(&self, s: &State, image: Medium) -> Arc<SimDevice> {
        let dev = Self::with_image(self.size, image);
        let mut n = dev.state();
        n.latency = s.latency;
        n.jitter_state = s.jitter_state;
        n.capacity_pages = s.capacity_pages;
        drop(n);
        dev
    }

    /// Counts an operation; fails it if the power is (or now goes) off.
    fn step(s: &mut State) -> io::Result<bool> {
        s.ops += 1;
        if s.cut {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if s.cut_at.is_some_and(|n| s.ops >= n) {
            s.cut = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn do_write(&self, offset: u64, data: &[u8], durable: bool) -> io::Result<()> {
        check_aligned(offset, data.len(), self.size)?;
        let mut s = self.state();
        let cutting = Self::step(&mut s)?;
        let at = offset as usize;
        if let Some(cap) = s.capacity_pages {
            if s.current.pages.len() + s.current.new_pages(at, data.len()) > cap {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let id = s.next_write;
        s.next_write += 1;
        let first_sector = offset / SECTOR as u64;
        if cutting {
            // In flight when the power went: it may or may not reach the medium.
            for (k, sector) in data.chunks(SECTOR).enumerate() {
                s.pending
                    .insert(first_sector + k as u64, (id, sector.to_vec()));
            }
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        s.current.write(at, data);
        for (k, sector) in data.chunks(SECTOR).enumerate() {
            if durable {
                s.pending.remove(&(first_sector + k as u64));
            } else {
                s.pending
                    .insert(first_sector + k as u64, (id, sector.to_vec()));
            }
        }
        if durable {
            s.stable.write(at, data);
        }
        Ok(())
    }
}

impl BlockDevice for SimDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, mut buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        Box::pin(async move {
            self.wait().await;
            let r = (|| {
                check_aligned(offset, buf.len(), self.size)?;
                let mut s = self.state();
                if Self::step(&mut s)? {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                if s.bad_read
                    .is_some_and(|b| b >= offset && b < offset + buf.len() as u64)
                {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                s.current.read(offset as usize, &mut buf);
                Ok(())
            })();
            (buf, r)
        })
    }

    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        Box::pin(async move {
            self.wait().await;
            let r = self.do_write(offset, &buf, durable);
            // Lets other tasks run between device operations, as real IO would.
            tokio::task::yield_now().await;
            (buf, r)
        })
    }

    fn flush(&self) -> IoFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.wait().await;
            self.do_flush()
        })
    }
}

impl SimDevice {
    fn do_flush(&self) -> io::Result<()> {
        let mut s = self.state();
        if Self::step(&mut s)? {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let pending = std::mem::take(&mut s.pending);
        for (sector, (_, data)) in pending {
            s.stable.write(sector as usize * SECTOR, &data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn block(v: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(4096);
        b.fill(v);
        b
    }

    #[tokio::test]
    async fn durable_and_flushed_writes_survive_a_crash() {
        let d = SimDevice::new(1 << 20);
        d.write(0, block(1), true).await.1.unwrap();
        d.write(4096, block(2), false).await.1.unwrap();
        d.flush().await.unwrap();
        d.write(8192, block(3), false).await.1.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen_lost = false;
        for _ in 0..64 {
            let (c, _) = d.crash(&mut rng);
            let (b, r) = c.read(0, AlignedBuf::zeroed(12288)).await;
            r.unwrap();
            assert!(b[..4096].iter().all(|&x| x == 1));
            assert!(b[4096..8192].iter().all(|&x| x == 2));
            seen_lost |= b[8192..].iter().any(|&x| x != 3);
        }
        assert!(
            seen_lost,
            "an unflushed write must sometimes be lost or torn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_device_delays_each_operation_within_its_bounds() {
        let d = SimDevice::new(1 << 20);
        let (base, jitter) = (Duration::from_millis(20), Duration::from_millis(30));
        d.set_latency(Some((base, jitter)), 7);
        let mut took = Vec::new();
        for i in 0..16u64 {
            let t = tokio::time::Instant::now();
            d.write(i * 4096, block(1), false).await.1.unwrap();
            took.push(t.elapsed());
        }
        assert!(took
            .iter()
            .all(|t| *t >= base && *t <= base + jitter + Duration::from_millis(1)));
        assert!(
            took.iter().any(|t| *t != took[0]),
            "the delay must vary: {took:?}"
        );
        d.set_latency(None, 0);
        let t = tokio::time::Instant::now();
        d.flush().await.unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_full_medium_refuses_new_pages_and_keeps_rewriting_old_ones() {
        let d = SimDevice::new(1 << 20);
        d.write(0, block(1), true).await.1.unwrap();
        d.limit_space(Some(1));
        d.write(4096, block(2), true).await.1.unwrap();
        let e = d.write(8192, block(3), true).await.1.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Space already held can be rewritten, and the refused write changed nothing.
        d.write(0, block(4), true).await.1.unwrap();
        let (b, r) = d.read(0, AlignedBuf::zeroed(12288)).await;
        r.unwrap();
        assert!(b[..4096].iter().all(|&x| x == 4));
        assert!(b[8192..].iter().all(|&x| x == 0));
        d.limit_space(None);
        d.write(8192, block(3), true).await.1.unwrap();
    }

    #[tokio::test]
    async fn power_cut_fails_everything_after_it() {
        let d = SimDevice::new(1 << 20);
        d.power_cut_after(2);
        d.write(0, block(1), true).await.1.unwrap();
        assert!(d.write(4096, block(2), true).await.1.is_err());
        assert!(d.read(0, AlignedBuf::zeroed(4096)).await.1.is_err());
        assert!(d.flush().await.is_err());
        assert!(d.is_cut());
    }
}
