//! Property tests of placement over random clusters: 3–12 hosts of 1–4 OSDs, weights
//! 0.5–4.0, about one OSD in seven out, pool size 1–4.
//!
//! - every set is valid: no duplicate OSD, every member in with weight > 0, one member per
//!   failure domain, exactly `min(size, domains)` members; placement is deterministic;
//! - shares follow weights (when no domain holds more than 1/size of the weight);
//! - adding one OSD moves little more than the OSD's own share.
//!
//! The statistical tests run a fixed number of PGs per cluster, so observed shares carry
//! binomial noise; their tolerances are stated next to each assertion. The observed worst
//! cases are printed (`cargo test --release -p atlant-proto --test placement_props --
//! --nocapture`).

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestRunner};
use proto::map::{ClusterMap, FailureDomain, OsdInfo, Pool, WEIGHT_ONE};
use proto::placement::{object_pg, pg_osds, PoolPlacement};
use proto::{ObjectId, OsdId};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// One OSD of a generated cluster.
#[derive(Clone, Debug)]
struct Osd {
    weight: u32,
    is_in: bool,
}

#[derive(Clone, Debug)]
struct Cluster {
    hosts: Vec<Vec<Osd>>,
    size: u8,
    failure_domain: FailureDomain,
}

fn osd_strategy() -> impl Strategy<Value = Osd> {
    (WEIGHT_ONE / 2..=4 * WEIGHT_ONE, 0..7u8).prop_map(|(weight, o)| Osd {
        weight,
        is_in: o != 0,
    })
}

fn cluster_strategy(domains: &'static [FailureDomain]) -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(prop::collection::vec(osd_strategy(), 1..=4), 3..=12),
        1..=4u8,
        prop::sample::select(domains),
    )
        .prop_map(|(hosts, size, failure_domain)| Cluster {
            hosts,
            size,
            failure_domain,
        })
}

/// Host names do not sort like host indexes, so name order and id order differ.
fn host_name(i: usize) -> String {
    format!("host-{}", (i * 7) % 13)
}

fn build_map(hosts: &[Vec<Osd>]) -> ClusterMap {
    let mut map = ClusterMap::new(1, vec![]);
    for (h, osds) in hosts.iter().enumerate() {
        for osd in osds {
            let id = map.next_osd_id;
            map.next_osd_id += 1;
            map.osds.insert(
                id,
                OsdInfo {
                    id: OsdId(id),
                    host: host_name(h),
                    addr: String::new(),
                    weight: osd.weight,
                    up: id & 3 != 3, // placement ignores up
                    is_in: osd.is_in,
                    up_from: 1,
                    store_uuid: u128::from(id) + 1,
                    capacity_bytes: 1 << 40,
                    fullness: Default::default(),
                    process: 0,
                },
            );
        }
    }
    map
}

fn pool(size: u8, failure_domain: FailureDomain) -> Pool {
    Pool {
        id: 3,
        name: "rbd".into(),
        size,
        min_size: 1,
        pg_count: 1 << 16,
        object_size: 128 << 10,
        failure_domain,
        placement: proto::placement::PLACEMENT_ALGORITHM,
    }
}

fn domain_of(map: &ClusterMap, fd: FailureDomain, osd: OsdId) -> String {
    match fd {
        FailureDomain::Host => map.osd(osd).map(|o| o.host.clone()).unwrap_or_default(),
        FailureDomain::Osd => osd.to_string(),
    }
}

/// Eligible weight per failure domain.
fn domain_weights(map: &ClusterMap, fd: FailureDomain) -> BTreeMap<String, u64> {
    let mut w = BTreeMap::new();
    for o in map.osds.values().filter(|o| o.is_in && o.weight > 0) {
        *w.entry(domain_of(map, fd, o.id)).or_insert(0) += u64::from(o.weight);
    }
    w
}

/// The largest target share `size · W_d / W` of a domain (≤ 1: proportional placement is
/// possible).
fn max_share(map: &ClusterMap, fd: FailureDomain, size: u8) -> f64 {
    let w = domain_weights(map, fd);
    let total: u64 = w.values().sum();
    let k = usize::from(size).min(w.len()) as f64;
    w.values()
        .map(|&d| k * d as f64 / total as f64)
        .fold(0.0, f64::max)
}

