//! Each PG's state as `atlant pg ls` and `atlant status` show it: from the map when the PG
//! cannot be active (too few members up), else from its primary's latest report.

use proto::msg::{PgPhase, StatusReport};
use proto::pg::{pool_mappings, PgState};
use proto::{OsdId, PgId};
use serde_json::{json, Value};

/// Ops blocked on a PG that has not served for this long raise a health warning.
pub const BLOCKED_WARN_MS: u64 = 10_000;

pub struct PgRow {
    pub pg: PgId,
    pub state: String,
    pub placement: Vec<OsdId>,
    pub acting: Vec<OsdId>,
    pub waiting_for: Vec<OsdId>,
    pub objects: u64,
    pub degraded: u64,
    pub misplaced: u64,
    pub blocked_ops: u64,
    /// How long the PG has been in this state, if its primary reported it.
    pub since_ms: Option<u64>,
    /// Whether the PG serves IO.
    pub active: bool,
    /// Why IO to it waits, when it does.
    pub why: Option<String>,
    /// Past intervals that went active since it was last clean: (start, members).
    pub history: Vec<(u64, Vec<OsdId>)>,
}

pub fn rows(r: &StatusReport) -> Vec<PgRow> {
    let map = &r.map;
    let mut out = Vec::new();
    for pool in map.pools.values() {
        for m in pool_mappings(map, pool) {
            let down: Vec<OsdId> = m
                .osds
                .iter()
                .copied()
                .filter(|o| !m.acting.contains(o))
                .collect();
            let mut row = PgRow {
                pg: m.pg,
                state: m.state.name().to_string(),
                placement: m.osds.clone(),
                acting: m.acting.clone(),
                waiting_for: Vec::new(),
                objects: 0,
                degraded: 0,
                misplaced: 0,
                blocked_ops: 0,
                since_ms: None,
                active: false,
                why: None,
                history: map
                    .pg_history
                    .get(&m.pg)
                    .into_iter()
                    .flatten()
                    .map(|i| (i.start, i.members.iter().map(|x| x.osd).collect()))
                    .collect(),
            };
            match m.state {
                PgState::Down => {
                    row.waiting_for = down.clone();
                    row.why = Some(format!(
                        "below min_size {} ({} of {} up): waiting for {}",
                        pool.min_size,
                        m.acting.len(),
                        m.osds.len(),
                        names(&down)
                    ));
                }
                PgState::Undersized => {
                    row.why = Some(format!(
                        "the cluster has fewer failure domains than min_size {}",
                        pool.min_size
                    ));
                }
                PgState::UnknownPlacement => {
                    row.why = Some("placement algorithm unknown to this build".into());
                }
                PgState::Active | PgState::ActiveDegraded => match r.pg_stats.get(&m.pg) {
                    None => {
                        row.state = "peering".into();
                        row.why = Some("peering (no report from its primary yet)".into());
                    }
                    Some(s) => {
                        row.state = s.state_name(pool.size as usize);
                        row.waiting_for = s.waiting_for.clone();
                        row.objects = s.objects;
                        row.degraded = s.degraded;
                        row.misplaced = s.misplaced;
                        row.blocked_ops = s.blocked_ops;
                        row.since_ms = Some(s.phase_ms);
                        row.active = s.phase == PgPhase::Active;
                        row.why = match s.phase {
                            PgPhase::Active => None,
                            PgPhase::Peering => Some("peering".into()),
                            PgPhase::Incomplete => {
                                Some(format!("incomplete: waiting for {}", names(&s.waiting_for)))
                            }
                        };
                    }
                },
            }
            out.push(row);
        }
    }
    out
}

pub fn names(osds: &[OsdId]) -> String {
    if osds.is_empty() {
        return "-".into();
    }
    osds.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn row_json(r: &PgRow) -> Value {
    json!({
        "pgid": r.pg.to_string(),
        "state": r.state,
        "placement": r.placement.iter().map(|o| o.0).collect::<Vec<_>>(),
        "acting": r.acting.iter().map(|o| o.0).collect::<Vec<_>>(),
        "primary": r.acting.first().map(|o| o.0),
        "waiting_for": r.waiting_for.iter().map(|o| o.0).collect::<Vec<_>>(),
        "objects": r.objects,
        "degraded": r.degraded,
        "misplaced": r.misplaced,
        "blocked_ops": r.blocked_ops,
        "since_ms": r.since_ms,
        "why": r.why,
        "history": r.history.iter().map(|(start, members)| json!({
            "start": start,
            "members": members.iter().map(|o| o.0).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `atlant pg ls`: one line per PG, optionally only those whose state contains `state`.
pub fn print_table(rows: &[PgRow], state: Option<&str>) {
    println!(
        "{:<8} {:<32} {:<18} {:<18} {:>7} {:>8} {:>9} {:>7}  WHY",
        "PG", "STATE", "PLACEMENT", "ACTING", "OBJECTS", "DEGRADED", "MISPLACED", "BLOCKED"
    );
    for r in rows.iter().filter(|r| matches_state(r, state)) {
        println!(
            "{:<8} {:<32} {:<18} {:<18} {:>7} {:>8} {:>9} {:>7}  {}",
            r.pg.to_string(),
            r.state,
            names(&r.placement),
            names(&r.acting),
            r.objects,
            r.degraded,
            r.misplaced,
            r.blocked_ops,
            r.why.as_deref().unwrap_or("")
        );
    }
}

pub fn matches_state(r: &PgRow, state: Option<&str>) -> bool {
    state.is_none_or(|s| r.state.split('+').any(|part| part == s) || r.state == s)
}
