//! Message bodies carried in frames.
//!
//! Control messages (map requests, commands, status, reports) are postcard-encoded enums in
//! the metadata section. Data ops (object reads and writes, client→primary and
//! primary→replica) use a fixed 96-byte little-endian header instead, so the 4 KiB data path
//! runs no serializer; the header is followed by one crc32c per 4 KiB block of the data
//! section, and the data itself travels in the frame's data section.
//!
//! Object op header (little-endian):
//! ```text
//!   0 op u8 | 1 flags u8 | 2 reserved u16 | 4 object_size u32
//!   8 pool u32 | 12 pg_seed u32 | 16 image u64 | 24 index u64
//!  32 epoch u64 (sender's map epoch)
//!  40 client u64 | 48 tid u64          (op identity)
//!  56 offset u32 | 60 length u32        (byte range inside the object)
//!  64 version (epoch u64, seq u64)      (replica ops: the version to apply)
//!  80 prev    (epoch u64, seq u64)      (replica ops: the version the replica must hold)
//!  96 crc32c u32 × (length / 4096)      (ops that carry data)
//! ```
//! Reply header: `status u32 | flags u32 | epoch u64 | version (u64, u64)` (32 bytes),
//! followed by one crc32c per block of returned data.

use crate::ids::{Epoch, ObjectId, OpId, OsdId, PgId, Version};
use crate::map::{ClusterMap, Command, CommandResult, MapError, BLOCK_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Frame `msg_type`s.
pub mod msg_type {
    /// Control request/response: postcard `ControlRequest` / `ControlResponse`.
    pub const CONTROL: u16 = 1;
    /// Unsolicited map push to a subscriber: postcard `MapUpdate`.
    pub const MAP_PUSH: u16 = 2;
    /// Monitor ↔ monitor Raft RPC: postcard `RaftRpc` / `RaftReply` (mon crate).
    pub const RAFT: u16 = 3;
    /// Client → primary object op.
    pub const OBJECT_OP: u16 = 10;
    /// Primary → replica object op.
    pub const REPLICA_OP: u16 = 11;
    /// Reply to either.
    pub const OBJECT_REPLY: u16 = 12;
}

/// Object op codes.
pub mod op {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    /// Frees the range: it reads back as zeroes.
    pub const TRIM: u8 = 3;
    /// Replica only: replaces the whole object (data = `object_size` bytes) at `version`.
    pub const PUSH: u8 = 4;
    /// Replica only: the whole object and its version (the primary recovering its own copy).
    pub const PULL: u8 = 5;
    /// Client → primary: every write acknowledged in the op's PG is on stable media on
    /// every member of the acting set once this answers (the object names the PG; range
    /// and data are ignored). Primary → replica: flush the device (lazy mode).
    pub const FLUSH: u8 = 6;
    /// Client → primary: settles an op the client cancelled (the op id named here). Once
    /// it answers, that op has completed or will be refused if it ever arrives.
    pub const FENCE: u8 = 7;
}

/// Op flags.
pub const FLAG_FUA: u8 = 1;
/// Reply flags: the write is on stable media on every member that holds it (all of them
/// in immediate durability mode, or it carried FUA); a client need not FLUSH for it.
pub const REPLY_DURABLE: u32 = 1;
/// On a PUSH: the primary rolls back a copy newer than the authoritative one (it was never
/// acknowledged); the replica takes it even though its own version is newer. On a TRIM of
/// the whole object at `Version::NONE`: the object must not exist.
pub const FLAG_ROLLBACK: u8 = 2;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ObjectOpHeader {
    pub op: u8,
    pub flags: u8,
    pub reserved: U16,
    pub object_size: U32,
    pub pool: U32,
    pub pg_seed: U32,
    pub image: U64,
    pub index: U64,
    pub epoch: U64,
    pub client: U64,
    pub tid: U64,
    pub offset: U32,
    pub length: U32,
    pub version_epoch: U64,
    pub version_seq: U64,
    pub prev_epoch: U64,
    pub prev_seq: U64,
}

pub const OBJECT_OP_HEADER_LEN: usize = 96;
const _: () = assert!(std::mem::size_of::<ObjectOpHeader>() == OBJECT_OP_HEADER_LEN);

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ObjectReplyHeader {
    pub status: U32,
    pub flags: U32,
    pub epoch: U64,
    pub version_epoch: U64,
    pub version_seq: U64,
}

pub const OBJECT_REPLY_HEADER_LEN: usize = 32;
const _: () = assert!(std::mem::size_of::<ObjectReplyHeader>() == OBJECT_REPLY_HEADER_LEN);

/// Status codes of object replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// The op's epoch predates the PG's current interval: refresh the map (to at least the
    /// reply's epoch) and resend.
    StaleEpoch = 1,
    /// This OSD is not the primary of the PG in its map.
    NotPrimary = 2,
    /// The PG cannot serve IO now (a member is down, the OSD is starting): retry later.
    PgInactive = 3,
    /// Replica: the object is not at the op's `prev` version; send the whole object.
    NeedFull = 4,
    Io = 5,
    NoSpace = 6,
    Invalid = 7,
    /// A data block did not match its checksum in transit: resend.
    Checksum = 8,
    ShuttingDown = 9,
    /// The client cancelled the op (`op::FENCE`) before it arrived: it was not applied.
    Cancelled = 10,
}

