//! The Atlant NBD gateway: serves Atlant images to qemu (or any NBD client) over TCP or unix
//! sockets.
//!
//! How a connection flows, top-down, with the file for each step:
//! - `server.rs` — accept loops ([`serve_tcp`], [`serve_unix`]) and the per-connection
//!   driver ([`serve_connection`]); a failing connection ends only its own task.
//! - `handshake.rs` — fixed-newstyle option negotiation: NBD_OPT_GO / INFO / LIST / ABORT /
//!   EXPORT_NAME / STRUCTURED_REPLY / {LIST,SET}_META_CONTEXT (`base:allocation`).
//! - `transmission.rs` — pipelined requests: a reader spawns one task per request under a
//!   per-connection in-flight budget, a writer sends replies out of order (structured or
//!   simple).
//! - `exports.rs` — the export registry (one [`ExportState`] per export, shared by every
//!   connection) and the byte-range IO layer: unaligned reads slice whole blocks, unaligned
//!   writes / zeroes read-modify-write partial blocks.
//! - `locks.rs` — striped per-block locks that keep read-modify-write from losing writes.
//! - `protocol.rs` — the wire format, with no IO: constants, headers, bounds-checked codecs.
//! - `backend.rs` — the [`Backend`] / [`ExportProvider`] traits storage implements.
//! - `mem.rs` — an in-memory provider for tests and `examples/mem_server.rs`.
//! - `cluster.rs` — the production provider: `pool/image` names served by the client
//!   library (the gateway binary and the whole-cluster simulator use it).
//!
//! What the gateway advertises: minimum and preferred block size 4 KiB, maximum payload
//! 32 MiB, FLUSH, FUA, TRIM, WRITE_ZEROES, FAST_ZERO (configurable), CACHE, DF (with
//! structured replies), MULTI_CONN. It still accepts requests of any size and alignment.
//!
//! Known limits: no TLS (NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP), no extended headers, no
//! resize, and block status reports every range as allocated data.
//!
//! Typical use (what `main.rs` does):
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use nbd_gateway::{mem::MemProvider, serve_tcp, Exports, ServerConfig};
//! use std::sync::Arc;
//! let provider = MemProvider::new().with_export("rbd/vm1", 1 << 30);
//! let exports = Arc::new(Exports::new(provider, ServerConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! serve_tcp(listener, exports).await;
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod cluster;
pub mod exports;
pub mod handshake;
pub mod locks;
pub mod mem;
pub mod protocol;
pub mod server;
pub mod transmission;

#[cfg(test)]
mod tests;

pub use backend::{Backend, Cancel, ExportProvider, IoError, OpenError, BLOCK_SIZE};
pub use exports::{ExportState, Exports};
pub use server::{
    serve_connection, serve_tcp, serve_unix, ConnectionError, ServerConfig, MAX_PAYLOAD_BYTES,
};
