//! Whole-server tests: a small NBD client (built on `protocol.rs`) talks to
//! `serve_connection` over in-process duplex pipes, against the memory backend.

use crate::backend::{IoError, BLOCK_SIZE};
use crate::mem::{MemBackend, MemProvider};
use crate::protocol::*;
use crate::server::{serve_connection, ServerConfig, MAX_PAYLOAD_BYTES};
use crate::Exports;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

const EXPORT: &str = "rbd/vm1";
const SIZE: u64 = 16 * 1024 * 1024;
const STEP: Duration = Duration::from_secs(10);

type TestExports = Arc<Exports<MemProvider>>;

fn exports_with(config: ServerConfig) -> (TestExports, Arc<MemBackend>) {
    let provider = MemProvider::new()
        .with_export(EXPORT, SIZE)
        .with_export("rbd/other", SIZE);
    let backend = provider.backend(EXPORT).expect("export was just added");
    (Arc::new(Exports::new(provider, config)), backend)
}

fn exports() -> (TestExports, Arc<MemBackend>) {
    exports_with(ServerConfig::default())
}

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

struct Client {
    s: DuplexStream,
    structured: bool,
}

/// One reply, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Ok,
    Data(Vec<u8>),
    Error(u32),
    Extents(Vec<Extent>),
}

impl Client {
    fn connect_with_buffer(exports: &TestExports, buffer: usize) -> (Client, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(buffer);
        let task = tokio::spawn(serve_connection(server, "test".into(), exports.clone()));
        (
            Client {
                s: client,
                structured: false,
            },
            task,
        )
    }

    fn connect(exports: &TestExports) -> (Client, JoinHandle<()>) {
        Self::connect_with_buffer(exports, 4 << 20)
    }

