//! Bugs the whole-cluster simulator (`sim/`) plants, one at a time, to show that its
//! checkers catch them. The switch is per thread: the simulator runs a whole cluster on
//! one thread and sets it there; no daemon thread ever does, so in production every check
//! is one thread-local read that says no.

use std::cell::Cell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The primary acknowledges a write once its own copy is written; the replicas get it
    /// in the background.
    AckLocalOnly,
    /// Peering asks only the acting set, not the members of past intervals.
    SkipPastIntervals,
    /// A member answers a peering query without waiting for the read leases it granted.
    NoLeaseWait,
    /// Peering does not roll back (or delete) copies newer than the authoritative ones.
    NoRollback,
}

impl Bug {
    pub const ALL: [Bug; 4] = [
        Bug::AckLocalOnly,
        Bug::SkipPastIntervals,
        Bug::NoLeaseWait,
        Bug::NoRollback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckLocalOnly => "ack-local-only",
            Bug::SkipPastIntervals => "skip-past-intervals",
            Bug::NoLeaseWait => "no-lease-wait",
            Bug::NoRollback => "no-rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` in the cluster code running on this thread (None removes it).
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
pub fn active(bug: Bug) -> bool {
    PLANTED.with(|p| p.get()) == Some(bug)
}
