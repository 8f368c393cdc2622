//! The transmission phase: a reader that keeps taking requests off the socket, one task per
//! request, and a writer that sends replies in completion order (not request order).
//!
//! ```text
//!  socket ──► reader ──spawn──► request task ─┐
//!               │  (permits: count + bytes)   ├──► reply queue ──► writer ──► socket
//!               └── early rejections ─────────┘
//! ```
//!
//! Invariants:
//! - A request holds its in-flight permits from before its payload is read until its reply
//!   has been written, so a connection never holds more than `max_inflight_requests`
//!   requests or `max_inflight_bytes` of payload, however fast the client sends and however
//!   slowly it reads.
//! - Each request gets exactly one reply and every reply is written whole, so the stream
//!   stays framed after an error reply. In simple-reply mode an error reply to a read
//!   carries no data.
//! - Only framing errors end the connection: a bad request magic, or a write whose payload
//!   is larger than `MAX_PAYLOAD_BYTES` (it cannot be skipped without reading it). Anything
//!   else gets an errno and the connection goes on.
//! - When the writer fails (the client went away) or stalls past `reply_timeout`, the reader
//!   is dropped with it, so a dead client frees its connection.
//! - A connection that is lost (end of stream or an error, not NBD_CMD_DISC) cancels its
//!   requests still running, and the export holds every new request until they have
//!   settled: cancelled, and unable to change the export any more (see
//!   `client::Cluster::object_op_cancellable`). A client that reconnects and resends what
//!   it had in flight (qemu's `reconnect-delay`) so never has its resend, or a newer write,
//!   overtaken by the original. After NBD_CMD_DISC the requests already received complete
//!   and are answered.

use crate::backend::{Backend, Cancel, IoError};
use crate::exports::ExportState;
use crate::handshake::Negotiated;
use crate::protocol::*;
use crate::server::{ConnectionError, ServerConfig, MAX_PAYLOAD_BYTES};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// A decoded, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
    },
}

/// A request refused before it reaches the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub errno: u32,
    pub message: String,
}

fn reject(errno: u32, message: impl Into<String>) -> Rejection {
    Rejection {
        errno,
        message: message.into(),
    }
}

/// What a connection negotiated that decides whether a request is acceptable.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub size: u64,
    pub read_only: bool,
    pub fast_zero: bool,
    pub base_allocation: Option<u32>,
}

/// Validates a request header (and the write payload already read) into a [`Command`].
/// Pure: the decisions about errnos live here and are unit-tested without a socket.
pub fn classify(
    header: &RequestHeader,
    payload: Option<Bytes>,
    session: &Session,
) -> Result<Command, Rejection> {
    let flags = header.flags;
    if flags & !CMD_FLAGS_KNOWN != 0 {
        return Err(reject(EINVAL, format!("unknown command flags {flags:#x}")));
    }
    let fua = flags & CMD_FLAG_FUA != 0;
    let in_range = || match header.offset.checked_add(u64::from(header.length)) {
        Some(end) if end <= session.size => Ok(()),
        _ => Err(reject(
            EINVAL,
            format!(
                "{}@{} is outside the export ({} bytes)",
                header.length, header.offset, session.size
            ),
        )),
    };
    let writable = || {
        if session.read_only {
            Err(reject(EPERM, "export is read-only"))
        } else {
            Ok(())
        }
    };
    match header.command {
        CMD_READ => {
            if header.length > MAX_PAYLOAD_BYTES {
                return Err(reject(
                    EINVAL,
                    format!(
                        "read of {} bytes exceeds the maximum {MAX_PAYLOAD_BYTES}",
                        header.length
                    ),
                ));
            }
            in_range()?;
            Ok(Command::Read {
                offset: header.offset,
                length: header.length,
            })
        }
        CMD_WRITE => {
            in_range()?;
            writable()?;
            let data = payload.unwrap_or_default();
            Ok(Command::Write {
                offset: header.offset,
                data,
                fua,
            })
        }
        CMD_FLUSH => Ok(Command::Flush),
        CMD_TRIM => {
            in_range()?;
            writable()?;
            Ok(Command::Trim {
                offset: header.offset,
                length: header.length,
                fua,
            })
        }
        CMD_CACHE => {
            in_range()?;
            Ok(Command::Cache)
        }
        CMD_WRITE_ZEROES => {
            in_range()?;
            writable()?;
            let no_hole = flags & CMD_FLAG_NO_HOLE != 0;
            if flags & CMD_FLAG_FAST_ZERO != 0 {
                if !session.fast_zero {
                    return Err(reject(EINVAL, "fast zero was not negotiated"));
                }
                // Writing literal zeroes is no faster than a write.
                if no_hole {
                    return Err(reject(ENOTSUP, "fast zero with NO_HOLE is not fast"));
                }
            }
            Ok(Command::WriteZeroes {
                offset: header.offset,
                length: header.length,
                fua,
                no_hole,
            })
        }
        CMD_BLOCK_STATUS => {
            if session.base_allocation.is_none() {
                return Err(reject(EINVAL, "no meta context was negotiated"));
            }
            if header.length == 0 {
                return Err(reject(EINVAL, "zero-length block status"));
            }
            in_range()?;
            Ok(Command::BlockStatus {
                offset: header.offset,
                length: header.length,
            })
        }
        other => Err(reject(EINVAL, format!("unknown command {other}"))),
    }
}

