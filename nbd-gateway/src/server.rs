//! Accept loops and the per-connection driver: each accepted stream gets a task that runs the
//! option negotiation (`handshake.rs`) and then the transmission phase (`transmission.rs`).
//! A connection's failure, whatever the cause, ends only that connection's task.

use crate::backend::ExportProvider;
use crate::exports::Exports;
use crate::protocol::ProtocolError;
use crate::{handshake, transmission};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::Instrument;

/// Smallest request size the gateway advertises (the backend block size).
pub const MIN_BLOCK_SIZE: u32 = crate::backend::BLOCK_SIZE as u32;
/// Preferred request size advertised.
pub const PREFERRED_BLOCK_SIZE: u32 = crate::backend::BLOCK_SIZE as u32;
/// Largest READ/WRITE payload accepted; larger reads get EINVAL, larger writes close the
/// connection (their payload cannot be skipped without reading it).
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;

/// Tunables of the NBD server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Each read or write during option negotiation must finish within this, so idle or
    /// half-open clients are dropped.
    pub handshake_timeout: Duration,
    /// A reply that cannot be written for this long (the client stopped reading) ends the
    /// connection.
    pub reply_timeout: Duration,
    /// Requests a connection may have in flight (read, executing, or reply queued).
    pub max_inflight_requests: u32,
    /// Payload bytes (write data and read results) a connection may hold in flight. Must be
    /// at least `MAX_PAYLOAD_BYTES`.
    pub max_inflight_bytes: u32,
    /// Serve every export read-only (writes, trims and zeroes get EPERM).
    pub read_only: bool,
    /// Advertise NBD_FLAG_SEND_FAST_ZERO (the backend's write_zeroes is cheap).
    pub fast_zero: bool,
    /// Stripes in each export's block-lock table.
    pub lock_stripes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(120),
            max_inflight_requests: 128,
            max_inflight_bytes: 256 * 1024 * 1024,
            read_only: false,
            fast_zero: true,
            lock_stripes: crate::locks::DEFAULT_STRIPES,
        }
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("timed out during {phase}")]
    Timeout { phase: &'static str },
    #[error("client flags {flags:#x} rejected: {reason}")]
    ClientFlags { flags: u32, reason: &'static str },
    #[error("option {option} announces {length} bytes (limit {limit})")]
    OptionTooLong {
        option: u32,
        length: u32,
        limit: u32,
    },
    #[error("NBD_OPT_EXPORT_NAME {name:?} failed: {reason}")]
    ExportName { name: String, reason: String },
    #[error("write request announces a {length}-byte payload (limit {limit})")]
    PayloadTooLarge { length: u32, limit: u32 },
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves NBD on a TCP listener until the returned future is dropped. Accept errors (for
/// example running out of file descriptors) are logged and retried.
pub async fn serve_tcp<P: ExportProvider>(listener: TcpListener, exports: Arc<Exports<P>>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(peer = %addr, error = %e, "cannot set TCP_NODELAY");
                }
                net::rt::spawn(serve_connection(stream, addr.to_string(), exports.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Serves NBD on a unix-socket listener until the returned future is dropped.
pub async fn serve_unix<P: ExportProvider>(listener: UnixListener, exports: Arc<Exports<P>>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let peer = match addr.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix".to_string(),
                };
                net::rt::spawn(serve_connection(stream, peer, exports.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    // EMFILE and friends persist for a while; do not spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one NBD client on any byte stream, from the greeting to the disconnect, and logs
/// how it ended. Never panics on client input; errors end this connection only.
pub async fn serve_connection<P, S>(stream: S, peer: String, exports: Arc<Exports<P>>)
where
    P: ExportProvider,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("nbd", conn = id, peer = %peer);
    async move {
        tracing::info!("client connected");
        match run_connection(stream, &exports).await {
            Ok(end) => tracing::info!("client disconnected ({end})"),
            Err(ConnectionError::Io(e)) => tracing::info!("client disconnected: {e}"),
            Err(e) => tracing::warn!("connection closed: {e}"),
        }
    }
    .instrument(span)
    .await
}

async fn run_connection<P, S>(
    mut stream: S,
    exports: &Exports<P>,
) -> Result<&'static str, ConnectionError>
where
    P: ExportProvider,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(negotiated) = handshake::negotiate(&mut stream, exports).await? else {
        return Ok("during negotiation");
    };
    tracing::info!(
        export = %negotiated.export.name(),
        size = negotiated.export.size(),
        structured = negotiated.structured_replies,
        "transmission phase"
    );
    transmission::run(stream, negotiated, exports.config()).await
}