impl Status {
    pub fn from_u32(v: u32) -> Option<Status> {
        use Status::*;
        Some(match v {
            0 => Ok,
            1 => StaleEpoch,
            2 => NotPrimary,
            3 => PgInactive,
            4 => NeedFull,
            5 => Io,
            6 => NoSpace,
            7 => Invalid,
            8 => Checksum,
            9 => ShuttingDown,
            10 => Cancelled,
            _ => return None,
        })
    }

    /// Whether the client should refresh its map and resend.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Status::StaleEpoch
                | Status::NotPrimary
                | Status::PgInactive
                | Status::Checksum
                | Status::ShuttingDown
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("object op metadata is {got} bytes, expected {want}")]
    BadLength { got: usize, want: usize },
    #[error("unknown object op {0}")]
    UnknownOp(u8),
    #[error(
        "object op range {offset}+{length} is not 4 KiB-aligned inside object size {object_size}"
    )]
    BadRange {
        offset: u32,
        length: u32,
        object_size: u32,
    },
    #[error("data section is {got} bytes, the op names {want}")]
    DataLength { got: usize, want: usize },
    #[error("control message: {0}")]
    Control(String),
}

/// A decoded object op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectOp {
    pub op: u8,
    pub flags: u8,
    pub object: ObjectId,
    pub pg: PgId,
    pub object_size: u32,
    pub epoch: Epoch,
    pub op_id: OpId,
    pub offset: u32,
    pub length: u32,
    pub version: Version,
    pub prev: Version,
    /// One crc per block of the data section (empty for ops without data).
    pub crcs: Vec<u32>,
}

impl ObjectOp {
    pub fn carries_data(&self) -> bool {
        matches!(self.op, op::WRITE | op::PUSH)
    }

