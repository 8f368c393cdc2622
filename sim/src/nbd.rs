//! The simulator's qemu: an NBD client that talks to the real gateway code
//! (`nbd_gateway::serve_connection`) over an in-process pipe, with pipelined requests and
//! qemu's `reconnect-delay` behaviour: when the connection is lost, the requests it had in
//! flight are kept and sent again on the next connection, and the guest sees no error.

use nbd_gateway::protocol::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use ::net::sync::lock;

/// Bound on each step of the handshake (a gateway that hangs in negotiation is a lost
/// connection, as for qemu's connect timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, as the guest issued it.
#[derive(Clone, Debug)]
pub enum Request {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u32,
    },
    Flush,
}

impl Request {
    fn header(&self, cookie: u64) -> RequestHeader {
        let (command, flags, offset, length) = match self {
            Request::Read { offset, len } => (CMD_READ, 0, *offset, *len),
            Request::Write { offset, data, fua } => {
                (CMD_WRITE, fua_flag(*fua), *offset, data.len() as u32)
            }
            Request::WriteZeroes { offset, len, fua } => {
                (CMD_WRITE_ZEROES, fua_flag(*fua), *offset, *len)
            }
            Request::Trim { offset, len } => (CMD_TRIM, 0, *offset, *len),
            Request::Flush => (CMD_FLUSH, 0, 0, 0),
        };
        RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }
    }

    fn reply_len(&self) -> u32 {
        match self {
            Request::Read { len, .. } => *len,
            _ => 0,
        }
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua {
        CMD_FLAG_FUA
    } else {
        0
    }
}

/// How one attempt of a request ended.
#[derive(Debug)]
pub enum Answer {
    /// The gateway answered: data for a read (empty otherwise), or an NBD errno.
    Done(Result<Vec<u8>, u32>),
    /// The connection went away before the answer: qemu sends it again.
    Lost,
}

type Pending = Arc<Mutex<Option<BTreeMap<u64, (u32, oneshot::Sender<Result<Vec<u8>, u32>>)>>>>;

