//! The NBD wire format (fixed-newstyle negotiation, simple and structured replies), with no
//! IO: constants, fixed-size headers, and bounds-checked parsers and encoders for the option
//! payloads the gateway understands. Everything is big-endian ("network byte order"), as the
//! NBD protocol specifies.
//!
//! Decoders never trust a length field: every read goes through [`Cursor`], which fails with
//! [`ProtocolError::Truncated`] instead of indexing past the end, and every variable-length
//! field has a maximum ([`MAX_OPTION_LENGTH`], [`MAX_NAME_LENGTH`], [`MAX_QUERIES`]).
//!
//! ```text
//! greeting (server -> client, 18 bytes)
//!   0      8          16     18
//!   | NBDMAGIC | IHAVEOPT | flags u16 |
//! client flags (client -> server): u32
//! option (client -> server, 16 bytes + length)
//!   0          8        12       16
//!   | IHAVEOPT | opt u32 | len u32 | data ... |
//! option reply (server -> client, 20 bytes + length)
//!   0                  8        12        16       20
//!   | 0x3e889045565a9 u64 | opt u32 | type u32 | len u32 | data ... |
//! request (client -> server, 28 bytes [+ payload for WRITE])
//!   0            4          6         8            16           24        28
//!   | 0x25609513 | flags u16 | type u16 | cookie u64 | offset u64 | len u32 |
//! simple reply (16 bytes [+ data for a successful READ])
//!   0            4           8            16
//!   | 0x67446698 | error u32 | cookie u64 |
//! structured reply chunk (20 bytes + length)
//!   0            4          6         8            16       20
//!   | 0x668e33ef | flags u16 | type u16 | cookie u64 | len u32 | payload ... |
//! ```

use bytes::{BufMut, Bytes, BytesMut};

// ---------------------------------------------------------------- magics

/// "NBDMAGIC".
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle greeting and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---------------------------------------------------------------- handshake flags

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the client may ask us to leave out the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no 124 zero bytes after NBD_OPT_EXPORT_NAME's reply.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// ---------------------------------------------------------------- options

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// ---------------------------------------------------------------- option reply types

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub const REP_ERR_POLICY: u32 = REP_ERR + 2;
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR + 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR + 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;

/// Whether an option reply type is an error.
pub fn is_error_reply(reply_type: u32) -> bool {
    reply_type & REP_ERR != 0
}

// ---------------------------------------------------------------- NBD_INFO types

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------- transmission flags

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------- commands

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Every command flag this server knows; other bits are rejected with EINVAL.
pub const CMD_FLAGS_KNOWN: u16 =
    CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;

// ---------------------------------------------------------------- structured replies

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

// ---------------------------------------------------------------- errno values on the wire

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------- meta contexts

pub const META_CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// The id the gateway gives `base:allocation` (any non-zero-meaning u32 chosen by the server).
pub const META_CONTEXT_BASE_ALLOCATION_ID: u32 = 1;

// ---------------------------------------------------------------- limits

/// Options longer than this are refused by closing the connection, before allocating.
pub const MAX_OPTION_LENGTH: u32 = 64 * 1024;
/// Longest export name or meta-context query accepted (the spec's recommended limit).
pub const MAX_NAME_LENGTH: usize = 4096;
/// Most meta-context queries accepted in one option.
pub const MAX_QUERIES: usize = 128;
/// Most NBD_INFO requests accepted in one NBD_OPT_INFO/GO.
pub const MAX_INFO_REQUESTS: usize = 256;

pub const GREETING_LENGTH: usize = 18;
pub const OPTION_HEADER_LENGTH: usize = 16;
pub const OPTION_REPLY_HEADER_LENGTH: usize = 20;
pub const REQUEST_HEADER_LENGTH: usize = 28;
pub const SIMPLE_REPLY_LENGTH: usize = 16;
pub const STRUCTURED_HEADER_LENGTH: usize = 20;
/// Reply to NBD_OPT_EXPORT_NAME: size u64, flags u16, then 124 zero bytes unless NO_ZEROES.
pub const EXPORT_NAME_REPLY_ZEROES: usize = 124;