    async fn bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        within("reading from the server", self.s.read_exact(&mut buf)).await?;
        Ok(buf)
    }

    async fn send(&mut self, data: &[u8]) {
        within("writing to the server", self.s.write_all(data))
            .await
            .expect("write to server");
    }

    async fn greeting(&mut self) -> u16 {
        let raw = self.bytes(GREETING_LENGTH).await.expect("greeting");
        let mut g = [0u8; GREETING_LENGTH];
        g.copy_from_slice(&raw);
        parse_greeting(&g).expect("valid greeting")
    }

    async fn start(&mut self) {
        let flags = self.greeting().await;
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.send(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
            .await;
    }

    async fn option(&mut self, option: u32, data: &[u8]) {
        let mut out = OptionHeader {
            option,
            length: data.len() as u32,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(data);
        self.send(&out).await;
    }

    async fn option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let raw = self
            .bytes(OPTION_REPLY_HEADER_LENGTH)
            .await
            .expect("option reply");
        let mut h = [0u8; OPTION_REPLY_HEADER_LENGTH];
        h.copy_from_slice(&raw);
        let h = OptionReplyHeader::parse(&h).expect("valid option reply");
        let data = self
            .bytes(h.length as usize)
            .await
            .expect("option reply data");
        (h, data)
    }

    /// Replies to one option up to and including its ACK or error.
    async fn option_replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let (h, data) = self.option_reply().await;
            let done = h.reply_type == REP_ACK || is_error_reply(h.reply_type);
            out.push((h.reply_type, data));
            if done {
                return out;
            }
        }
    }

    /// Full negotiation into transmission; returns (size, transmission flags).
    async fn handshake(&mut self, name: &str, structured: bool) -> (u64, u16) {
        self.start().await;
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(self.option_replies().await[0].0, REP_ACK);
            let meta = MetaContextRequest {
                export_name: name.into(),
                queries: vec![META_CONTEXT_BASE_ALLOCATION.into()],
            };
            self.option(OPT_SET_META_CONTEXT, &meta.encode()).await;
            let replies = self.option_replies().await;
            assert_eq!(replies.len(), 2, "{replies:?}");
            assert_eq!(replies[0].0, REP_META_CONTEXT);
            assert_eq!(
                replies[0].1,
                rep_meta_context(
                    META_CONTEXT_BASE_ALLOCATION_ID,
                    META_CONTEXT_BASE_ALLOCATION
                )
            );
            self.structured = true;
        }
        let go = InfoRequest {
            name: name.into(),
            info_requests: vec![INFO_BLOCK_SIZE],
        };
        self.option(OPT_GO, &go.encode()).await;
        let replies = self.option_replies().await;
        let mut export = None;
        let mut block_size = None;
        for (t, data) in &replies {
            if *t == REP_INFO {
                let mut c = Cursor::new(data, "info");
                match c.u16().expect("info type") {
                    INFO_EXPORT => export = Some((c.u64().expect("size"), c.u16().expect("flags"))),
                    INFO_BLOCK_SIZE => {
                        block_size = Some((
                            c.u32().expect("min"),
                            c.u32().expect("pref"),
                            c.u32().expect("max"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(replies.last().map(|r| r.0), Some(REP_ACK), "{replies:?}");
        assert_eq!(block_size, Some((4096, 4096, MAX_PAYLOAD_BYTES)));
        export.expect("NBD_INFO_EXPORT")
    }

    async fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut out = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(payload);
        self.send(&out).await;
    }

    /// Reads one complete reply. `read_lengths` maps cookies of reads to their length (simple
    /// replies carry no length).
    async fn reply(&mut self, read_lengths: &HashMap<u64, u32>) -> std::io::Result<(u64, Got)> {
        if !self.structured {
            let raw = self.bytes(SIMPLE_REPLY_LENGTH).await?;
            let mut h = [0u8; SIMPLE_REPLY_LENGTH];
            h.copy_from_slice(&raw);
            let r = SimpleReply::parse(&h).expect("simple reply magic");
            if r.error != 0 {
                return Ok((r.cookie, Got::Error(r.error)));
            }
            return match read_lengths.get(&r.cookie) {
                Some(&n) if n > 0 => Ok((r.cookie, Got::Data(self.bytes(n as usize).await?))),
                _ => Ok((r.cookie, Got::Ok)),
            };
        }
        let mut data: Option<Vec<u8>> = None;
        let mut got = Got::Ok;
        loop {
            let raw = self.bytes(STRUCTURED_HEADER_LENGTH).await?;
            let mut h = [0u8; STRUCTURED_HEADER_LENGTH];
            h.copy_from_slice(&raw);
            let h = ChunkHeader::parse(&h).expect("structured reply magic");
            let payload = self.bytes(h.length as usize).await?;
            match h.chunk_type {
                REPLY_TYPE_NONE => {}
                REPLY_TYPE_OFFSET_DATA => {
                    let buf = data.get_or_insert_with(Vec::new);
                    buf.extend_from_slice(&payload[8..]);
                }
                REPLY_TYPE_ERROR => {
                    got = Got::Error(parse_error_payload(&payload).expect("error chunk").0)
                }
                REPLY_TYPE_BLOCK_STATUS => {
                    let (id, extents) =
                        parse_block_status_payload(&payload).expect("block status chunk");
                    assert_eq!(id, META_CONTEXT_BASE_ALLOCATION_ID);
                    got = Got::Extents(extents);
                }
                other => panic!("unexpected chunk type {other}"),
            }
            if h.flags & REPLY_FLAG_DONE != 0 {
                if let (Got::Ok, Some(d)) = (&got, data) {
                    got = Got::Data(d);
                }
                return Ok((h.cookie, got));
            }
        }
    }

    async fn read(&mut self, offset: u64, length: u32) -> Got {
        self.request(CMD_READ, 0, 77, offset, length, &[]).await;
        let (cookie, got) = self
            .reply(&HashMap::from([(77, length)]))
            .await
            .expect("read reply");
        assert_eq!(cookie, 77);
        got
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> Got {
        self.request(CMD_WRITE, 0, 78, offset, data.len() as u32, data)
            .await;
        let (cookie, got) = self.reply(&HashMap::new()).await.expect("write reply");
        assert_eq!(cookie, 78);
        got
    }

    async fn simple(&mut self, command: u16, flags: u16, offset: u64, length: u32) -> Got {
        self.request(command, flags, 79, offset, length, &[]).await;
        let (cookie, got) = self.reply(&HashMap::new()).await.expect("reply");
        assert_eq!(cookie, 79);
        got
    }

    /// True if the server closed the stream (EOF) within the step timeout.
    async fn closed(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match within("waiting for the server to close", self.s.read(&mut sink)).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

fn random_bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

#[tokio::test]
async fn handshake_options_and_go() {
    let (exports, _) = exports();
    let (mut c, _task) = Client::connect(&exports);
    c.start().await;
    // Unknown option: error reply, connection stays.
    c.option(0x7ABC, b"junk").await;
    let (h, _) = c.option_reply().await;
    assert_eq!((h.option, h.reply_type), (0x7ABC, REP_ERR_UNSUP));
    // NBD_OPT_LIST lists both exports.
    c.option(OPT_LIST, &[]).await;
    let replies = c.option_replies().await;
    let names: Vec<_> = replies
        .iter()
        .filter(|r| r.0 == REP_SERVER)
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(names, vec![rep_server("rbd/other"), rep_server(EXPORT)]);
    // NBD_OPT_LIST with data is invalid.
    c.option(OPT_LIST, b"x").await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_INVALID);
    // Malformed NBD_OPT_INFO: error reply, still framed.
    c.option(OPT_INFO, &[0, 0, 0, 9, b'a']).await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_INVALID);
    // Unknown export: NBD_REP_ERR_UNKNOWN.
    c.option(
        OPT_INFO,
        &InfoRequest {
            name: "rbd/missing".into(),
            info_requests: vec![],
        }
        .encode(),
    )
    .await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_UNKNOWN);
    // Empty name with two exports is unknown too.
    c.option(
        OPT_GO,
        &InfoRequest {
            name: String::new(),
            info_requests: vec![],
        }
        .encode(),
    )
    .await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_UNKNOWN);
    // SET_META_CONTEXT before structured replies is invalid.
    let meta = MetaContextRequest {
        export_name: EXPORT.into(),
        queries: vec![META_CONTEXT_BASE_ALLOCATION.into()],
    };
    c.option(OPT_SET_META_CONTEXT, &meta.encode()).await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_INVALID);
    // NBD_OPT_INFO with NAME and DESCRIPTION.
    let info = InfoRequest {
        name: EXPORT.into(),
        info_requests: vec![INFO_NAME, INFO_DESCRIPTION, 999],
    };
    c.option(OPT_INFO, &info.encode()).await;
    let replies = c.option_replies().await;
    assert!(replies.contains(&(REP_INFO, info_string(INFO_NAME, EXPORT))));
    assert!(replies
        .iter()
        .any(|r| r.0 == REP_INFO && r.1[..2] == INFO_DESCRIPTION.to_be_bytes()));
    assert_eq!(replies.last().map(|r| r.0), Some(REP_ACK));
    // GO, then a read in simple mode.
    c.option(
        OPT_GO,
        &InfoRequest {
            name: EXPORT.into(),
            info_requests: vec![],
        }
        .encode(),
    )
    .await;
    let replies = c.option_replies().await;
    let export = replies
        .iter()
        .find(|r| r.0 == REP_INFO && r.1[..2] == INFO_EXPORT.to_be_bytes())
        .expect("export info");
    assert_eq!(export.1[2..10], SIZE.to_be_bytes());
    let flags = u16::from_be_bytes([export.1[10], export.1[11]]);
    assert_eq!(flags & TFLAG_SEND_DF, 0, "DF needs structured replies");
    assert_ne!(flags & TFLAG_CAN_MULTI_CONN, 0);
    assert_eq!(c.read(0, 4096).await, Got::Data(vec![0; 4096]));
}

#[tokio::test]
async fn list_meta_context_and_abort() {
    let (exports, _) = exports();
    let (mut c, task) = Client::connect(&exports);
    c.start().await;
    c.option(OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ACK);
    for queries in [
        vec![],
        vec!["base:".to_string()],
        vec!["base:allocation".to_string(), "qemu:x".to_string()],
    ] {
        let meta = MetaContextRequest {
            export_name: EXPORT.into(),
            queries,
        };
        c.option(OPT_LIST_META_CONTEXT, &meta.encode()).await;
        let replies = c.option_replies().await;
        assert_eq!(
            replies[0],
            (
                REP_META_CONTEXT,
                rep_meta_context(0, META_CONTEXT_BASE_ALLOCATION)
            )
        );
        assert_eq!(replies.len(), 2);
    }
    let meta = MetaContextRequest {
        export_name: EXPORT.into(),
        queries: vec!["qemu:dirty-bitmap:a".into()],
    };
    c.option(OPT_SET_META_CONTEXT, &meta.encode()).await;
    assert_eq!(c.option_replies().await, vec![(REP_ACK, vec![])]);
    c.option(OPT_ABORT, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ACK);
    assert!(c.closed().await);
    within("connection task", task).await.expect("task");
}

#[tokio::test]
async fn old_style_export_name_and_default_export() {
    let provider = MemProvider::new().with_export("p/only", SIZE);
    let exports = Arc::new(Exports::new(provider, ServerConfig::default()));
    let (mut c, _t) = Client::connect(&exports);
    c.greeting().await;
    c.send(&CLIENT_FLAG_FIXED_NEWSTYLE.to_be_bytes()).await; // no NO_ZEROES
    c.option(OPT_EXPORT_NAME, b"").await;
    let reply = c
        .bytes(10 + EXPORT_NAME_REPLY_ZEROES)
        .await
        .expect("export name reply");
    assert_eq!(reply[..8], SIZE.to_be_bytes());
    assert!(reply[10..].iter().all(|b| *b == 0));
    assert_eq!(c.write(4096, &[7u8; 4096]).await, Got::Ok);
    assert_eq!(c.read(4096, 4096).await, Got::Data(vec![7; 4096]));

    // An unknown name has no error reply in the old style: the connection closes.
    let (mut c, task) = Client::connect(&exports);
    c.start().await;
    c.option(OPT_EXPORT_NAME, b"p/missing").await;
    assert!(c.closed().await);
    within("connection task", task).await.expect("task");
}

#[tokio::test]
async fn structured_replies_read_write_status() {
    let (exports, _) = exports();
    let (mut c, _t) = Client::connect(&exports);
    let (size, flags) = c.handshake(EXPORT, true).await;
    assert_eq!(size, SIZE);
    for f in [
        TFLAG_HAS_FLAGS,
        TFLAG_SEND_FLUSH,
        TFLAG_SEND_FUA,
        TFLAG_SEND_TRIM,
        TFLAG_SEND_WRITE_ZEROES,
        TFLAG_SEND_DF,
        TFLAG_CAN_MULTI_CONN,
        TFLAG_SEND_CACHE,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x}");
    }
    assert_eq!(flags & TFLAG_READ_ONLY, 0);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(c.write(1000, &data).await, Got::Ok);
    assert_eq!(
        c.read(1000, data.len() as u32).await,
        Got::Data(data.clone())
    );
    assert_eq!(c.read(0, 0).await, Got::Ok);
    assert_eq!(c.read(SIZE, 1).await, Got::Error(EINVAL));
    assert_eq!(
        c.simple(CMD_BLOCK_STATUS, 0, 777, 5000).await,
        Got::Extents(vec![Extent {
            length: 5000,
            flags: 0
        }])
    );
    assert_eq!(
        c.simple(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096).await,
        Got::Extents(vec![Extent {
            length: 4096,
            flags: 0
        }])
    );
    assert_eq!(
        c.simple(CMD_BLOCK_STATUS, 0, SIZE, 512).await,
        Got::Error(EINVAL)
    );
    assert_eq!(c.simple(CMD_FLUSH, 0, 0, 0).await, Got::Ok);
    assert_eq!(c.simple(CMD_CACHE, 0, 0, 1 << 20).await, Got::Ok);
    assert_eq!(
        c.simple(
            CMD_WRITE_ZEROES,
            CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
            1500,
            3000
        )
        .await,
        Got::Ok
    );
    let mut expect = data.clone();
    expect[500..3500].fill(0);
    assert_eq!(
        c.read(1000, data.len() as u32).await,
        Got::Data(expect.clone())
    );
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 8192)
            .await,
        Got::Ok
    );
    assert_eq!(
        c.simple(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
            0,
            8192
        )
        .await,
        Got::Error(ENOTSUP)
    );
    // Trim of an unaligned range leaves the partial blocks' bytes alone.
    assert_eq!(c.write(0, &[9u8; 3 * 4096]).await, Got::Ok);
    assert_eq!(c.simple(CMD_TRIM, 0, 100, 3 * 4096 - 200).await, Got::Ok);
    match c.read(0, 3 * 4096).await {
        Got::Data(d) => {
            assert!(d[..100].iter().all(|b| *b == 9));
            assert!(d[3 * 4096 - 100..].iter().all(|b| *b == 9));
        }
        other => panic!("read after trim: {other:?}"),
    }
}

