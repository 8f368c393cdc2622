//! `atlant status`: health, quorum, OSDs, PGs, pools, images and capacity, as a table or
//! as JSON whose keys scripts rely on (`health`, `epoch`, `mons`, `osds`, `pgs`, `pools`,
//! `images`).

use proto::msg::StatusReport;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn status_json(r: &StatusReport) -> Value {
    let map = &r.map;
    let total = map.osds.len();
    let up = map.osds.values().filter(|o| o.up).count();
    let in_ = map.osds.values().filter(|o| o.is_in).count();
    let rows = crate::pgs::rows(r);
    let pg_total = rows.len() as u64;
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for row in &rows {
        *by_state.entry(row.state.clone()).or_default() += 1;
    }
    let inactive: Vec<&crate::pgs::PgRow> = rows.iter().filter(|r| !r.active).collect();
    let objects: u64 = rows.iter().map(|r| r.objects).sum();
    let degraded: u64 = rows.iter().map(|r| r.degraded).sum();
    let misplaced: u64 = rows.iter().map(|r| r.misplaced).sum();
    let mut checks = Vec::new();
    let mut level = 0;
    let in_quorum = r.mons.iter().filter(|m| m.in_quorum).count();
    if in_quorum * 2 <= r.mons.len() {
        checks.push(format!(
            "no monitor quorum ({in_quorum} of {} monitors reachable): map changes wait",
            r.mons.len()
        ));
        level = level.max(2);
    } else if in_quorum < r.mons.len() {
        let out: Vec<String> = r
            .mons
            .iter()
            .filter(|m| !m.in_quorum)
            .map(|m| format!("mon.{}", m.name))
            .collect();
        checks.push(format!(
            "{} of {} monitors down or out of the quorum: {}",
            out.len(),
            r.mons.len(),
            out.join(", ")
        ));
        level = level.max(1);
    }
    for f in &map.flags {
        checks.push(format!("{f} flag is set"));
        level = level.max(1);
    }
    let out_osds: Vec<String> = map
        .osds
        .values()
        .filter(|o| !o.is_in)
        .map(|o| o.id.to_string())
        .collect();
    if !out_osds.is_empty() {
        checks.push(format!(
            "{} osds out: {}",
            out_osds.len(),
            out_osds.join(", ")
        ));
        level = level.max(1);
    }
    if total == 0 {
        checks.push("no OSDs in the cluster".to_string());
        level = level.max(1);
    }
    if up < total {
        let down: Vec<String> = map
            .osds
            .values()
            .filter(|o| !o.up)
            .map(|o| o.id.to_string())
            .collect();
        checks.push(format!(
            "{} of {total} osds down: {}",
            total - up,
            down.join(", ")
        ));
        level = level.max(1);
    }
    if !inactive.is_empty() {
        checks.push(format!("{} pgs inactive: IO to them waits", inactive.len()));
        for r in inactive.iter().take(5) {
            checks.push(format!(
                "pg {} is {}: {}",
                r.pg,
                r.state,
                r.why.as_deref().unwrap_or("-")
            ));
        }
        level = level.max(2);
    }
    let blocked: Vec<&crate::pgs::PgRow> = rows
        .iter()
        .filter(|r| {
            r.blocked_ops > 0
                && !r.active
                && r.since_ms.is_some_and(|t| t >= crate::pgs::BLOCKED_WARN_MS)
        })
        .collect();
    if !blocked.is_empty() {
        let ops: u64 = blocked.iter().map(|r| r.blocked_ops).sum();
        checks.push(format!(
            "{ops} ops blocked for more than {}s on {} pgs (first: pg {}, {})",
            crate::pgs::BLOCKED_WARN_MS / 1000,
            blocked.len(),
            blocked[0].pg,
            blocked[0].why.as_deref().unwrap_or("-")
        ));
        level = level.max(1);
    }
    let n_degraded = rows.iter().filter(|r| r.state.contains("degraded")).count();
    if degraded > 0 || n_degraded > 0 {
        checks.push(format!(
            "degraded data redundancy: {degraded} object copies degraded, {n_degraded} pgs degraded"
        ));
        level = level.max(1);
    }
    if misplaced > 0 {
        checks.push(format!("{misplaced} object copies misplaced (moving)"));
        level = level.max(1);
    }
    let recovering = rows
        .iter()
        .filter(|r| r.state.contains("recovering"))
        .count();
    if recovering > 0 {
        checks.push(format!("{recovering} pgs recovering"));
        level = level.max(1);
    }
    for o in map.osds.values() {
        let pct = r
            .osd_stats
            .get(&o.id.0)
            .map(|s| {
                if s.capacity_bytes > 0 {
                    s.used_bytes as f64 * 100.0 / s.capacity_bytes as f64
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0);
        match o.fullness {
            proto::map::Fullness::Ok => {}
            proto::map::Fullness::Full => {
                checks.push(format!(
                    "{} is full ({pct:.1}%): writes to its PGs are refused",
                    o.id
                ));
                level = level.max(2);
            }
            f => {
                checks.push(format!(
                    "{} is {} ({pct:.1}%)",
                    o.id,
                    if f == proto::map::Fullness::Nearfull {
                        "nearfull"
                    } else {
                        "backfillfull"
                    }
                ));
                level = level.max(1);
            }
        }
    }
    let health = ["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"][level];
    let capacity: u64 = r.osd_stats.values().map(|s| s.capacity_bytes).sum();
    let used: u64 = r.osd_stats.values().map(|s| s.used_bytes).sum();
    let pools: Vec<Value> = map
        .pools
        .values()
        .map(|p| {
            json!({"id": p.id, "name": p.name, "size": p.size, "min_size": p.min_size, "pg_count": p.pg_count,
                   "object_size": p.object_size, "failure_domain": p.failure_domain.to_string()})
        })
        .collect();
    let images: Vec<Value> = map
        .images
        .values()
        .map(|i| {
            let pool = map.pools.get(&i.pool).map(|p| p.name.clone()).unwrap_or_default();
            json!({"id": i.id, "pool": pool, "name": i.name, "size_bytes": i.size_bytes, "object_size": i.object_size})
        })
        .collect();
    let mut pgs = json!({"total": pg_total});
    for (k, v) in &by_state {
        pgs[k.as_str()] = json!(v);
    }
    pgs["by_state"] = json!(by_state);
    pgs["objects"] = json!(objects);
    pgs["degraded"] = json!(degraded);
    pgs["misplaced"] = json!(misplaced);
    pgs["inactive"] = json!(inactive.len());
    json!({
        "fsid": proto::uuid_hex(map.fsid),
        "health": {"status": health, "checks": checks},
        "epoch": map.epoch,
        "flags": map.flags.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "quorum": r.mons.iter().filter(|m| m.in_quorum).map(|m| m.name.clone()).collect::<Vec<_>>(),
        "leader": r.mons.iter().find(|m| m.leader).map(|m| m.name.clone()),
        "mons": r.mons.iter().map(|m| json!({"name": m.name, "addr": m.addr, "in_quorum": m.in_quorum, "leader": m.leader})).collect::<Vec<_>>(),
        "osds": {"total": total, "up": up, "in": in_},
        "pgs": pgs,
        "pools": pools,
        "images": images,
        "ratios": {"nearfull": map.ratios.nearfull as f64 / 1000.0, "backfillfull": map.ratios.backfillfull as f64 / 1000.0, "full": map.ratios.full as f64 / 1000.0},
        "capacity": {"total_bytes": capacity, "used_bytes": used, "avail_bytes": capacity.saturating_sub(used)},
    })
}

pub fn print_human(v: &Value) {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    println!("  cluster: {}", s(&v["fsid"]));
    println!("   health: {}", s(&v["health"]["status"]));
    for c in v["health"]["checks"].as_array().into_iter().flatten() {
        println!("           {}", s(c));
    }
    println!("    epoch: {}", v["epoch"]);
    let mons: Vec<String> = v["mons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}@{}{}",
                s(&m["name"]),
                s(&m["addr"]),
                if m["leader"] == true {
                    " (leader)"
                } else if m["in_quorum"] == true {
                    ""
                } else {
                    " (DOWN)"
                }
            )
        })
        .collect();
    println!("     mons: {}", mons.join(", "));
    println!(
        "     osds: {} total, {} up, {} in",
        v["osds"]["total"], v["osds"]["up"], v["osds"]["in"]
    );
    let states: Vec<String> = v["pgs"]["by_state"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    println!(
        "      pgs: {} total: {}",
        v["pgs"]["total"],
        states.join(", ")
    );
    println!(
        "  objects: {} total, {} copies degraded, {} misplaced",
        v["pgs"]["objects"], v["pgs"]["degraded"], v["pgs"]["misplaced"]
    );
    println!(
        "    pools: {}",
        v["pools"].as_array().map(|a| a.len()).unwrap_or(0)
    );
    println!(
        "   images: {}",
        v["images"].as_array().map(|a| a.len()).unwrap_or(0)
    );
    let gib = |x: &Value| x.as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
    println!(
        " capacity: {:.1} GiB used of {:.1} GiB ({:.1} GiB available)",
        gib(&v["capacity"]["used_bytes"]),
        gib(&v["capacity"]["total_bytes"]),
        gib(&v["capacity"]["avail_bytes"])
    );
}
