//! `atlant-sim`: runs seeds of the whole-cluster simulator.
//!
//!   atlant-sim --seed 7                 one seed (replays a failure)
//!   atlant-sim --seeds 1..2000          a range, on every core
//!   atlant-sim --seed 7 --bug no-rollback --log debug

use clap::Parser;
use osd::planted::Bug;
use sim::{run, SimOptions};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(about = "Atlant's whole-cluster simulator")]
struct Args {
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Simulated seconds of load and faults per seed.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Plant a bug: ack-local-only, skip-past-intervals, no-lease-wait, no-rollback.
    #[arg(long, value_parser = parse_bug)]
    bug: Option<Bug>,
    /// Log filter for the daemons' tracing (one seed only), e.g. `info` or `osd=debug`.
    #[arg(long)]
    log: Option<String>,
    /// Seeds run at once (each in its own process).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the result of `--seed` as one JSON line (what `--seeds` reads back).
    #[arg(long)]
    json: bool,
}

fn parse_bug(s: &str) -> Result<Bug, String> {
    Bug::parse(s).ok_or_else(|| {
        let names: Vec<_> = Bug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug {s:?}; known: {}", names.join(", "))
    })
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range A..B"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if b <= a {
        return Err(format!("empty range {s}"));
    }
    Ok((a, b))
}

fn print_outcome(seed: u64, result: &Result<sim::Report, String>, secs: f64) {
    match result {
        Ok(r) => println!(
            "seed {seed}: ok{}: {} ops ({} unit reads, {} unit writes, {} partial writes, {} zeroings, {} flushes, {} resent, slowest {} ms); faults: {} power cycles ({} unflushed writes exposed), {} gateway restarts, {} connection drops, {} OSD crashes, {} monitor crashes, {} monitors cut from the others, {} host power losses, {} partitions, {} one-way, {} cut from the monitors, {} abandoned writes, {} OSDs drained, {} loss bursts, {} slow or stalling disks, {} devices out of room, {} stale boot requests; clean {} ms after the heal; {} object copies compared; {} reply versions checked; digest {:016x}",
            if secs > 0.0 { format!(" in {secs:.1}s") } else { String::new() },
            r.ops,
            r.reads,
            r.writes,
            r.partial_writes,
            r.zeroings,
            r.flushes,
            r.resends,
            r.max_op_ms,
            r.power_cycles,
            r.exposed_writes,
            r.gateway_restarts,
            r.connection_drops,
            r.osd_crashes,
            r.mon_crashes,
            r.mon_isolations,
            r.host_crashes,
            r.partitions,
            r.one_way,
            r.mon_cuts,
            r.abandoned_writes,
            r.drains,
            r.loss_bursts,
            r.slow_disks,
            r.full_devices,
            r.stale_boots,
            r.clean_ms,
            r.objects_compared,
            r.versions_checked,
            r.digest
        ),
        Err(e) => println!("FAILED {e}"),
    }
}

fn main() {
    let args = Args::parse();
    let (first, end) = match (&args.seed, &args.seeds) {
        (Some(s), _) => (*s, *s + 1),
        (None, Some(r)) => parse_range(r).unwrap_or_else(|e| {
            eprintln!("atlant-sim: {e}");
            std::process::exit(2)
        }),
        (None, None) => {
            eprintln!("atlant-sim: give --seed N or --seeds A..B");
            std::process::exit(2)
        }
    };
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = std::time::Instant::now();
    if args.seed.is_some() {
        let mut opts = SimOptions::new(first);
        opts.secs = args.secs;
        opts.bug = args.bug;
        let result = run(opts);
        if args.json {
            let outcome = sim::Outcome {
                seed: first,
                result,
            };
            println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            return;
        }
        let ok = result.is_ok();
        print_outcome(first, &result, started.elapsed().as_secs_f64());
        std::process::exit(if ok { 0 } else { 1 });
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        eprintln!("atlant-sim: cannot find its own executable: {e}");
        std::process::exit(2)
    });
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seeds: Vec<u64> = (first..end).collect();
    sim::run_in_processes(&exe, seeds, args.bug, Some(args.secs), jobs, |o| {
        if o.result.is_err() {
            net::sync::lock(&failures).push(o.seed);
        }
        print_outcome(o.seed, &o.result, 0.0);
        true
    });
    let failures = net::sync::lock(&failures).clone();
    println!(
        "{} seed(s) in {:.0}s: {} failed{}",
        end - first,
        started.elapsed().as_secs_f64(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" ({failures:?})")
        }
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
