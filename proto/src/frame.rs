//! The wire frame: a fixed 40-byte little-endian header, a metadata section and a data
//! section. Metadata is a message body (postcard for control messages, a fixed header for
//! data ops); data is the raw payload, handed on as a `Bytes` slice of the receive buffer
//! without a copy.
//!
//! ```text
//!  byte  0        4        6        8        12       16               24       28       32       36       40
//!        +--------+--------+--------+--------+--------+----------------+--------+--------+--------+--------+
//!        | magic  |version |msg_type|features| flags  |  request_id    |meta_len|data_len|meta_crc|hdr_crc |
//!        | u32    | u16    | u16    | u32    | u32    |  u64           | u32    | u32    | u32    | u32    |
//!        +--------+--------+--------+--------+--------+----------------+--------+--------+--------+--------+
//! ```
//! - `magic` is `ATLF`; `version` is `PROTOCOL_VERSION`; a peer with another version is
//!   refused at the first frame.
//! - `hdr_crc` is the crc32c of bytes 0..36; `meta_crc` of the metadata section. Data is
//!   covered by per-4 KiB-block crcs carried in the metadata of data ops (end to end from the
//!   client to the disk), so it is not checksummed twice here.
//! - `meta_len` ≤ `MAX_META_LEN`, `data_len` ≤ `MAX_DATA_LEN`: a larger announcement is
//!   refused before anything is allocated.
//!
//! Invariant: `decode` never panics and never allocates more than the announced, bounded
//! lengths; any malformed input is a `FrameError`, after which the connection is closed.

use crate::checksum::crc32c;
use bytes::{Buf, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const MAGIC: u32 = u32::from_le_bytes(*b"ATLF");
pub const PROTOCOL_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 40;
pub const MAX_META_LEN: u32 = 16 << 20;
pub const MAX_DATA_LEN: u32 = 64 << 20;

/// `flags` bit: the frame answers the request with the same `request_id`.
pub const FLAG_RESPONSE: u32 = 1;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: U16,
    pub msg_type: U16,
    pub features: U32,
    pub flags: U32,
    pub request_id: U64,
    pub meta_len: U32,
    pub data_len: U32,
    pub meta_crc: U32,
    pub header_crc: U32,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == HEADER_LEN);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    BadVersion(u16),
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame metadata checksum mismatch")]
    MetaChecksum,
    #[error("frame {what} length {len} exceeds the limit {limit}")]
    TooLarge {
        what: &'static str,
        len: u32,
        limit: u32,
    },
}

/// A decoded frame. `meta` and `data` are slices of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: u16,
    pub flags: u32,
    pub request_id: u64,
    pub meta: Bytes,
    pub data: Bytes,
}

impl Frame {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }
}

/// Builds the header for a frame with the given sections.
pub fn encode_header(
    msg_type: u16,
    flags: u32,
    request_id: u64,
    meta: &[u8],
    data_len: usize,
) -> [u8; HEADER_LEN] {
    assert!(
        meta.len() <= MAX_META_LEN as usize && data_len <= MAX_DATA_LEN as usize,
        "frame too large"
    );
    let mut h = FrameHeader {
        magic: MAGIC.into(),
        version: PROTOCOL_VERSION.into(),
        msg_type: msg_type.into(),
        features: 0.into(),
        flags: flags.into(),
        request_id: request_id.into(),
        meta_len: (meta.len() as u32).into(),
        data_len: (data_len as u32).into(),
        meta_crc: crc32c(meta).into(),
        header_crc: 0.into(),
    };
    h.header_crc = crc32c(&h.as_bytes()[..36]).into();
    let mut out = [0u8; HEADER_LEN];
    out.copy_from_slice(h.as_bytes());
    out
}

/// Encodes a whole frame into one buffer (control messages; the data path writes the
/// header, meta and data as separate slices instead).
pub fn encode(msg_type: u16, flags: u32, request_id: u64, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + data.len());
    out.extend_from_slice(&encode_header(
        msg_type,
        flags,
        request_id,
        meta,
        data.len(),
    ));
    out.extend_from_slice(meta);
    out.extend_from_slice(data);
    out
}

