//! Peering and recovery, on the primary of a PG's interval; the member side of both.
//!
//! Peering, for the interval starting at `start` with acting set A:
//! 1. Ask every member of A, and every up member (same store) of each past interval that
//!    went active since the PG was last clean (`map.pg_history`), what it holds: its
//!    `last_epoch_started` (LES), its objects with versions, and what it knew it was missing.
//!    A past interval with no such member leaves the PG incomplete, waiting for its
//!    members: never serve a guess.
//! 2. The authoritative version of each object is the newest one known to the answers with
//!    the highest LES (present copies and their missing lists). Every write acknowledged
//!    since is on all of them; a newer copy elsewhere was never acknowledged and is rolled
//!    back. An authoritative version that no reachable OSD holds leaves the PG incomplete.
//! 3. Record the interval as active at the monitor (refused if the map moved on), then tell
//!    every member to persist LES = start and what it is missing; then serve.
//! 4. Recover in the background, primary's own copies first, with a per-OSD concurrency
//!    limit. Client ops on a missing object recover it first (implicit recovery), so client
//!    IO never waits behind the queue. When every member of a full-size acting set has
//!    every object, the PG is clean and the monitor trims its history.

use crate::daemon::Osd;
use crate::pgmeta::PgMeta;
use crate::primary::store_status;
use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;
use proto::checksum::block_crcs;
use proto::map::{IntervalMember, PastInterval};
use proto::msg::{
    decode_control, encode_control, msg_type, op, ControlRequest, ControlResponse, ObjectOp,
    ObjectReply, PgPeerInfo, PgPhase, Status, FLAG_ROLLBACK,
};
use proto::placement::object_pg;
use proto::{ClusterMap, Command, Epoch, ObjectId, OpId, OsdId, PgId, Version};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects one PG recovers at once (the OSD-wide limit is `Osd::recovery`).
const RECOVERY_PER_PG: usize = 4;

/// Why peering could not finish (yet).
struct Wait {
    phase: PgPhase,
    waiting_for: Vec<OsdId>,
    why: String,
}

fn peering(why: String) -> Wait {
    Wait {
        phase: PgPhase::Peering,
        waiting_for: Vec::new(),
        why,
    }
}

/// Starts peering `pg` for the interval that began at `start` (this OSD is its primary).
pub fn start(osd: &Arc<Osd>, pg: PgId, start: Epoch) {
    let osd = Arc::clone(osd);
    net::rt::spawn(async move { run(osd, pg, start).await });
}

/// The acting set if `pg` is still in the interval `start` with this OSD as primary.
/// The acting members of `pg` with their incarnations, while its interval is `start`.
fn incarnations(osd: &Osd, pg: PgId, start: Epoch) -> Option<Vec<(OsdId, Epoch)>> {
    let pgs = net::sync::lock(&osd.pgs);
    pgs.pgs
        .get(&pg)
        .filter(|i| i.interval_start == start)
        .map(|i| i.mapping.acting_incarnations())
}

fn current(osd: &Osd, pg: PgId, start: Epoch) -> Option<Vec<OsdId>> {
    let pgs = net::sync::lock(&osd.pgs);
    pgs.pgs
        .get(&pg)
        .filter(|i| i.interval_start == start && i.mapping.primary() == Some(osd.id))
        .map(|i| i.mapping.acting.clone())
}

async fn run(osd: Arc<Osd>, pg: PgId, start: Epoch) {
    let began = tokio::time::Instant::now();
    let mut last_why = String::new();
    loop {
        if current(&osd, pg, start).is_none() {
            return;
        }
        let (epoch, osds) = {
            let map = osd.current_map();
            (map.epoch, map.osds.clone())
        };
        match peer_once(&osd, pg, start).await {
            Ok(()) => break,
            Err(w) => {
                if w.why != last_why {
                    tracing::info!(%pg, start, phase = ?w.phase, waiting_for = ?w.waiting_for, "peering waits: {}", w.why);
                    last_why = w.why.clone();
                }
                osd.update_pg(pg, start, |i| {
                    i.set_phase(w.phase);
                    i.waiting_for = w.waiting_for.clone();
                });
                // A newer map that changes an OSD (up, down, address, incarnation) is the
                // usual way forward, and a new interval of this PG starts its own peering;
                // retry anyway after a while. Not at every new epoch: every try records its
                // interval with the monitors (a new epoch), so a PG whose activation kept
                // failing, or two of them, woke themselves at once and had the monitors make
                // 50 maps a second (the simulator saw 14000 epochs in a run).
                let mut rx = osd.map.clone();
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    rx.wait_for(|m| m.epoch > epoch && m.osds != osds),
                )
                .await;
            }
        }
    }
    let ms = began.elapsed().as_millis() as u64;
    if ms > 200 {
        tracing::info!(%pg, start, ms, "active after a slow peering");
    } else {
        tracing::debug!(%pg, start, ms, "active");
    }
    ensure_recovery(&osd, pg, start);
}

/// Starts the recovery of `pg` in the interval `start` unless it is running.
pub fn ensure_recovery(osd: &Arc<Osd>, pg: PgId, start: Epoch) {
    let mut start_it = false;
    osd.update_pg(pg, start, |i| {
        start_it = !i.recovery_running;
        i.recovery_running = true;
    });
    if start_it {
        let osd = Arc::clone(osd);
        net::rt::spawn(async move { recover(&osd, pg, start).await });
    }
}

