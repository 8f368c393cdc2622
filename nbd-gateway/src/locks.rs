//! Per-export block locks that make sub-block read-modify-write safe.
//!
//! A sub-block write reads the whole 4 KiB block, patches it and writes it back. Two such
//! writes to one block, or a read-modify-write racing with an aligned write of the same block,
//! would otherwise lose an acknowledged write. So:
//! - a read-modify-write holds its partial blocks **exclusive** for the read, patch and write;
//! - aligned writes, trims and zeroes hold their blocks **shared**: they may run in parallel
//!   with each other (the NBD client orders overlapping writes itself) but not with an RMW.
//!
//! Reads take no lock: a read racing with a write may see either version of each block.
//!
//! Invariants:
//! - Locks are striped: block `b` maps to stripe `b % stripes`; two blocks on one stripe just
//!   share a lock (a false conflict, never a missed one).
//! - A request takes all its stripes in ascending stripe order, each once (exclusive if any of
//!   its blocks needs exclusive). Ordered acquisition means no cycle of waiters, so no
//!   deadlock, whatever mix of modes is in flight.
//! - One table per export, shared by every connection to that export (see `exports.rs`).

use std::collections::BTreeMap;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Default number of stripes per export.
pub const DEFAULT_STRIPES: usize = 1024;

/// How a request wants a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

pub struct BlockLocks {
    stripes: Vec<RwLock<()>>,
}

/// Held stripes; dropping it releases them.
pub struct BlockGuard<'a> {
    _shared: Vec<RwLockReadGuard<'a, ()>>,
    _exclusive: Vec<RwLockWriteGuard<'a, ()>>,
}

impl BlockLocks {
    pub fn new(stripes: usize) -> Self {
        let stripes = stripes.max(1);
        BlockLocks {
            stripes: (0..stripes).map(|_| RwLock::new(())).collect(),
        }
    }

    pub fn stripe_count(&self) -> usize {
        self.stripes.len()
    }

    fn stripe_of(&self, block: u64) -> usize {
        (block % self.stripes.len() as u64) as usize
    }

    /// Locks the blocks `first..=last` in `middle` mode, except blocks listed in `exclusive`
    /// (which must lie in that range), which are taken exclusive.
    pub async fn lock(
        &self,
        first: u64,
        last: u64,
        middle: Mode,
        exclusive: &[u64],
    ) -> BlockGuard<'_> {
        debug_assert!(first <= last);
        let n = self.stripes.len() as u64;
        let mut wanted: BTreeMap<usize, Mode> = BTreeMap::new();
        // A range of `n` or more blocks touches every stripe.
        let span = last.saturating_sub(first).saturating_add(1);
        if span >= n {
            for s in 0..self.stripes.len() {
                wanted.insert(s, middle);
            }
        } else {
            for b in first..=last {
                wanted.insert(self.stripe_of(b), middle);
            }
        }
        for &b in exclusive {
            debug_assert!(first <= b && b <= last);
            wanted.insert(self.stripe_of(b), Mode::Exclusive);
        }
        let mut guard = BlockGuard {
            _shared: Vec::new(),
            _exclusive: Vec::new(),
        };
        // BTreeMap iterates in ascending stripe order: the deadlock-freedom invariant.
        for (stripe, mode) in wanted {
            let lock = &self.stripes[stripe];
            match mode {
                Mode::Shared => guard._shared.push(lock.read().await),
                Mode::Exclusive => guard._exclusive.push(lock.write().await),
            }
        }
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_excludes_shared_and_exclusive() {
        let locks = Arc::new(BlockLocks::new(8));
        let g = locks.lock(3, 3, Mode::Shared, &[3]).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(0, 20, Mode::Shared, &[]).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "shared lock over an exclusive block must wait"
        );
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shared_locks_coexist() {
        let locks = BlockLocks::new(4);
        let a = locks.lock(0, 100, Mode::Shared, &[]).await;
        let b =
            tokio::time::timeout(Duration::from_secs(1), locks.lock(1, 2, Mode::Shared, &[])).await;
        assert!(b.is_ok());
        drop(a);
    }

    /// Many tasks locking random overlapping ranges with random modes never deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_mixed_locking_does_not_deadlock() {
        use rand::{Rng, SeedableRng};
        let locks = Arc::new(BlockLocks::new(16));
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..200 {
                    let first = rng.random_range(0..64u64);
                    let last = first + rng.random_range(0..40u64);
                    let excl: Vec<u64> = if rng.random_bool(0.5) {
                        vec![first, last]
                    } else {
                        vec![]
                    };
                    let _g = locks.lock(first, last, Mode::Shared, &excl).await;
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
