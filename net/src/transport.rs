//! The transport seam. Production uses TCP (which is also IPoIB); RDMA verbs plug in behind
//! the same calls later and fall back to TCP per connection when either end has no device.
//! Inside the whole-cluster simulator (a task of a [`crate::rt::Node`]) the same calls go
//! through the node's [`SimNet`] instead.

use crate::conn::{serve_stream, Conn, NetError, Responder};
use futures::future::BoxFuture;
use proto::frame::Frame;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A byte stream of the simulated network.
pub trait SimStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SimStream for T {}

/// Accepted simulated connections: (stream, peer name).
pub type SimAccept = mpsc::UnboundedReceiver<(Box<dyn SimStream>, String)>;

/// A simulated network, as the simulator implements it.
pub trait SimNet: Send + Sync + 'static {
    /// Connects `from` (a node name) to `addr`. Fails with "connection refused" when
    /// nothing listens there; hangs (until the caller's timeout) across a partition.
    fn connect(
        self: Arc<Self>,
        from: &str,
        addr: &str,
    ) -> BoxFuture<'static, Result<Box<dyn SimStream>, String>>;
    /// Listens on `addr` for node `node`; port 0 picks a fresh port. Returns the address.
    fn bind(&self, node: &str, addr: &str) -> Result<(String, SimAccept), String>;
}

/// Opens a connection to `addr` (`ip:port`).
pub async fn connect(addr: &str) -> Result<Arc<Conn>, NetError> {
    let err = |reason: String| NetError::Connect {
        addr: addr.to_string(),
        reason,
    };
    if let Some(node) = crate::rt::current() {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Arc::clone(&node.net).connect(&node.name, addr),
        )
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(err)?;
        return Ok(Conn::from_stream(stream, addr.to_string()));
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| err(e.to_string()))?;
    Ok(Conn::from_stream(stream, addr.to_string()))
}

/// A listening endpoint: a TCP socket, or an address of the simulated network.
pub enum Listener {
    Tcp(TcpListener),
    Sim(String, SimAccept),
}

impl Listener {
    /// Listens on `addr` (`ip:port`; port 0 picks one).
    pub async fn bind(addr: &str) -> std::io::Result<Listener> {
        if let Some(node) = crate::rt::current() {
            let (addr, rx) = node
                .net
                .bind(&node.name, addr)
                .map_err(std::io::Error::other)?;
            return Ok(Listener::Sim(addr, rx));
        }
        Ok(Listener::Tcp(TcpListener::bind(addr).await?))
    }

    pub fn local_addr(&self) -> std::io::Result<String> {
        match self {
            Listener::Tcp(l) => Ok(l.local_addr()?.to_string()),
            Listener::Sim(a, _) => Ok(a.clone()),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

/// Accepts connections forever, serving each with `handle` (one task per request).
pub async fn serve<H, F>(listener: impl Into<Listener>, handle: H)
where
    H: Fn(Frame, Responder) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    match listener.into() {
        Listener::Tcp(listener) => loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let handle = handle.clone();
                    crate::rt::spawn(serve_stream(stream, peer.to_string(), handle));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        },
        Listener::Sim(_, mut rx) => {
            while let Some((stream, peer)) = rx.recv().await {
                crate::rt::spawn(serve_stream(stream, peer, handle.clone()));
            }
        }
    }
}