    pub fn encode_meta(&self) -> Vec<u8> {
        let h = ObjectOpHeader {
            op: self.op,
            flags: self.flags,
            reserved: 0.into(),
            object_size: self.object_size.into(),
            pool: self.object.pool.into(),
            pg_seed: self.pg.seed.into(),
            image: self.object.image.into(),
            index: self.object.index.into(),
            epoch: self.epoch.into(),
            client: self.op_id.client.into(),
            tid: self.op_id.tid.into(),
            offset: self.offset.into(),
            length: self.length.into(),
            version_epoch: self.version.epoch.into(),
            version_seq: self.version.seq.into(),
            prev_epoch: self.prev.epoch.into(),
            prev_seq: self.prev.seq.into(),
        };
        let mut out = Vec::with_capacity(OBJECT_OP_HEADER_LEN + 4 * self.crcs.len());
        out.extend_from_slice(h.as_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Decodes and validates an op: known code, 4 KiB-aligned range inside the object, and
    /// a crc per block of a data section of exactly `length` bytes.
    pub fn decode(meta: &[u8], data_len: usize) -> Result<ObjectOp, DecodeError> {
        let (h, rest) =
            ObjectOpHeader::read_from_prefix(meta).map_err(|_| DecodeError::BadLength {
                got: meta.len(),
                want: OBJECT_OP_HEADER_LEN,
            })?;
        if !matches!(
            h.op,
            op::READ | op::WRITE | op::TRIM | op::PUSH | op::PULL | op::FLUSH | op::FENCE
        ) {
            return Err(DecodeError::UnknownOp(h.op));
        }
        let (offset, length, object_size) = (h.offset.get(), h.length.get(), h.object_size.get());
        let aligned = offset % BLOCK_SIZE == 0 && length % BLOCK_SIZE == 0 && length > 0;
        let inside = object_size.is_power_of_two()
            && object_size >= BLOCK_SIZE
            && (offset as u64 + length as u64) <= object_size as u64;
        if !aligned || !inside {
            return Err(DecodeError::BadRange {
                offset,
                length,
                object_size,
            });
        }
        let carries = matches!(h.op, op::WRITE | op::PUSH);
        let blocks = (length / BLOCK_SIZE) as usize;
        let want_meta = OBJECT_OP_HEADER_LEN + if carries { 4 * blocks } else { 0 };
        if meta.len() != want_meta {
            return Err(DecodeError::BadLength {
                got: meta.len(),
                want: want_meta,
            });
        }
        let want_data = if carries { length as usize } else { 0 };
        if data_len != want_data {
            return Err(DecodeError::DataLength {
                got: data_len,
                want: want_data,
            });
        }
        let crcs = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(ObjectOp {
            op: h.op,
            flags: h.flags,
            object: ObjectId {
                pool: h.pool.get(),
                image: h.image.get(),
                index: h.index.get(),
            },
            pg: PgId {
                pool: h.pool.get(),
                seed: h.pg_seed.get(),
            },
            object_size,
            epoch: h.epoch.get(),
            op_id: OpId {
                client: h.client.get(),
                tid: h.tid.get(),
            },
            offset,
            length,
            version: Version {
                epoch: h.version_epoch.get(),
                seq: h.version_seq.get(),
            },
            prev: Version {
                epoch: h.prev_epoch.get(),
                seq: h.prev_seq.get(),
            },
            crcs,
        })
    }
}

/// A decoded object reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectReply {
    pub status: u32,
    /// `REPLY_*` flags.
    pub flags: u32,
    pub epoch: Epoch,
    pub version: Version,
    pub crcs: Vec<u32>,
}

impl ObjectReply {
    pub fn status(status: Status, epoch: Epoch) -> Self {
        ObjectReply {
            status: status as u32,
            flags: 0,
            epoch,
            version: Version::NONE,
            crcs: Vec::new(),
        }
    }