#[tokio::test]
async fn errors_keep_the_connection_usable() {
    let (exports, backend) = exports();
    for structured in [false, true] {
        let (mut c, _t) = Client::connect(&exports);
        c.handshake(EXPORT, structured).await;
        assert_eq!(c.write(8192, &[5u8; 4096]).await, Got::Ok);
        let checks: Vec<(u16, u16, u64, u32, u32)> = vec![
            (CMD_READ, 0, SIZE, 512, EINVAL),
            (CMD_READ, 0, SIZE - 512, 1024, EINVAL),
            (CMD_READ, 0, u64::MAX - 2047, 4096, EINVAL),
            (CMD_READ, 0, 0, MAX_PAYLOAD_BYTES + 1, EINVAL),
            (CMD_READ, 0, 0, u32::MAX, EINVAL),
            (CMD_TRIM, 0, SIZE - 2048, 4096, EINVAL),
            (CMD_WRITE_ZEROES, 0, SIZE, 4096, EINVAL),
            (CMD_CACHE, 0, SIZE, 512, EINVAL),
            (0x1F, 0, 0, 0, EINVAL),
            (CMD_READ, 0x4000, 0, 512, EINVAL),
        ];
        for (command, flags, offset, length, errno) in checks {
            assert_eq!(
                c.simple(command, flags, offset, length).await,
                Got::Error(errno),
                "{command} {offset} {length}"
            );
            // The next request still works: the error reply did not break framing.
            assert_eq!(c.read(8192, 4096).await, Got::Data(vec![5; 4096]));
        }
        // Out-of-range writes: the payload is consumed, then EINVAL.
        c.request(CMD_WRITE, 0, 5, SIZE - 512, 1024, &[1u8; 1024])
            .await;
        assert_eq!(
            c.reply(&HashMap::new()).await.expect("reply"),
            (5, Got::Error(EINVAL))
        );
        c.request(CMD_WRITE, 0, 6, u64::MAX - 2047, 4096, &[1u8; 4096])
            .await;
        assert_eq!(
            c.reply(&HashMap::new()).await.expect("reply"),
            (6, Got::Error(EINVAL))
        );
        // Zero-length requests all get a reply.
        assert_eq!(c.write(4096, &[]).await, Got::Ok);
        assert_eq!(c.simple(CMD_TRIM, 0, 4096, 0).await, Got::Ok);
        assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 4096, 0).await, Got::Ok);
        assert_eq!(c.simple(CMD_CACHE, 0, 4096, 0).await, Got::Ok);
        // Backend failures map to ENOSPC / EIO and the connection goes on.
        backend.fail_with(Some(IoError::NoSpace("cluster full".into())));
        assert_eq!(c.write(0, &[1u8; 4096]).await, Got::Error(ENOSPC));
        backend.fail_with(Some(IoError::Io("osd gone".into())));
        assert_eq!(c.read(0, 512).await, Got::Error(EIO));
        assert_eq!(c.write(100, &[1u8; 100]).await, Got::Error(EIO));
        backend.fail_with(None);
        assert_eq!(c.read(8192, 4096).await, Got::Data(vec![5; 4096]));
    }
}

