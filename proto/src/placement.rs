//! Placement: object → PG → ordered OSD set, computed by every client and OSD from the map.
//!
//! # Flow
//!
//! 1. `object_pg`: xxh3 of the object id modulo the pool's PG count.
//! 2. `PoolPlacement::new` collects the OSDs that are `in` with weight > 0 (up or not: the
//!    caller filters by up), groups them into failure domains (a host, or a single OSD),
//!    and gives each domain a target share of the PG's `k = min(size, domains)` slots:
//!    `λ_d = k · W_d / W`. A domain with `1/k` of the weight or more cannot hold more than
//!    one copy, so it is capped at `λ_d = 1` (it is in every PG) and the other domains share
//!    the remaining slots in proportion to their weights (capping repeats while it applies).
//! 3. `PoolPlacement::pg_osds` draws, per PG, one exponential "straw" per OSD, derives from
//!    them one straw per domain, runs the race described below to pick the domains, and
//!    orders the chosen OSDs by a second, unweighted hash (first = primary).
//!
//! # Why not "straw2 per rank, skipping chosen domains"
//!
//! Picking the max straw2 draw for rank 0, then again for rank 1 among the rest, and so on,
//! is *successive sampling*. It is exact for one copy but not for several: a heavy domain
//! that wins rank 0 cannot win again, so heavy domains end up with less than their share and
//! light ones with more (Ceph's "multi-pick anomaly"). In 3–12 host clusters with no domain
//! above `1/size` of the weight this is up to ~40% off, far outside what a store that fills
//! its OSDs by weight can accept.
//!
//! # The scheme: Brewer's πps method run as a race of exponential clocks
//!
//! Brewer's sequential method (K. R. W. Brewer, 1975; see Tillé, *Sampling Algorithms*)
//! picks `k'` domains (the slots left after the capped ones) so that each domain is included
//! with probability exactly `λ_d` (sampling with probability proportional to size, "πps").
//! At pick `j` (with `rem = k' − j` picks left and `U` the weight of the uncapped domains not
//! yet picked) domain `d` is drawn with probability proportional to
//!
//! ```text
//!     r_d = w_d · (U − w_d) / (U − rem · w_d)        (w: weights of the uncapped domains)
//! ```
//!
//! which favours heavy domains early by exactly the amount successive sampling lacks; at the
//! last pick `r_d = w_d`. Capped domains are simply members.
//!
//! Drawing the picks independently (one hash per rank) would be exact too, but fragile: any
//! change of an early pick re-draws every later one (simulated: up to 4.5× the minimal data
//! movement when an OSD is added). Instead each
//! domain gets one exponential threshold `E_d` per PG and the picks are a race: during pick
//! `j` every remaining domain burns its threshold at rate `r_d`, the first to reach zero is
//! picked, and the others keep what is left of their thresholds. By memorylessness the
//! leftovers are again independent Exp(1), so each pick is distributed exactly as Brewer's
//! method says, while a small change of the weights moves the finishing times only a little
//! and so changes few sets.
//!
//! A domain's threshold comes from its OSDs: each OSD draws `E_o ~ Exp(1)` from a hash, the
//! domain's threshold is `W_d · min_o(E_o / w_o)` (again Exp(1)) and its member OSD is the
//! `argmin` (chosen with probability `w_o / W_d`, independently of the minimum). This is host
//! straw2 followed by OSD straw2 in distribution, but coupled: an OSD added to a host can only
//! pull PGs to itself, never reshuffle PGs through the host's other OSDs (with independent
//! host and OSD draws, growing a host moves up to twice the minimum). It is also why host
//! names need no hash of their own: they only group OSDs.
//!
//! # Order and primary
//!
//! The members are sorted by a second hash of (pool, PG, OSD) that ignores weight, so each
//! member of a set is equally likely to be first. An OSD is then primary in `λ_d·w_o/W_d / k`
//! of the PGs, i.e. `w_o / W` (proportional to weight, like its replica share), and members
//! that stay in a set when it changes keep their relative order, so the primary changes only
//! when it leaves or a newcomer sorts before it.
//!
//! # Invariants
//!
//! - A set has exactly `min(size, number of failure domains with an eligible OSD)` members:
//!   distinct OSDs, at most one per failure domain, each `in` with weight > 0. With fewer
//!   domains than `size` the PG is undersized, never doubled up.
//! - Each OSD's expected share of replica slots is `λ_d · w_o / W_d`, i.e. proportional to its
//!   weight when no domain holds more than `1/size` of the weight; its expected share of
//!   primaries is that divided by `k`.
//! - Placement is a pure function of (eligible OSDs with host and weight, pool id, size,
//!   failure domain, PG seed). Hashes are xxh3 over explicit little-endian bytes, and all
//!   arithmetic is integer (the logarithm is a fixed-point table built by `const fn`), so
//!   every machine computes bit-identical sets. Changing any of this moves data on every
//!   existing cluster: a unit test pins a few sets.
//!
//! # Known limits
//!
//! - Exact proportionality has a price when a domain is near its cap (`λ_d` close to 1):
//!   Brewer's rates of all domains shift when one weight changes. Adding an OSD moves close to
//!   its own share when domains are light, at most ~1.4× of it while every domain stays below
//!   `0.7/size` of the weight or when the OSD comes with a new host, and up to ~1.8× when it
//!   grows an existing host that is near its cap (measured over random 3–12 host clusters,
//!   see `tests/placement_props.rs`). Successive straw2 moves less there, but is tens of
//!   percent off in the shares themselves.
//! - One PG costs one hash and one fixed-point logarithm per eligible OSD (about 25 ns each:
//!   ~25 µs per PG at 1000 OSDs), unlike CRUSH's descent that draws only within the chosen
//!   host; that is the price of the coupled host draw. The race itself runs only over the
//!   domains that can still win: a PG-independent bound on each domain's boost rules out
//!   the rest. Code that places many PGs under one map builds a `PoolPlacement` once.
//! - Total eligible weights above 2^40 (16 EiB at 1 TiB per `WEIGHT_ONE`) are scaled down
//!   before placing, so that every product fits in 128 bits.