fn errno_of(e: &IoError) -> u32 {
    match e {
        IoError::Invalid(_) => EINVAL,
        IoError::NoSpace(_) => ENOSPC,
        IoError::Io(_) | IoError::Cancelled => EIO,
    }
}

/// In-flight budget of one request; released when its reply has been written.
struct Permits {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// One encoded reply, written as `head` then `data`.
struct Reply {
    head: Bytes,
    data: Option<Bytes>,
    _permits: Permits,
}

#[derive(Clone, Copy)]
struct ReplyMode {
    structured: bool,
}

impl ReplyMode {
    fn error(self, cookie: u64, errno: u32, message: &str) -> Bytes {
        if self.structured {
            encode_error_chunk(cookie, errno, message)
        } else {
            Bytes::copy_from_slice(&encode_simple_reply(cookie, errno))
        }
    }

    fn ok(self, cookie: u64) -> Bytes {
        if self.structured {
            encode_none_chunk(cookie)
        } else {
            Bytes::copy_from_slice(&encode_simple_reply(cookie, 0))
        }
    }

    fn read(self, cookie: u64, offset: u64, data: Bytes) -> (Bytes, Option<Bytes>) {
        if data.is_empty() {
            // An OFFSET_DATA chunk must carry at least one byte.
            return (self.ok(cookie), None);
        }
        let head = if self.structured {
            encode_offset_data_header(cookie, offset, data.len() as u32)
        } else {
            Bytes::copy_from_slice(&encode_simple_reply(cookie, 0))
        };
        (head, Some(data))
    }
}

/// How the reader stopped when it was not an error.
enum ReaderEnd {
    Disconnect,
    Eof,
}

/// Runs the transmission phase until the client disconnects or breaks the protocol.
pub async fn run<S, B>(
    stream: S,
    negotiated: Negotiated<B>,
    config: &ServerConfig,
) -> Result<&'static str, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let session = Session {
        size: negotiated.export.size(),
        read_only: config.read_only,
        fast_zero: config.fast_zero,
        base_allocation: negotiated.base_allocation,
    };
    let mode = ReplyMode {
        structured: negotiated.structured_replies,
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let export = negotiated.export;
    let cancel = Cancel::default();
    let running = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let reader = read_requests(
        BufReader::with_capacity(64 * 1024, read_half),
        Arc::clone(&export),
        session,
        mode,
        config,
        tx,
        (cancel.clone(), Arc::clone(&running)),
    );
    let writer = write_replies(write_half, rx, config);
    tokio::pin!(reader);
    tokio::pin!(writer);
    let lost = tokio::select! {
        end = &mut reader => match end {
            Ok(ReaderEnd::Disconnect) => {
                // Replies of requests already received still go out (the reader's sender
                // is gone; the writer ends when the last request task drops its sender).
                writer.await?;
                return Ok("NBD_CMD_DISC");
            }
            Ok(ReaderEnd::Eof) => Ok("end of stream"),
            Err(e) => Err(e),
        },
        written = &mut writer => match written {
            // The writer only ends early on an error: the reader still holds a sender.
            Ok(()) => Ok("reply stream closed"),
            Err(e) => Err(e),
        },
    };
    settle_lost(&export, cancel, running);
    lost
}

