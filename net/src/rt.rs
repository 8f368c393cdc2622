//! Tasks and randomness of one node.
//!
//! Daemons spawn through [`spawn`] and draw identifiers from [`random_u64`]. In production
//! that is `tokio::spawn` and the OS's randomness. In the whole-cluster simulator every
//! node (monitor, OSD, client) runs in one runtime on one thread: each node's tasks carry
//! its [`Node`] context, so that
//! - a crash aborts exactly that node's tasks ([`Node::kill`]),
//! - its connections go through the simulated network ([`crate::transport::SimNet`]),
//! - its identifiers (process nonces, store uuids, client ids) come from the run's seed.

use crate::sync::lock;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::{AbortHandle, JoinHandle};

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
        })
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