#[tokio::test]
async fn read_only_rejects_writes_with_eperm() {
    let (exports, _) = exports_with(ServerConfig {
        read_only: true,
        ..ServerConfig::default()
    });
    let (mut c, _t) = Client::connect(&exports);
    let (_, flags) = c.handshake(EXPORT, true).await;
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    assert_eq!(c.write(0, &[1u8; 4096]).await, Got::Error(EPERM));
    assert_eq!(c.simple(CMD_TRIM, 0, 0, 4096).await, Got::Error(EPERM));
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, 0, 0, 4096).await,
        Got::Error(EPERM)
    );
    assert_eq!(c.read(0, 4096).await, Got::Data(vec![0; 4096]));
}

/// Two connections write 512-byte sectors of the same blocks at the same time; every
/// sector must survive the read-modify-writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sub_block_writes_from_two_connections_are_not_lost() {
    let (exports, backend) = exports();
    backend.set_latency(Duration::from_millis(2));
    let (mut a, _ta) = Client::connect(&exports);
    let (mut b, _tb) = Client::connect(&exports);
    a.handshake(EXPORT, false).await;
    b.handshake(EXPORT, true).await;
    const BLOCKS: u64 = 8;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut model = vec![0u8; (BLOCKS * BLOCK_SIZE) as usize];
    for round in 0..8u64 {
        // A takes the even sectors of every block, B the odd ones (rotating per round), and
        // all requests of both connections are in flight together.
        let mut sends_a = Vec::new();
        let mut sends_b = Vec::new();
        for block in 0..BLOCKS {
            for sector in 0..8u64 {
                let offset = block * BLOCK_SIZE + ((sector + round) % 8) * 512;
                let data = random_bytes(&mut rng, 512);
                model[offset as usize..offset as usize + 512].copy_from_slice(&data);
                if sector % 2 == 0 {
                    sends_a.push((offset, data));
                } else {
                    sends_b.push((offset, data));
                }
            }
        }
        tokio::join!(
            write_pipelined(&mut a, sends_a),
            write_pipelined(&mut b, sends_b)
        );
        assert_eq!(
            backend.contents(0, BLOCKS * BLOCK_SIZE),
            model,
            "round {round}: a sub-block write was lost"
        );
    }
    // Unaligned writes spanning blocks, from both sides, against aligned reads.
    assert_eq!(
        a.read(0, (BLOCKS * BLOCK_SIZE) as u32).await,
        Got::Data(model.clone())
    );
}