/// Clusters that break a test's precondition are skipped (`prop_assume!`), hence the room
/// for rejects; failing cases are kept beside this file. `PROPTEST_CASES` overrides the case
/// count for a longer run.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        max_global_rejects: 1 << 16,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/placement_props.proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// The statistical tests draw their clusters from a fixed seed (unless `PROPTEST_RNG_SEED`
/// is set) and keep no failing cases: a 5σ excursion, which a long run with a random seed can
/// meet by chance, is not a regression to replay forever.
fn statistical_config(cases: u32) -> Config {
    let mut config = config(cases);
    config.failure_persistence = None;
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xA71A_4750);
    }
    config
}

fn place_all(map: &ClusterMap, pool: &Pool, pgs: u32) -> Vec<Vec<OsdId>> {
    let placement = PoolPlacement::new(map, pool);
    (0..pgs).map(|seed| placement.pg_osds(seed)).collect()
}

#[test]
fn sets_are_valid_and_deterministic() {
    let mut runner = TestRunner::new(config(64));
    runner
        .run(
            &cluster_strategy(&[FailureDomain::Host, FailureDomain::Osd]),
            |c| {
                let map = build_map(&c.hosts);
                let pool = pool(c.size, c.failure_domain);
                let domains = domain_weights(&map, c.failure_domain).len();
                let placement = PoolPlacement::new(&map, &pool);
                for seed in 0..512 {
                    let set = placement.pg_osds(seed);
                    prop_assert_eq!(set.len(), usize::from(c.size).min(domains));
                    let distinct: BTreeSet<OsdId> = set.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), set.len(), "duplicate OSD in {:?}", set);
                    for o in &set {
                        let info = map.osd(*o).expect("member exists");
                        prop_assert!(info.is_in && info.weight > 0, "{} is out or weightless", o);
                    }
                    let doms: BTreeSet<String> = set
                        .iter()
                        .map(|o| domain_of(&map, c.failure_domain, *o))
                        .collect();
                    prop_assert_eq!(
                        doms.len(),
                        set.len(),
                        "two members in one domain: {:?}",
                        set
                    );
                    if seed % 16 == 0 {
                        // Same inputs, same answer, through either entry point and a fresh map.
                        prop_assert_eq!(&set, &pg_osds(&map, &pool, seed));
                        prop_assert_eq!(&set, &pg_osds(&build_map(&c.hosts), &pool, seed));
                    }
                }
                for index in 0..256u64 {
                    let pg = object_pg(
                        &ObjectId {
                            pool: pool.id,
                            image: 9,
                            index,
                        },
                        &pool,
                    );
                    prop_assert!(pg.seed < pool.pg_count);
                }
                Ok(())
            },
        )
        .unwrap();
}

#[derive(Default, Debug)]
struct ShareStats {
    clusters: usize,
    worst_z: f64,
    /// Worst relative error among OSDs expected to hold ≥ 8192 slots (asserted ≤ 6%).
    worst_rel_large: f64,
    /// Worst relative error among OSDs expected to hold ≥ 2048 slots (not asserted: σ is up
    /// to 2.2% there).
    worst_rel_medium: f64,
    /// Worst |z| of primary counts against PGS · w / W.
    worst_primary_z: f64,
    /// Worst relative error of primary counts among OSDs expected to be primary ≥ 4096 times.
    worst_primary_rel: f64,
}

