//! Model-based test of the peering rules (`osd::peering::authority`,
//! `missing_per_member`, `unacknowledged`) over random histories of one PG: OSDs fail and return, members
//! are replaced, writes reach only some members before a failure, recovery is partial,
//! and every change of the acting set peers again exactly as the primary does (ask the
//! acting set and every up witness of the recorded intervals, choose the authoritative
//! versions, record the interval, persist LES and the missing lists).
//!
//! Checked after every step: no acknowledged write is ever lost, and once a read has
//! returned a version an older one never comes back. Planted bugs (skip past intervals,
//! no rollback, no persisted missing lists, reading a copy a failed write left only on
//! the primary) must each be caught within the seeds run; the real rules must pass all.
//!
//! `PEERING_MODEL_SEEDS` (default 3000) sets how many seeds run.

use osd::peering::{authority, missing_per_member, unacknowledged};
use proto::msg::PgPeerInfo;
use proto::{ObjectId, OsdId, Version};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

const OSDS: u32 = 6;
const SIZE: usize = 3;
const MIN_SIZE: usize = 2;
const OBJECTS: u64 = 4;
const STEPS: usize = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Real,
    SkipPastIntervals,
    NoRollback,
    NoMissingLists,
    ReadUnresolved,
}

#[derive(Clone, Default)]
struct Osd {
    up: bool,
    store: BTreeMap<ObjectId, Version>,
    les: u64,
    missing: BTreeMap<ObjectId, Version>,
}

struct Interval {
    start: u64,
    acting: Vec<OsdId>,
    seq: u64,
    /// The primary's recovery state: member → object → version it needs.
    missing: BTreeMap<OsdId, BTreeMap<ObjectId, Version>>,
    sources: BTreeMap<ObjectId, Vec<OsdId>>,
    unresolved: BTreeSet<ObjectId>,
}

struct World {
    v: Variant,
    rng: StdRng,
    osds: Vec<Osd>,
    placement: Vec<OsdId>,
    epoch: u64,
    history: Vec<(u64, Vec<OsdId>)>,
    active: Option<Interval>,
    acked: BTreeMap<ObjectId, Version>,
    served: BTreeMap<ObjectId, Version>,
    /// An OSD died and the map has not changed yet.
    unnoticed: bool,
    /// Versions of writes that failed (their client gave up).
    abandoned: BTreeMap<ObjectId, BTreeSet<Version>>,
    /// Abandoned versions a read has passed over (it returned an older one after the
    /// failure): they must never appear again.
    dead: BTreeMap<ObjectId, BTreeSet<Version>>,
    log: Vec<String>,
}

fn obj(i: u64) -> ObjectId {
    ObjectId {
        pool: 1,
        image: 1,
        index: i,
    }
}

impl World {
    fn new(seed: u64, v: Variant) -> World {
        let mut osds = vec![Osd::default(); OSDS as usize];
        for o in &mut osds {
            o.up = true;
        }
        let mut w = World {
            v,
            rng: StdRng::seed_from_u64(seed),
            osds,
            placement: (0..SIZE as u32).map(OsdId).collect(),
            epoch: 1,
            history: Vec::new(),
            active: None,
            acked: BTreeMap::new(),
            served: BTreeMap::new(),
            unnoticed: false,
            abandoned: BTreeMap::new(),
            dead: BTreeMap::new(),
            log: Vec::new(),
        };
        w.peer();
        w
    }

    fn up(&self, o: OsdId) -> bool {
        self.osds[o.0 as usize].up
    }

