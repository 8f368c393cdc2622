//! Fixed-newstyle option negotiation: greeting, client flags, then options until
//! NBD_OPT_GO / NBD_OPT_EXPORT_NAME (into transmission) or NBD_OPT_ABORT (close).
//!
//! Every read and write here has a deadline (`ServerConfig::handshake_timeout`), so a client
//! that connects and stalls is dropped. An option is read whole before it is interpreted,
//! so a malformed payload gets an error reply (NBD_REP_ERR_INVALID) with the stream still
//! framed; only framing errors (bad magic, an option longer than `MAX_OPTION_LENGTH`) close
//! the connection. Unknown options get NBD_REP_ERR_UNSUP.

use crate::backend::{ExportProvider, OpenError};
use crate::exports::{ExportState, Exports};
use crate::protocol::*;
use crate::server::{
    ConnectionError, ServerConfig, MAX_PAYLOAD_BYTES, MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE,
};
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the negotiation settled, handed to the transmission phase.
pub struct Negotiated<B: crate::backend::Backend> {
    pub export: Arc<ExportState<B>>,
    pub structured_replies: bool,
    /// The id of `base:allocation` if the client selected it.
    pub base_allocation: Option<u32>,
    pub transmission_flags: u16,
}

/// Transmission flags for an export, given what was negotiated.
pub fn transmission_flags(config: &ServerConfig, structured_replies: bool) -> u16 {
    let mut flags = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_CAN_MULTI_CONN
        | TFLAG_SEND_CACHE;
    if config.fast_zero {
        flags |= TFLAG_SEND_FAST_ZERO;
    }
    if structured_replies {
        // Reads are always one data chunk, so DF costs nothing; it needs structured replies.
        flags |= TFLAG_SEND_DF;
    }
    if config.read_only {
        flags |= TFLAG_READ_ONLY;
    }
    flags
}

async fn timed<T>(
    config: &ServerConfig,
    phase: &'static str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ConnectionError> {
    match tokio::time::timeout(config.handshake_timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnectionError::Timeout { phase }),
    }
}

struct Negotiation<'a, P: ExportProvider, S> {
    stream: &'a mut S,
    exports: &'a Exports<P>,
    config: &'a ServerConfig,
    structured_replies: bool,
    /// Export (resolved name) the meta contexts were selected for, and whether
    /// base:allocation was selected.
    meta: Option<(String, bool)>,
    /// Keeps an export opened by NBD_OPT_INFO open for a following NBD_OPT_GO.
    opened: Option<Arc<ExportState<P::Backend>>>,
}

/// Runs the negotiation. `Ok(None)` means the client ended it cleanly (NBD_OPT_ABORT).
pub async fn negotiate<P, S>(
    stream: &mut S,
    exports: &Exports<P>,
) -> Result<Option<Negotiated<P::Backend>>, ConnectionError>
where
    P: ExportProvider,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = exports.config();
    timed(config, "greeting", async {
        stream
            .write_all(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
            .await?;
        stream.flush().await
    })
    .await?;
    let client_flags = timed(config, "client flags", stream.read_u32()).await?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(ConnectionError::ClientFlags {
            flags: client_flags,
            reason: "unknown flag bits",
        });
    }
    if client_flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ConnectionError::ClientFlags {
            flags: client_flags,
            reason: "client does not speak fixed newstyle",
        });
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    let mut n = Negotiation {
        stream,
        exports,
        config,
        structured_replies: false,
        meta: None,
        opened: None,
    };
    loop {
        let mut head = [0u8; OPTION_HEADER_LENGTH];
        timed(config, "option header", n.stream.read_exact(&mut head)).await?;
        let header = OptionHeader::parse(&head)?;
        if header.length > MAX_OPTION_LENGTH {
            return Err(ConnectionError::OptionTooLong {
                option: header.option,
                length: header.length,
                limit: MAX_OPTION_LENGTH,
            });
        }
        let mut data = vec![0u8; header.length as usize];
        timed(config, "option data", n.stream.read_exact(&mut data)).await?;
        tracing::debug!(option = header.option, length = header.length, "option");
        match header.option {
            OPT_EXPORT_NAME => return n.export_name(&data, no_zeroes).await.map(Some),
            OPT_ABORT => {
                // The client may already have gone; the ACK is a courtesy.
                let _ = n.reply(OPT_ABORT, REP_ACK, &[]).await;
                return Ok(None);
            }
            OPT_LIST => n.list(&data).await?,
            OPT_INFO | OPT_GO => {
                if let Some(done) = n.info_or_go(header.option, &data).await? {
                    return Ok(Some(done));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    n.structured_replies = true;
                    n.reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]).await?;
                } else {
                    n.error(
                        OPT_STRUCTURED_REPLY,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                n.meta_context(header.option, &data).await?
            }
            OPT_STARTTLS => {
                n.error(
                    OPT_STARTTLS,
                    REP_ERR_UNSUP,
                    "TLS is not supported by this gateway",
                )
                .await?
            }
            other => {
                tracing::debug!(option = other, "unsupported option");
                n.error(other, REP_ERR_UNSUP, "option not supported")
                    .await?
            }
        }
    }
}

