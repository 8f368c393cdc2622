//! The Atlant client library: what the NBD gateway and the admin CLI are built on.
//!
//! - `monc`: monitor client (failover between monitors, map subscription);
//! - `cluster`: the cached map, OSD connections, object ops with resend rules;
//! - `image`: image byte ranges cut into concurrent object ops, end-to-end checksums.

pub mod cluster;
pub mod image;
pub mod monc;

pub use cluster::{ClientError, Cluster, OpObserver};
pub use image::Image;
pub use monc::{parse_addrs, MonClient, MonError};
