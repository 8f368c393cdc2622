//! Locks and panics, one policy for every daemon; and the cancellation signal.
//!
//! A `std::sync::Mutex` is poisoned when a thread panicked while holding it: what it guards
//! may be half changed. Nothing may go on from such a state, so [`lock`] panics on a
//! poisoned lock instead of continuing with it, and every daemon calls [`abort_on_panic`]
//! at start, so a panic anywhere (a bug) stops the process at once: it is restarted and
//! recovers from its durable state, as after kill -9, instead of running with a task gone
//! and its locks poisoned.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`; panics if a panic poisoned it (see the module header).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(_) => panic!("a lock is poisoned: a task panicked while holding it"),
    }
}

/// Makes any panic end the process after the usual message (daemons call this first).
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("atlant: a panic is a bug; stopping the process (it recovers on restart)");
        std::process::abort();
    }));
}

/// A cancellation signal: set once, seen by every clone. The NBD gateway cancels the
/// requests of a connection that closed; the client library settles each cancelled op
/// (see `client::cluster`) before the request ends.
#[derive(Clone, Default)]
pub struct Cancel(std::sync::Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    /// A signal nobody sets (for callers that never cancel).
    pub fn never() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.set.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.set.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the signal is set.
    pub async fn cancelled(&self) {
        loop {
            let n = self.0.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            n.await;
        }
    }
}