const _: () = assert!(REQUEST_HEADER_LENGTH == 4 + 2 + 2 + 8 + 8 + 4);
const _: () = assert!(STRUCTURED_HEADER_LENGTH == 4 + 2 + 2 + 8 + 4);
const _: () = assert!(OPTION_REPLY_HEADER_LENGTH == 8 + 4 + 4 + 4);

// ---------------------------------------------------------------- errors

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad {what} magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("{what} truncated: needs {needed} more bytes, {available} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{what} has {extra} trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("{what} is {length} long, the limit is {limit}")]
    TooLong {
        what: &'static str,
        length: usize,
        limit: usize,
    },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: &'static str },
}

// ---------------------------------------------------------------- bounds-checked reading

/// Reads big-endian fields from a byte slice; every read is bounds-checked.
pub struct Cursor<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, what }
    }

    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.data.len() {
            return Err(ProtocolError::Truncated {
                what: self.what,
                needed: n,
                available: self.data.len(),
            });
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u32 length followed by that many bytes of UTF-8, at most `limit` bytes long.
    pub fn string32(&mut self, limit: usize) -> Result<String, ProtocolError> {
        let length = self.u32()? as usize;
        if length > limit {
            return Err(ProtocolError::TooLong {
                what: self.what,
                length,
                limit,
            });
        }
        let raw = self.bytes(length)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::NotUtf8 { what: self.what })
    }

    pub fn finish(self) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                what: self.what,
                extra: self.data.len(),
            })
        }
    }
}

// ---------------------------------------------------------------- greeting

pub fn encode_greeting(flags: u16) -> [u8; GREETING_LENGTH] {
    let mut out = [0u8; GREETING_LENGTH];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Parses the server greeting (client side; used by tests). Returns the handshake flags.
pub fn parse_greeting(data: &[u8; GREETING_LENGTH]) -> Result<u16, ProtocolError> {
    let mut c = Cursor::new(data, "greeting");
    let magic = c.u64()?;
    if magic != NBD_MAGIC {
        return Err(ProtocolError::BadMagic {
            what: "greeting",
            got: magic,
        });
    }
    let opt = c.u64()?;
    if opt != IHAVEOPT {
        return Err(ProtocolError::BadMagic {
            what: "greeting IHAVEOPT",
            got: opt,
        });
    }
    c.u16()
}

// ---------------------------------------------------------------- options

/// The fixed part of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn parse(data: &[u8; OPTION_HEADER_LENGTH]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "option header");
        let magic = c.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadMagic {
                what: "option",
                got: magic,
            });
        }
        Ok(OptionHeader {
            option: c.u32()?,
            length: c.u32()?,
        })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LENGTH] {
        let mut out = [0u8; OPTION_HEADER_LENGTH];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// Payload of NBD_OPT_INFO and NBD_OPT_GO: an export name and the NBD_INFO items wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub info_requests: Vec<u16>,
}

impl InfoRequest {
    pub fn parse(data: &[u8]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "NBD_OPT_INFO/GO");
        let name = c.string32(MAX_NAME_LENGTH)?;
        let count = c.u16()? as usize;
        if count > MAX_INFO_REQUESTS {
            return Err(ProtocolError::TooLong {
                what: "NBD_OPT_INFO/GO requests",
                length: count,
                limit: MAX_INFO_REQUESTS,
            });
        }
        let mut info_requests = Vec::with_capacity(count);
        for _ in 0..count {
            info_requests.push(c.u16()?);
        }
        c.finish()?;
        Ok(InfoRequest {
            name,
            info_requests,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.name.len() + 2 + 2 * self.info_requests.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.info_requests.len() as u16).to_be_bytes());
        for r in &self.info_requests {
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }
}

