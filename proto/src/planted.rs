//! Bugs the whole-cluster simulator (`sim/`) plants, one at a time, to show that its
//! checkers catch them: each is a bug that was fixed, put back. The switch is per thread:
//! the simulator runs a whole cluster on one thread and sets it there; no daemon thread
//! ever does, so in production every check is one thread-local read that says no.

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
    /// A member answers a peering query while replica ops of the ended interval, checked
    /// before they waited for their object, may still land (the fence is not held).
    QueryBeforeDrain,
    /// The gateway leaves the requests of a closed NBD connection running (retrying for
    /// minutes with new op ids) instead of settling them before it serves the resends.
    OrphanedRequests,
    /// OSDs tell intervals apart by their members and incarnations alone, starting one at
    /// the first epoch they see it: an acting set that changes and changes back looks like
    /// the interval it had before to an OSD that missed the maps in between.
    IntervalByMembers,
    /// Map subscribers stay on a monitor that is cut off from the others (and so frozen).
    StayOnIsolatedMonitor,
    /// A PG's missing list must fit in one object of the store (as its metadata did).
    MissingListOneObject,
    /// FLUSH asks every OSD the map shows up, once, and fails if any of them does not
    /// answer (as before FLUSH went through the PGs' primaries).
    FlushUpOsdsOnce,
    /// Recovery pushes are not flushed before the PG is recorded clean (lazy mode).
    UnflushedRecovery,
    /// A primary takes a lease from a peering answer even when the member granted none.
    LeaseIgnored,
    /// A copy that fails its checksum on the primary is an IO error instead of being read
    /// from another member.
    NoReadRepair,
    /// A running OSD registers again only when the map marks it down, not when the map
    /// shows a later boot of its id by another (dead) process.
    IgnoreLaterBoot,
    /// A booting OSD that the monitors' down-out timer marked out stays out (as before
    /// the map recorded `auto_out`).
    NoAutoIn,
    /// A member waits out the leases it granted on its own clock with no allowance for
    /// the grantee's clock running slower (`lease::DRIFT`).
    NoDriftMargin,
}

impl Bug {
    pub const ALL: [Bug; 16] = [
        Bug::AckLocalOnly,
        Bug::SkipPastIntervals,
        Bug::NoLeaseWait,
        Bug::NoRollback,
        Bug::QueryBeforeDrain,
        Bug::OrphanedRequests,
        Bug::IntervalByMembers,
        Bug::StayOnIsolatedMonitor,
        Bug::MissingListOneObject,
        Bug::FlushUpOsdsOnce,
        Bug::UnflushedRecovery,
        Bug::LeaseIgnored,
        Bug::NoReadRepair,
        Bug::IgnoreLaterBoot,
        Bug::NoAutoIn,
        Bug::NoDriftMargin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckLocalOnly => "ack-local-only",
            Bug::SkipPastIntervals => "skip-past-intervals",
            Bug::NoLeaseWait => "no-lease-wait",
            Bug::NoRollback => "no-rollback",
            Bug::QueryBeforeDrain => "query-before-drain",
            Bug::OrphanedRequests => "orphaned-requests",
            Bug::IntervalByMembers => "interval-by-members",
            Bug::StayOnIsolatedMonitor => "stay-on-isolated-monitor",
            Bug::MissingListOneObject => "missing-list-one-object",
            Bug::FlushUpOsdsOnce => "flush-up-osds-once",
            Bug::UnflushedRecovery => "unflushed-recovery",
            Bug::LeaseIgnored => "lease-ignored",
            Bug::NoReadRepair => "no-read-repair",
            Bug::IgnoreLaterBoot => "ignore-later-boot",
            Bug::NoAutoIn => "no-auto-in",
            Bug::NoDriftMargin => "no-drift-margin",
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

/// For a unit test of a check: runs `check` (None: nothing wrong) as the code is, which
/// must pass, and again with `bug` planted, and returns the violation it reports then.
/// Panics if the check fails without the bug or misses it with it.
pub fn caught(bug: Bug, check: impl Fn() -> Option<String>) -> String {
    if let Some(v) = check() {
        panic!("the check fails with no bug planted: {v}");
    }
    plant(Some(bug));
    let v = check();
    plant(None);
    v.unwrap_or_else(|| panic!("planted {} went unnoticed", bug.name()))
}