/// Sends all writes before reading any reply; each must succeed exactly once.
async fn write_pipelined(c: &mut Client, sends: Vec<(u64, Vec<u8>)>) {
    for (i, (offset, data)) in sends.iter().enumerate() {
        c.request(CMD_WRITE, 0, i as u64, *offset, data.len() as u32, data)
            .await;
    }
    let mut seen = vec![false; sends.len()];
    for _ in 0..sends.len() {
        let (cookie, got) = c.reply(&HashMap::new()).await.expect("write reply");
        assert_eq!(got, Got::Ok);
        assert!(!seen[cookie as usize], "cookie {cookie} answered twice");
        seen[cookie as usize] = true;
    }
}

/// Many pipelined requests with random latency: every cookie comes back exactly once, and
/// reads see the data written before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_complete_out_of_order() {
    let (exports, backend) = exports();
    let (mut c, _t) = Client::connect(&exports);
    c.handshake(EXPORT, true).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut model = vec![0u8; 1 << 20];
    for i in 0..64u64 {
        let data = random_bytes(&mut rng, 4096 * 4);
        let o = (i * 16384) as usize;
        model[o..o + data.len()].copy_from_slice(&data);
        assert_eq!(c.write(o as u64, &data).await, Got::Ok);
    }
    backend.set_latency(Duration::from_millis(1));
    let mut lengths = HashMap::new();
    let mut offsets = HashMap::new();
    for i in 0..200u64 {
        let len = rng.random_range(1..20_000u32);
        let off = rng.random_range(0..(1u64 << 20) - u64::from(len));
        lengths.insert(i, len);
        offsets.insert(i, off as usize);
        c.request(CMD_READ, 0, i, off, len, &[]).await;
    }
    let mut order = Vec::new();
    for _ in 0..200 {
        let (cookie, got) = c.reply(&lengths).await.expect("reply");
        let off = offsets[&cookie];
        let len = lengths[&cookie] as usize;
        assert_eq!(
            got,
            Got::Data(model[off..off + len].to_vec()),
            "cookie {cookie}"
        );
        order.push(cookie);
    }
    order.sort_unstable();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
}

