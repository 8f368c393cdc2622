//! Sealed records and the monitor's identity.
//!
//! Every record a monitor stores (log entries, vote, applied map, snapshots, identity) is
//! kept in an envelope so a damaged or foreign store is refused at start instead of serving
//! a wrong map. Envelope (little-endian):
//! ```text
//!   0 magic "ATLM" u32 | 4 format u16 | 6 reserved u16 | 8 length u32 | 12 crc32c u32 | 16 postcard(value)
//! ```

use proto::checksum::crc32c;
use proto::map::MonInfo;

const MAGIC: u32 = u32::from_le_bytes(*b"ATLM");
/// 2: the map gained OSD fullness and the full ratios.
/// 3: the monitor group: a Raft log, vote, applied state and snapshots instead of a list of
///    maps. A format-2 store is refused with a message saying so.
/// 4: the map gained per-PG history (intervals that went active). Format-3 records are read
///    and converted (`unseal_migrating`); they are rewritten as format 4 as the monitor runs.
/// 5: the map gained per-PG interval starts (`ClusterMap::pg_intervals`). Format-3 and -4
///    records are read and converted; the leader then commits `StartIntervals`.
/// 6: the map gained `ClusterMap::auto_out` (OSDs out by the down-out timer, marked in
///    again when they boot). Format-3, -4 and -5 records are read and converted.
pub const FORMAT_VERSION: u16 = 6;
/// The oldest format this build reads.
const OLDEST_READABLE: u16 = 3;
const ENVELOPE_LEN: usize = 16;

/// The monitor's identity, written by `mkfs`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub name: String,
    pub addr: String,
    pub fsid: u128,
    /// The monitors that form the group when the cluster is created (each of them knows the
    /// same list); empty for a monitor created to join an existing group.
    pub initial: Vec<MonInfo>,
}

pub fn seal<T: serde::Serialize>(v: &T) -> Vec<u8> {
    seal_as(v, FORMAT_VERSION)
}

fn seal_as<T: serde::Serialize>(v: &T, format: u16) -> Vec<u8> {
    let body = proto::msg::encode_control(v);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads a record whose type is the same in every readable format.
pub fn unseal<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    let (_, body) = envelope(raw)?;
    postcard::from_bytes(body).map_err(|e| format!("decode: {e}"))
}

/// Reads a record whose type changed in formats 4, 5 and 6: a format-3 record is read as
/// `V3`, a format-4 record as `V4`, a format-5 record as `V5`, and converted.
pub fn unseal_migrating<T, V3, V4, V5>(raw: &[u8]) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
    V3: serde::de::DeserializeOwned + Into<T>,
    V4: serde::de::DeserializeOwned + Into<T>,
    V5: serde::de::DeserializeOwned + Into<T>,
{
    let (format, body) = envelope(raw)?;
    match format {
        3 => postcard::from_bytes::<V3>(body)
            .map(Into::into)
            .map_err(|e| format!("decode (format 3): {e}")),
        4 => postcard::from_bytes::<V4>(body)
            .map(Into::into)
            .map_err(|e| format!("decode (format 4): {e}")),
        5 => postcard::from_bytes::<V5>(body)
            .map(Into::into)
            .map_err(|e| format!("decode (format 5): {e}")),
        _ => postcard::from_bytes(body).map_err(|e| format!("decode: {e}")),
    }
}