async fn peer_once(osd: &Arc<Osd>, pg: PgId, start: Epoch) -> Result<(), Wait> {
    let map = osd.current_map();
    let acting = current(osd, pg, start).ok_or_else(|| peering("interval over".into()))?;
    let history: Vec<PastInterval> = map
        .pg_history
        .get(&pg)
        .map(|h| h.iter().filter(|i| i.start < start).cloned().collect())
        .unwrap_or_default();
    let history = if crate::planted::active(crate::planted::Bug::SkipPastIntervals) {
        Vec::new()
    } else {
        history
    };
    let witness = |m: &IntervalMember| {
        map.osd(m.osd)
            .is_some_and(|o| o.up && o.store_uuid == m.store_uuid)
    };
    let mut ask: BTreeSet<OsdId> = acting.iter().copied().collect();
    let mut waiting = BTreeSet::new();
    for h in &history {
        let alive: Vec<OsdId> = h
            .members
            .iter()
            .filter(|m| witness(m))
            .map(|m| m.osd)
            .collect();
        if alive.is_empty() {
            waiting.extend(h.members.iter().map(|m| m.osd));
        }
        ask.extend(alive);
    }
    if !waiting.is_empty() {
        return Err(Wait {
            phase: PgPhase::Incomplete,
            waiting_for: waiting.iter().copied().collect(),
            why: format!(
                "a past interval that went active has no member up (waiting for {})",
                list(&waiting)
            ),
        });
    }
    let asked: Vec<OsdId> = ask.iter().copied().collect();
    let answers = join_all(asked.iter().map(|o| query(osd, &map, *o, pg, start))).await;
    let mut infos: BTreeMap<OsdId, PgPeerInfo> = BTreeMap::new();
    for (o, a) in asked.iter().zip(answers) {
        match a {
            Ok(info) => {
                infos.insert(*o, info);
            }
            // A witness that is up must answer too: it may be the old primary, still
            // serving reads under leases until it hears of the new interval.
            Err(e) => {
                return Err(peering(format!(
                    "{o} did not answer the peering query: {e}"
                )));
            }
        }
    }
    for h in &history {
        if !h.members.iter().any(|m| infos.contains_key(&m.osd)) {
            let members: BTreeSet<OsdId> = h.members.iter().map(|m| m.osd).collect();
            return Err(Wait {
                phase: PgPhase::Incomplete,
                waiting_for: members.iter().copied().collect(),
                why: format!(
                    "no member of the interval from epoch {} answered ({})",
                    h.start,
                    list(&members)
                ),
            });
        }
    }
    let (mut auth, mut sources) = authority(osd.id, &infos);
    settle_unreadable(osd, &map, pg, &infos, &mut auth, &mut sources).await;
    let unfound: Vec<&ObjectId> = auth
        .iter()
        .filter(|(o, v)| !v.is_none() && !sources.contains_key(*o))
        .map(|(o, _)| o)
        .collect();
    if !unfound.is_empty() {
        let down: BTreeSet<OsdId> = map
            .pg_history
            .get(&pg)
            .into_iter()
            .flatten()
            .flat_map(|i| i.members.iter())
            .filter(|m| !witness(m))
            .map(|m| m.osd)
            .collect();
        return Err(Wait {
            phase: PgPhase::Incomplete,
            waiting_for: down.iter().copied().collect(),
            why: format!(
                "{} object(s) have no reachable authoritative copy (first {}); waiting for {}",
                unfound.len(),
                unfound[0],
                list(&down)
            ),
        });
    }
    let missing = missing_per_member(&acting, &infos, &auth);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let answers: Vec<String> = infos
            .iter()
            .map(|(o, i)| {
                format!(
                    "{o} les {} objects {} missing {}",
                    i.last_epoch_started,
                    i.objects.len(),
                    i.missing.len()
                )
            })
            .collect();
        let lacks: Vec<String> = missing
            .iter()
            .map(|(o, l)| format!("{o}: {:?}", l.iter().take(4).collect::<Vec<_>>()))
            .collect();
        tracing::debug!(%pg, start, ?acting, "peered: {}; missing {}", answers.join(", "), lacks.join(", "));
    }
    // Record the interval as active: from here on it may hold acknowledged writes. Its
    // members at the incarnations of this interval (a newer map may already show another:
    // then the monitors refuse the record, as the interval is over).
    let key = incarnations(osd, pg, start).ok_or_else(|| peering("interval over".into()))?;
    let interval = PastInterval {
        start,
        members: key
            .iter()
            .filter_map(|(o, up_from)| {
                map.osd(*o).map(|i| IntervalMember {
                    osd: *o,
                    up_from: *up_from,
                    store_uuid: i.store_uuid,
                })
            })
            .collect(),
    };
    let recorded = osd
        .batcher
        .send(MonNote::Activated(pg, interval))
        .await
        .map_err(|e| peering(format!("the monitors did not record the interval: {e}")))?;
    let acks = join_all(acting.iter().map(|m| {
        let lacks: Vec<(ObjectId, Version)> = missing
            .get(m)
            .map(|l| l.iter().map(|(o, v)| (*o, *v)).collect())
            .unwrap_or_default();
        activate(osd, &map, recorded, *m, pg, start, lacks)
    }))
    .await;
    for (m, a) in acting.iter().zip(acks) {
        a.map_err(|e| peering(format!("{m} did not activate: {e}")))?;
    }
    let total = auth.values().filter(|v| !v.is_none()).count() as u64;
    let became = osd.update_pg(pg, start, |i| {
        i.missing = missing;
        i.sources = sources;
        i.objects = total;
        i.waiting_for.clear();
        i.set_phase(PgPhase::Active);
    });
    if !became {
        return Err(peering("interval over".into()));
    }
    osd.pg_event.notify_waiters();
    Ok(())
}

/// What one answer says each object should be: a copy written in or after the interval
/// the OSD last activated stands; an older copy stands unless that activation listed the
/// object as missing (then the listed version does: the copy may be one that peering
/// decided to roll back, and recovery had not replaced yet).
fn effective(info: &PgPeerInfo) -> BTreeMap<ObjectId, Version> {
    let mut out: BTreeMap<ObjectId, Version> = info.objects.iter().copied().collect();
    for (o, needed) in &info.missing {
        let current = out
            .get(o)
            .is_some_and(|v| v.epoch >= info.last_epoch_started);
        if !current {
            out.insert(*o, *needed);
        }
    }
    out
}