    /// A new interval: peer as the primary does; errors are checker failures.
    fn peer(&mut self) {
        self.unnoticed = false;
        self.epoch += 1;
        let start = self.epoch;
        self.active = None;
        let acting: Vec<OsdId> = self
            .placement
            .iter()
            .copied()
            .filter(|o| self.up(*o))
            .collect();
        if acting.len() < MIN_SIZE {
            self.log.push(format!("e{start}: down (acting {acting:?})"));
            return;
        }
        let mut ask: BTreeSet<OsdId> = acting.iter().copied().collect();
        if self.v != Variant::SkipPastIntervals {
            for (_, members) in &self.history {
                let alive: Vec<OsdId> = members.iter().copied().filter(|o| self.up(*o)).collect();
                if alive.is_empty() {
                    self.log.push(format!("e{start}: incomplete"));
                    return;
                }
                ask.extend(alive);
            }
        }
        let infos: BTreeMap<OsdId, PgPeerInfo> = ask
            .iter()
            .map(|o| {
                let s = &self.osds[o.0 as usize];
                let info = PgPeerInfo {
                    last_epoch_started: if self.v == Variant::NoRollback {
                        0
                    } else {
                        s.les
                    },
                    objects: s.store.iter().map(|(k, v)| (*k, *v)).collect(),
                    missing: if self.v == Variant::NoMissingLists {
                        Vec::new()
                    } else {
                        s.missing.iter().map(|(k, v)| (*k, *v)).collect()
                    },
                    lease: true,
                };
                (*o, info)
            })
            .collect();
        let (auth, sources) = authority(acting[0], &infos);
        if auth
            .iter()
            .any(|(o, v)| !v.is_none() && !sources.contains_key(o))
        {
            self.log.push(format!("e{start}: incomplete (unfound)"));
            return;
        }
        for (o, v) in &auth {
            assert!(
                !self.dead.get(o).is_some_and(|d| d.contains(v)),
                "{:?}: peering at e{start} brought back {o} at {v}, an abandoned write a read had passed\n{}",
                self.v,
                self.log.join("\n")
            );
        }
        // The checks: nothing acknowledged or read is behind the authoritative versions.
        for (o, v) in self.acked.iter().chain(self.served.iter()) {
            let a = auth.get(o).copied().unwrap_or(Version::NONE);
            assert!(
                a >= *v,
                "{:?}: peering at e{start} chose {o} at {a}, but {v} was acknowledged or read\n{}",
                self.v,
                self.log.join("\n")
            );
        }
        // A version peering may fall back to when the authoritative one is unreadable
        // (`unacknowledged`) loses nothing acknowledged or read either.
        for (o, below) in unacknowledged(&infos, &auth) {
            let floor = self.acked.get(&o).max(self.served.get(&o));
            for u in below {
                assert!(
                    floor.is_none_or(|f| u >= *f),
                    "{:?}: peering at e{start} could fall back to {o} at {u}, below {floor:?}, which was acknowledged or read\n{}",
                    self.v,
                    self.log.join("\n")
                );
            }
        }
        let missing = missing_per_member(&acting, &infos, &auth);
        self.history.push((start, acting.clone()));
        for m in &acting {
            let s = &mut self.osds[m.0 as usize];
            s.les = start;
            s.missing = missing.get(m).cloned().unwrap_or_default();
        }
        self.log
            .push(format!("e{start}: active {acting:?} asked {ask:?}"));
        self.active = Some(Interval {
            start,
            acting,
            seq: 0,
            missing,
            sources: sources.into_iter().collect(),
            unresolved: BTreeSet::new(),
        });
    }

    /// The primary's copy of `o` brought to the authoritative version; false if impossible.
    fn primary_ready(&mut self, o: ObjectId) -> bool {
        let Some(i) = &mut self.active else {
            return false;
        };
        let p = i.acting[0];
        let Some(need) = i.missing.get(&p).and_then(|m| m.get(&o)).copied() else {
            return true;
        };
        if need.is_none() {
            self.osds[p.0 as usize].store.remove(&o);
        } else {
            let src = i.sources.get(&o).into_iter().flatten().find(|s| {
                self.osds[s.0 as usize].up && self.osds[s.0 as usize].store.get(&o) == Some(&need)
            });
            if src.is_none() {
                return false;
            }
            self.osds[p.0 as usize].store.insert(o, need);
        }
        if let Some(m) = i.missing.get_mut(&p) {
            m.remove(&o);
        }
        true
    }