    pub fn encode_meta(&self) -> Vec<u8> {
        let h = ObjectReplyHeader {
            status: self.status.into(),
            flags: self.flags.into(),
            epoch: self.epoch.into(),
            version_epoch: self.version.epoch.into(),
            version_seq: self.version.seq.into(),
        };
        let mut out = Vec::with_capacity(OBJECT_REPLY_HEADER_LEN + 4 * self.crcs.len());
        out.extend_from_slice(h.as_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    pub fn decode(meta: &[u8], data_len: usize) -> Result<ObjectReply, DecodeError> {
        let (h, rest) =
            ObjectReplyHeader::read_from_prefix(meta).map_err(|_| DecodeError::BadLength {
                got: meta.len(),
                want: OBJECT_REPLY_HEADER_LEN,
            })?;
        if rest.len() % 4 != 0 || rest.len() / 4 * BLOCK_SIZE as usize != data_len {
            return Err(DecodeError::DataLength {
                got: data_len,
                want: rest.len() / 4 * BLOCK_SIZE as usize,
            });
        }
        Ok(ObjectReply {
            status: h.status.get(),
            flags: h.flags.get(),
            epoch: h.epoch.get(),
            version: Version {
                epoch: h.version_epoch.get(),
                seq: h.version_seq.get(),
            },
            crcs: rest
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
    }
}

/// Usage an OSD reports to the monitors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub objects: u64,
}

/// One object as listed by an OSD's debug listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub object: ObjectId,
    pub version: Version,
    /// Blocks that hold data (others read as zeroes).
    pub blocks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The current map if it is newer than `have`.
    GetMap {
        have: Epoch,
    },
    /// Keeps the connection as a subscription: the map now (if newer than `have`), then
    /// every new map as a `MAP_PUSH` frame.
    Subscribe {
        have: Epoch,
    },
    /// A map change. `client` and `seq` identify it: a retry (to the same or another
    /// monitor, after a leader change) is applied at most once.
    Submit(MonRequest),
    /// A map change forwarded by a monitor to the leader; the leader does not forward again.
    Forwarded(MonRequest),
    /// Adds a monitor (created with `atlant-mon mkfs --join` and running) to the group.
    AddMonitor {
        name: String,
        addr: String,
    },
    RemoveMonitor {
        name: String,
    },
    /// An OSD's report that a peer stopped answering its heartbeats.
    OsdFailure {
        reporter: OsdId,
        target: OsdId,
        target_up_from: Epoch,
        /// The target's address refused the connection: its process is gone, so one
        /// report suffices (a hung or cut-off OSD times out instead and needs several).
        refused: bool,
    },
    /// An OSD's periodic report, with the state of the PGs it is primary of.
    OsdReport {
        id: OsdId,
        up_from: Epoch,
        stats: OsdStats,
        pgs: Vec<PgStat>,
    },
    /// The map and the latest reports, for `atlant status`.
    GetStatus,
    /// OSD: the objects it stores (optionally of one pool).
    ListObjects {
        pool: Option<u32>,
    },
    /// OSD: makes every write it acknowledged durable (OSDs in lazy durability mode).
    Flush,
    /// OSD ↔ OSD liveness probe; answered with `Ok` by a serving OSD.
    Heartbeat {
        from: OsdId,
        epoch: Epoch,
    },
    /// Peering, primary → member or witness of a past interval: what it holds of the PG.
    /// Answered with `PgPeerInfo` once the OSD has the map of `epoch`.
    PgQuery {
        pg: PgId,
        epoch: Epoch,
        primary: OsdId,
        interval_start: Epoch,
    },
    /// Peering, primary → member of the new interval (after the monitor recorded it):
    /// persist `last_epoch_started = interval_start` and the objects this member is still
    /// missing (with the authoritative version each needs).
    PgActivate {
        pg: PgId,
        epoch: Epoch,
        interval_start: Epoch,
        missing: Vec<(ObjectId, Version)>,
    },
}

/// What an OSD holds of a PG (the answer to `PgQuery`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgPeerInfo {
    /// The start of the last interval this OSD helped activate (persisted).
    pub last_epoch_started: Epoch,
    /// Every object it holds with its version.
    pub objects: Vec<(ObjectId, Version)>,
    /// Objects it knew it was missing when it last activated, with the version needed.
    pub missing: Vec<(ObjectId, Version)>,
    /// Whether the answer granted the asking primary a read lease (none to an incarnation
    /// the member's map does not show up).
    pub lease: bool,
}

/// A PG's state as its primary sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PgPhase {
    /// Asking members and past witnesses what they hold.
    Peering,
    /// A past interval that went active has no reachable member, or an object's
    /// authoritative copy is on no reachable OSD: waiting for `waiting_for`.
    Incomplete,
    /// Serving IO; `degraded` object copies are still missing on members.
    Active,
}

/// A primary's report of one PG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgStat {
    pub pg: PgId,
    pub phase: PgPhase,
    /// The interval this state belongs to.
    pub interval_start: Epoch,
    pub acting: Vec<OsdId>,
    /// OSDs the PG waits for (incomplete).
    pub waiting_for: Vec<OsdId>,
    pub objects: u64,
    /// Object copies missing or stale on acting members, with fewer than `size` current
    /// copies anywhere.
    pub degraded: u64,
    /// Object copies missing on acting members but current on enough other OSDs (data
    /// moving after an out, a reweight or a new OSD).
    pub misplaced: u64,
    /// Objects being recovered right now.
    pub recovering: u64,
    /// Client ops refused or waiting because the PG could not serve them, since it last
    /// served one.
    pub blocked_ops: u64,
    /// How long the PG has been in this phase (ms).
    pub phase_ms: u64,
}