/// Payload of NBD_OPT_EXPORT_NAME: the whole option data is the name.
pub fn parse_export_name(data: &[u8]) -> Result<String, ProtocolError> {
    if data.len() > MAX_NAME_LENGTH {
        return Err(ProtocolError::TooLong {
            what: "export name",
            length: data.len(),
            limit: MAX_NAME_LENGTH,
        });
    }
    String::from_utf8(data.to_vec()).map_err(|_| ProtocolError::NotUtf8 {
        what: "export name",
    })
}

/// Payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export_name: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn parse(data: &[u8]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "NBD_OPT_*_META_CONTEXT");
        let export_name = c.string32(MAX_NAME_LENGTH)?;
        let count = c.u32()? as usize;
        if count > MAX_QUERIES {
            return Err(ProtocolError::TooLong {
                what: "meta context queries",
                length: count,
                limit: MAX_QUERIES,
            });
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            queries.push(c.string32(MAX_NAME_LENGTH)?);
        }
        c.finish()?;
        Ok(MetaContextRequest {
            export_name,
            queries,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.export_name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.export_name.as_bytes());
        out.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            out.extend_from_slice(&(q.len() as u32).to_be_bytes());
            out.extend_from_slice(q.as_bytes());
        }
        out
    }
}

// ---------------------------------------------------------------- option replies

/// The fixed part of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn parse(data: &[u8; OPTION_REPLY_HEADER_LENGTH]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "option reply");
        let magic = c.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "option reply",
                got: magic,
            });
        }
        Ok(OptionReplyHeader {
            option: c.u32()?,
            reply_type: c.u32()?,
            length: c.u32()?,
        })
    }
}

/// One option reply: header plus data.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LENGTH + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// NBD_REP_INFO payload for NBD_INFO_EXPORT.
pub fn info_export(size: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&minimum.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&maximum.to_be_bytes());
    out
}

/// NBD_REP_INFO payload for NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
pub fn info_string(info_type: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// NBD_REP_SERVER payload (an NBD_OPT_LIST entry).
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// NBD_REP_META_CONTEXT payload.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Reply to NBD_OPT_EXPORT_NAME (no option-reply header).
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_REPLY_ZEROES);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(10 + EXPORT_NAME_REPLY_ZEROES, 0);
    }
    out
}

// ---------------------------------------------------------------- requests

/// A transmission-phase request header. `length` is the payload length for WRITE and the
/// range length for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub fn parse(data: &[u8; REQUEST_HEADER_LENGTH]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "request");
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "request",
                got: u64::from(magic),
            });
        }
        Ok(RequestHeader {
            flags: c.u16()?,
            command: c.u16()?,
            cookie: c.u64()?,
            offset: c.u64()?,
            length: c.u32()?,
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LENGTH] {
        let mut out = [0u8; REQUEST_HEADER_LENGTH];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

// ---------------------------------------------------------------- replies

pub fn encode_simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LENGTH] {
    let mut out = [0u8; SIMPLE_REPLY_LENGTH];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A simple reply header (client side; used by tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn parse(data: &[u8; SIMPLE_REPLY_LENGTH]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "simple reply");
        let magic = c.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "simple reply",
                got: u64::from(magic),
            });
        }
        Ok(SimpleReply {
            error: c.u32()?,
            cookie: c.u64()?,
        })
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub chunk_type: u16,
    pub cookie: u64,
    pub length: u32,
}

impl ChunkHeader {
    pub fn parse(data: &[u8; STRUCTURED_HEADER_LENGTH]) -> Result<Self, ProtocolError> {
        let mut c = Cursor::new(data, "structured reply");
        let magic = c.u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "structured reply",
                got: u64::from(magic),
            });
        }
        Ok(ChunkHeader {
            flags: c.u16()?,
            chunk_type: c.u16()?,
            cookie: c.u64()?,
            length: c.u32()?,
        })
    }

    pub fn put(&self, out: &mut BytesMut) {
        out.put_u32(STRUCTURED_REPLY_MAGIC);
        out.put_u16(self.flags);
        out.put_u16(self.chunk_type);
        out.put_u64(self.cookie);
        out.put_u32(self.length);
    }
}