/// One negotiated connection: requests are written under a lock, replies are read by a
/// task of their own and handed to their requests by cookie.
pub struct Connection {
    send: tokio::sync::Mutex<WriteHalf<DuplexStream>>,
    pending: Pending,
    next_cookie: AtomicU64,
    replies: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Negotiates `export` on `stream` (NBD_OPT_GO, simple replies).
    pub async fn open(stream: DuplexStream, export: &str) -> Result<Connection, String> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut rd, &mut wr, export))
            .await
            .map_err(|_| "handshake timed out".to_string())??;
        let pending: Pending = Arc::new(Mutex::new(Some(BTreeMap::new())));
        let replies = tokio::spawn(read_replies(rd, Arc::clone(&pending)));
        Ok(Connection {
            send: tokio::sync::Mutex::new(wr),
            pending,
            next_cookie: AtomicU64::new(1),
            replies,
        })
    }

    /// Sends `req` and waits for its answer (or for the connection to be lost).
    pub async fn call(&self, req: &Request) -> Answer {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(p) => p.insert(cookie, (req.reply_len(), tx)),
            None => return Answer::Lost,
        };
        let mut out = req.header(cookie).encode().to_vec();
        if let Request::Write { data, .. } = req {
            out.extend_from_slice(data);
        }
        if self.send.lock().await.write_all(&out).await.is_err() {
            self.close();
            return Answer::Lost;
        }
        match rx.await {
            Ok(r) => Answer::Done(r),
            Err(_) => Answer::Lost,
        }
    }

    fn is_open(&self) -> bool {
        lock(&self.pending).is_some()
    }

    /// Drops the connection: the gateway sees its end of the pipe close, and every request
    /// still waiting is answered `Lost`.
    pub fn close(&self) {
        self.replies.abort();
        lock(&self.pending).take();
        // The gateway reads end of stream once our half is shut down (or, while a request
        // is being written, once the connection is dropped).
        if let Ok(mut w) = self.send.try_lock() {
            let _ = futures::FutureExt::now_or_never(w.shutdown());
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

async fn negotiate(
    rd: &mut ReadHalf<DuplexStream>,
    wr: &mut WriteHalf<DuplexStream>,
    export: &str,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("handshake: {e}");
    let mut greeting = [0u8; GREETING_LENGTH];
    rd.read_exact(&mut greeting).await.map_err(io)?;
    parse_greeting(&greeting).map_err(|e| format!("greeting: {e}"))?;
    wr.write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
        .await
        .map_err(io)?;
    let go = InfoRequest {
        name: export.to_string(),
        info_requests: vec![],
    }
    .encode();
    let mut out = OptionHeader {
        option: OPT_GO,
        length: go.len() as u32,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(&go);
    wr.write_all(&out).await.map_err(io)?;
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_LENGTH];
        rd.read_exact(&mut h).await.map_err(io)?;
        let h = OptionReplyHeader::parse(&h).map_err(|e| format!("option reply: {e}"))?;
        let mut data = vec![0u8; h.length as usize];
        rd.read_exact(&mut data).await.map_err(io)?;
        if h.reply_type == REP_ACK {
            return Ok(());
        }
        if is_error_reply(h.reply_type) {
            return Err(format!(
                "NBD_OPT_GO refused ({:#x}): {}",
                h.reply_type,
                String::from_utf8_lossy(&data)
            ));
        }
    }
}

async fn read_replies(mut rd: ReadHalf<DuplexStream>, pending: Pending) {
    loop {
        let mut h = [0u8; SIMPLE_REPLY_LENGTH];
        if rd.read_exact(&mut h).await.is_err() {
            break;
        }
        let Ok(reply) = SimpleReply::parse(&h) else {
            tracing::warn!(target: "sim", "nbd: bad reply magic from the gateway");
            break;
        };
        let Some((len, tx)) = lock(&pending)
            .as_mut()
            .and_then(|p| p.remove(&reply.cookie))
        else {
            tracing::warn!(target: "sim", "nbd: reply to unknown cookie {}", reply.cookie);
            break;
        };
        let result = if reply.error != 0 {
            Err(reply.error)
        } else {
            let mut data = vec![0u8; len as usize];
            if rd.read_exact(&mut data).await.is_err() {
                break;
            }
            Ok(data)
        };
        let _ = tx.send(result);
    }
    // Lost: every waiter's sender is dropped with the map.
    lock(&pending).take();
}

/// Opens a pipe to the gateway, or None while no gateway runs.
pub type Connector = Box<dyn Fn() -> Option<DuplexStream> + Send + Sync>;

/// qemu's NBD block driver with `reconnect-delay`: one connection at a time; a request whose
/// connection is lost is sent again on the next one, so the guest sees a pause, not an
/// error.
pub struct Disk {
    connect: Connector,
    export: String,
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Between attempts to reach a gateway that does not answer.
    retry: Duration,
    /// Requests sent again after their connection was lost.
    pub resent: AtomicU64,
}

impl Disk {
    pub fn new(connect: Connector, export: &str, retry: Duration) -> Disk {
        Disk {
            connect,
            export: export.to_string(),
            current: tokio::sync::Mutex::new(None),
            retry,
            resent: AtomicU64::new(0),
        }
    }

    /// The open connection, or a new one once a gateway answers.
    async fn connection(&self) -> Arc<Connection> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.is_open()) {
            return Arc::clone(c);
        }
        *current = None;
        loop {
            if let Some(stream) = (self.connect)() {
                match Connection::open(stream, &self.export).await {
                    Ok(c) => {
                        let c = Arc::new(c);
                        *current = Some(Arc::clone(&c));
                        return c;
                    }
                    Err(e) => tracing::info!(target: "sim", "nbd: connecting failed: {e}"),
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    /// Runs `req` to its answer, across lost connections: the data of a read (empty for
    /// other requests), or the NBD errno the gateway answered.
    pub async fn call(&self, req: &Request) -> Result<Vec<u8>, u32> {
        loop {
            let c = self.connection().await;
            match c.call(req).await {
                Answer::Done(r) => return r,
                Answer::Lost => {
                    c.close();
                    self.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The connection drops (a network blip between qemu and the gateway): the gateway
    /// sees it close with requests in flight; they are sent again on the next one.
    pub fn drop_connection(&self) -> bool {
        match self.current.try_lock() {
            Ok(g) => match g.as_ref() {
                Some(c) if c.is_open() => {
                    c.close();
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// Ends the session as qemu does at shutdown (the gateway sees the pipe close).
    pub async fn close(&self) {
        if let Some(c) = self.current.lock().await.take() {
            c.close();
        }
    }
}