/// NBD_CMD_DISC after a write: the write's reply still comes, then the server closes.
#[tokio::test]
async fn disconnect_drains_in_flight_replies() {
    let (exports, backend) = exports();
    backend.set_latency(Duration::from_millis(50));
    let (mut c, task) = Client::connect(&exports);
    c.handshake(EXPORT, false).await;
    c.request(CMD_WRITE, 0, 1, 0, 512, &[3u8; 512]).await;
    c.request(CMD_DISC, 0, 2, 0, 0, &[]).await;
    assert_eq!(
        c.reply(&HashMap::new()).await.expect("write reply"),
        (1, Got::Ok)
    );
    assert!(c.closed().await);
    within("connection task", task).await.expect("task");
    assert_eq!(backend.contents(0, 512), vec![3u8; 512]);
}

/// Garbage on one connection closes that connection only.
#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let (exports, _) = exports();
    let (mut keeper, _tk) = Client::connect(&exports);
    keeper.handshake(EXPORT, true).await;
    assert_eq!(keeper.write(0, &[4u8; 4096]).await, Got::Ok);

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    type Scenario = Box<dyn Fn(&mut rand::rngs::StdRng) -> Vec<u8>>;
    let scenarios: Vec<(&str, bool, Scenario)> = vec![
        (
            "random bytes instead of client flags",
            false,
            Box::new(|r| random_bytes(r, 4096)),
        ),
        (
            "unknown client flags",
            false,
            Box::new(|_| 0xFFFF_FFFFu32.to_be_bytes().to_vec()),
        ),
        (
            "option length 0xFFFFFFF0",
            false,
            Box::new(|_| {
                let mut v = 1u32.to_be_bytes().to_vec();
                v.extend_from_slice(
                    &OptionHeader {
                        option: OPT_GO,
                        length: 0xFFFF_FFF0,
                    }
                    .encode(),
                );
                v
            }),
        ),
        (
            "bad option magic",
            false,
            Box::new(|r| {
                let mut v = 1u32.to_be_bytes().to_vec();
                v.extend_from_slice(b"IHAVEOPX");
                v.extend_from_slice(&random_bytes(r, 200));
                v
            }),
        ),
        (
            "random bytes in transmission",
            true,
            Box::new(|r| random_bytes(r, 32 * 1024)),
        ),
        (
            "write announcing 4 GiB",
            true,
            Box::new(|r| {
                let mut v = RequestHeader {
                    flags: 0,
                    command: CMD_WRITE,
                    cookie: 5,
                    offset: 0,
                    length: u32::MAX,
                }
                .encode()
                .to_vec();
                v.extend_from_slice(&random_bytes(r, 4096));
                v
            }),
        ),
    ];
    for (label, after_handshake, make) in scenarios {
        let (mut c, task) = Client::connect(&exports);
        if after_handshake {
            c.handshake(EXPORT, false).await;
        } else {
            c.greeting().await;
        }
        // The server may close before it has read everything; a failed write is fine.
        let _ = c.s.write_all(&make(&mut rng)).await;
        assert!(c.closed().await, "{label}: server kept the connection");
        within(label, task).await.expect("connection task");
        assert_eq!(
            keeper.read(0, 4096).await,
            Got::Data(vec![4; 4096]),
            "{label}: keeper broke"
        );
    }
    // A 4 GiB read gets EINVAL, not a disconnect.
    let (mut c, _t) = Client::connect(&exports);
    c.handshake(EXPORT, false).await;
    assert_eq!(c.simple(CMD_READ, 0, 0, u32::MAX).await, Got::Error(EINVAL));
    assert_eq!(c.read(0, 4096).await, Got::Data(vec![4; 4096]));
}

