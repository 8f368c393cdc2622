//! The transport seam. Production uses TCP (which is also IPoIB); RDMA verbs plug in behind
//! the same calls later and fall back to TCP per connection when either end has no device.
//! A simulator replaces this module's functions with an in-memory network.

use crate::conn::{serve_stream, Conn, NetError, Responder};
use proto::frame::Frame;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a connection to `addr` (`ip:port`).
pub async fn connect(addr: &str) -> Result<Arc<Conn>, NetError> {
    let err = |reason: String| NetError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| err(e.to_string()))?;
    Ok(Conn::from_stream(stream, addr.to_string()))
}

/// Accepts connections forever, serving each with `handle` (one task per request).
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Frame, Responder) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                tokio::spawn(serve_stream(stream, peer.to_string(), handle));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