/// Shares follow weights: over `PGS` PGs each OSD's replica-slot count is compared with
/// `PGS · size · w / W`, and its primary count with `PGS · w / W` (clusters where a domain holds more than 1/size of the weight are
/// skipped: there proportionality is impossible).
///
/// Tolerances: an OSD's count is a sum of `PGS` per-PG indicators with mean λ = size·w/W, so
/// its noise is σ = sqrt(PGS·λ·(1−λ)). Every OSD must be within 5σ; OSDs expected to hold
/// ≥ 8192 slots (σ ≤ 1.1%) must be within 6% relative error; and per cluster the mean of z²
/// must stay below 1 + 6·sqrt(2/n), which catches a small bias spread over many OSDs.
/// Primary counts (p = w/W per PG) must be within 5σ as well.
#[test]
fn shares_follow_weights() {
    const PGS: u32 = 32768;
    let stats = RefCell::new(ShareStats::default());
    let mut runner = TestRunner::new(statistical_config(48));
    runner
        .run(
            &cluster_strategy(&[FailureDomain::Host, FailureDomain::Host, FailureDomain::Osd]),
            |c| {
                let map = build_map(&c.hosts);
                prop_assume!(max_share(&map, c.failure_domain, c.size) <= 1.0);
                let pool = pool(c.size, c.failure_domain);
                let mut count: BTreeMap<OsdId, u64> = BTreeMap::new();
                let mut primary: BTreeMap<OsdId, u64> = BTreeMap::new();
                for set in place_all(&map, &pool, PGS) {
                    if let Some(p) = set.first() {
                        *primary.entry(*p).or_insert(0) += 1;
                    }
                    for o in set {
                        *count.entry(o).or_insert(0) += 1;
                    }
                }
                let eligible: Vec<&OsdInfo> = map
                    .osds
                    .values()
                    .filter(|o| o.is_in && o.weight > 0)
                    .collect();
                let total: u64 = eligible.iter().map(|o| u64::from(o.weight)).sum();
                let k =
                    usize::from(c.size).min(domain_weights(&map, c.failure_domain).len()) as f64;
                let mut stats = stats.borrow_mut();
                stats.clusters += 1;
                let mut z2_sum = 0.0;
                for o in &eligible {
                    let lambda = k * f64::from(o.weight) / total as f64;
                    let expected = f64::from(PGS) * lambda;
                    let got = count.get(&o.id).copied().unwrap_or(0) as f64;
                    let sigma = (f64::from(PGS) * lambda * (1.0 - lambda)).sqrt().max(1.0);
                    let z = (got - expected) / sigma;
                    let rel = (got - expected).abs() / expected;
                    z2_sum += z * z;
                    // One primary per PG: the same test with p = w/W.
                    let p = f64::from(o.weight) / total as f64;
                    let primary_expected = f64::from(PGS) * p;
                    let primary_got = primary.get(&o.id).copied().unwrap_or(0) as f64;
                    let primary_z = (primary_got - primary_expected)
                        / (f64::from(PGS) * p * (1.0 - p)).sqrt().max(1.0);
                    stats.worst_primary_z = stats.worst_primary_z.max(primary_z.abs());
                    if primary_expected >= 4096.0 {
                        let rel = (primary_got - primary_expected).abs() / primary_expected;
                        stats.worst_primary_rel = stats.worst_primary_rel.max(rel);
                    }
                    prop_assert!(
                        primary_z.abs() <= 5.0,
                        "{}: primary of {} PGs, expected {:.0} (z = {:.2})",
                        o.id,
                        primary_got,
                        primary_expected,
                        primary_z
                    );
                    stats.worst_z = stats.worst_z.max(z.abs());
                    if expected >= 2048.0 {
                        stats.worst_rel_medium = stats.worst_rel_medium.max(rel);
                    }
                    prop_assert!(
                        z.abs() <= 5.0,
                        "{}: {} slots, expected {:.0} (z = {:.2})",
                        o.id,
                        got,
                        expected,
                        z
                    );
                    if expected >= 8192.0 {
                        stats.worst_rel_large = stats.worst_rel_large.max(rel);
                        prop_assert!(
                            rel <= 0.06,
                            "{}: {} slots, expected {:.0}",
                            o.id,
                            got,
                            expected
                        );
                    }
                }
                let n = eligible.len() as f64;
                let mean_z2 = z2_sum / n;
                prop_assert!(
                    mean_z2 <= 1.0 + 6.0 * (2.0 / n).sqrt(),
                    "mean z² {:.2} over {} OSDs",
                    mean_z2,
                    n
                );
                Ok(())
            },
        )
        .unwrap();
    eprintln!("shares_follow_weights: {:?}", stats.borrow());
}

#[derive(Default, Debug)]
struct MoveStats {
    /// (cases, worst ratio, sum of ratios) while every domain's share stays ≤ LIGHT.
    light: (usize, f64, f64),
    /// The same for clusters with a heavier domain.
    heavy: (usize, f64, f64),
}

/// A domain share below which adding an OSD must move at most 1.5× its own share.
const LIGHT: f64 = 0.7;

