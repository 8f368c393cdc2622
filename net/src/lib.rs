//! Atlant's transports.
//!
//! - `conn`: a framed, multiplexed connection (client calls, server replies, pushes);
//! - `transport`: connect/serve over TCP, the seam a simulator or RDMA replaces;
//! - `rt`: tasks and identifiers of one node (what the simulator crashes and seeds);
//! - `rdma`: detection of RDMA devices (verbs come later; TCP is the fallback);
//! - `sync`: the lock helper and the panic policy every daemon shares.

pub mod cache;
pub mod conn;
pub use proto::planted;
pub mod rdma;
pub mod rt;
pub mod sync;
pub mod transport;

pub use cache::ConnCache;
pub use conn::{Conn, NetError, OutFrame, Responder, Sender};