impl PgStat {
    /// The state as `atlant pg ls` and `atlant status` name it.
    pub fn state_name(&self, size: usize) -> String {
        match self.phase {
            PgPhase::Peering => "peering".into(),
            PgPhase::Incomplete => "incomplete".into(),
            PgPhase::Active => {
                let mut s = String::from("active");
                if self.recovering > 0 {
                    s.push_str("+recovering");
                }
                if self.degraded > 0 || self.acting.len() < size {
                    s.push_str("+degraded");
                }
                if self.misplaced > 0 {
                    s.push_str("+remapped");
                }
                if self.degraded == 0 && self.misplaced == 0 && self.acting.len() >= size {
                    s.push_str("+clean");
                }
                s
            }
        }
    }
}

/// A map change as the monitors' log carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonRequest {
    pub client: u128,
    pub seq: u64,
    pub cmd: Command,
}

/// A map push to a subscriber (`MAP_PUSH` frames).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapUpdate {
    Full(Box<ClusterMap>),
    /// The commands that take the subscriber's map from `from` to `from + cmds.len()`, and
    /// the crc32c of the resulting map's encoding. A subscriber whose map is not at `from`,
    /// or whose result does not match the crc, asks for the full map.
    Incremental {
        from: Epoch,
        cmds: Vec<Command>,
        crc: u32,
    },
    /// Sent every `SUBSCRIPTION_KEEPALIVE` when nothing else was: the monitor is in the
    /// quorum and its map is at `epoch`. A subscriber that hears nothing for a few of these
    /// moves to another monitor.
    Keepalive {
        epoch: Epoch,
    },
    /// The monitor lost contact with the quorum: its map may be frozen. The subscriber
    /// moves to another monitor.
    NotInQuorum(String),
}

