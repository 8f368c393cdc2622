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
pub const FORMAT_VERSION: u16 = 3;
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
    let body = proto::msg::encode_control(v);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn unseal<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
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
    if format != FORMAT_VERSION {
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
    postcard::from_bytes(body).map_err(|e| format!("decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ClusterMap;

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
}