use crate::ids::{ObjectId, OsdId, PgId, PoolId};
use crate::map::{ClusterMap, FailureDomain, Pool};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The algorithm this module implements, recorded in every pool it places. Any change that
/// moves a set must bump it (and keep the old one for existing pools).
pub const PLACEMENT_ALGORITHM: u8 = 1;

/// Whether this build places `pool` the way every other member of the cluster does.
pub fn supports(pool: &Pool) -> bool {
    pool.placement == PLACEMENT_ALGORITHM
}

/// The PG of an object: stable hash of the object id modulo the pool's PG count.
pub fn object_pg(obj: &ObjectId, pool: &Pool) -> PgId {
    PgId {
        pool: pool.id,
        seed: (obj.stable_hash() % pool.pg_count as u64) as u32,
    }
}

/// The ordered placement set of a PG over the OSDs that are `in` with weight > 0, whether up
/// or not: at most `pool.size` distinct OSDs, no two in one failure domain. Fewer when there
/// are not enough failure domains (the PG is then undersized, never doubled up).
pub fn pg_osds(map: &ClusterMap, pool: &Pool, seed: u32) -> Vec<OsdId> {
    PoolPlacement::new(map, pool).pg_osds(seed)
}

/// Hash streams: the draw that picks the set and the draw that orders it are independent.
const STREAM_SET: u32 = 0;
const STREAM_ORDER: u32 = 1;

/// Bits of the total eligible weight placement computes with (see `PoolPlacement::new`).
const MAX_WEIGHT_BITS: u32 = 40;

/// One failure domain: a host's eligible OSDs, or one OSD.
#[derive(Clone, Debug)]
struct Domain {
    /// (OSD, weight), weight > 0.
    osds: Vec<(OsdId, u32)>,
    /// Sum of the OSD weights.
    weight: u64,
    /// Target share capped at 1: the domain is a member of every PG.
    certain: bool,
    /// An upper bound, Q16 and with slack, of Brewer's boost `(U − w)/(U − rem·w)` over every
    /// pick of every PG (0 for certain domains). Lets a PG skip racers that cannot finish.
    boost_bound_q16: u128,
}