impl<P, S> Negotiation<'_, P, S>
where
    P: ExportProvider,
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn reply(
        &mut self,
        option: u32,
        reply_type: u32,
        data: &[u8],
    ) -> Result<(), ConnectionError> {
        let bytes = encode_option_reply(option, reply_type, data);
        let stream = &mut *self.stream;
        timed(self.config, "option reply", async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        })
        .await
    }

    async fn error(
        &mut self,
        option: u32,
        reply_type: u32,
        message: &str,
    ) -> Result<(), ConnectionError> {
        tracing::debug!(option, reply_type, message, "option refused");
        self.reply(option, reply_type, message.as_bytes()).await
    }

    async fn open(&mut self, requested: &str) -> Result<Arc<ExportState<P::Backend>>, OpenError> {
        let name = self.exports.resolve_name(requested).await?;
        if let Some(state) = &self.opened {
            if state.name() == name {
                return Ok(state.clone());
            }
        }
        let state = self.exports.open(&name).await?;
        self.opened = Some(state.clone());
        Ok(state)
    }

    async fn export_name(
        &mut self,
        data: &[u8],
        no_zeroes: bool,
    ) -> Result<Negotiated<P::Backend>, ConnectionError> {
        // There is no error reply to NBD_OPT_EXPORT_NAME: failures close the connection.
        let name = parse_export_name(data)?;
        let export = self
            .open(&name)
            .await
            .map_err(|e| ConnectionError::ExportName {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let flags = transmission_flags(self.config, self.structured_replies);
        let reply = encode_export_name_reply(export.size(), flags, no_zeroes);
        let stream = &mut *self.stream;
        timed(self.config, "export name reply", async {
            stream.write_all(&reply).await?;
            stream.flush().await
        })
        .await?;
        let base_allocation = self.selected_base_allocation(export.name());
        Ok(Negotiated {
            export,
            structured_replies: self.structured_replies,
            base_allocation,
            transmission_flags: flags,
        })
    }

    fn selected_base_allocation(&self, export: &str) -> Option<u32> {
        match &self.meta {
            Some((name, true)) if self.structured_replies && name == export => {
                Some(META_CONTEXT_BASE_ALLOCATION_ID)
            }
            _ => None,
        }
    }

    async fn list(&mut self, data: &[u8]) -> Result<(), ConnectionError> {
        if !data.is_empty() {
            return self
                .error(OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
                .await;
        }
        for name in self.exports.list().await {
            if name.len() <= MAX_NAME_LENGTH {
                self.reply(OPT_LIST, REP_SERVER, &rep_server(&name)).await?;
            }
        }
        self.reply(OPT_LIST, REP_ACK, &[]).await
    }

    async fn info_or_go(
        &mut self,
        option: u32,
        data: &[u8],
    ) -> Result<Option<Negotiated<P::Backend>>, ConnectionError> {
        let request = match InfoRequest::parse(data) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .error(option, REP_ERR_INVALID, &e.to_string())
                    .await
                    .map(|_| None);
            }
        };
        let export = match self.open(&request.name).await {
            Ok(e) => e,
            Err(e) => {
                let kind = match e {
                    OpenError::NotFound(_) => "unknown export",
                    OpenError::Failed { .. } => "export cannot be opened",
                };
                tracing::info!(export = %request.name, error = %e, "{kind}");
                return self
                    .error(option, REP_ERR_UNKNOWN, &e.to_string())
                    .await
                    .map(|_| None);
            }
        };
        let flags = transmission_flags(self.config, self.structured_replies);
        self.reply(option, REP_INFO, &info_export(export.size(), flags))
            .await?;
        self.reply(
            option,
            REP_INFO,
            &info_block_size(MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD_BYTES),
        )
        .await?;
        for &info in &request.info_requests {
            match info {
                INFO_NAME => {
                    self.reply(option, REP_INFO, &info_string(INFO_NAME, export.name()))
                        .await?
                }
                INFO_DESCRIPTION => {
                    let text = format!("Atlant image {}", export.name());
                    self.reply(option, REP_INFO, &info_string(INFO_DESCRIPTION, &text))
                        .await?
                }
                // EXPORT and BLOCK_SIZE are always sent; unknown items are ignored.
                _ => {}
            }
        }
        self.reply(option, REP_ACK, &[]).await?;
        if option != OPT_GO {
            return Ok(None);
        }
        let base_allocation = self.selected_base_allocation(export.name());
        Ok(Some(Negotiated {
            export,
            structured_replies: self.structured_replies,
            base_allocation,
            transmission_flags: flags,
        }))
    }

    async fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), ConnectionError> {
        if !self.structured_replies {
            return self
                .error(
                    option,
                    REP_ERR_INVALID,
                    "meta contexts need structured replies",
                )
                .await;
        }
        let request = match MetaContextRequest::parse(data) {
            Ok(r) => r,
            Err(e) => return self.error(option, REP_ERR_INVALID, &e.to_string()).await,
        };
        let export = match self.exports.resolve_name(&request.export_name).await {
            Ok(name) => name,
            Err(e) => return self.error(option, REP_ERR_UNKNOWN, &e.to_string()).await,
        };
        let base_allocation = if option == OPT_LIST_META_CONTEXT {
            // No queries lists everything; "base:" lists the whole base namespace.
            request.queries.is_empty()
                || request
                    .queries
                    .iter()
                    .any(|q| q == META_CONTEXT_BASE_ALLOCATION || q == "base:")
        } else {
            request
                .queries
                .iter()
                .any(|q| q == META_CONTEXT_BASE_ALLOCATION)
        };
        if base_allocation {
            // LIST replies carry context id 0; SET replies carry the id used in transmission.
            let id = if option == OPT_SET_META_CONTEXT {
                META_CONTEXT_BASE_ALLOCATION_ID
            } else {
                0
            };
            self.reply(
                option,
                REP_META_CONTEXT,
                &rep_meta_context(id, META_CONTEXT_BASE_ALLOCATION),
            )
            .await?;
        }
        if option == OPT_SET_META_CONTEXT {
            self.meta = Some((export, base_allocation));
        }
        self.reply(option, REP_ACK, &[]).await
    }
}