    fn write(&mut self, o: ObjectId) {
        if !self.primary_ready(o) {
            return;
        }
        let Some(i) = &self.active else { return };
        if !self.osds[i.acting[0].0 as usize].up {
            return;
        }
        // A member that died unnoticed (the map has not changed yet) fails every write.
        let dead_member = i.acting.iter().any(|m| !self.osds[m.0 as usize].up);
        let fail = dead_member || self.rng.random_bool(0.2);
        let Some(i) = &mut self.active else { return };
        i.seq += 1;
        let v = Version {
            epoch: i.start,
            seq: i.seq,
        };
        let p = i.acting[0];
        self.osds[p.0 as usize].store.insert(o, v);
        let others: Vec<OsdId> = i.acting[1..].to_vec();
        if fail {
            // Some members get it, then one of them (or the primary) dies: not acknowledged.
            for m in &others {
                if self.osds[m.0 as usize].up && self.rng.random_bool(0.5) {
                    self.osds[m.0 as usize].store.insert(o, v);
                }
            }
            for m in &others {
                i.missing.entry(*m).or_default().insert(o, v);
            }
            i.unresolved.insert(o);
            self.abandoned.entry(o).or_default().insert(v);
            if dead_member {
                self.log
                    .push(format!("write {o} {v} failed (a member is dead)"));
                return;
            }
            let victim = i.acting[self.rng.random_range(0..i.acting.len())];
            self.log
                .push(format!("write {o} {v} failed; {victim} dies"));
            self.osds[victim.0 as usize].up = false;
            // The map notices now, or a little later (reads and writes meanwhile).
            if self.rng.random_bool(0.5) {
                self.peer();
            } else {
                self.unnoticed = true;
            }
            return;
        }
        for m in &others {
            self.osds[m.0 as usize].store.insert(o, v);
        }
        for m in i.missing.values_mut() {
            m.remove(&o);
        }
        i.unresolved.remove(&o);
        self.acked.insert(o, v);
        self.log.push(format!("write {o} {v} acknowledged"));
    }

    fn read(&mut self, o: ObjectId) {
        if !self.primary_ready(o) {
            return;
        }
        let Some(i) = &self.active else { return };
        if !self.osds[i.acting[0].0 as usize].up {
            return;
        }
        if i.unresolved.contains(&o) && self.v != Variant::ReadUnresolved {
            return; // refused until recovery resolves it
        }
        let got = self.osds[i.acting[0].0 as usize]
            .store
            .get(&o)
            .copied()
            .unwrap_or(Version::NONE);
        let floor = self.acked.get(&o).max(self.served.get(&o)).copied();
        if let Some(f) = floor {
            assert!(
                got >= f,
                "{:?}: read of {o} returned {got} after {f}\n{}",
                self.v,
                self.log.join("\n")
            );
        }
        assert!(
            !self.dead.get(&o).is_some_and(|d| d.contains(&got)),
            "{:?}: read of {o} returned {got}, an abandoned write a read had passed\n{}",
            self.v,
            self.log.join("\n")
        );
        if let Some(a) = self.abandoned.get_mut(&o) {
            let passed: Vec<Version> = a.iter().copied().filter(|v| *v > got).collect();
            for v in passed {
                a.remove(&v);
                self.dead.entry(o).or_default().insert(v);
            }
        }
        self.served
            .insert(o, got.max(floor.unwrap_or(Version::NONE)));
    }