/// The authoritative version of each object and where its copy is.
pub fn authority(
    me: OsdId,
    infos: &BTreeMap<OsdId, PgPeerInfo>,
) -> (BTreeMap<ObjectId, Version>, BTreeMap<ObjectId, Vec<OsdId>>) {
    let les = infos
        .values()
        .map(|i| i.last_epoch_started)
        .max()
        .unwrap_or(0);
    let mut auth: BTreeMap<ObjectId, Version> = BTreeMap::new();
    for info in infos.values().filter(|i| i.last_epoch_started == les) {
        for (o, v) in effective(info) {
            let e = auth.entry(o).or_insert(Version::NONE);
            *e = (*e).max(v);
        }
    }
    auth.retain(|_, v| !v.is_none());
    let mut sources: BTreeMap<ObjectId, Vec<OsdId>> = BTreeMap::new();
    for (osd_id, info) in infos {
        for (o, v) in &info.objects {
            if auth.get(o) == Some(v) {
                sources.entry(*o).or_default().push(*osd_id);
            }
        }
    }
    // The primary first among sources: local reads are cheapest.
    for s in sources.values_mut() {
        s.sort_by_key(|o| (*o != me, *o));
    }
    (auth, sources)
}

/// Objects whose authoritative version some answer with the highest LES does not have
/// (neither as a copy nor in its missing list), with the versions those answers have
/// instead, newest first (`Version::NONE` for no copy). Such a version was never
/// acknowledged: an acknowledged write is on every member of the last interval that went
/// active. Any of the listed versions is as good an authority for the object, as every
/// acknowledged write is in each of them.
pub fn unacknowledged(
    infos: &BTreeMap<OsdId, PgPeerInfo>,
    auth: &BTreeMap<ObjectId, Version>,
) -> BTreeMap<ObjectId, Vec<Version>> {
    let les = infos
        .values()
        .map(|i| i.last_epoch_started)
        .max()
        .unwrap_or(0);
    let top: Vec<BTreeMap<ObjectId, Version>> = infos
        .values()
        .filter(|i| i.last_epoch_started == les)
        .map(effective)
        .collect();
    let mut out: BTreeMap<ObjectId, Vec<Version>> = BTreeMap::new();
    for (o, v) in auth {
        let mut below: Vec<Version> = top
            .iter()
            .map(|e| e.get(o).copied().unwrap_or(Version::NONE))
            .filter(|u| u < v)
            .collect();
        if below.is_empty() {
            continue;
        }
        below.sort_unstable_by(|a, b| b.cmp(a));
        below.dedup();
        out.insert(*o, below);
    }
    out
}

/// An authoritative version that was never acknowledged and whose every copy is
/// unreadable (bit rot on its only holder) gives way to the newest version below it that
/// can be read, so the object is not left without a source for ever. An acknowledged
/// version is never given up this way: its loss is a real loss, and the PG waits.
async fn settle_unreadable(
    osd: &Osd,
    map: &ClusterMap,
    pg: PgId,
    infos: &BTreeMap<OsdId, PgPeerInfo>,
    auth: &mut BTreeMap<ObjectId, Version>,
    sources: &mut BTreeMap<ObjectId, Vec<OsdId>>,
) {
    for (object, below) in unacknowledged(infos, auth) {
        let v = auth[&object];
        let holders = sources.get(&object).cloned().unwrap_or_default();
        let Err(why) = readable_somewhere(osd, map, pg, object, v, &holders).await else {
            continue;
        };
        for u in below {
            if u.is_none() {
                tracing::warn!(%pg, %object, version = %v, "no readable copy of a version that was never acknowledged ({why}); the object is removed, as before that write");
                auth.remove(&object);
                sources.remove(&object);
                break;
            }
            let mut at_u: Vec<OsdId> = infos
                .iter()
                .filter(|(_, i)| i.objects.iter().any(|(o, w)| *o == object && *w == u))
                .map(|(o, _)| *o)
                .collect();
            at_u.sort_by_key(|o| (*o != osd.id, *o));
            if readable_somewhere(osd, map, pg, object, u, &at_u)
                .await
                .is_ok()
            {
                tracing::warn!(%pg, %object, version = %v, fallback = %u, "no readable copy of a version that was never acknowledged ({why}); the object goes back to the newest readable version");
                auth.insert(object, u);
                sources.insert(object, at_u);
                break;
            }
        }
    }
}

/// What each acting member lacks: objects not at the authoritative version (including
/// copies newer than it, to be rolled back), and copies that must not exist
/// (`Version::NONE`).
pub fn missing_per_member(
    acting: &[OsdId],
    infos: &BTreeMap<OsdId, PgPeerInfo>,
    auth: &BTreeMap<ObjectId, Version>,
) -> BTreeMap<OsdId, BTreeMap<ObjectId, Version>> {
    let mut missing = BTreeMap::new();
    for m in acting {
        let present: BTreeMap<ObjectId, Version> = infos
            .get(m)
            .map(|i| i.objects.iter().copied().collect())
            .unwrap_or_default();
        let mut lacks: BTreeMap<ObjectId, Version> = auth
            .iter()
            .filter(|(o, v)| !v.is_none() && present.get(*o) != Some(*v))
            .map(|(o, v)| (*o, *v))
            .collect();
        for o in present.keys() {
            if auth.get(o).is_none_or(|v| v.is_none()) {
                lacks.insert(*o, Version::NONE);
            }
        }
        if crate::planted::active(crate::planted::Bug::NoRollback) {
            lacks.retain(|o, v| present.get(o).is_none_or(|p| *p < *v));
        }
        if !lacks.is_empty() {
            missing.insert(*m, lacks);
        }
    }
    missing
}