/// The connection is gone: its running requests are cancelled, and new requests to the
/// export wait until they have settled.
fn settle_lost<B: Backend>(
    export: &Arc<ExportState<B>>,
    cancel: Cancel,
    running: Arc<tokio::sync::watch::Sender<usize>>,
) {
    let n = *running.borrow();
    if n == 0 || proto::planted::active(proto::planted::Bug::OrphanedRequests) {
        return;
    }
    let guard = export.begin_settling();
    cancel.cancel();
    tracing::info!(
        requests = n,
        "connection lost: cancelling its requests; new requests wait until they settle"
    );
    net::rt::spawn(
        async move {
            let began = tokio::time::Instant::now();
            let mut rx = running.subscribe();
            let _ = rx.wait_for(|n| *n == 0).await;
            tracing::info!(
                ms = began.elapsed().as_millis() as u64,
                "the lost connection's requests settled"
            );
            drop(guard);
        }
        .in_current_span(),
    );
}

/// Counts a request task as running until dropped.
struct Running(Arc<tokio::sync::watch::Sender<usize>>);

impl Running {
    fn new(r: &Arc<tokio::sync::watch::Sender<usize>>) -> Running {
        r.send_modify(|n| *n += 1);
        Running(Arc::clone(r))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn read_requests<R, B>(
    mut reader: R,
    export: Arc<ExportState<B>>,
    session: Session,
    mode: ReplyMode,
    config: &ServerConfig,
    tx: mpsc::UnboundedSender<Reply>,
    (cancel, running): (Cancel, Arc<tokio::sync::watch::Sender<usize>>),
) -> Result<ReaderEnd, ConnectionError>
where
    R: AsyncRead + Unpin,
    B: Backend,
{
    let count_budget = Arc::new(Semaphore::new(config.max_inflight_requests.max(1) as usize));
    let byte_budget = Arc::new(Semaphore::new(
        config.max_inflight_bytes.max(MAX_PAYLOAD_BYTES) as usize,
    ));
    loop {
        let mut head = [0u8; REQUEST_HEADER_LENGTH];
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(ReaderEnd::Eof),
            Err(e) => return Err(e.into()),
        }
        let header = RequestHeader::parse(&head)?;
        if header.command == CMD_DISC {
            return Ok(ReaderEnd::Disconnect);
        }
        let payload_len = if header.command == CMD_WRITE {
            header.length
        } else {
            0
        };
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(ConnectionError::PayloadTooLarge {
                length: payload_len,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let reply_bytes = match header.command {
            CMD_READ if header.length <= MAX_PAYLOAD_BYTES => header.length,
            _ => payload_len,
        };
        // Semaphores are never closed, so acquiring cannot fail; treat it as a shutdown.
        let closed = || std::io::Error::other("in-flight semaphore closed");
        let count = count_budget
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let bytes = if reply_bytes > 0 {
            Some(
                byte_budget
                    .clone()
                    .acquire_many_owned(reply_bytes)
                    .await
                    .map_err(|_| closed())?,
            )
        } else {
            None
        };
        let permits = Permits {
            _count: count,
            _bytes: bytes,
        };
        let payload = if payload_len > 0 {
            let mut buf = BytesMut::with_capacity(payload_len as usize);
            let mut limited = (&mut reader).take(u64::from(payload_len));
            while buf.len() < payload_len as usize {
                if limited.read_buf(&mut buf).await? == 0 {
                    tracing::info!(
                        got = buf.len(),
                        want = payload_len,
                        "client went away in the middle of a write payload"
                    );
                    return Ok(ReaderEnd::Eof);
                }
            }
            Some(buf.freeze())
        } else {
            None
        };
        match classify(&header, payload, &session) {
            Ok(command) => {
                let export = export.clone();
                let tx = tx.clone();
                let cancel = cancel.clone();
                let running = Running::new(&running);
                net::rt::spawn(
                    async move {
                        let _running = running;
                        let (head, data) =
                            execute(&export, header.cookie, command, mode, &cancel).await;
                        // A send error means the connection is gone; the reply is moot.
                        let _ = tx.send(Reply {
                            head,
                            data,
                            _permits: permits,
                        });
                    }
                    .in_current_span(),
                );
            }
            Err(r) => {
                tracing::debug!(
                    command = header.command,
                    errno = r.errno,
                    "request rejected: {}",
                    r.message
                );
                let head = mode.error(header.cookie, r.errno, &r.message);
                let _ = tx.send(Reply {
                    head,
                    data: None,
                    _permits: permits,
                });
            }
        }
    }
}

/// Runs one command against the export and encodes its reply.
async fn execute<B: Backend>(
    export: &ExportState<B>,
    cookie: u64,
    command: Command,
    mode: ReplyMode,
    cancel: &Cancel,
) -> (Bytes, Option<Bytes>) {
    // A lost connection's requests settle before anything else runs on the export.
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {}
        _ = export.settled() => {}
    }
    if cancel.is_cancelled() {
        return (
            mode.error(cookie, EIO, "cancelled: the connection closed"),
            None,
        );
    }
    let result = match command {
        Command::Read { offset, length } => {
            match export.read(offset, u64::from(length), cancel).await {
                Ok(data) => return mode.read(cookie, offset, data),
                Err(e) => Err(e),
            }
        }
        Command::Write { offset, data, fua } => export.write(offset, data, fua, cancel).await,
        Command::Flush => export.flush(cancel).await,
        Command::Trim {
            offset,
            length,
            fua,
        } => export.trim(offset, u64::from(length), fua, cancel).await,
        Command::Cache => Ok(()),
        Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        } => {
            export
                .write_zeroes(offset, u64::from(length), fua, no_hole, cancel)
                .await
        }
        Command::BlockStatus { offset: _, length } => {
            // Everything is reported as allocated data: Atlant does not track holes, and
            // claiming "zero" for written data would corrupt a client's copy.
            if mode.structured {
                let extent = Extent { length, flags: 0 };
                return (
                    encode_block_status_chunk(cookie, META_CONTEXT_BASE_ALLOCATION_ID, &[extent]),
                    None,
                );
            }
            Err(IoError::Invalid(
                "block status needs structured replies".into(),
            ))
        }
    };
    match result {
        Ok(()) => (mode.ok(cookie), None),
        Err(e) => {
            let errno = errno_of(&e);
            if errno == EINVAL {
                tracing::debug!("request failed: {e}");
            } else {
                tracing::warn!("request failed: {e}");
            }
            (mode.error(cookie, errno, &e.to_string()), None)
        }
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    config: &ServerConfig,
) -> Result<(), ConnectionError> {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    let stalled = || ConnectionError::Timeout {
        phase: "writing a reply (client not reading)",
    };
    while let Some(reply) = rx.recv().await {
        let write = async {
            out.write_all(&reply.head).await?;
            if let Some(data) = &reply.data {
                out.write_all(data).await?;
            }
            // Flush once the queue is drained, so replies are batched under load.
            if rx.is_empty() {
                out.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(config.reply_timeout, write)
            .await
            .map_err(|_| stalled())??;
        drop(reply);
    }
    tokio::time::timeout(config.reply_timeout, async {
        out.flush().await?;
        out.shutdown().await
    })
    .await
    .map_err(|_| stalled())??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 20;

    fn session() -> Session {
        Session {
            size: SIZE,
            read_only: false,
            fast_zero: true,
            base_allocation: Some(1),
        }
    }

    fn header(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn errno(r: Result<Command, Rejection>) -> u32 {
        match r {
            Ok(c) => panic!("accepted {c:?}"),
            Err(r) => r.errno,
        }
    }

    #[test]
    fn ranges() {
        let s = session();
        assert!(classify(&header(CMD_READ, 0, SIZE - 512, 512), None, &s).is_ok());
        assert!(classify(&header(CMD_READ, 0, SIZE, 0), None, &s).is_ok());
        assert_eq!(
            errno(classify(&header(CMD_READ, 0, SIZE, 1), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_READ, 0, SIZE - 512, 1024), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(
                &header(CMD_READ, 0, u64::MAX - 2047, 4096),
                None,
                &s
            )),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_TRIM, 0, SIZE - 2048, 4096), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_WRITE_ZEROES, 0, SIZE, 4096), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_CACHE, 0, SIZE, 512), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_BLOCK_STATUS, 0, SIZE, 512), None, &s)),
            EINVAL
        );
        let data = Some(Bytes::from(vec![0u8; 1024]));
        assert_eq!(
            errno(classify(&header(CMD_WRITE, 0, SIZE - 512, 1024), data, &s)),
            EINVAL
        );
    }

    #[test]
    fn lengths_flags_and_commands() {
        let s = session();
        assert_eq!(
            errno(classify(
                &header(CMD_READ, 0, 0, MAX_PAYLOAD_BYTES + 1),
                None,
                &s
            )),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_READ, 0, 0, u32::MAX), None, &s)),
            EINVAL
        );
        assert_eq!(errno(classify(&header(0x1F, 0, 0, 0), None, &s)), EINVAL);
        assert_eq!(
            errno(classify(&header(CMD_READ, 0x4000, 0, 512), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(&header(CMD_BLOCK_STATUS, 0, 0, 0), None, &s)),
            EINVAL
        );
        assert_eq!(
            errno(classify(
                &header(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
                    0,
                    4096
                ),
                None,
                &s
            )),
            ENOTSUP
        );
        assert!(classify(
            &header(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 4096),
            None,
            &s
        )
        .is_ok());
        let no_meta = Session {
            base_allocation: None,
            ..s
        };
        assert_eq!(
            errno(classify(
                &header(CMD_BLOCK_STATUS, 0, 0, 512),
                None,
                &no_meta
            )),
            EINVAL
        );
        assert_eq!(
            classify(&header(CMD_WRITE, CMD_FLAG_FUA, 0, 0), None, &s),
            Ok(Command::Write {
                offset: 0,
                data: Bytes::new(),
                fua: true
            })
        );
        assert_eq!(
            classify(&header(CMD_FLUSH, 0, 0, 0), None, &s),
            Ok(Command::Flush)
        );
    }

    #[test]
    fn read_only_rejects_writes_with_eperm() {
        let s = Session {
            read_only: true,
            ..session()
        };
        let data = Some(Bytes::from(vec![0u8; 512]));
        assert_eq!(
            errno(classify(&header(CMD_WRITE, 0, 0, 512), data, &s)),
            EPERM
        );
        assert_eq!(
            errno(classify(&header(CMD_TRIM, 0, 0, 512), None, &s)),
            EPERM
        );
        assert_eq!(
            errno(classify(&header(CMD_WRITE_ZEROES, 0, 0, 512), None, &s)),
            EPERM
        );
        assert!(classify(&header(CMD_READ, 0, 0, 512), None, &s).is_ok());
        assert!(classify(&header(CMD_FLUSH, 0, 0, 0), None, &s).is_ok());
    }

    #[test]
    fn errnos_of_backend_errors() {
        assert_eq!(errno_of(&IoError::NoSpace("x".into())), ENOSPC);
        assert_eq!(errno_of(&IoError::Io("x".into())), EIO);
        assert_eq!(errno_of(&IoError::Invalid("x".into())), EINVAL);
    }
}