/// The header of the single NBD_REPLY_TYPE_OFFSET_DATA chunk (flagged DONE) that carries a
/// whole read; `data_length` bytes of data follow it on the wire.
pub fn encode_offset_data_header(cookie: u64, offset: u64, data_length: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(STRUCTURED_HEADER_LENGTH + 8);
    // data_length <= the maximum payload size, so 8 + data_length fits in u32.
    ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_OFFSET_DATA,
        cookie,
        length: 8 + data_length,
    }
    .put(&mut out);
    out.put_u64(offset);
    out.freeze()
}

/// NBD_REPLY_TYPE_NONE flagged DONE: success without data.
pub fn encode_none_chunk(cookie: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(STRUCTURED_HEADER_LENGTH);
    ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_NONE,
        cookie,
        length: 0,
    }
    .put(&mut out);
    out.freeze()
}

/// Longest human-readable message put in an error chunk.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// NBD_REPLY_TYPE_ERROR flagged DONE. The message is cut to [`MAX_ERROR_MESSAGE`] bytes on a
/// character boundary.
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str) -> Bytes {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    let mut out = BytesMut::with_capacity(STRUCTURED_HEADER_LENGTH + 6 + message.len());
    ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_ERROR,
        cookie,
        length: 6 + message.len() as u32,
    }
    .put(&mut out);
    out.put_u32(error);
    out.put_u16(message.len() as u16);
    out.put_slice(message);
    out.freeze()
}

/// One block status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// NBD_REPLY_TYPE_BLOCK_STATUS flagged DONE, for one meta context.
pub fn encode_block_status_chunk(cookie: u64, context_id: u32, extents: &[Extent]) -> Bytes {
    let payload = 4 + 8 * extents.len();
    let mut out = BytesMut::with_capacity(STRUCTURED_HEADER_LENGTH + payload);
    ChunkHeader {
        flags: REPLY_FLAG_DONE,
        chunk_type: REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length: payload as u32,
    }
    .put(&mut out);
    out.put_u32(context_id);
    for e in extents {
        out.put_u32(e.length);
        out.put_u32(e.flags);
    }
    out.freeze()
}

/// Parses a block status chunk payload (client side; used by tests).
pub fn parse_block_status_payload(data: &[u8]) -> Result<(u32, Vec<Extent>), ProtocolError> {
    let mut c = Cursor::new(data, "block status chunk");
    let id = c.u32()?;
    if !c.remaining().is_multiple_of(8) {
        return Err(ProtocolError::TrailingBytes {
            what: "block status chunk",
            extra: c.remaining() % 8,
        });
    }
    let mut extents = Vec::with_capacity(c.remaining() / 8);
    while c.remaining() > 0 {
        extents.push(Extent {
            length: c.u32()?,
            flags: c.u32()?,
        });
    }
    Ok((id, extents))
}