/// The failure domains of one pool under one map, ready to place any number of PGs:
/// `PoolPlacement::new(map, pool).pg_osds(seed) == pg_osds(map, pool, seed)`.
#[derive(Clone, Debug)]
pub struct PoolPlacement {
    pool: PoolId,
    /// Ordered by host name (or OSD id), so every machine numbers them alike.
    domains: Vec<Domain>,
    /// Members per PG: `min(size, domains.len())`.
    take: usize,
    /// Slots left for the race after the certain domains: `take − #certain`.
    race_slots: usize,
    /// Total weight of the domains that are not certain.
    race_weight: u64,
    /// Right shift applied to every rate so that any rate of any pick fits in 63 bits (one
    /// scale for all PGs and picks: skipping racers that cannot win changes no rounding).
    rate_shift: u32,
}

impl PoolPlacement {
    /// Groups the map's eligible OSDs (`in`, weight > 0) into the pool's failure domains and
    /// caps the domains too heavy for a proportional share.
    pub fn new(map: &ClusterMap, pool: &Pool) -> Self {
        let eligible = || map.osds.values().filter(|o| o.is_in && o.weight > 0);
        // Keeps the total weight within 2^40 (16 EiB at 1 TiB per WEIGHT_ONE) so that the
        // race's products fit in u128; only absurdly large maps are scaled down.
        let total: u64 = eligible().map(|o| u64::from(o.weight)).sum();
        let scale = (64 - total.leading_zeros()).saturating_sub(MAX_WEIGHT_BITS);
        let mut groups: BTreeMap<DomainKey<'_>, Vec<(OsdId, u32)>> = BTreeMap::new();
        for osd in eligible() {
            let key = match pool.failure_domain {
                FailureDomain::Host => DomainKey::Host(&osd.host),
                FailureDomain::Osd => DomainKey::Osd(osd.id),
            };
            groups
                .entry(key)
                .or_default()
                .push((osd.id, (osd.weight >> scale).max(1)));
        }
        let mut domains: Vec<Domain> = groups
            .into_values()
            .map(|osds| {
                let weight = osds.iter().map(|&(_, w)| u64::from(w)).sum();
                Domain {
                    osds,
                    weight,
                    certain: false,
                    boost_bound_q16: 0,
                }
            })
            .collect();
        let take = usize::from(pool.size).min(domains.len());

        // Caps domains whose share k·w/W reaches 1, heaviest first; after each cap the
        // remaining slots and weight are shared again. A domain that is not capped leaves
        // every lighter one uncapped too, so one pass in weight order suffices.
        let mut by_weight: Vec<usize> = (0..domains.len()).collect();
        by_weight.sort_by(|&a, &b| domains[b].weight.cmp(&domains[a].weight).then(a.cmp(&b)));
        let mut race_slots = take;
        let mut race_weight: u64 = domains.iter().map(|d| d.weight).sum();
        let mut capped = 0;
        for &d in &by_weight {
            if race_slots == 0
                || (race_slots as u128) * u128::from(domains[d].weight) < u128::from(race_weight)
            {
                break;
            }
            domains[d].certain = true;
            race_slots -= 1;
            race_weight -= domains[d].weight;
            capped += 1;
        }

        // Bounds each racer's boost over all picks. At pick j (rem = k' − j picks left) the
        // unpicked weight U is at least W' minus the j heaviest other racers, and the boost
        // only grows as U shrinks. Each of those racers weighs less than W'/k', so
        // U > rem·W'/k' > rem·w and the denominator stays positive.
        let heaviest: Vec<usize> = by_weight[capped..]
            .iter()
            .copied()
            .take(race_slots)
            .collect();
        let mut max_rate_bound = 0u128;
        for d in by_weight[capped..].iter().copied() {
            let w = u128::from(domains[d].weight);
            let mut bound = 1u128 << 16;
            let mut others = 0u128; // weight of the j heaviest racers other than d
            let mut next = heaviest.iter().filter(|&&h| h != d);
            for j in 0..race_slots.saturating_sub(1) {
                if j > 0 {
                    others += next.next().map_or(0, |&h| u128::from(domains[h].weight));
                }
                let u = u128::from(race_weight) - others;
                let rem = (race_slots - j) as u128;
                let den = u.saturating_sub(rem * w).max(1);
                bound = bound.max(((u - w) << 16).div_ceil(den));
            }
            // Slack of 1/256 covers the rounding of rates and burnt thresholds.
            domains[d].boost_bound_q16 = bound + (bound >> 8) + 1;
            max_rate_bound = max_rate_bound.max(((w << 24) * domains[d].boost_bound_q16) >> 16);
        }
        let rate_shift = (128 - max_rate_bound.leading_zeros()).saturating_sub(63);
        PoolPlacement {
            pool: pool.id,
            domains,
            take,
            race_slots,
            race_weight,
            rate_shift,
        }
    }

