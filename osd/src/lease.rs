//! Read leases: a primary serves reads only while every other member of the PG's acting
//! set has granted it a lease, so a primary cut off from the cluster stops answering reads
//! before a new interval can accept writes.
//!
//! - Leases are granted per pair of OSDs, renewed by every answered heartbeat (every
//!   `heartbeat::INTERVAL`) and by peering queries. The grantee counts a lease from when it
//!   *sent* the request, the grantor from when it answered, so the grantee's view always
//!   ends first.
//! - A member answers a peering query only after every lease it granted to an OSD that the
//!   map now shows down has run out on its own clock, plus `DRIFT` (a down OSD may be a
//!   partitioned old primary still serving reads). An old primary that is up is asked by
//!   the new primary (it is a witness of its interval) and gives its lease up by applying
//!   the new map before it answers.
//! - After a restart an OSD has forgotten what it granted: it answers no peering query
//!   until one whole lease after it started.

use net::sync::lock;
use proto::{ClusterMap, Epoch, OsdId};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub const LEASE: Duration = Duration::from_millis(1000);
/// Allowance for the two clocks running at slightly different rates: the grantee's lease
/// lasts `LEASE` on its clock, the grantor waits `LEASE + DRIFT` on its own, so clocks
/// whose rates differ by up to 20% (`DRIFT / LEASE`) are safe. The simulator runs each
/// node's clock up to 8% fast or slow.
pub const DRIFT: Duration = Duration::from_millis(200);

pub struct Leases {
    started: Instant,
    /// Grantor side: until when each OSD may serve reads on our word.
    granted: Mutex<BTreeMap<OsdId, Instant>>,
    /// Grantee side: until when each OSD's lease lets us serve reads.
    held: Mutex<BTreeMap<OsdId, Instant>>,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            started: net::rt::now(),
            granted: Mutex::new(BTreeMap::new()),
            held: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Leases {
    /// Grants `to` a lease if `map` shows it up and its request was sent with a map of its
    /// current incarnation (`their_epoch`): a down OSD gets none, and neither does an old
    /// primary that has not yet seen the map that ended its intervals.
    pub fn grant(&self, map: &ClusterMap, to: OsdId, their_epoch: Epoch) -> bool {
        if !map
            .osd(to)
            .is_some_and(|o| o.up && their_epoch >= o.up_from)
        {
            return false;
        }
        let until = net::rt::now() + LEASE;
        let mut g = lock(&self.granted);
        let e = g.entry(to).or_insert(until);
        *e = (*e).max(until);
        true
    }

    /// Records a lease from `from`, for a request sent at `sent`.
    pub fn hold(&self, from: OsdId, sent: Instant) {
        let until = sent + LEASE;
        let mut h = lock(&self.held);
        let e = h.entry(from).or_insert(until);
        *e = (*e).max(until);
    }

    /// True if every OSD of `members` has a lease on us running now.
    pub fn holds_all(&self, members: &[OsdId]) -> bool {
        let now = net::rt::now();
        let h = lock(&self.held);
        members
            .iter()
            .all(|m| h.get(m).is_some_and(|until| *until > now))
    }

    /// How long a peering query for `asker` must wait: until the leases granted to OSDs now
    /// down have run out (plus drift), and one lease after this process started.
    pub fn wait_before_peering(&self, map: &ClusterMap, asker: OsdId) -> Duration {
        if crate::planted::active(crate::planted::Bug::NoLeaseWait) {
            return Duration::ZERO;
        }
        let drift = if crate::planted::active(crate::planted::Bug::NoDriftMargin) {
            Duration::ZERO
        } else {
            DRIFT
        };
        let now = net::rt::now();
        let mut until = self.started + LEASE + drift;
        for (osd, t) in lock(&self.granted).iter() {
            if *osd != asker && !map.osd(*osd).is_some_and(|o| o.up) {
                until = until.max(*t + drift);
            }
        }
        until.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::map::Command;

    fn map_with(up: &[u32], down: &[u32]) -> ClusterMap {
        let mut m = ClusterMap::new(1, vec![]);
        let n = up.iter().chain(down).max().map_or(0, |m| m + 1);
        for id in 0..n {
            let id = &id;
            let create = Command::CreateOsd {
                host: format!("h{id}"),
                weight: proto::map::WEIGHT_ONE,
                store_uuid: *id as u128 + 1,
                capacity_bytes: 1 << 30,
            };
            m = m.apply(&create).unwrap().0;
        }
        for id in up {
            let boot = Command::BootOsd {
                id: OsdId(*id),
                store_uuid: *id as u128 + 1,
                addr: "127.0.0.1:1".into(),
                process: 1,
            };
            m = m.apply(&boot).unwrap().0;
        }
        m
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_and_peering_waits_for_leases_granted_to_down_osds() {
        let primary = Leases::default();
        let replica = Leases::default();
        let all_up = map_with(&[0, 1, 2], &[]);
        // A fresh process answers no peering query for one lease.
        assert!(replica.wait_before_peering(&all_up, OsdId(2)) > LEASE);
        tokio::time::advance(LEASE + DRIFT).await;
        assert!(replica.wait_before_peering(&all_up, OsdId(2)).is_zero());

        // osd.1 (the replica) grants osd.0 (the primary) a lease.
        let sent = net::rt::now();
        assert!(replica.grant(&all_up, OsdId(0), 1000));
        primary.hold(OsdId(1), sent);
        assert!(primary.holds_all(&[OsdId(1)]));
        assert!(
            !primary.holds_all(&[OsdId(1), OsdId(2)]),
            "no lease from osd.2"
        );

        // osd.0 is now down (partitioned): the replica joins osd.2's peering only after
        // the lease it granted ran out, plus the drift margin...
        let zero_down = map_with(&[1, 2], &[0]);
        let wait = replica.wait_before_peering(&zero_down, OsdId(2));
        assert!(
            wait > LEASE - Duration::from_millis(1) && wait <= LEASE + DRIFT,
            "{wait:?}"
        );
        // ...while the old primary, on its own clock, stopped serving reads before that.
        tokio::time::advance(LEASE).await;
        assert!(!primary.holds_all(&[OsdId(1)]));
        assert!(!replica.wait_before_peering(&zero_down, OsdId(2)).is_zero());
        tokio::time::advance(DRIFT).await;
        assert!(replica.wait_before_peering(&zero_down, OsdId(2)).is_zero());

        // A down OSD gets no lease.
        assert!(!replica.grant(&zero_down, OsdId(0), 1000));
        // The asker's own lease never delays its peering.
        replica.grant(&all_up, OsdId(2), 1000);
        let two_down = map_with(&[0, 1], &[2]);
        assert!(replica.wait_before_peering(&two_down, OsdId(2)).is_zero());
    }
}