/// Parses an error chunk payload (client side; used by tests): errno and message.
pub fn parse_error_payload(data: &[u8]) -> Result<(u32, String), ProtocolError> {
    let mut c = Cursor::new(data, "error chunk");
    let error = c.u32()?;
    let length = c.u16()? as usize;
    let message = String::from_utf8_lossy(c.bytes(length)?).into_owned();
    Ok((error, message))
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn greeting_round_trip() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(parse_greeting(&g), Ok(3));
        let mut bad = g;
        bad[0] = b'X';
        assert!(matches!(
            parse_greeting(&bad),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    #[test]
    fn option_header_round_trip() {
        let h = OptionHeader {
            option: OPT_GO,
            length: 1234,
        };
        assert_eq!(OptionHeader::parse(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[7] ^= 1;
        assert!(matches!(
            OptionHeader::parse(&bad),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    #[test]
    fn info_request_round_trip() {
        let r = InfoRequest {
            name: "rbd/vm1".into(),
            info_requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        assert_eq!(InfoRequest::parse(&r.encode()), Ok(r));
        let empty = InfoRequest {
            name: String::new(),
            info_requests: vec![],
        };
        assert_eq!(InfoRequest::parse(&empty.encode()), Ok(empty));
    }

    #[test]
    fn info_request_rejects_malformed() {
        let r = InfoRequest {
            name: "rbd/vm1".into(),
            info_requests: vec![INFO_BLOCK_SIZE],
        }
        .encode();
        // every truncation fails cleanly
        for cut in 0..r.len() {
            assert!(InfoRequest::parse(&r[..cut]).is_err(), "cut {cut}");
        }
        // trailing junk
        let mut long = r.clone();
        long.push(0);
        assert!(matches!(
            InfoRequest::parse(&long),
            Err(ProtocolError::TrailingBytes { .. })
        ));
        // a name length pointing far past the end
        let mut huge = r.clone();
        huge[0..4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        assert!(matches!(
            InfoRequest::parse(&huge),
            Err(ProtocolError::TooLong { .. })
        ));
        let mut past = r.clone();
        past[0..4].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(
            InfoRequest::parse(&past),
            Err(ProtocolError::Truncated { .. })
        ));
        // invalid UTF-8 in the name
        let bad = InfoRequest {
            name: "ab".into(),
            info_requests: vec![],
        };
        let mut bad = bad.encode();
        bad[4] = 0xFF;
        assert!(matches!(
            InfoRequest::parse(&bad),
            Err(ProtocolError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn meta_context_round_trip_and_malformed() {
        let r = MetaContextRequest {
            export_name: "rbd/vm1".into(),
            queries: vec![
                META_CONTEXT_BASE_ALLOCATION.into(),
                "qemu:dirty-bitmap:x".into(),
            ],
        };
        let enc = r.encode();
        assert_eq!(MetaContextRequest::parse(&enc), Ok(r));
        for cut in 0..enc.len() {
            assert!(MetaContextRequest::parse(&enc[..cut]).is_err(), "cut {cut}");
        }
        let mut many = MetaContextRequest {
            export_name: String::new(),
            queries: vec![],
        }
        .encode();
        many[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            MetaContextRequest::parse(&many),
            Err(ProtocolError::TooLong { .. })
        ));
    }

    #[test]
    fn export_name_limits() {
        assert_eq!(
            parse_export_name(b"pool/image"),
            Ok("pool/image".to_string())
        );
        assert!(parse_export_name(&vec![b'a'; MAX_NAME_LENGTH + 1]).is_err());
        assert!(parse_export_name(&[0xC3]).is_err());
    }

    #[test]
    fn request_round_trip() {
        let r = RequestHeader {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0xDEAD_BEEF_0000_0001,
            offset: u64::MAX - 5,
            length: 0xFFFF_FFFF,
        };
        assert_eq!(RequestHeader::parse(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[3] ^= 0x80;
        assert!(matches!(
            RequestHeader::parse(&bad),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    #[test]
    fn option_reply_round_trip() {
        let enc = encode_option_reply(OPT_GO, REP_INFO, &info_export(1 << 30, TFLAG_HAS_FLAGS));
        let mut head = [0u8; OPTION_REPLY_HEADER_LENGTH];
        head.copy_from_slice(&enc[..OPTION_REPLY_HEADER_LENGTH]);
        let h = OptionReplyHeader::parse(&head).unwrap();
        assert_eq!(
            h,
            OptionReplyHeader {
                option: OPT_GO,
                reply_type: REP_INFO,
                length: 12
            }
        );
        assert_eq!(
            &enc[OPTION_REPLY_HEADER_LENGTH..],
            &info_export(1 << 30, TFLAG_HAS_FLAGS)[..]
        );
        assert!(is_error_reply(REP_ERR_UNSUP) && !is_error_reply(REP_ACK));
    }

    #[test]
    fn export_name_reply_zeroes() {
        assert_eq!(encode_export_name_reply(4096, 1, true).len(), 10);
        let with = encode_export_name_reply(4096, 1, false);
        assert_eq!(with.len(), 134);
        assert!(with[10..].iter().all(|b| *b == 0));
    }

    #[test]
    fn replies_round_trip() {
        let s = encode_simple_reply(42, EINVAL);
        assert_eq!(
            SimpleReply::parse(&s),
            Ok(SimpleReply {
                error: EINVAL,
                cookie: 42
            })
        );

        let d = encode_offset_data_header(7, 4096, 512);
        let mut head = [0u8; STRUCTURED_HEADER_LENGTH];
        head.copy_from_slice(&d[..STRUCTURED_HEADER_LENGTH]);
        let h = ChunkHeader::parse(&head).unwrap();
        assert_eq!(
            h,
            ChunkHeader {
                flags: REPLY_FLAG_DONE,
                chunk_type: REPLY_TYPE_OFFSET_DATA,
                cookie: 7,
                length: 520
            }
        );
        assert_eq!(&d[STRUCTURED_HEADER_LENGTH..], &4096u64.to_be_bytes());

        let e = encode_error_chunk(9, EIO, "backend failed");
        head.copy_from_slice(&e[..STRUCTURED_HEADER_LENGTH]);
        let h = ChunkHeader::parse(&head).unwrap();
        assert_eq!(h.chunk_type, REPLY_TYPE_ERROR);
        assert_eq!(h.length as usize, e.len() - STRUCTURED_HEADER_LENGTH);
        assert_eq!(
            parse_error_payload(&e[STRUCTURED_HEADER_LENGTH..]),
            Ok((EIO, "backend failed".to_string()))
        );

        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let e = encode_error_chunk(9, EIO, &long);
        let (_, msg) = parse_error_payload(&e[STRUCTURED_HEADER_LENGTH..]).unwrap();
        assert!(msg.len() <= MAX_ERROR_MESSAGE && msg.chars().all(|c| c == 'é'));

        let b = encode_block_status_chunk(
            3,
            1,
            &[Extent {
                length: 4096,
                flags: 0,
            }],
        );
        head.copy_from_slice(&b[..STRUCTURED_HEADER_LENGTH]);
        let h = ChunkHeader::parse(&head).unwrap();
        assert_eq!((h.chunk_type, h.length), (REPLY_TYPE_BLOCK_STATUS, 12));
        assert_eq!(
            parse_block_status_payload(&b[STRUCTURED_HEADER_LENGTH..]),
            Ok((
                1,
                vec![Extent {
                    length: 4096,
                    flags: 0
                }]
            ))
        );
        assert!(parse_block_status_payload(&[0, 0, 0, 1, 0]).is_err());

        let n = encode_none_chunk(5);
        head.copy_from_slice(&n[..]);
        assert_eq!(
            ChunkHeader::parse(&head),
            Ok(ChunkHeader {
                flags: REPLY_FLAG_DONE,
                chunk_type: REPLY_TYPE_NONE,
                cookie: 5,
                length: 0
            })
        );
    }

    /// Random bytes into every decoder: errors are fine, panics are not.
    #[test]
    fn decoders_survive_random_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x004e_4244);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            // bias some inputs towards plausible small length fields
            if len >= 4 && rng.random_bool(0.5) {
                let small: u32 = rng.random_range(0..16);
                buf[0..4].copy_from_slice(&small.to_be_bytes());
            }
            let _ = InfoRequest::parse(&buf);
            let _ = MetaContextRequest::parse(&buf);
            let _ = parse_export_name(&buf);
            let _ = parse_block_status_payload(&buf);
            let _ = parse_error_payload(&buf);
            let mut r = [0u8; REQUEST_HEADER_LENGTH];
            for (d, s) in r.iter_mut().zip(buf.iter()) {
                *d = *s;
            }
            let _ = RequestHeader::parse(&r);
        }
    }
}