    /// The ordered set of PG `seed` (first = primary); see the module header.
    pub fn pg_osds(&self, seed: u32) -> Vec<OsdId> {
        self.place(seed, true)
    }

    /// `pg_osds`, optionally without skipping the racers that cannot win (which must not
    /// change the answer).
    fn place(&self, seed: u32, prune: bool) -> Vec<OsdId> {
        let mut members: Vec<OsdId> = Vec::with_capacity(self.take);
        let mut racers: Vec<Racer> = Vec::with_capacity(self.domains.len());
        for (domain, d) in self.domains.iter().enumerate() {
            let racer = self.domain_draw(domain, seed);
            if d.certain {
                members.push(racer.osd);
            } else {
                racers.push(racer);
            }
        }
        if racers.len() <= self.race_slots {
            members.extend(racers.iter().map(|r| r.osd));
        } else if self.race_slots > 0 {
            if prune {
                self.prune(&mut racers);
            }
            self.race(&mut racers, &mut members);
        }
        debug_assert_eq!(members.len(), self.take);

        // Orders the members by a second, unweighted hash: each member is equally likely to
        // be first, so an OSD is primary in a share λ/k = w/W of the PGs, and the members
        // that stay when a set changes keep their relative order.
        let mut keyed: Vec<(u64, OsdId)> = members
            .into_iter()
            .map(|id| (uniform(self.pool, seed, STREAM_ORDER, id), id))
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// A domain's straw: its OSD with the least `E_o / w_o` (ties to the lower id).
    fn domain_draw(&self, domain: usize, seed: u32) -> Racer {
        let mut best = Racer {
            domain,
            e: u64::MAX,
            w: 1,
            osd: OsdId(u32::MAX),
            left: 0,
        };
        for &(id, w) in &self.domains[domain].osds {
            let e = neg_ln_q40(uniform(self.pool, seed, STREAM_SET, id));
            if cmp_ratio(e, w, best.e, best.w).then(id.cmp(&best.osd)) == Ordering::Less {
                best = Racer {
                    domain,
                    e,
                    w,
                    osd: id,
                    left: 0,
                };
            }
        }
        best
    }

    /// Drops the racers that cannot finish. A racer's threshold is `W_d · e/w`, and it burns
    /// at rate ≥ W_d (the boost is ≥ 1), so the race is over by T* = the k'-th smallest
    /// `e/w`; a racer whose boost never exceeds B cannot finish by then when e/w > B·T*. The
    /// comparison is exact where it fits in u128 and keeps the racer where it does not.
    fn prune(&self, racers: &mut Vec<Racer>) {
        let mut keys: Vec<(u64, u32)> = racers.iter().map(|r| (r.e, r.w)).collect();
        let (_, &mut (e_t, w_t), _) =
            keys.select_nth_unstable_by(self.race_slots - 1, |a, b| cmp_ratio(a.0, a.1, b.0, b.1));
        racers.retain(|r| {
            let lhs = (u128::from(r.e) * u128::from(w_t)) << 16;
            let rhs = (u128::from(e_t) * u128::from(r.w))
                .checked_mul(self.domains[r.domain].boost_bound_q16);
            rhs.is_none_or(|rhs| lhs <= rhs)
        });
    }

    /// Picks `race_slots` of the racers into `members` (Brewer's rates, shared thresholds).
    fn race(&self, racers: &mut Vec<Racer>, members: &mut Vec<OsdId>) {
        for r in racers.iter_mut() {
            // The domain's Exp(1) threshold W_d · e/w (Q40). It fits u64: e/w is the domain's
            // least, so W_d · e/w ≤ (W_d / heaviest OSD weight) · max e ≤ #OSDs · 2^46.
            let left =
                u128::from(r.e) * u128::from(self.domains[r.domain].weight) / u128::from(r.w);
            r.left = u64::try_from(left).unwrap_or(u64::MAX);
        }
        let mut unpicked_weight = self.race_weight;
        let mut rates: Vec<u128> = Vec::with_capacity(racers.len());
        for pick in 0..self.race_slots {
            let rem = (self.race_slots - pick) as u128;
            let u = u128::from(unpicked_weight);
            rates.clear();
            // r = w (U − w) / (U − rem·w), scaled by 2^24 for precision and shifted to fit
            // 63 bits; U − rem·w > 0 for uncapped domains (see `new`).
            rates.extend(racers.iter().map(|r| {
                let w = u128::from(self.domains[r.domain].weight);
                (((w * (u - w)) << 24) / u.saturating_sub(rem * w).max(1)) >> self.rate_shift
            }));
            // The winner is the least remaining/rate; ties go to the lower domain index.
            let mut winner: Option<usize> = None;
            for (j, (r, &rate)) in racers.iter().zip(rates.iter()).enumerate() {
                if rate == 0 {
                    continue;
                }
                let better = match winner {
                    None => true,
                    Some(b) => u128::from(r.left) * rates[b] < u128::from(racers[b].left) * rate,
                };
                if better {
                    winner = Some(j);
                }
            }
            let Some(w) = winner else { break };
            let won = racers.remove(w);
            let won_rate = rates.remove(w);
            members.push(won.osd);
            unpicked_weight -= self.domains[won.domain].weight;
            if pick + 1 < self.race_slots {
                // Every other racer burnt rate × (the winner's time) of its threshold.
                for (r, &rate) in racers.iter_mut().zip(rates.iter()) {
                    let burnt = rate * u128::from(won.left) / won_rate;
                    r.left = r
                        .left
                        .saturating_sub(u64::try_from(burnt).unwrap_or(u64::MAX));
                }
            }
        }
    }
}

/// A domain in one PG's race.
#[derive(Clone, Copy, Debug)]
struct Racer {
    domain: usize,
    /// The domain's best OSD, its draw `E_o` (Q40) and its weight.
    osd: OsdId,
    e: u64,
    w: u32,
    /// What is left of the domain's threshold `W_d · e/w` (Q40), set when the race starts.
    left: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DomainKey<'a> {
    Host(&'a str),
    Osd(OsdId),
}

/// Compares `a / wa` with `b / wb` exactly.
fn cmp_ratio(a: u64, wa: u32, b: u64, wb: u32) -> Ordering {
    (u128::from(a) * u128::from(wb)).cmp(&(u128::from(b) * u128::from(wa)))
}

/// A uniform draw in (0, 1] as `x / 2^48`, `x` in `1..=2^48`, from xxh3 of the
/// little-endian (pool, PG seed, stream, OSD id).
fn uniform(pool: PoolId, seed: u32, stream: u32, osd: OsdId) -> u64 {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&pool.to_le_bytes());
    b[4..8].copy_from_slice(&seed.to_le_bytes());
    b[8..12].copy_from_slice(&stream.to_le_bytes());
    b[12..16].copy_from_slice(&osd.0.to_le_bytes());
    (xxhash_rust::xxh3::xxh3_64(&b) >> 16) + 1
}

// ---- Fixed-point natural logarithm ----
//
// `neg_ln_q40(x)` = −ln(x / 2^48) with 40 fractional bits. With x = 2^n · m, m in [1, 2):
// −ln(x / 2^48) = (48 − n)·ln 2 − ln m. The top 8 fraction bits of m select a table entry
// c ≈ 1/m; m·c is within 2^−9 of 1, where five terms of the series of ln(1 + z) are exact to
// well below 2^−40, and ln m = ln(m·c) + ln(1/c). The table and ln 2 are computed at compile
// time from the artanh series, in integers only.

const Q64: u32 = 64;

/// 2·artanh(s) = ln((1 + s) / (1 − s)) for `s` in Q64, s ≤ 1/3.
const fn two_artanh_q64(s: u128) -> u128 {
    let s2 = (s * s) >> Q64;
    let mut term = s;
    let mut sum = 0u128;
    let mut k = 1u128;
    while term > 0 {
        sum += term / k;
        term = (term * s2) >> Q64;
        k += 2;
    }
    2 * sum
}

/// ln(a / b) in Q64 for b < a ≤ 2b, a < 2^64.
const fn ln_ratio_q64(a: u128, b: u128) -> u128 {
    two_artanh_q64(((a - b) << Q64) / (a + b))
}

const LN2_Q64: u128 = ln_ratio_q64(2, 1);

/// Q63 reciprocals of the centres of the 256 sub-intervals of [1, 2): 2^63 · 512 / (513 + 2i).
const RECIP_Q63: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let c = 513 + 2 * i as u128;
        t[i] = (((1u128 << 72) + c / 2) / c) as u64;
        i += 1;
    }
    t
};

