//! Tasks and randomness of one node.
//!
//! Daemons spawn through [`spawn`] and draw identifiers from [`random_u64`]. In production
//! that is `tokio::spawn` and the OS's randomness. In the whole-cluster simulator every
//! node (monitor, OSD, client) runs in one runtime on one thread: each node's tasks carry
//! its [`Node`] context, so that
//! - a crash aborts exactly that node's tasks ([`Node::kill`]),
//! - its connections go through the simulated network ([`crate::transport::SimNet`]),
//! - its identifiers (process nonces, store uuids, client ids) come from the run's seed,
//! - its clock ([`now`]) may run a little fast or slow ([`Node::set_clock_rate`]).

use crate::sync::lock;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

tokio::task_local! {
    static NODE: Arc<Node>;
}

/// One simulated process.
pub struct Node {
    pub name: String,
    pub net: Arc<dyn crate::transport::SimNet>,
    tasks: Mutex<Tasks>,
    dead: AtomicBool,
    rng: Mutex<rand::rngs::StdRng>,
    clock: Mutex<Clock>,
}

/// A node's clock: from `real_base` (the runtime's time) on, it runs at `rate` times the
/// runtime's clock (a quartz a little fast or slow), reading `local_base` there.
#[derive(Clone, Copy)]
struct Clock {
    real_base: Instant,
    local_base: Instant,
    rate: f64,
}

impl Clock {
    fn read(&self) -> Instant {
        self.local_base + (Instant::now() - self.real_base).mul_f64(self.rate)
    }
}

#[derive(Default)]
struct Tasks {
    handles: Vec<AbortHandle>,
    /// Finished tasks are dropped from `handles` when it doubles past this.
    prune_at: usize,
}

impl Node {
    pub fn new(name: &str, net: Arc<dyn crate::transport::SimNet>, seed: u64) -> Arc<Node> {
        Arc::new(Node {
            name: name.to_string(),
            net,
            tasks: Mutex::new(Tasks {
                handles: Vec::new(),
                prune_at: 64,
            }),
            dead: AtomicBool::new(false),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            clock: Mutex::new(Clock {
                real_base: Instant::now(),
                local_base: Instant::now(),
                rate: 1.0,
            }),
        })
    }

    /// Makes this node's clock run at `rate` times the runtime's from now on (its
    /// readings stay continuous).
    pub fn set_clock_rate(&self, rate: f64) {
        assert!(rate > 0.0, "a clock rate must be positive");
        let mut c = lock(&self.clock);
        *c = Clock {
            real_base: Instant::now(),
            local_base: c.read(),
            rate,
        };
    }

    /// Spawns `fut` as a task of this node.
    pub fn spawn<F>(self: &Arc<Self>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let h = tokio::spawn(NODE.scope(Arc::clone(self), fut));
        let mut t = lock(&self.tasks);
        if self.dead.load(Ordering::SeqCst) {
            h.abort();
            return h;
        }
        t.handles.push(h.abort_handle());
        if t.handles.len() >= t.prune_at {
            t.handles.retain(|h| !h.is_finished());
            t.prune_at = (t.handles.len() * 2).max(64);
        }
        h
    }

    /// The process dies: every task it spawned is aborted, and so is any it spawns later.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let handles = std::mem::take(&mut lock(&self.tasks).handles);
        for h in handles {
            h.abort();
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

/// The node the current task belongs to (None outside the simulator).
pub fn current() -> Option<Arc<Node>> {
    NODE.try_with(Arc::clone).ok()
}

/// The current node's clock: the runtime's outside the simulator, where each node's clock
/// may run a little fast or slow. Read leases are counted on it.
pub fn now() -> Instant {
    match current() {
        Some(node) => lock(&node.clock).read(),
        None => Instant::now(),
    }
}

/// How long `d` on the current node's clock lasts in the runtime's time.
pub fn real(d: Duration) -> Duration {
    match current() {
        Some(node) => d.div_f64(lock(&node.clock).rate),
        None => d,
    }
}

/// `tokio::spawn`, keeping the task in the current node when there is one.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(node) => node.spawn(fut),
        None => tokio::spawn(fut),
    }
}

/// A random identifier: from the run's seed in the simulator, from the OS otherwise.
pub fn random_u64() -> u64 {
    match current() {
        Some(node) => lock(&node.rng).random(),
        None => rand::random(),
    }
}

pub fn random_u128() -> u128 {
    ((random_u64() as u128) << 64) | random_u64() as u128
}