fn list(osds: &BTreeSet<OsdId>) -> String {
    osds.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn control(
    osd: &Osd,
    map: &ClusterMap,
    to: OsdId,
    req: &ControlRequest,
) -> Result<ControlResponse, String> {
    let conn = osd.peer(map, to).await?;
    let f = conn
        .call(
            msg_type::CONTROL,
            encode_control(req),
            Bytes::new(),
            PEER_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
    decode_control::<ControlResponse>(&f.meta).map_err(|e| e.to_string())
}

async fn query(
    osd: &Arc<Osd>,
    map: &ClusterMap,
    to: OsdId,
    pg: PgId,
    start: Epoch,
) -> Result<PgPeerInfo, String> {
    if to == osd.id {
        return on_query(osd, pg, map.epoch, osd.id).await;
    }
    let req = ControlRequest::PgQuery {
        pg,
        epoch: map.epoch,
        primary: osd.id,
        interval_start: start,
    };
    let sent = net::rt::now();
    match control(osd, map, to, &req).await? {
        ControlResponse::PgPeerInfo(i) => {
            // Only a lease the member says it granted (it grants none to an incarnation
            // its map does not show up).
            if i.lease || crate::planted::active(crate::planted::Bug::LeaseIgnored) {
                osd.leases.hold(to, sent);
            }
            Ok(*i)
        }
        ControlResponse::Error(e) => Err(e),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

async fn activate(
    osd: &Arc<Osd>,
    map: &ClusterMap,
    recorded: Epoch,
    to: OsdId,
    pg: PgId,
    start: Epoch,
    missing: Vec<(ObjectId, Version)>,
) -> Result<(), String> {
    // The member checks the activation against the map that records the interval.
    let epoch = recorded.max(map.epoch);
    if to == osd.id {
        return on_activate(osd, pg, epoch, start, missing).await;
    }
    let req = ControlRequest::PgActivate {
        pg,
        epoch,
        interval_start: start,
        missing,
    };
    match control(osd, map, to, &req).await? {
        ControlResponse::Ok => Ok(()),
        ControlResponse::Error(e) => Err(e),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Member side of `PgQuery`: what this OSD holds of `pg`. Answered once this OSD has the
/// querier's map (so, if it was the PG's primary, it serves no more reads for it) and the
/// leases it granted to OSDs now down have run out (see `lease`); the answer grants the
/// new primary a lease.
pub async fn on_query(
    osd: &Arc<Osd>,
    pg: PgId,
    epoch: Epoch,
    asker: OsdId,
) -> Result<PgPeerInfo, String> {
    if !osd.wait_for_epoch(epoch).await {
        return Err(format!("{} has no map of epoch {epoch} yet", osd.id));
    }
    osd.apply_map(&osd.current_map());
    loop {
        let wait = osd.leases.wait_before_peering(&osd.current_map(), asker);
        if wait.is_zero() {
            break;
        }
        tracing::debug!(%pg, %asker, wait_ms = wait.as_millis() as u64, "waiting for granted read leases to run out");
        tokio::time::sleep(net::rt::real(wait)).await;
    }
    // What is listed below must be final: ops of the intervals before this one that were
    // admitted before the map changed finish first (later ones fail their interval check).
    if !crate::planted::active(crate::planted::Bug::QueryBeforeDrain) {
        osd.drain_before(pg).await;
    }
    // What is listed is on stable media first (lazy mode): a new member persists the
    // version it lacks in its missing list, durably, and that list is the authority for
    // the object from then on. Were the listed copy still unflushed and lost in a power
    // cut on every holder, the object would have no authoritative copy anywhere and its
    // PG would wait for ever (simulator seed 791: every member answered, none had it).
    osd.store.flush().await.map_err(|e| e.to_string())?;
    let lease = osd.leases.grant(&osd.current_map(), asker, epoch);
    let _gate = osd.stray_gate.read().await;
    let meta = osd.pg_meta(pg).await.map_err(|e| e.to_string())?;
    let map = osd.current_map();
    let Some(pool) = map.pools.get(&pg.pool) else {
        return Ok(PgPeerInfo::default());
    };
    let objects = osd
        .store
        .list(Some(pg.pool))
        .into_iter()
        .filter(|e| !e.object.is_pg_meta() && !e.version.is_none())
        .filter(|e| object_pg(&e.object, pool) == pg)
        .map(|e| (e.object, e.version))
        .collect();
    Ok(PgPeerInfo {
        last_epoch_started: meta.last_epoch_started,
        objects,
        missing: meta.missing.into_iter().collect(),
        lease,
    })
}

/// Member side of `PgActivate`: persist LES and what this OSD misses, and take replica
/// ops from this primary only. `epoch` is a map that records the interval (the monitors
/// committed it before the primary sent this); the activation is refused unless that
/// interval is this OSD's current one (same start, same members at the same
/// incarnations). A delayed activation from an interval that has ended must not let its
/// primary write here, nor move LES back (LES only grows: `Osd::set_pg_meta`).
pub async fn on_activate(
    osd: &Arc<Osd>,
    pg: PgId,
    epoch: Epoch,
    start: Epoch,
    missing: Vec<(ObjectId, Version)>,
) -> Result<(), String> {
    if !osd.wait_for_epoch(epoch).await {
        return Err(format!("{} has no map of epoch {epoch} yet", osd.id));
    }
    osd.apply_map(&osd.current_map());
    let map = osd.current_map();
    let recorded: Option<Vec<(OsdId, Epoch)>> = map
        .pg_history
        .get(&pg)
        .and_then(|h| h.iter().find(|i| i.start == start))
        .map(|i| i.members.iter().map(|m| (m.osd, m.up_from)).collect());
    let by_members = crate::planted::active(crate::planted::Bug::IntervalByMembers);
    let (local_start, ok) = {
        let pgs = net::sync::lock(&osd.pgs);
        match pgs.pgs.get(&pg) {
            Some(i) => {
                let same = recorded.as_ref() == Some(&i.mapping.acting_incarnations())
                    && (by_members || i.interval_start == start);
                (i.interval_start, same)
            }
            None => (0, false),
        }
    };
    let refused = || {
        format!(
            "{}: activation of pg {pg} for the interval from epoch {start} ({recorded:?}) is not for its current interval (from epoch {local_start})",
            osd.id
        )
    };
    if !ok {
        return Err(refused());
    }
    // Admitted like a write: a peering answer for a later interval waits for it, and it
    // is refused once that interval has begun.
    let Some(_ticket) = osd.admit(pg, local_start, |i| {
        recorded.as_ref() == Some(&i.mapping.acting_incarnations())
    }) else {
        return Err(refused());
    };
    let meta = PgMeta {
        last_epoch_started: start,
        missing: missing.into_iter().collect(),
    };
    osd.set_pg_meta(pg, meta, by_members).await?;
    let mut pgs = net::sync::lock(&osd.pgs);
    if let Some(i) = pgs
        .pgs
        .get_mut(&pg)
        .filter(|i| i.interval_start == local_start)
    {
        i.activated = Some(start);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Recovery

/// Background recovery of `pg` for the interval `start`, until every member has every
/// object or the interval ends.
async fn recover(osd: &Arc<Osd>, pg: PgId, start: Epoch) {
    let mut recovered = 0u64;
    loop {
        if current(osd, pg, start).is_none() {
            return;
        }
        let work: Vec<(OsdId, ObjectId, Version)> = {
            let mut pgs = net::sync::lock(&osd.pgs);
            let Some(info) = pgs.pgs.get_mut(&pg) else {
                return;
            };
            if info.interval_start != start {
                return;
            }
            if info.missing.is_empty() {
                // Decided under the lock: whoever adds work later starts a new task.
                info.recovery_running = false;
            }
            // The primary's own copies first: pushes to the others read them.
            let mine = info.missing.get(&osd.id);
            match mine.filter(|m| !m.is_empty()) {
                Some(m) => m.iter().map(|(o, v)| (osd.id, *o, *v)).collect(),
                None => info
                    .missing
                    .iter()
                    .flat_map(|(member, m)| m.iter().map(move |(o, v)| (*member, *o, *v)))
                    .collect(),
            }
        };
        if work.is_empty() {
            break;
        }
        let results: Vec<bool> = futures::stream::iter(work)
            .map(|(member, object, version)| async move {
                let _slot = osd.recovery.acquire().await;
                osd.update_pg(pg, start, |i| i.recovering += 1);
                let r = recover_object(osd, pg, start, member, object, version).await;
                osd.update_pg(pg, start, |i| i.recovering = i.recovering.saturating_sub(1));
                match r {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(%pg, %object, %member, "recovery failed, will retry: {e}");
                        false
                    }
                }
            })
            .buffer_unordered(RECOVERY_PER_PG)
            .collect()
            .await;
        recovered += results.iter().filter(|ok| **ok).count() as u64;
        if results.iter().any(|ok| !ok) {
            let epoch = osd.epoch();
            let mut rx = osd.map.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|m| m.epoch > epoch))
                .await;
        }
    }
    // Pushed and pulled copies are on stable media on every member before the PG counts
    // as recovered: only then may the history that names older witnesses be trimmed (and
    // those witnesses delete their copies).
    if recovered > 0 && !crate::planted::active(crate::planted::Bug::UnflushedRecovery) {
        loop {
            let Some(acting) = current(osd, pg, start) else {
                return;
            };
            match flush_members(osd, pg, start, &acting).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::info!(%pg, "recovered copies not flushed yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    // Every member of the interval holds every object: the history before it is no longer
    // needed, even while the PG is degraded (a down member is not a witness any more).
    if current(osd, pg, start).is_none() {
        return;
    }
    match osd.batcher.send(MonNote::Clean(pg, start)).await {
        Ok(_) => tracing::debug!(%pg, start, "recovered; history trimmed"),
        Err(e) => tracing::info!(%pg, "could not record the pg recovered: {e}"),
    }
}

/// Flushes the devices of the acting members of `pg` (the primary's too).
async fn flush_members(
    osd: &Arc<Osd>,
    pg: PgId,
    start: Epoch,
    acting: &[OsdId],
) -> Result<(), String> {
    let map = osd.current_map();
    let size = object_size_of_pool(&map, pg)?;
    let any = ObjectId {
        pool: pg.pool,
        image: 0,
        index: 0,
    };
    let op = whole_object_op(
        op::FLUSH,
        0,
        any,
        pg,
        size,
        start,
        Version::NONE,
        Vec::new(),
    );
    let meta = op.encode_meta();
    let others: Vec<OsdId> = acting.iter().copied().filter(|o| *o != osd.id).collect();
    let remote = join_all(
        others
            .iter()
            .map(|m| crate::primary::send(osd, &map, *m, meta.clone(), Bytes::new(), (pg, start))),
    );
    let (local, remote) = tokio::join!(osd.store.flush(), remote);
    local.map_err(|e| format!("{}: {e}", osd.id))?;
    for (m, r) in others.iter().zip(remote) {
        match r {
            Ok((Status::Ok, _)) => {}
            Ok((s, _)) => return Err(format!("{m}: {s:?}")),
            Err(e) => return Err(format!("{m}: {e}")),
        }
    }
    Ok(())
}

fn object_size_of_pool(map: &ClusterMap, pg: PgId) -> Result<u32, String> {
    map.pools
        .get(&pg.pool)
        .map(|p| p.object_size)
        .ok_or_else(|| format!("pool {} is gone", pg.pool))
}

/// Brings `member`'s copy of `object` to `version` (the primary pulls its own copy from a
/// source; other members get the primary's copy pushed).
pub async fn recover_object(
    osd: &Arc<Osd>,
    pg: PgId,
    start: Epoch,
    member: OsdId,
    object: ObjectId,
    version: Version,
) -> Result<(), String> {
    let _guard = osd.lock_object(&object).await;
    let (still, _ticket) = {
        let pgs = net::sync::lock(&osd.pgs);
        match pgs.pgs.get(&pg).filter(|i| i.interval_start == start) {
            None => return Err("interval over".into()),
            Some(i) => (i.is_missing(member, &object), osd.fence.enter(pg, start)),
        }
    };
    if !still {
        return Ok(());
    }
    let map = osd.current_map();
    let work = async {
        if member == osd.id {
            pull_locked(osd, &map, pg, object, version).await
        } else {
            push_locked(osd, &map, pg, start, member, object, version).await
        }
    };
    // A peer that hangs must not hold the fence (and so the next interval's peering) for
    // the whole timeout.
    tokio::select! {
        biased;
        r = work => r?,
        _ = crate::primary::interval_ends(osd, pg, start) => return Err("interval over".into()),
    }
    osd.update_pg(pg, start, |i| {
        if let Some(m) = i.missing.get_mut(&member) {
            m.remove(&object);
            if m.is_empty() {
                i.missing.remove(&member);
            }
        }
        if !i.missing.values().any(|m| m.contains_key(&object)) {
            i.unresolved.remove(&object);
        }
    });
    Ok(())
}

/// A replica op on a whole object (pull, push, whole-object trim, or FLUSH).
#[allow(clippy::too_many_arguments)]
pub(crate) fn whole_object_op(
    kind: u8,
    flags: u8,
    object: ObjectId,
    pg: PgId,
    size: u32,
    epoch: Epoch,
    version: Version,
    crcs: Vec<u32>,
) -> ObjectOp {
    ObjectOp {
        op: kind,
        flags,
        object,
        pg,
        object_size: size,
        epoch,
        op_id: OpId { client: 0, tid: 0 },
        offset: 0,
        length: size,
        version,
        prev: Version::NONE,
        crcs,
    }
}

fn object_size(map: &ClusterMap, object: &ObjectId) -> Result<u32, String> {
    map.pools
        .get(&object.pool)
        .map(|p| p.object_size)
        .ok_or_else(|| format!("pool {} is gone", object.pool))
}

/// The primary brings its own copy of `object` to `version` (caller holds the object lock).
pub async fn pull_locked(
    osd: &Osd,
    map: &ClusterMap,
    pg: PgId,
    object: ObjectId,
    version: Version,
) -> Result<(), String> {
    let size = object_size(map, &object)?;
    if version.is_none() {
        return osd
            .store
            .trim(object, 0, size, Version::NONE)
            .await
            .map_err(|e| e.to_string());
    }
    let sources: Vec<OsdId> = {
        let pgs = net::sync::lock(&osd.pgs);
        pgs.pgs
            .get(&pg)
            .and_then(|i| i.sources.get(&object).cloned())
            .unwrap_or_default()
    };
    pull_from(osd, map, pg, object, version, &sources).await
}

/// Replaces the local copy of `object` with the copy at `version` of the first of
/// `sources` that holds it intact (caller holds the object lock).
pub async fn pull_from(
    osd: &Osd,
    map: &ClusterMap,
    pg: PgId,
    object: ObjectId,
    version: Version,
    sources: &[OsdId],
) -> Result<(), String> {
    let size = object_size(map, &object)?;
    let mut last = format!("no source for {object}");
    for s in sources.iter().filter(|s| **s != osd.id) {
        match fetch_copy(osd, map, pg, *s, object, version, size).await {
            Ok((data, crcs)) => {
                return osd
                    .store
                    .write_full(object, data, &crcs, version)
                    .await
                    .map_err(|e| format!("{:?}: {e}", store_status(&e)));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `source`'s whole copy of `object`, if it holds it at `version` and it passes its
/// checksums.
async fn fetch_copy(
    osd: &Osd,
    map: &ClusterMap,
    pg: PgId,
    source: OsdId,
    object: ObjectId,
    version: Version,
    size: u32,
) -> Result<(Bytes, Vec<u32>), String> {
    let req = whole_object_op(
        op::PULL,
        0,
        object,
        pg,
        size,
        map.epoch,
        version,
        Vec::new(),
    );
    let conn = osd.peer(map, source).await?;
    let f = conn
        .call(
            msg_type::REPLICA_OP,
            req.encode_meta(),
            Bytes::new(),
            PEER_TIMEOUT,
        )
        .await
        .map_err(|e| format!("{source}: {e}"))?;
    let r = ObjectReply::decode(&f.meta, f.data.len()).map_err(|e| format!("{source}: {e}"))?;
    if r.status != Status::Ok as u32 || r.version != version {
        return Err(format!(
            "{source}: status {} version {}",
            r.status, r.version
        ));
    }
    if proto::checksum::verify_blocks(&f.data, &r.crcs).is_err() {
        return Err(format!("{source}: checksum mismatch"));
    }
    Ok((f.data, r.crcs))
}

/// Whether some OSD of `holders` can read its whole copy of `object` (it must be at
/// `version`); the first error otherwise.
async fn readable_somewhere(
    osd: &Osd,
    map: &ClusterMap,
    pg: PgId,
    object: ObjectId,
    version: Version,
    holders: &[OsdId],
) -> Result<(), String> {
    let size = object_size(map, &object)?;
    let mut errors = Vec::new();
    for h in holders {
        let r = if *h == osd.id {
            match osd.store.read(object, 0, size).await {
                Ok((_, _, v)) if v == version => Ok(()),
                Ok((_, _, v)) => Err(format!("{h}: holds {v}")),
                Err(e) => Err(format!("{h}: {e}")),
            }
        } else {
            fetch_copy(osd, map, pg, *h, object, version, size)
                .await
                .map(|_| ())
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(if errors.is_empty() {
        "no holder".into()
    } else {
        errors.join("; ")
    })
}

/// Sends the primary's copy of `object` (at `version`) to `member`, replacing whatever it
/// holds (caller holds the object lock).
async fn push_locked(
    osd: &Arc<Osd>,
    map: &ClusterMap,
    pg: PgId,
    start: Epoch,
    member: OsdId,
    object: ObjectId,
    version: Version,
) -> Result<(), String> {
    let size = object_size(map, &object)?;
    let local = osd.store.version(&object);
    if local != version {
        return Err(format!(
            "the primary holds {object} at {local}, not at {version} yet"
        ));
    }
    let (data, crcs) = if version.is_none() {
        (Bytes::new(), Vec::new())
    } else {
        let data = osd
            .read_copy_to_push(pg, start, object, version, size)
            .await
            .map_err(|e| e.to_string())?;
        let crcs = block_crcs(&data);
        (data, crcs)
    };
    // An object that must not exist is trimmed whole at `Version::NONE`.
    let kind = if version.is_none() {
        op::TRIM
    } else {
        op::PUSH
    };
    let push = whole_object_op(kind, FLAG_ROLLBACK, object, pg, size, start, version, crcs);
    let conn = osd.peer(map, member).await?;
    let f = conn
        .call(msg_type::REPLICA_OP, push.encode_meta(), data, PEER_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let r = ObjectReply::decode(&f.meta, f.data.len()).map_err(|e| e.to_string())?;
    if r.status == Status::Ok as u32 {
        Ok(())
    } else {
        Err(format!("{member} refused the push: status {}", r.status))
    }
}

// ---------------------------------------------------------------------------------------
// Telling the monitors: activations and clean PGs, batched into one command each.

pub enum MonNote {
    Activated(PgId, PastInterval),
    Clean(PgId, Epoch),
}

type Pending = (MonNote, oneshot::Sender<Result<Epoch, String>>);

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    pub fn spawn(mon: Arc<client::MonClient>) -> Batcher {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        net::rt::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Gather what arrives together (a map change makes many PGs peer at once).
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut batch = vec![first];
                while let Ok(p) = rx.try_recv() {
                    batch.push(p);
                }
                let (act, clean): (Vec<Pending>, Vec<Pending>) = batch
                    .into_iter()
                    .partition(|(n, _)| matches!(n, MonNote::Activated(..)));
                submit_activations(&mon, act).await;
                if !clean.is_empty() {
                    let pgs = clean
                        .iter()
                        .filter_map(|(n, _)| match n {
                            MonNote::Clean(pg, e) => Some((*pg, *e)),
                            _ => None,
                        })
                        .collect();
                    let r = mon
                        .command(Command::PgsClean { pgs })
                        .await
                        .map(|(e, _)| e)
                        .map_err(|e| e.to_string());
                    for (_, done) in clean {
                        let _ = done.send(r.clone());
                    }
                }
            }
        });
        Batcher { tx }
    }

    /// Records `note`; returns the epoch whose map holds it.
    pub async fn send(&self, note: MonNote) -> Result<Epoch, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((note, done))
            .map_err(|_| "stopping".to_string())?;
        wait.await.map_err(|_| "stopping".to_string())?
    }
}

async fn submit_activations(mon: &client::MonClient, act: Vec<Pending>) {
    if act.is_empty() {
        return;
    }
    let intervals: Vec<(PgId, PastInterval)> = act
        .iter()
        .filter_map(|(n, _)| match n {
            MonNote::Activated(pg, i) => Some((*pg, i.clone())),
            _ => None,
        })
        .collect();
    match mon.command(Command::PgsActivated { intervals }).await {
        Ok((epoch, _)) => {
            for (_, done) in act {
                let _ = done.send(Ok(epoch));
            }
        }
        Err(e) if act.len() > 1 => {
            // One stale interval refuses the batch: record the others one by one.
            tracing::debug!(
                "batch of {} activations refused ({e}); one by one",
                act.len()
            );
            for (note, done) in act {
                let MonNote::Activated(pg, i) = note else {
                    continue;
                };
                let r = mon
                    .command(Command::PgsActivated {
                        intervals: vec![(pg, i)],
                    })
                    .await
                    .map(|(e, _)| e)
                    .map_err(|e| e.to_string());
                let _ = done.send(r);
            }
        }
        Err(e) => {
            for (_, done) in act {
                let _ = done.send(Err(e.to_string()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strays: data of PGs this OSD no longer serves.

/// Removes, every few seconds, the objects of PGs this OSD is neither placed in nor a
/// witness of (a past interval in the map's PG history). Such a PG is clean on its current
/// members, so these copies are surplus: an OSD marked out gives its space back once the
/// data has moved.
pub fn spawn_stray_cleanup(osd: Arc<Osd>) {
    net::rt::spawn(async move {
        // Strays appear only with a map change (placement, trimmed history): a pass lists
        // every object, so it runs again only when the map moved or the last one was cut
        // short.
        let mut done_at: Option<Epoch> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let epoch = osd.epoch();
            if !osd.is_serving() || done_at == Some(epoch) {
                continue;
            }
            let (removed, complete) = remove_strays(&osd).await;
            if complete {
                done_at = Some(epoch);
            }
            if removed > 0 {
                tracing::info!(removed, "removed objects of pgs this OSD no longer holds");
            }
        }
    });
}

/// Returns how many objects it removed, and whether it looked at every object.
async fn remove_strays(osd: &Osd) -> (usize, bool) {
    let map = osd.current_map();
    let Some(me) = map.osd(osd.id) else {
        return (0, true);
    };
    let uuid = me.store_uuid;
    let mut placed: BTreeMap<u32, Vec<bool>> = BTreeMap::new();
    for pool in map.pools.values() {
        let mine = proto::pg::pool_mappings(&map, pool)
            .into_iter()
            .map(|m| m.osds.contains(&osd.id))
            .collect();
        placed.insert(pool.id, mine);
    }
    let witness = |pg: &PgId| {
        map.pg_history.get(pg).is_some_and(|h| {
            h.iter().any(|i| {
                i.members
                    .iter()
                    .any(|m| m.osd == osd.id && m.store_uuid == uuid)
            })
        })
    };
    let mut removed = 0;
    for e in osd.store.list(None) {
        let (pg, size) = match map.pools.get(&e.object.pool) {
            Some(pool) => {
                let pg = if e.object.is_pg_meta() {
                    PgId {
                        pool: pool.id,
                        seed: e.object.index as u32,
                    }
                } else {
                    object_pg(&e.object, pool)
                };
                let here = placed
                    .get(&pool.id)
                    .and_then(|p| p.get(pg.seed as usize))
                    .copied()
                    .unwrap_or(false);
                if here || witness(&pg) {
                    continue;
                }
                (pg, pool.object_size.min(osd.store.max_object_size()))
            }
            // The pool is gone (it held no images when it was removed).
            None => (
                PgId {
                    pool: e.object.pool,
                    seed: 0,
                },
                osd.store.max_object_size(),
            ),
        };
        let _gate = osd.stray_gate.write().await;
        if osd.epoch() != map.epoch {
            return (removed, false); // the map moved: decide again on the new one
        }
        let _guard = osd.lock_object(&e.object).await;
        if osd.store.version(&e.object) != e.version {
            continue; // changed meanwhile: look again next time
        }
        match osd.store.trim(e.object, 0, size, Version::NONE).await {
            Ok(()) => {
                removed += 1;
                if e.object.is_pg_meta() {
                    osd.forget_pg_meta(pg).await;
                }
            }
            Err(err) => {
                tracing::warn!(object = %e.object, "cannot remove a stray object: {err}");
                return (removed, false);
            }
        }
    }
    (removed, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u64) -> ObjectId {
        ObjectId {
            pool: 1,
            image: 1,
            index: i,
        }
    }

    fn v(epoch: u64, seq: u64) -> Version {
        Version { epoch, seq }
    }

    fn info(les: u64, objects: &[(u64, Version)], missing: &[(u64, Version)]) -> PgPeerInfo {
        PgPeerInfo {
            last_epoch_started: les,
            objects: objects.iter().map(|(i, v)| (obj(*i), *v)).collect(),
            missing: missing.iter().map(|(i, v)| (obj(*i), *v)).collect(),
            lease: true,
        }
    }

    #[test]
    fn a_newer_copy_on_an_older_interval_member_is_rolled_back() {
        // osd.1 took a write (10,5) in interval 10 that osd.0 never got, so it was never
        // acknowledged; osd.0 and osd.2 then went active in interval 20 without osd.1.
        let infos = BTreeMap::from([
            (OsdId(0), info(20, &[(1, v(10, 4))], &[])),
            (OsdId(1), info(10, &[(1, v(10, 5)), (2, v(10, 6))], &[])),
            (OsdId(2), info(20, &[(1, v(10, 4))], &[])),
        ]);
        let (auth, sources) = authority(OsdId(0), &infos);
        assert_eq!(auth.get(&obj(1)), Some(&v(10, 4)));
        assert_eq!(
            auth.get(&obj(2)),
            None,
            "object 2 never existed for interval 20"
        );
        assert_eq!(sources[&obj(1)], vec![OsdId(0), OsdId(2)]);
        let missing = missing_per_member(&[OsdId(0), OsdId(1), OsdId(2)], &infos, &auth);
        assert_eq!(
            missing[&OsdId(1)],
            BTreeMap::from([(obj(1), v(10, 4)), (obj(2), Version::NONE)])
        );
        assert!(!missing.contains_key(&OsdId(0)));
    }

    #[test]
    fn what_a_newest_member_still_missed_stays_authoritative() {
        // osd.0 activated interval 20 while still missing object 3 at (15,2); only osd.5,
        // a member of interval 15, holds it. The missing list keeps it from looking absent.
        let infos = BTreeMap::from([
            (OsdId(0), info(20, &[(1, v(20, 1))], &[(3, v(15, 2))])),
            (OsdId(5), info(15, &[(1, v(15, 9)), (3, v(15, 2))], &[])),
        ]);
        let (auth, sources) = authority(OsdId(0), &infos);
        assert_eq!(auth.get(&obj(1)), Some(&v(20, 1)));
        assert_eq!(auth.get(&obj(3)), Some(&v(15, 2)));
        assert_eq!(sources[&obj(3)], vec![OsdId(5)]);
        let missing = missing_per_member(&[OsdId(0)], &infos, &auth);
        assert_eq!(missing[&OsdId(0)], BTreeMap::from([(obj(3), v(15, 2))]));
    }

    #[test]
    fn a_rolled_back_copy_not_yet_replaced_stays_rolled_back() {
        // osd.1 activated interval 30 with object 1 listed as missing at (20,3): its copy
        // (10,5) was never acknowledged and recovery had not replaced it yet.
        let infos = BTreeMap::from([
            (
                OsdId(1),
                info(30, &[(1, v(10, 5)), (2, v(30, 1))], &[(1, v(20, 3))]),
            ),
            (OsdId(4), info(20, &[(1, v(20, 3))], &[])),
        ]);
        let (auth, sources) = authority(OsdId(1), &infos);
        assert_eq!(auth.get(&obj(1)), Some(&v(20, 3)));
        assert_eq!(auth.get(&obj(2)), Some(&v(30, 1)));
        assert_eq!(sources[&obj(1)], vec![OsdId(4)]);
        // A copy written in or after that interval stands over a stale missing entry.
        let infos = BTreeMap::from([(OsdId(1), info(30, &[(1, v(30, 2))], &[(1, v(20, 3))]))]);
        assert_eq!(authority(OsdId(1), &infos).0.get(&obj(1)), Some(&v(30, 2)));
    }

    #[test]
    fn an_authoritative_version_nobody_holds_has_no_source() {
        let infos = BTreeMap::from([(OsdId(0), info(20, &[], &[(7, v(18, 3))]))]);
        let (auth, sources) = authority(OsdId(0), &infos);
        assert_eq!(auth.get(&obj(7)), Some(&v(18, 3)));
        assert!(!sources.contains_key(&obj(7)), "unfound: the pg must wait");
    }

    #[test]
    fn only_versions_a_top_member_lacks_are_unacknowledged() {
        // Interval 40 went active on osd.2 and osd.3. osd.3 took writes (40,3) to object 1
        // and created object 2 while osd.2 was cut off: neither was acknowledged. Object
        // 3's newer version is on both: it may have been, and nothing may replace it.
        let infos = BTreeMap::from([
            (
                OsdId(2),
                info(40, &[(1, v(40, 1)), (3, v(40, 9))], &[(4, v(30, 2))]),
            ),
            (
                OsdId(3),
                info(
                    40,
                    &[(1, v(40, 3)), (2, v(40, 4)), (3, v(40, 9)), (4, v(30, 2))],
                    &[],
                ),
            ),
            // An older member's copies are no evidence either way.
            (OsdId(5), info(30, &[(1, v(30, 1)), (3, v(30, 1))], &[])),
        ]);
        let (auth, _) = authority(OsdId(3), &infos);
        assert_eq!(auth[&obj(1)], v(40, 3));
        let un = unacknowledged(&infos, &auth);
        assert_eq!(un.get(&obj(1)), Some(&vec![v(40, 1)]));
        assert_eq!(un.get(&obj(2)), Some(&vec![Version::NONE]));
        assert!(!un.contains_key(&obj(3)), "on every top member");
        assert!(
            !un.contains_key(&obj(4)),
            "osd.2's missing list names it: it was authoritative when osd.2 activated"
        );
        // A lone top member proves nothing.
        let alone = BTreeMap::from([(OsdId(3), infos[&OsdId(3)].clone())]);
        let (auth, _) = authority(OsdId(3), &alone);
        assert!(unacknowledged(&alone, &auth).is_empty());
    }
}