/// ln(2^63 / RECIP_Q63[i]) in Q64.
const LN_INV_RECIP_Q64: [u128; 256] = {
    let mut t = [0u128; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ln_ratio_q64(1u128 << 63, RECIP_Q63[i] as u128);
        i += 1;
    }
    t
};

/// −ln(x / 2^48) in Q40 for `x` in `1..=2^48`; 0 for x = 2^48.
fn neg_ln_q40(x: u64) -> u64 {
    debug_assert!((1..=1u64 << 48).contains(&x));
    let lz = x.leading_zeros();
    let n = 63 - lz; // floor(log2 x), at most 48
    let m = x << lz; // Q63 mantissa in [1, 2)
    let i = ((m >> 55) & 0xff) as usize;
    let y = (u128::from(m) * u128::from(RECIP_Q63[i])) >> 63;
    let z = (y as i128 - (1i128 << 63)) as i64; // |z| < 2^54 (Q63)
    let mul = |a: i64, b: i64| ((i128::from(a) * i128::from(b)) >> 63) as i64;
    let z2 = mul(z, z);
    let z3 = mul(z2, z);
    let z4 = mul(z3, z);
    let z5 = mul(z4, z);
    let ln_y_q63 = i128::from(z - z2 / 2 + z3 / 3 - z4 / 4 + z5 / 5);
    let ln_m_q64 = (ln_y_q63 << 1) + LN_INV_RECIP_Q64[i] as i128;
    let neg = i128::from(48 - n) * LN2_Q64 as i128 - ln_m_q64;
    ((neg.max(0) as u128 + (1 << 23)) >> 24) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{OsdInfo, WEIGHT_ONE};

    fn map_of(osds: &[(u32, &str, u32)]) -> ClusterMap {
        let mut map = ClusterMap::new(1, vec![]);
        for &(id, host, weight) in osds {
            map.osds.insert(
                id,
                OsdInfo {
                    id: OsdId(id),
                    host: host.into(),
                    addr: String::new(),
                    weight,
                    up: true,
                    is_in: true,
                    up_from: 1,
                    store_uuid: u128::from(id) + 1,
                    capacity_bytes: 1 << 40,
                    fullness: Default::default(),
                    process: 0,
                },
            );
        }
        map.next_osd_id = osds.iter().map(|o| o.0 + 1).max().unwrap_or(0);
        map
    }

    fn pool(size: u8, failure_domain: FailureDomain) -> Pool {
        Pool {
            id: 1,
            name: "rbd".into(),
            size,
            min_size: 1,
            pg_count: 64,
            object_size: 128 << 10,
            failure_domain,
            placement: PLACEMENT_ALGORITHM,
        }
    }

    #[test]
    fn fixed_point_ln_matches_the_real_logarithm() {
        let mut worst = 0f64;
        let mut x = 1u64;
        let mut probe = |x: u64| {
            let got = neg_ln_q40(x) as f64 / (1u64 << 40) as f64;
            let want = -(x as f64 / (1u64 << 48) as f64).ln();
            worst = worst.max((got - want).abs());
        };
        while x <= 1 << 48 {
            probe(x);
            probe(x.saturating_sub(1).max(1));
            probe((x + x / 3).min(1 << 48));
            x <<= 1;
        }
        for i in 0..100_000u64 {
            probe((xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> 16) + 1);
        }
        assert_eq!(neg_ln_q40(1 << 48), 0);
        assert!(worst < 1e-9, "worst error {worst}");
        assert!(
            ((LN2_Q64 >> 40) as f64 - std::f64::consts::LN_2 * (1u64 << 24) as f64).abs() <= 1.0
        );
    }

    /// A fixed 3-host cluster: the sets are stable (pinned below), use 3 distinct hosts, and
    /// 64 PGs spread over every OSD.
    #[test]
    fn three_hosts_give_known_stable_sets() {
        let map = map_of(&[
            (0, "a", WEIGHT_ONE),
            (1, "a", WEIGHT_ONE),
            (2, "b", WEIGHT_ONE),
            (3, "b", 2 * WEIGHT_ONE),
            (4, "c", WEIGHT_ONE),
            (5, "c", WEIGHT_ONE / 2),
        ]);
        let pool = pool(3, FailureDomain::Host);
        let placement = PoolPlacement::new(&map, &pool);
        let mut count = [0u32; 6];
        let mut sets = Vec::new();
        for seed in 0..64 {
            let set = placement.pg_osds(seed);
            assert_eq!(set, pg_osds(&map, &pool, seed));
            let mut hosts: Vec<&str> = set
                .iter()
                .map(|o| map.osd(*o).unwrap().host.as_str())
                .collect();
            hosts.sort();
            assert_eq!(hosts, ["a", "b", "c"], "pg {seed}: {set:?}");
            for o in &set {
                count[o.0 as usize] += 1;
            }
            sets.push(set.iter().map(|o| o.0).collect::<Vec<_>>());
        }
        assert!(count.iter().all(|&c| c > 0), "{count:?}");
        // Pinned: a change here changes placement on every existing cluster.
        assert_eq!(sets[..4], PINNED_FIRST_SETS);
    }

    const PINNED_FIRST_SETS: [[u32; 3]; 4] = [[3, 5, 1], [3, 4, 0], [1, 4, 3], [0, 4, 2]];

    /// Skipping racers that cannot win changes no answer, on random clusters from light to
    /// near-cap (a few heavy hosts among light ones).
    #[test]
    fn pruning_changes_no_set() {
        let rand = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        let mut pruned_any = false;
        for case in 0..200u64 {
            let hosts = 3 + rand(case * 8) % 30;
            let mut osds = Vec::new();
            let mut id = 0;
            for h in 0..hosts {
                let heavy = rand(case * 8 + 1 + h * 977) % 5 == 0;
                for _ in 0..1 + rand(case * 8 + 2 + h * 977) % 4 {
                    let w = WEIGHT_ONE / 2
                        + (rand(case * 1000 + u64::from(id))
                            % u64::from(if heavy { 16 } else { 4 } * WEIGHT_ONE))
                            as u32;
                    osds.push((id, HOSTS[h as usize % HOSTS.len()], w));
                    id += 1;
                }
            }
            let map = map_of(&osds);
            let fd = if case % 3 == 0 {
                FailureDomain::Osd
            } else {
                FailureDomain::Host
            };
            let placement = PoolPlacement::new(&map, &pool(1 + (case % 5) as u8, fd));
            for seed in 0..256 {
                let fast = placement.place(seed, true);
                assert_eq!(
                    fast,
                    placement.place(seed, false),
                    "case {case} seed {seed}"
                );
            }
            pruned_any |= placement.domains.len() > 8;
        }
        assert!(pruned_any);
    }

    const HOSTS: [&str; 30] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z", "aa", "bb", "cc", "dd",
    ];

    #[test]
    fn undersized_and_empty_maps() {
        let map = map_of(&[
            (0, "a", WEIGHT_ONE),
            (1, "a", WEIGHT_ONE),
            (2, "b", WEIGHT_ONE),
        ]);
        for seed in 0..32 {
            let set = pg_osds(&map, &pool(3, FailureDomain::Host), seed);
            assert_eq!(set.len(), 2);
            assert_ne!(map.osd(set[0]).unwrap().host, map.osd(set[1]).unwrap().host);
            assert_eq!(pg_osds(&map, &pool(4, FailureDomain::Osd), seed).len(), 3);
        }
        let empty = map_of(&[]);
        assert!(pg_osds(&empty, &pool(3, FailureDomain::Host), 0).is_empty());
    }

    #[test]
    fn objects_map_into_the_pool_pg_range() {
        let pool = pool(3, FailureDomain::Host);
        for index in 0..1000 {
            let pg = object_pg(
                &ObjectId {
                    pool: 1,
                    image: 7,
                    index,
                },
                &pool,
            );
            assert!(pg.seed < pool.pg_count);
            assert_eq!(pg.pool, pool.id);
        }
    }
}