/// Clients that stop mid-request or mid-option, or vanish with replies in flight, end their
/// own connection task and nothing else.
#[tokio::test]
async fn vanishing_clients_free_their_connection() {
    let (exports, backend) = exports();
    let (mut keeper, _tk) = Client::connect(&exports);
    keeper.handshake(EXPORT, false).await;

    // Half a write payload, then gone.
    let (mut c, task) = Client::connect(&exports);
    c.handshake(EXPORT, false).await;
    c.request(CMD_WRITE, 0, 1, 0, 1 << 20, &[1u8; 300 * 1024])
        .await;
    drop(c);
    within("partial payload", task).await.expect("task");

    // Half a request header.
    let (mut c, task) = Client::connect(&exports);
    c.handshake(EXPORT, false).await;
    c.send(
        &RequestHeader {
            flags: 0,
            command: CMD_READ,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode()[..11],
    )
    .await;
    drop(c);
    within("half header", task).await.expect("task");

    // Truncated option.
    let (mut c, task) = Client::connect(&exports);
    c.start().await;
    c.send(
        &OptionHeader {
            option: OPT_GO,
            length: 1000,
        }
        .encode(),
    )
    .await;
    c.send(&[0, 0]).await;
    drop(c);
    within("truncated option", task).await.expect("task");

    // Big reads in flight and slow backend, then gone.
    backend.set_latency(Duration::from_millis(20));
    let (mut c, task) = Client::connect_with_buffer(&exports, 64 * 1024);
    c.handshake(EXPORT, true).await;
    for i in 0..8 {
        c.request(CMD_READ, 0, i, 0, 4 << 20, &[]).await;
    }
    drop(c);
    within("reads in flight", task).await.expect("task");
    backend.set_latency(Duration::ZERO);

    assert_eq!(keeper.read(0, 512).await, Got::Data(vec![0; 512]));
}

/// A client that never reads its replies is cut off after `reply_timeout`; one that never
/// finishes the handshake after `handshake_timeout`.
#[tokio::test]
async fn stalled_clients_time_out() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        reply_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (exports, _) = exports_with(config);

    let (mut idle, idle_task) = Client::connect(&exports);
    idle.greeting().await; // never sends its flags
    let (silent, silent_task) = Client::connect(&exports); // never even reads the greeting

    let (mut deaf, deaf_task) = Client::connect_with_buffer(&exports, 64 * 1024);
    deaf.handshake(EXPORT, false).await;
    for i in 0..16 {
        deaf.request(CMD_READ, 0, i, 0, 1 << 20, &[]).await;
    }

    // Another client is served meanwhile.
    let (mut other, _to) = Client::connect(&exports);
    other.handshake(EXPORT, true).await;
    assert_eq!(other.read(0, 4096).await, Got::Data(vec![0; 4096]));

    within("idle handshake", idle_task).await.expect("task");
    within("silent client", silent_task).await.expect("task");
    within("client that never reads", deaf_task)
        .await
        .expect("task");
    assert!(idle.closed().await);
    drop((silent, deaf));
}