/// How often a monitor tells an idle subscriber it is alive and in the quorum.
pub const SUBSCRIPTION_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The crc of a map's encoding, as `MapUpdate::Incremental` carries it.
pub fn map_crc(m: &ClusterMap) -> u32 {
    crate::checksum::crc32c(&encode_control(m))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonStatus {
    pub name: String,
    pub addr: String,
    pub in_quorum: bool,
    pub leader: bool,
    /// The last log index this monitor applied (when it answered).
    #[serde(default)]
    pub applied: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub map: ClusterMap,
    pub mons: Vec<MonStatus>,
    pub osd_stats: BTreeMap<u32, OsdStats>,
    /// The latest report of each PG from its current primary.
    pub pg_stats: BTreeMap<PgId, PgStat>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Map(Box<ClusterMap>),
    UpToDate {
        epoch: Epoch,
    },
    Committed {
        epoch: Epoch,
        result: CommandResult,
    },
    Refused(MapError),
    Ok,
    Status(Box<StatusReport>),
    Objects(Vec<ObjectEntry>),
    PgPeerInfo(Box<PgPeerInfo>),
    Error(String),
    /// This monitor cannot reach a quorum (or has no leader yet): try another.
    NoQuorum(String),
    /// The subscription is open; map updates follow as `MAP_PUSH` frames.
    Subscribed {
        epoch: Epoch,
    },
}

pub fn encode_control<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain enums into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

pub fn decode_control<'a, T: Deserialize<'a>>(meta: &'a [u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(meta).map_err(|e| DecodeError::Control(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(op: u8, length: u32) -> ObjectOp {
        let blocks = (length / BLOCK_SIZE) as usize;
        ObjectOp {
            op,
            flags: FLAG_FUA,
            object: ObjectId {
                pool: 1,
                image: 2,
                index: 3,
            },
            pg: PgId { pool: 1, seed: 9 },
            object_size: 128 << 10,
            epoch: 17,
            op_id: OpId { client: 5, tid: 6 },
            offset: 8192,
            length,
            version: Version { epoch: 3, seq: 4 },
            prev: Version { epoch: 3, seq: 3 },
            crcs: if matches!(op, op::WRITE | op::PUSH) {
                (0..blocks as u32).collect()
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn object_op_round_trip() {
        for (o, len) in [(op::READ, 4096), (op::WRITE, 16384), (op::TRIM, 8192)] {
            let op = sample(o, len);
            let meta = op.encode_meta();
            let data_len = if op.carries_data() { len as usize } else { 0 };
            assert_eq!(ObjectOp::decode(&meta, data_len).unwrap(), op);
        }
    }

    #[test]
    fn object_op_rejects_bad_ranges_and_lengths() {
        let op = sample(op::WRITE, 4096);
        let meta = op.encode_meta();
        assert!(matches!(
            ObjectOp::decode(&meta[..50], 4096),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            ObjectOp::decode(&meta, 100),
            Err(DecodeError::DataLength { .. })
        ));
        let mut past_end = sample(op::READ, 4096);
        past_end.offset = 128 << 10;
        assert!(matches!(
            ObjectOp::decode(&past_end.encode_meta(), 0),
            Err(DecodeError::BadRange { .. })
        ));
        let mut unaligned = sample(op::READ, 4096);
        unaligned.offset = 100;
        assert!(matches!(
            ObjectOp::decode(&unaligned.encode_meta(), 0),
            Err(DecodeError::BadRange { .. })
        ));
        let mut unknown = sample(op::READ, 4096);
        unknown.op = 99;
        assert!(matches!(
            ObjectOp::decode(&unknown.encode_meta(), 0),
            Err(DecodeError::UnknownOp(99))
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), dl in 0usize..70000) {
            let _ = ObjectOp::decode(&bytes, dl);
            let _ = ObjectReply::decode(&bytes, dl);
            let _ = decode_control::<ControlRequest>(&bytes);
            let _ = decode_control::<ControlResponse>(&bytes);
        }
    }

    #[test]
    fn reply_round_trip() {
        let r = ObjectReply {
            status: Status::Ok as u32,
            flags: REPLY_DURABLE,
            epoch: 4,
            version: Version { epoch: 2, seq: 9 },
            crcs: vec![1, 2],
        };
        assert_eq!(ObjectReply::decode(&r.encode_meta(), 8192).unwrap(), r);
        assert!(ObjectReply::decode(&r.encode_meta(), 4096).is_err());
    }

    #[test]
    fn control_round_trip() {
        let req = ControlRequest::Submit(MonRequest {
            client: 7,
            seq: 1,
            cmd: Command::CreateImage {
                pool: "rbd".into(),
                name: "vm1".into(),
                size_bytes: 1 << 30,
            },
        });
        let back: ControlRequest = decode_control(&encode_control(&req)).unwrap();
        assert_eq!(back, req);
    }
}