    /// One recovery step: a member gets an object it lacks.
    fn recover_one(&mut self) {
        let Some(i) = &self.active else { return };
        let p = i.acting[0];
        let work: Vec<(OsdId, ObjectId, Version)> = i
            .missing
            .iter()
            .flat_map(|(m, l)| l.iter().map(move |(o, v)| (*m, *o, *v)))
            .collect();
        if work.is_empty() {
            if i.acting.len() == SIZE {
                let start = i.start;
                self.history.retain(|(s, _)| *s >= start);
            }
            return;
        }
        let (m, o, v) = work[self.rng.random_range(0..work.len())];
        if m == p {
            self.primary_ready(o);
            return;
        }
        if self.osds[p.0 as usize]
            .store
            .get(&o)
            .copied()
            .unwrap_or(Version::NONE)
            != v
        {
            return; // the primary's own copy first
        }
        if v.is_none() {
            self.osds[m.0 as usize].store.remove(&o);
        } else {
            self.osds[m.0 as usize].store.insert(o, v);
        }
        let Some(i) = &mut self.active else { return };
        if let Some(l) = i.missing.get_mut(&m) {
            l.remove(&o);
        }
        if !i.missing.values().any(|l| l.contains_key(&o)) {
            i.unresolved.remove(&o);
        }
    }

    fn step(&mut self) {
        if self.unnoticed && self.rng.random_bool(0.3) {
            self.unnoticed = false;
            self.log.push("the map notices".into());
            self.peer();
            return;
        }
        let o = obj(self.rng.random_range(0..OBJECTS));
        match self.rng.random_range(0..100) {
            0..=34 => self.write(o),
            35..=59 => self.read(o),
            60..=74 => self.recover_one(),
            75..=84 => {
                let up: Vec<u32> = (0..OSDS).filter(|i| self.osds[*i as usize].up).collect();
                if up.len() > 1 {
                    let victim = up[self.rng.random_range(0..up.len())];
                    self.log.push(format!("osd.{victim} dies"));
                    self.osds[victim as usize].up = false;
                    self.peer();
                }
            }
            85..=94 => {
                let down: Vec<u32> = (0..OSDS).filter(|i| !self.osds[*i as usize].up).collect();
                if !down.is_empty() {
                    let back = down[self.rng.random_range(0..down.len())];
                    self.log.push(format!("osd.{back} returns"));
                    self.osds[back as usize].up = true;
                    self.peer();
                }
            }
            _ => {
                // A member is replaced (marked out): data moves to an OSD outside the set.
                let spare: Vec<u32> = (0..OSDS)
                    .filter(|i| !self.placement.contains(&OsdId(*i)) && self.osds[*i as usize].up)
                    .collect();
                if !spare.is_empty() {
                    let at = self.rng.random_range(0..SIZE);
                    let new = OsdId(spare[self.rng.random_range(0..spare.len())]);
                    self.log
                        .push(format!("{} replaced by {new}", self.placement[at]));
                    self.placement[at] = new;
                    self.peer();
                }
            }
        }
    }
}

fn run(seed: u64, v: Variant) -> Result<(), String> {
    std::panic::catch_unwind(|| {
        let mut w = World::new(seed, v);
        for _ in 0..STEPS {
            w.step();
        }
        // Heal: everyone returns, recovery finishes, a final read of every object.
        for o in &mut w.osds {
            o.up = true;
        }
        w.peer();
        for _ in 0..500 {
            w.recover_one();
        }
        for i in 0..OBJECTS {
            w.read(obj(i));
        }
    })
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "panic".into())
    })
}

fn seeds() -> u64 {
    std::env::var("PEERING_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn the_peering_rules_lose_no_acknowledged_write_and_never_go_back() {
    std::panic::set_hook(Box::new(|_| {}));
    for seed in 0..seeds() {
        if let Err(e) = run(seed, Variant::Real) {
            let _ = std::panic::take_hook();
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn planted_bugs_are_caught() {
    std::panic::set_hook(Box::new(|_| {}));
    for v in [
        Variant::SkipPastIntervals,
        Variant::NoRollback,
        Variant::NoMissingLists,
        Variant::ReadUnresolved,
    ] {
        let caught = (0..seeds()).find(|s| run(*s, v).is_err());
        let _ = std::panic::take_hook();
        println!("{v:?}: caught at seed {caught:?}");
        assert!(
            caught.is_some(),
            "{v:?} was not caught in {} seeds",
            seeds()
        );
        std::panic::set_hook(Box::new(|_| {}));
    }
    let _ = std::panic::take_hook();
}
