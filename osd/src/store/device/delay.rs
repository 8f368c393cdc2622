//! A device that answers late: every operation waits before it reaches the device below,
//! and one in N waits a stall instead. It stands in for dm-delay, which this project's test
//! machines cannot load: a real-process test makes one OSD's disk slow or stalling under
//! concurrent writers while other OSDs die and return (`tests/tests/faults.rs`).
//!
//! Set by the environment of `atlant-osd run`, as the choice of device implementation is
//! (`ATLANT_NO_URING`):
//!
//! ```text
//! ATLANT_OSD_DEVICE_DELAY=BASE_MS[+JITTER_MS][,stall=STALL_MS/ONE_IN]
//!   5+20             every IO waits 5 ms plus up to 20 ms
//!   2+8,stall=600/300  ... and one IO in 300 waits 600 ms
//! ```
//!
//! The delay comes before the operation, so a write is not durable until its delay has
//! passed and the device below has completed it: the durability contract is the inner
//! device's, unchanged.

use super::sim::splitmix64;
use super::{AlignedBuf, BlockDevice, IoFuture};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that slows a device down.
pub const ENV: &str = "ATLANT_OSD_DEVICE_DELAY";

/// How late a delayed device answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelaySpec {
    pub base: Duration,
    pub jitter: Duration,
    pub stall: Duration,
    /// One operation in this many stalls (0: never).
    pub stall_one_in: u32,
}

impl std::str::FromStr for DelaySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DelaySpec, String> {
        let bad = |why: &str| {
            format!("{ENV}={s:?}: {why} (expected BASE_MS[+JITTER_MS][,stall=STALL_MS/ONE_IN])")
        };
        let ms = |v: &str, what: &str| -> Result<Duration, String> {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(&format!("{what} {v:?} is not a whole number of ms")))?;
            if n > 60_000 {
                return Err(bad(&format!("{what} {n} ms is over a minute")));
            }
            Ok(Duration::from_millis(n))
        };
        let (delay, stall) = match s.split_once(',') {
            Some((d, st)) => (d, Some(st)),
            None => (s, None),
        };
        let (base, jitter) = match delay.split_once('+') {
            Some((b, j)) => (ms(b, "base")?, ms(j, "jitter")?),
            None => (ms(delay, "base")?, Duration::ZERO),
        };
        let (stall, stall_one_in) =
            match stall {
                None => (Duration::ZERO, 0),
                Some(st) => {
                    let st = st
                        .trim()
                        .strip_prefix("stall=")
                        .ok_or_else(|| bad("the second part must start with stall="))?;
                    let (d, n) = st
                        .split_once('/')
                        .ok_or_else(|| bad("stall needs STALL_MS/ONE_IN"))?;
                    let n: u32 =
                        n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            bad(&format!("ONE_IN {n:?} is not a positive number"))
                        })?;
                    (ms(d, "stall")?, n)
                }
            };
        Ok(DelaySpec {
            base,
            jitter,
            stall,
            stall_one_in,
        })
    }
}

/// `inner`, answering late as `spec` says.
pub struct DelayedDevice {
    inner: Arc<dyn BlockDevice>,
    spec: DelaySpec,
    seed: u64,
    /// Operations delayed so far: the delays are `splitmix64` of seed and count.
    ops: AtomicU64,
}

impl DelayedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, spec: DelaySpec, seed: u64) -> DelayedDevice {
        DelayedDevice {
            inner,
            spec,
            seed,
            ops: AtomicU64::new(0),
        }
    }

    /// How long the next operation waits.
    pub fn next_delay(&self) -> Duration {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let r = splitmix64(self.seed ^ splitmix64(n));
        let s = &self.spec;
        if s.stall_one_in > 0 && (r >> 32).is_multiple_of(s.stall_one_in as u64) {
            return s.stall;
        }
        let jitter_us = s.jitter.as_micros() as u64;
        let extra = if jitter_us == 0 {
            0
        } else {
            (r & 0xffff_ffff) % (jitter_us + 1)
        };
        s.base + Duration::from_micros(extra)
    }
}

impl BlockDevice for DelayedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read(&self, offset: u64, buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        let wait = self.next_delay();
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            self.inner.read(offset, buf).await
        })
    }

    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        let wait = self.next_delay();
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            self.inner.write(offset, buf, durable).await
        })
    }

    fn flush(&self) -> IoFuture<'_, io::Result<()>> {
        let wait = self.next_delay();
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            self.inner.flush().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_wrong() {
        let ms = Duration::from_millis;
        assert_eq!(
            "5".parse::<DelaySpec>().unwrap(),
            DelaySpec {
                base: ms(5),
                jitter: Duration::ZERO,
                stall: Duration::ZERO,
                stall_one_in: 0
            }
        );
        assert_eq!(
            "2+8,stall=600/300".parse::<DelaySpec>().unwrap(),
            DelaySpec {
                base: ms(2),
                jitter: ms(8),
                stall: ms(600),
                stall_one_in: 300
            }
        );
        for (bad, says) in [
            ("", "base"),
            ("x", "base"),
            ("5+y", "jitter"),
            ("5,600/3", "stall="),
            ("5,stall=600", "STALL_MS/ONE_IN"),
            ("5,stall=600/0", "ONE_IN"),
            ("70000", "over a minute"),
        ] {
            let e = bad.parse::<DelaySpec>().unwrap_err();
            assert!(e.contains(says) && e.contains(ENV), "{bad:?}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_operation_waits_and_one_in_n_stalls() {
        let inner: Arc<dyn BlockDevice> = super::super::SimDevice::new(1 << 20);
        let spec: DelaySpec = "3+4,stall=500/10".parse().unwrap();
        let dev = DelayedDevice::new(inner, spec, 42);
        let (mut stalls, mut min, mut max) = (0, Duration::MAX, Duration::ZERO);
        for i in 0..400u64 {
            let t = tokio::time::Instant::now();
            let buf = AlignedBuf::zeroed(4096);
            let (_, r) = dev.write((i % 16) * 4096, buf, i % 2 == 0).await;
            r.unwrap();
            let took = t.elapsed();
            if took >= Duration::from_millis(500) {
                stalls += 1;
            } else {
                min = min.min(took);
                max = max.max(took);
            }
        }
        assert!(min >= Duration::from_millis(3), "min {min:?}");
        assert!(max <= Duration::from_millis(7), "max {max:?}");
        assert!(max > min, "no jitter: {min:?}..{max:?}");
        // One in ten, give or take the generator's spread.
        assert!((20..=70).contains(&stalls), "{stalls} stalls in 400");
    }
}