/// Checks a record's envelope; returns its format and body.
fn envelope(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    if raw.len() < ENVELOPE_LEN {
        return Err(format!(
            "record of {} bytes is shorter than its header",
            raw.len()
        ));
    }
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    if u32_at(0) != MAGIC {
        return Err("bad magic".into());
    }
    let format = u16::from_le_bytes([raw[4], raw[5]]);
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&format) {
        return Err(format!(
            "format version {format}, this build reads {FORMAT_VERSION}{}",
            if format < FORMAT_VERSION {
                " (written by an older build: recreate the monitor and let it join the group)"
            } else {
                " (written by a newer build)"
            }
        ));
    }
    let len = u32_at(8) as usize;
    let body = &raw[ENVELOPE_LEN..];
    if body.len() != len {
        return Err(format!("length {} but header says {len}", body.len()));
    }
    if crc32c(body) != u32_at(12) {
        return Err("checksum mismatch".into());
    }
    Ok((format, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::map::{ClusterMapV3 as V3, ClusterMapV4 as V4, ClusterMapV5 as V5};
    use proto::ClusterMap;

    /// A map with one pool of 8 PGs.
    fn one_pool_map() -> ClusterMap {
        use proto::map::{Command, FailureDomain};
        ClusterMap::new(7, vec![])
            .apply(&Command::CreatePool {
                name: "rbd".into(),
                size: 3,
                min_size: 2,
                pg_count: 8,
                object_size: 4096,
                failure_domain: FailureDomain::Host,
            })
            .unwrap()
            .0
    }

    /// `m` as format 5 wrote it (the fields format 5 had).
    fn as_v5(m: &ClusterMap) -> V5 {
        V5 {
            fsid: m.fsid,
            epoch: m.epoch,
            mons: m.mons.clone(),
            osds: m.osds.clone(),
            pools: m.pools.clone(),
            images: m.images.clone(),
            next_osd_id: m.next_osd_id,
            next_pool_id: m.next_pool_id,
            next_image_id: m.next_image_id,
            ratios: m.ratios,
            flags: m.flags.clone(),
            pg_history: m.pg_history.clone(),
            pg_intervals: m.pg_intervals.clone(),
        }
    }

    #[test]
    fn sealed_records_reject_damage() {
        let m = ClusterMap::new(9, vec![]);
        let mut raw = seal(&m);
        assert_eq!(unseal::<ClusterMap>(&raw).unwrap(), m);
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        assert!(unseal::<ClusterMap>(&raw).unwrap_err().contains("checksum"));
        assert!(unseal::<ClusterMap>(&raw[..5]).is_err());
        let mut v2 = seal(&m);
        v2[4] = 2;
        assert!(unseal::<ClusterMap>(&v2)
            .unwrap_err()
            .contains("older build"));
    }

    #[test]
    fn a_format_3_map_is_read_and_converted() {
        let mut m3 = proto::map::ClusterMapV3 {
            fsid: 7,
            epoch: 42,
            mons: vec![],
            osds: Default::default(),
            pools: Default::default(),
            images: Default::default(),
            next_osd_id: 3,
            next_pool_id: 2,
            next_image_id: 5,
            ratios: Default::default(),
            flags: Default::default(),
        };
        m3.flags.insert(proto::map::ClusterFlag::NoOut);
        let raw = seal_as(&m3, 3);
        let m: ClusterMap = unseal_migrating::<ClusterMap, V3, V4, V5>(&raw).unwrap();
        assert_eq!((m.fsid, m.epoch, m.next_image_id), (7, 42, 5));
        assert!(m.flags.contains(&proto::map::ClusterFlag::NoOut));
        assert!(m.pg_history.is_empty());
        // Read as the new type without conversion, the old record does not decode.
        assert!(unseal::<ClusterMap>(&raw).is_err());
        // Written again, it is the current format and reads back the same.
        assert_eq!(
            unseal_migrating::<ClusterMap, V3, V4, V5>(&seal(&m)).unwrap(),
            m
        );
    }

    #[test]
    fn a_format_4_map_is_read_and_its_pools_wait_for_interval_starts() {
        use proto::map::Command;
        let m = one_pool_map();
        let m5 = as_v5(&m);
        let m4 = V4 {
            fsid: m5.fsid,
            epoch: m5.epoch,
            mons: m5.mons,
            osds: m5.osds,
            pools: m5.pools,
            images: m5.images,
            next_osd_id: m5.next_osd_id,
            next_pool_id: m5.next_pool_id,
            next_image_id: m5.next_image_id,
            ratios: m5.ratios,
            flags: m5.flags,
            pg_history: m5.pg_history,
        };
        let raw = seal_as(&m4, 4);
        let read: ClusterMap = unseal_migrating::<ClusterMap, V3, V4, V5>(&raw).unwrap();
        assert_eq!(read.pools, m.pools);
        assert_eq!(read.pools_without_intervals(), vec![1]);
        let (started, _) = read.apply(&Command::StartIntervals).unwrap();
        assert!(started.pools_without_intervals().is_empty());
        assert_eq!(
            started.interval_start(proto::PgId { pool: 1, seed: 3 }),
            Some(started.epoch)
        );
        assert!(started.apply(&Command::StartIntervals).is_err());
    }

    #[test]
    fn a_format_5_map_is_read_with_no_osd_out_by_the_timer() {
        let m = one_pool_map();
        let raw = seal_as(&as_v5(&m), 5);
        assert!(unseal::<ClusterMap>(&raw).is_err());
        let read: ClusterMap = unseal_migrating::<ClusterMap, V3, V4, V5>(&raw).unwrap();
        assert_eq!(read, m);
        assert!(read.auto_out.is_empty());
    }
}