/// Validates a header.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
    let h = match FrameHeader::read_from_bytes(bytes) {
        Ok(h) => h,
        Err(_) => unreachable!("HEADER_LEN bytes always hold a FrameHeader"),
    };
    if h.magic.get() != MAGIC {
        return Err(FrameError::BadMagic(h.magic.get()));
    }
    if h.version.get() != PROTOCOL_VERSION {
        return Err(FrameError::BadVersion(h.version.get()));
    }
    if crc32c(&bytes[..36]) != h.header_crc.get() {
        return Err(FrameError::HeaderChecksum);
    }
    if h.meta_len.get() > MAX_META_LEN {
        return Err(FrameError::TooLarge {
            what: "metadata",
            len: h.meta_len.get(),
            limit: MAX_META_LEN,
        });
    }
    if h.data_len.get() > MAX_DATA_LEN {
        return Err(FrameError::TooLarge {
            what: "data",
            len: h.data_len.get(),
            limit: MAX_DATA_LEN,
        });
    }
    Ok(h)
}

/// Takes one frame from the front of `buf` if it holds a whole one. `Ok(None)` means more
/// bytes are needed (and says nothing about how many were announced beyond the limits).
pub fn try_decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&buf[..HEADER_LEN]);
    let h = decode_header(&hb)?;
    let meta_len = h.meta_len.get() as usize;
    let total = HEADER_LEN + meta_len + h.data_len.get() as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let meta = buf.split_to(meta_len).freeze();
    if crc32c(&meta) != h.meta_crc.get() {
        return Err(FrameError::MetaChecksum);
    }
    let data = buf.split_to(h.data_len.get() as usize).freeze();
    Ok(Some(Frame {
        msg_type: h.msg_type.get(),
        flags: h.flags.get(),
        request_id: h.request_id.get(),
        meta,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(t in any::<u16>(), f in any::<u32>(), id in any::<u64>(),
                      meta in proptest::collection::vec(any::<u8>(), 0..300),
                      data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let wire = encode(t, f, id, &meta, &data);
            let mut buf = BytesMut::from(&wire[..]);
            let fr = try_decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(fr.msg_type, t);
            prop_assert_eq!(fr.flags, f);
            prop_assert_eq!(fr.request_id, id);
            prop_assert_eq!(&fr.meta[..], &meta[..]);
            prop_assert_eq!(&fr.data[..], &data[..]);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn every_truncation_waits_for_more(cut in 0usize..200) {
            let wire = encode(3, 0, 9, &[1; 50], &[2; 100]);
            let cut = cut.min(wire.len() - 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(try_decode(&mut buf), Ok(None));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = try_decode(&mut buf);
        }

        #[test]
        fn any_flipped_header_or_meta_bit_is_caught(bit in 0usize..(HEADER_LEN + 16) * 8) {
            let wire = encode(3, 0, 9, &[7; 16], &[]);
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut buf = BytesMut::from(&bad[..]);
            prop_assert!(try_decode(&mut buf).is_err());
        }
    }

    #[test]
    fn oversized_announcements_are_refused_before_allocating() {
        let mut h = FrameHeader::read_from_bytes(&encode_header(1, 0, 1, &[], 0)).unwrap();
        h.data_len = (MAX_DATA_LEN + 1).into();
        h.header_crc = crc32c(&h.as_bytes()[..36]).into();
        let mut buf = BytesMut::from(h.as_bytes());
        assert!(matches!(
            try_decode(&mut buf),
            Err(FrameError::TooLarge { what: "data", .. })
        ));
        let mut h2 = h;
        h2.data_len = 0.into();
        h2.meta_len = u32::MAX.into();
        h2.header_crc = crc32c(&h2.as_bytes()[..36]).into();
        let mut buf = BytesMut::from(h2.as_bytes());
        assert!(matches!(
            try_decode(&mut buf),
            Err(FrameError::TooLarge {
                what: "metadata",
                ..
            })
        ));
    }

    #[test]
    fn wrong_version_and_magic_are_named() {
        let mut wire = encode(1, 0, 1, &[], &[]);
        wire[4] = 9;
        assert!(matches!(
            try_decode(&mut BytesMut::from(&wire[..])),
            Err(FrameError::BadVersion(9))
        ));
        let mut wire = encode(1, 0, 1, &[], &[]);
        wire[0] = b'X';
        assert!(matches!(
            try_decode(&mut BytesMut::from(&wire[..])),
            Err(FrameError::BadMagic(_))
        ));
    }
}