/// The in-flight budget bounds what one connection holds: with a budget of 4 requests and a
/// client that does not read its replies, the server stops reading requests (and their
/// payloads) instead of buffering them.
#[tokio::test]
async fn in_flight_budget_applies_back_pressure() {
    let config = ServerConfig {
        max_inflight_requests: 4,
        ..ServerConfig::default()
    };
    let (exports, _) = exports_with(config);
    let (mut c, task) = Client::connect_with_buffer(&exports, 64 * 1024);
    c.handshake(EXPORT, false).await;
    // 1 MiB read replies clog the 64 KiB pipe and hold the whole budget.
    for i in 0..8u64 {
        c.request(CMD_READ, 0, i, 0, 1 << 20, &[]).await;
    }
    // 1 MiB of write payload: without a budget the server would read it all into memory.
    let mut sent = 0;
    for i in 0..64u64 {
        let mut req = RequestHeader {
            flags: 0,
            command: CMD_WRITE,
            cookie: 100 + i,
            offset: 0,
            length: 16384,
        }
        .encode()
        .to_vec();
        req.extend_from_slice(&[1u8; 16384]);
        match tokio::time::timeout(Duration::from_millis(300), c.s.write_all(&req)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert!(
        sent < 64,
        "server took all {sent} writes while its replies were not read"
    );
    drop(c);
    within("connection task", task).await.expect("task");
}

/// Random sizes and alignments through the whole server, checked against a model.
#[tokio::test]
async fn random_unaligned_io_through_the_server() {
    let (exports, _) = exports();
    let (mut c, _t) = Client::connect(&exports);
    c.handshake(EXPORT, true).await;
    let span = 1u64 << 20;
    let mut model = vec![0u8; span as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..300 {
        let len = rng.random_range(0..70_000u64);
        let off = rng.random_range(0..span - len);
        let (o, l) = (off as usize, len as usize);
        match rng.random_range(0..3) {
            0 => {
                let data = random_bytes(&mut rng, l);
                assert_eq!(c.write(off, &data).await, Got::Ok);
                model[o..o + l].copy_from_slice(&data);
            }
            1 => {
                assert_eq!(
                    c.simple(CMD_WRITE_ZEROES, 0, off, len as u32).await,
                    Got::Ok
                );
                model[o..o + l].fill(0);
            }
            _ => {
                let want = if l == 0 {
                    Got::Ok
                } else {
                    Got::Data(model[o..o + l].to_vec())
                };
                assert_eq!(c.read(off, len as u32).await, want, "read {len}@{off}");
            }
        }
    }
}
