//! A framed, multiplexed connection: many requests in flight on one stream, replies matched
//! by request id, unsolicited frames (map pushes) delivered on a side channel.
//!
//! Each connection has a reader task and a writer task. The writer batches whatever frames
//! are queued into one buffered write before flushing, so a burst of small ops costs one
//! syscall. When either side fails, every pending call fails with `NetError::Closed` and
//! the connection reports itself closed; callers reconnect.

use bytes::{Bytes, BytesMut};
use proto::frame::{self, Frame, FrameError, FLAG_RESPONSE};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {peer} closed")]
    Closed { peer: String },
    #[error("request to {peer} timed out after {ms} ms")]
    Timeout { peer: String, ms: u64 },
    #[error("bad frame from {peer}: {err}")]
    Frame { peer: String, err: FrameError },
}

/// One frame to send: header, metadata and data written back to back.
pub struct OutFrame {
    pub header: [u8; frame::HEADER_LEN],
    pub meta: Vec<u8>,
    pub data: Bytes,
}

impl OutFrame {
    pub fn new(msg_type: u16, flags: u32, request_id: u64, meta: Vec<u8>, data: Bytes) -> Self {
        let header = frame::encode_header(msg_type, flags, request_id, &meta, data.len());
        OutFrame { header, meta, data }
    }
}

/// Sends frames on a connection (cheap to clone). Used by servers to reply and push.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<OutFrame>,
}

impl Sender {
    /// Queues a frame; false when the connection is gone.
    pub fn send(&self, f: OutFrame) -> bool {
        self.tx.send(f).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<OutFrame>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(256 << 10, w);
    while let Some(f) = rx.recv().await {
        let mut next = Some(f);
        while let Some(f) = next {
            w.write_all(&f.header).await?;
            w.write_all(&f.meta).await?;
            w.write_all(&f.data).await?;
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    Ok(())
}

/// Reads frames until EOF or a bad frame, handing each to `on_frame`.
pub async fn read_frames<R: AsyncRead + Unpin>(
    mut r: R,
    peer: &str,
    mut on_frame: impl FnMut(Frame) -> bool,
) -> Result<(), NetError> {
    let mut buf = BytesMut::with_capacity(256 << 10);
    loop {
        loop {
            match frame::try_decode(&mut buf) {
                Ok(Some(f)) => {
                    if !on_frame(f) {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    return Err(NetError::Frame {
                        peer: peer.to_string(),
                        err,
                    })
                }
            }
        }
        if buf.capacity() - buf.len() < 64 << 10 {
            buf.reserve(256 << 10);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                return Err(NetError::Closed {
                    peer: peer.to_string(),
                })
            }
            Ok(_) => {}
        }
    }
}

/// Spawns the writer for a stream's write half and returns its sender.
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(w: W, peer: String) -> Sender {
    let (tx, rx) = mpsc::unbounded_channel();
    crate::rt::spawn(async move {
        if let Err(e) = write_loop(w, rx).await {
            tracing::debug!(%peer, "write failed: {e}");
        }
    });
    Sender { tx }
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Frame>>>>;

/// The client end of a connection.
pub struct Conn {
    peer: String,
    sender: Sender,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    pushes: Mutex<Option<mpsc::UnboundedReceiver<Frame>>>,
}

impl Conn {
    pub fn from_stream<S>(stream: S, peer: String) -> Arc<Conn>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let sender = spawn_writer(w, peer.clone());
        let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            peer: peer.clone(),
            sender,
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            closed: closed.clone(),
            pushes: Mutex::new(Some(push_rx)),
        });
        crate::rt::spawn(async move {
            let result = read_frames(r, &peer, |f| {
                if f.is_response() {
                    let waiter = crate::sync::lock(&pending).remove(&f.request_id);
                    if let Some(w) = waiter {
                        let _ = w.send(f);
                    }
                } else {
                    let _ = push_tx.send(f);
                }
                true
            })
            .await;
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            closed.store(true, Ordering::SeqCst);
            // Dropping the waiters fails every pending call.
            crate::sync::lock(&pending).clear();
        });
        conn
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.sender.is_closed()
    }

    /// The unsolicited frames the peer sends (only the first caller gets the receiver).
    pub fn take_pushes(&self) -> Option<mpsc::UnboundedReceiver<Frame>> {
        crate::sync::lock(&self.pushes).take()
    }

    /// Sends a request and waits for its response.
    pub async fn call(
        &self,
        msg_type: u16,
        meta: Vec<u8>,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Frame, NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = crate::sync::lock(&self.pending);
            if self.is_closed() {
                return Err(self.closed_err());
            }
            p.insert(id, tx);
        }
        if !self.sender.send(OutFrame::new(msg_type, 0, id, meta, data)) {
            self.forget(id);
            return Err(self.closed_err());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(self.closed_err()),
            Err(_) => {
                self.forget(id);
                Err(NetError::Timeout {
                    peer: self.peer.clone(),
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        crate::sync::lock(&self.pending).remove(&id);
    }

    fn closed_err(&self) -> NetError {
        NetError::Closed {
            peer: self.peer.clone(),
        }
    }
}

/// The server's handle for answering one request.
pub struct Responder {
    pub sender: Sender,
    pub request_id: u64,
}

impl Responder {
    pub fn reply(&self, msg_type: u16, meta: Vec<u8>, data: Bytes) -> bool {
        self.sender.send(OutFrame::new(
            msg_type,
            FLAG_RESPONSE,
            self.request_id,
            meta,
            data,
        ))
    }
}

/// Serves one accepted stream: every request frame is handed to `handle` on its own task.
pub async fn serve_stream<S, H, F>(stream: S, peer: String, handle: H)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Fn(Frame, Responder) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let sender = spawn_writer(w, peer.clone());
    let result = read_frames(r, &peer, |f| {
        let responder = Responder {
            sender: sender.clone(),
            request_id: f.request_id,
        };
        crate::rt::spawn(handle(f, responder));
        true
    })
    .await;
    match result {
        Err(NetError::Closed { .. }) | Ok(()) => tracing::debug!(%peer, "client disconnected"),
        Err(e) => tracing::warn!(%peer, "closing connection: {e}"),
    }
}
