//! The monitor group under simulated faults: many seeds, each a deterministic run of the
//! real Raft, log and state machine code (see `mon::sim`).
//!
//! `MON_SIM_SEEDS=n` sets how many seeds (default 100), `MON_SIM_SEED=s` runs one seed,
//! `MON_SIM_FIRST=s` the first seed.

use mon::sim::{run, SimOptions, SimReport};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn monitor_group_never_forks_or_loses_a_change() {
    let seeds: Vec<u64> = match env_u64("MON_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("MON_SIM_FIRST").unwrap_or(1);
            (first..first + env_u64("MON_SIM_SEEDS").unwrap_or(100)).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut total = SimReport::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run(SimOptions::new(seed)) {
            Ok(r) => {
                assert!(
                    r.faults() >= 5,
                    "seed {seed}: only {} faults injected",
                    r.faults()
                );
                total.ops += r.ops;
                total.acked += r.acked;
                total.unknown += r.unknown;
                total.retries += r.retries;
                total.crashes += r.crashes;
                total.leader_kills += r.leader_kills;
                total.partitions += r.partitions;
                total.loss_bursts += r.loss_bursts;
                total.snapshots_installed += r.snapshots_installed;
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
            }
        }
    }
    println!(
        "monitor simulation: {} seeds in {:.1}s: {} ops ({} acknowledged, {} unknown, {} retries), \
         {} crashes ({} of the leader), {} partitions, {} loss bursts, {} monitors holding snapshots",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total.ops,
        total.acked,
        total.unknown,
        total.retries,
        total.crashes,
        total.leader_kills,
        total.partitions,
        total.loss_bursts,
        total.snapshots_installed
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(SimOptions::new(7)).expect("seed 7");
    let b = run(SimOptions::new(7)).expect("seed 7 again");
    assert_eq!(a, b, "the same seed gave two different runs");
}

/// The checkers bite: each planted bug is caught within the seeds run.
#[test]
fn planted_bugs_are_caught() {
    use mon::sim::PlantedBug;
    for bug in [PlantedBug::AckBeforeDurable, PlantedBug::ForgetVote] {
        let mut caught = None;
        for seed in 1..=600 {
            let mut o = SimOptions::new(seed);
            o.bug = Some(bug);
            // Crash-heavy runs: these bugs show only across a crash at the wrong moment.
            o.fault_every_ms = (200, 1000);
            if let Err(e) = run(o) {
                caught = Some((seed, e));
                break;
            }
        }
        match caught {
            Some((seed, e)) => println!(
                "planted bug {bug:?} caught at seed {seed}: {}",
                e.lines().nth(1).unwrap_or("").trim()
            ),
            None => panic!("planted bug {bug:?} was not caught in 600 seeds"),
        }
    }
}
