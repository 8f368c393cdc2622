//! Atlant's shared vocabulary. Everything here is pure: no sockets, no files, no clocks.
//!
//! - `ids`: OSD, pool, image, object and PG ids, epochs, versions, op identity;
//! - `map`: the cluster map and the state machine of commands that change it;
//! - `placement`: object → PG → ordered OSD set (straw2 over host/osd);
//! - `pg`: per-PG state derived from a map (acting set, interval, health);
//! - `frame`: the wire frame codec (fixed little-endian header, checksummed);
//! - `msg`: message bodies (control messages in postcard, data ops as fixed headers);
//! - `checksum`: crc32c per 4 KiB block;
//! - `planted`: bugs the whole-cluster simulator puts back, one at a time, to show that its
//!   checkers catch them (a per-thread switch, off everywhere else).

pub mod checksum;
pub mod frame;
pub mod ids;
pub mod map;
pub mod msg;
pub mod pg;
pub mod placement;
pub mod planted;

pub use ids::*;
pub use map::{ClusterMap, Command, CommandResult, MapError};
