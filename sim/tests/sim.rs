//! The whole-cluster simulation over many seeds, and the planted bugs it must catch.
//!
//! - `SIM_SEEDS` (default 200) seeds from `SIM_FIRST_SEED` (default 1), each 60 simulated
//!   seconds; every seed must run at least 900 client ops and 5 crashes or partitions (the
//!   fewest ops is 975, seed 158: a 4-OSD cluster with 11 OSD crashes; small changes to
//!   retry timing move it by a few percent either way).
//! - `SIM_BUG_SEEDS` (default 40): how many seeds each planted bug may take to be caught.
//! - `SIM_JOBS`: seeds at once (default: the machine's cores).
//!
//! Every seed runs in its own process, as `make sim SEED=n` replays it.

use osd::planted::Bug;
use sim::check::kind;
use sim::Report;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn jobs() -> usize {
    std::env::var("SIM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

const EXE: &str = env!("CARGO_BIN_EXE_atlant-sim");

/// Runs `seeds`, each in its own process (as `make sim SEED=n` replays it), `jobs()` at a
/// time; stops starting new ones after a failure when `stop_on_failure`.
fn run_seeds(
    seeds: Vec<u64>,
    bug: Option<Bug>,
    stop_on_failure: bool,
) -> Vec<(u64, Result<Report, String>)> {
    let mut out = Vec::new();
    sim::run_in_processes(std::path::Path::new(EXE), seeds, bug, None, jobs(), |o| {
        let failed = o.result.is_err();
        out.push((o.seed, o.result));
        !(failed && stop_on_failure)
    });
    out.sort_by_key(|(s, _)| *s);
    out
}

#[test]
fn whole_cluster_seeds() {
    let n = env("SIM_SEEDS", 200);
    let first = env("SIM_FIRST_SEED", 1);
    let started = std::time::Instant::now();
    let results = run_seeds((first..first + n).collect(), None, false);
    let mut total = Report::default();
    let mut failures = Vec::new();
    let mut thin = Vec::new();
    let (mut min_ops, mut min_faults) = (u64::MAX, u64::MAX);
    let mut max_op_ms = 0;
    for (seed, r) in &results {
        match r {
            Ok(r) => {
                total.ops += r.ops;
                total.reads += r.reads;
                total.writes += r.writes;
                total.osd_crashes += r.osd_crashes;
                total.mon_crashes += r.mon_crashes;
                total.partitions += r.partitions;
                total.one_way += r.one_way;
                total.loss_bursts += r.loss_bursts;
                total.slow_disks += r.slow_disks;
                total.full_devices += r.full_devices;
                total.host_crashes += r.host_crashes;
                total.abandoned_writes += r.abandoned_writes;
                total.drains += r.drains;
                total.mon_cuts += r.mon_cuts;
                total.resets += r.resets;
                total.objects_compared += r.objects_compared;
                total.versions_checked += r.versions_checked;
                total.flushes += r.flushes;
                total.mon_isolations += r.mon_isolations;
                total.stale_boots += r.stale_boots;
                total.bit_rot += r.bit_rot;
                total.gateway_restarts += r.gateway_restarts;
                total.connection_drops += r.connection_drops;
                total.resends += r.resends;
                total.partial_writes += r.partial_writes;
                total.zeroings += r.zeroings;
                min_ops = min_ops.min(r.ops);
                min_faults = min_faults.min(r.crashes_and_partitions());
                max_op_ms = max_op_ms.max(r.max_op_ms);
                if r.ops < 900 || r.crashes_and_partitions() < 5 {
                    thin.push(format!(
                        "seed {seed}: {} ops, {} crashes or partitions",
                        r.ops,
                        r.crashes_and_partitions()
                    ));
                }
            }
            Err(e) => failures.push(e.clone()),
        }
    }
    println!(
        "whole-cluster simulation: {} seeds ({first}..{}) × 60 simulated s in {:.0} s",
        results.len(),
        first + n,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  client ops through the NBD gateway {} ({} unit reads, {} unit writes, {} partial-block writes, {} zeroings and trims, {} flushes, {} requests resent; fewest in a seed {min_ops}; slowest op {max_op_ms} ms)",
        total.ops,
        total.reads,
        total.writes,
        total.partial_writes,
        total.zeroings,
        total.flushes,
        total.resends
    );
    println!(
        "  faults: {} gateway restarts, {} connection drops, {} OSD crashes, {} monitor crashes, {} monitors cut from the others, {} host power losses, {} partitions, {} one-way partitions, {} OSDs cut from the monitors, {} abandoned writes, {} OSDs drained, {} loss bursts ({} connections reset), {} slow or stalling disks, {} devices out of room, {} stale boot requests; fewest crashes+partitions in a seed {min_faults}",
        total.gateway_restarts,
        total.connection_drops,
        total.osd_crashes,
        total.mon_crashes,
        total.mon_isolations,
        total.host_crashes,
        total.partitions,
        total.one_way,
        total.mon_cuts,
        total.abandoned_writes,
        total.drains,
        total.loss_bursts,
        total.resets,
        total.slow_disks,
        total.full_devices,
        total.stale_boots
    );
    println!(
        "  {} bytes of primaries' copies rotted; checked: every op succeeds (no client error), none slower than 60 s or pending 30 s after the heal, no OSD that reaches the monitors on an old map for 10 s; every read against the acknowledged writes; {} reply versions against earlier answers per object; after the heal every PG active+clean and {} object copies compared byte for byte",
        total.bit_rot,
        total.versions_checked,
        total.objects_compared
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    assert!(
        thin.is_empty(),
        "seeds below the floor:\n{}",
        thin.join("\n")
    );
}

/// Each planted bug must be caught within `SIM_BUG_SEEDS` seeds by a violation of one of
/// `kinds`: the violation the bug causes, not merely some failure (a run that cannot start
/// does not count).
fn planted(bug: Bug, kinds: &[&str]) {
    planted_within(bug, kinds, env("SIM_BUG_SEEDS", 40));
}

/// `planted` for a bug that only a rarer fault combination shows, with its own seed limit.
fn planted_within(bug: Bug, kinds: &[&str], limit: u64) {
    let named = |e: &str| {
        e.lines()
            .map(str::trim_start)
            .find(|l| kinds.iter().any(|k| l.starts_with(k)))
            .map(str::to_string)
    };
    let results = run_seeds((1..=limit).collect(), Some(bug), true);
    let mut other = Vec::new();
    for (seed, r) in &results {
        let Err(e) = r else { continue };
        match named(e) {
            Some(v) => {
                println!(
                    "planted bug {}: caught at seed {seed} ({} seeds run):\n    {v}",
                    bug.name(),
                    results.len()
                );
                return;
            }
            None => other.push(format!(
                "seed {seed}: {}",
                e.lines().take(3).collect::<Vec<_>>().join(" / ")
            )),
        }
    }
    panic!(
        "planted bug {} was not caught as {kinds:?} in {limit} seeds{}",
        bug.name(),
        if other.is_empty() {
            String::new()
        } else {
            format!(" (other failures: {})", other.join("; "))
        }
    );
}

#[test]
fn planted_ack_local_only_is_caught() {
    planted(
        Bug::AckLocalOnly,
        &[
            kind::STALE,
            kind::BACKWARDS,
            kind::COPIES_DIFFER,
            kind::VERSION_BACKWARDS,
        ],
    );
}

#[test]
fn planted_skip_past_intervals_is_caught() {
    planted(
        Bug::SkipPastIntervals,
        &[kind::STALE, kind::BACKWARDS, kind::VERSION_BACKWARDS],
    );
}

#[test]
fn planted_no_lease_wait_is_caught() {
    planted(Bug::NoLeaseWait, &[kind::STALE, kind::VERSION_BACKWARDS]);
}

#[test]
fn planted_no_rollback_is_caught() {
    planted(
        Bug::NoRollback,
        &[
            kind::COPIES_DIFFER,
            kind::BACKWARDS,
            kind::VERSION_BACKWARDS,
        ],
    );
}

#[test]
fn planted_flush_up_osds_once_is_caught() {
    planted(Bug::FlushUpOsdsOnce, &[kind::FAILED_FLUSH]);
}

#[test]
fn planted_no_read_repair_is_caught() {
    planted(Bug::NoReadRepair, &[kind::FAILED_READ]);
}

#[test]
fn planted_orphaned_requests_is_caught() {
    // It needs a connection drop while a request waits for a connection attempt to a
    // replaced primary; the writer then rewrites a block that had a request in flight and
    // the readers read it while the old attempt may still land: caught in 4 of the first
    // 80 seeds, first at seed 7.
    planted_within(
        Bug::OrphanedRequests,
        &[kind::STALE, kind::BACKWARDS, kind::VERSION_BACKWARDS],
        env("SIM_BUG_SEEDS", 40).max(80),
    );
}

#[test]
fn planted_query_before_drain_is_caught() {
    // It needs the calm's last return: a hot block's primary, behind, peers while every
    // other disk stalls with writes of the ended interval in flight; a member lists a
    // version its store then replaces, the primary can never pull it, and the ops on that
    // object wait until the client gives up. Caught in 3 of the first 120 seeds, first
    // at seed 1.
    planted_within(
        Bug::QueryBeforeDrain,
        &[kind::WEDGE],
        env("SIM_BUG_SEEDS", 40).max(120),
    );
}

#[test]
fn planted_unflushed_recovery_is_caught() {
    // It needs data moved and recorded clean (the old members drained) right before a
    // power cut that loses every unflushed write: the recovered copies are then the only
    // ones, and unflushed they are gone, so the PG has no authoritative copy and its ops
    // fail or wait (`move_then_power_cycle`, lazy seeds with 5 or more OSDs). Any other
    // PG's activation on a new member in between flushes its device and hides the bug, so
    // few seeds show it: first caught at seed 107.
    planted_within(
        Bug::UnflushedRecovery,
        &[
            kind::FAILED_READ,
            kind::FAILED_WRITE,
            kind::WEDGE,
            kind::STALE,
        ],
        200,
    );
}

#[test]
fn planted_missing_list_one_object_is_caught() {
    // Large seeds (one in five) hold more objects per PG than one object of their stores
    // can list, and retire an OSD early: the members that join its PGs empty must keep
    // a missing list of every object. Unable to, they never activate, and the PGs stay
    // peering. First caught at seed 1.
    planted(Bug::MissingListOneObject, &[kind::NOT_CLEAN, kind::WEDGE]);
}

#[test]
fn planted_ignore_later_boot_is_caught() {
    // Seeds with a stale boot (a dead process's boot request committing after its
    // successor booted): the successor must register again, or it stays down while it
    // runs and reaches the monitors. Found as a PG that took 94 s to get clean (seed 92,
    // large): its OSD never served again and its data moved away.
    planted(Bug::IgnoreLaterBoot, &[kind::STRANDED]);
}

/// A primary cut from the monitors while it peers keeps asking its peers; once they see
/// it down their answers grant no lease, and taking one anyway serves reads past the new
/// primary's writes.
#[test]
fn planted_lease_ignored_is_caught() {
    // About one seed in thirty meets it (first at seed 9): the old primary must keep
    // serving the block's PG while peering for others, under leases its peers renew.
    planted_within(
        Bug::LeaseIgnored,
        &[kind::STALE, kind::VERSION_BACKWARDS],
        120,
    );
}

/// Every machine's clock runs 8% fast or slow: a member that waits out the leases it
/// granted on its own clock with no allowance for a grantee whose clock is slower lets a
/// new primary take writes while the old one still serves reads.
#[test]
fn planted_no_drift_margin_is_caught() {
    // About one seed in thirty (first at seed 28).
    planted_within(
        Bug::NoDriftMargin,
        &[kind::STALE, kind::VERSION_BACKWARDS],
        90,
    );
}

/// An OSD down past the down-out interval (one crash in seven holds it that long) is out
/// by the monitors' timer; booting again must bring it in, with no operator.
#[test]
fn planted_no_auto_in_is_caught() {
    planted(Bug::NoAutoIn, &[kind::STRANDED]);
}

#[test]
fn planted_stay_on_isolated_monitor_is_caught() {
    planted(Bug::StayOnIsolatedMonitor, &[kind::STALE_MAP]);
}

/// Seeds beyond the 200 that once failed, each on a bug since fixed: they must pass.
/// - 791 (lazy): the members that joined a PG listed in their missing lists a version its
///   holders had not flushed; a power cut lost it everywhere and the PG waited for ever.
/// - 626: the only copy of a version never acknowledged rotted before peering chose it;
///   no member could read it and its object's ops waited for ever.
/// - 193: a peering try that skipped the monitors' record once the map showed it served a
///   stale read (the record is the monitors' word that the interval is still current).
#[test]
fn seeds_that_found_bugs_pass() {
    for (seed, r) in run_seeds(vec![193, 626, 791], None, false) {
        if let Err(e) = r {
            panic!("seed {seed} found a bug before and fails again:\n{e}");
        }
    }
}

/// A seed is a replay: the same seed twice issues the same ops at the same simulated times
/// and sees the same results (equal history digests). Seeds with connection drops, gateway
/// restarts and power cycles are the ones where wake-up order once leaked in (a dropped
/// `HashMap` of reply senders woke its waiters in hash order).
#[test]
fn a_seed_replays_exactly() {
    let seeds: Vec<u64> = vec![5, 8, 39, 40];
    let twice: Vec<u64> = seeds.iter().flat_map(|&s| [s, s]).collect();
    let results = run_seeds(twice, None, false);
    for pair in results.chunks(2) {
        let [(seed, a), (_, b)] = pair else {
            unreachable!()
        };
        let (a, b) = (
            a.as_ref().expect("seed runs"),
            b.as_ref().expect("seed runs"),
        );
        assert_eq!(
            (a.digest, a.ops),
            (b.digest, b.ops),
            "seed {seed} ran differently twice: not a replay"
        );
    }
}