/// Adding one OSD of weight w (to a new host, or to an existing host) moves about
/// w / (W + w) of all replica slots: the new OSD's share, which is the least any placement
/// can move. A slot moves when its (PG, OSD) membership is in the new set but not the old;
/// the moved fraction is compared with w / (W + w).
///
/// Tolerances: while every domain's target share size·W_d/W stays ≤ 0.7 (before and after),
/// at most 1.5× the ideal; with a heavier domain at most 2.0× (exact proportionality near a
/// domain's cap shifts every domain's rate, see the module header of `placement`). Both
/// allow 4σ of binomial noise on the ideal count, sqrt(PGS·size·w/(W+w)).
#[test]
fn adding_an_osd_moves_about_its_share() {
    const PGS: u32 = 8192;
    let stats = RefCell::new(MoveStats::default());
    let strategy = (
        cluster_strategy(&[FailureDomain::Host, FailureDomain::Host, FailureDomain::Osd]),
        WEIGHT_ONE / 2..=4 * WEIGHT_ONE,
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(statistical_config(96));
    runner
        .run(&strategy, |(c, w, host, new_host)| {
            let before = build_map(&c.hosts);
            let mut after = before.clone();
            let new_id = after.next_osd_id;
            after.next_osd_id += 1;
            let host = if new_host {
                host_name(c.hosts.len())
            } else {
                host_name(host.index(c.hosts.len()))
            };
            after.osds.insert(
                new_id,
                OsdInfo {
                    id: OsdId(new_id),
                    host,
                    addr: String::new(),
                    weight: w,
                    up: true,
                    is_in: true,
                    up_from: 1,
                    store_uuid: u128::from(new_id) + 1,
                    capacity_bytes: 1 << 40,
                    fullness: Default::default(),
                    process: 0,
                },
            );
            let fd = c.failure_domain;
            let share = max_share(&before, fd, c.size).max(max_share(&after, fd, c.size));
            prop_assume!(share <= 1.0);
            // The pool must be able to use the added domain (no undersized → sized jump).
            prop_assume!(domain_weights(&before, fd).len() >= usize::from(c.size));
            let pool = pool(c.size, fd);
            let old = place_all(&before, &pool, PGS);
            let now = place_all(&after, &pool, PGS);
            let moved: usize = old
                .iter()
                .zip(&now)
                .map(|(o, n)| n.iter().filter(|x| !o.contains(x)).count())
                .sum();
            let slots = f64::from(PGS) * f64::from(c.size);
            let total: u64 = after
                .osds
                .values()
                .filter(|o| o.is_in)
                .map(|o| u64::from(o.weight))
                .sum();
            let ideal = slots * f64::from(w) / total as f64;
            let ratio = moved as f64 / ideal;
            let mut stats = stats.borrow_mut();
            let bucket = if share <= LIGHT {
                &mut stats.light
            } else {
                &mut stats.heavy
            };
            bucket.0 += 1;
            bucket.1 = bucket.1.max(ratio);
            bucket.2 += ratio;
            let bound = if share <= LIGHT { 1.5 } else { 2.0 };
            prop_assert!(
                moved as f64 <= bound * ideal + 4.0 * ideal.sqrt(),
                "moved {} slots, ideal {:.0} (ratio {:.2}, max domain share {:.2}, new host {})",
                moved,
                ideal,
                ratio,
                share,
                new_host
            );
            Ok(())
        })
        .unwrap();
    eprintln!("adding_an_osd_moves_about_its_share: {:?}", stats.borrow());
}

/// Exactness where successive straw2 is furthest off: five hosts and four copies, four hosts
/// at 24% of the weight each (target share 0.96) and one at 4% (0.16). Successive sampling
/// (straw2 per rank) would give the light host 0.28, 75% too much. Over 2^18 PGs the noise is
/// below 0.5%
/// (σ of the light host's share); the tolerance is 2%.
#[test]
fn near_cap_shares_are_exact() {
    const PGS: u32 = 1 << 18;
    let heavy = || {
        vec![
            Osd {
                weight: 4 * WEIGHT_ONE,
                is_in: true,
            },
            Osd {
                weight: 2 * WEIGHT_ONE,
                is_in: true,
            },
        ]
    };
    let hosts = vec![
        heavy(),
        heavy(),
        heavy(),
        heavy(),
        vec![Osd {
            weight: WEIGHT_ONE,
            is_in: true,
        }],
    ];
    let map = build_map(&hosts);
    let pool = pool(4, FailureDomain::Host);
    let placement = PoolPlacement::new(&map, &pool);
    let mut count = vec![0u64; map.osds.len()];
    for seed in 0..PGS {
        for o in placement.pg_osds(seed) {
            count[o.0 as usize] += 1;
        }
    }
    let total: f64 = map.osds.values().map(|o| f64::from(o.weight)).sum();
    for o in map.osds.values() {
        let expected = f64::from(PGS) * 4.0 * f64::from(o.weight) / total;
        let rel = (count[o.id.0 as usize] as f64 - expected) / expected;
        eprintln!(
            "{}: {} slots, expected {:.0} ({:+.3}%)",
            o.id,
            count[o.id.0 as usize],
            expected,
            rel * 100.0
        );
        assert!(
            rel.abs() <= 0.02,
            "{}: {} slots, expected {:.0}",
            o.id,
            count[o.id.0 as usize],
            expected
        );
    }
}
