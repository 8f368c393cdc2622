//! A block device or file driven with io_uring from one ring thread per device.
//!
//! Flow: `read`/`write`/`flush` check alignment, then push a request (the op, the offset, the
//! owned buffer and a `oneshot` sender) onto a crossbeam channel and wake the ring thread
//! through an eventfd; the future then awaits the oneshot. The ring thread owns the
//! `IoUring`, keeps an `IORING_OP_READ` on the eventfd always pending and blocks only in
//! `submit_and_wait(1)`, so a wake-up, a completion and a submission all end the same wait.
//! Each time it wakes it reaps every completion, drains the whole channel into SQEs and
//! submits them with one `io_uring_enter`; completed buffers go back through the oneshots.
//!
//! Why a ring thread with batching: tokio's reactor cannot wait on an io_uring, and a ring per
//! runtime worker (tokio-uring style) needs a thread-per-core runtime the rest of the OSD does
//! not use. A dedicated thread keeps the runtime untouched and turns many small requests into
//! one system call. The hand-off costs, per batch, one channel push per op plus at most one
//! eventfd write (an atomic flag, `wake_pending`, suppresses the write while a wake-up is
//! already on its way), and per op one oneshot wake of the waiting task. Compared with
//! `FileDevice` (one blocking-pool hand-off and one blocking syscall per op, a thread per op in
//! flight) this is one ring-thread wake per batch and no extra threads at depth 32.
//! SQPOLL would remove the eventfd write too but burns a core per device; the OSD runs on
//! small machines, so it is not used.
//!
//! Durable writes are `IORING_OP_WRITE` with `RWF_DSYNC` (FUA or write + cache flush, as in
//! `FileDevice`); `flush` is `IORING_OP_FSYNC` with `DATASYNC`. The ring does not order ops:
//! a flush covers the writes that completed before it was submitted, which is exactly the
//! contract in `device/mod.rs`, so no `IO_DRAIN` or links are needed.
//!
//! The device fd is registered (`register_files`) so the kernel skips the per-op file
//! reference count; if registration fails the raw fd is used. Buffers are not registered:
//! they belong to the caller (any `AlignedBuf`, not a pool the device owns), so registering
//! them would need a buffer-table update per op, which costs about what it saves (pinning one
//! or two pages of a 4 KiB block) next to a device round trip.
//!
//! Invariants:
//! - a buffer handed to the kernel is owned by the ring thread's slot table until its CQE is
//!   reaped; only then is it handed back (or dropped, if the caller went away). A cancelled
//!   future therefore never frees memory the kernel is writing;
//! - at most `MAX_IN_FLIGHT` ops are in the kernel, so completions always fit in the CQ
//!   (twice the SQ size) and never overflow;
//! - `wake_pending` is true only while an eventfd write is pending or its read completion is
//!   not yet reaped; the ring thread clears it before draining the channel, so a request pushed
//!   after a drain always finds it false (and writes the eventfd) or is seen by the next drain;
//! - every request gets exactly one reply; the ring thread does not panic and reports ring
//!   failures to the waiting futures as `io::Error`.
//!
//! Limits: short transfers are resubmitted for the remainder; a transfer that makes no
//! progress (a read at the end of a file that shrank after `open`) fails with
//! `UnexpectedEof`/`WriteZero`; EINTR and EAGAIN are retried up to `MAX_RETRIES` times. If
//! `io_uring_enter` itself fails with an unexpected error, the ring is considered broken: every
//! queued and in-flight request fails with that error, the buffers still in the kernel are
//! leaked rather than freed, and later requests fail at once. Dropping the device waits for
//! the ops still in flight (those of cancelled futures) before the thread exits. Needs Linux
//! 5.6 (IORING_OP_READ/WRITE); `open` says why when io_uring is unavailable (ENOSYS, EPERM from
//! `kernel.io_uring_disabled` or a seccomp filter) so the caller can fall back to `FileDevice`.

use super::file::{device_size, open_direct, DeviceLock};
use super::{check_aligned, AlignedBuf, BlockDevice, IoFuture};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Submission queue size; the completion queue is twice this.
const RING_ENTRIES: u32 = 256;
/// Ops in the kernel at once; one SQ slot is kept for the eventfd read.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;
/// The `user_data` of the eventfd read; ops use their slot index.
const WAKE_TOKEN: u64 = u64::MAX;
/// Largest single transfer; longer buffers go in several pieces through the short-IO path.
const MAX_TRANSFER_BYTES: usize = 1 << 30;
/// EINTR/EAGAIN retries of one op before the error is returned.
const MAX_RETRIES: u32 = 64;

const _: () = assert!(
    MAX_TRANSFER_BYTES / super::ALIGN * super::ALIGN == MAX_TRANSFER_BYTES
        && MAX_TRANSFER_BYTES <= u32::MAX as usize
);
const _: () = assert!((MAX_IN_FLIGHT as u64) < WAKE_TOKEN);

pub struct UringDevice {
    size: u64,
    requests: Sender<Message>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
    _lock: DeviceLock,
}

/// The eventfd the ring thread listens on and the flag that batches writes to it.
struct Wake {
    eventfd: OwnedFd,
    /// An eventfd write is pending or its completion is not yet reaped (see invariants).
    wake_pending: AtomicBool,
}

impl Wake {
    /// Makes the ring thread's pending eventfd read complete.
    fn notify(&self) {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live u64 to an fd we own.
            let n =
                unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            if n == 8 {
                return;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // Only possible if the counter is near u64::MAX, i.e. never.
                tracing::error!("io_uring wake-up eventfd write failed: {e}");
                return;
            }
        }
    }
}

enum Message {
    Io(Request),
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Read,
    Write { durable: bool },
    Flush,
}

/// What the ring thread hands back: the buffer (none for a flush, or if the ring failed with
/// the buffer still in the kernel) and the outcome.
type Reply = (Option<AlignedBuf>, io::Result<()>);

/// One op, owned by the channel, then the backlog, then a slot until its last CQE.
struct Request {
    kind: Kind,
    offset: u64,
    buf: Option<AlignedBuf>,
    /// Bytes already transferred (short reads and writes resume here).
    done_bytes: usize,
    retries: u32,
    reply: oneshot::Sender<Reply>,
}

impl Request {
    fn finish(mut self, result: io::Result<()>) {
        // The caller may have gone away (cancelled future); the buffer is then dropped here.
        let _ = self.reply.send((self.buf.take(), result));
    }
}

impl UringDevice {
    /// Opens a device or file for direct IO and starts its ring thread.
    pub fn open(path: &Path) -> io::Result<UringDevice> {
        let lock = DeviceLock::take(path)?;
        let file = open_direct(path)?;
        let size = device_size(&file)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake = Arc::new(Wake {
            eventfd,
            wake_pending: AtomicBool::new(false),
        });
        let (requests, receiver) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_wake = Arc::clone(&wake);
        let name = format!(
            "uring:{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        // The ring is created on its own thread: SINGLE_ISSUER ties it to the creating task.
        let thread =
            std::thread::Builder::new().name(name).spawn(move || {
                match RingThread::new(file, thread_wake, receiver) {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        ring.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("io_uring thread exited during start-up")));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e);
        }
        Ok(UringDevice {
            size,
            requests,
            wake,
            thread: Some(thread),
            _lock: lock,
        })
    }

    /// Queues one op and waits for its reply.
    async fn submit(&self, kind: Kind, offset: u64, buf: Option<AlignedBuf>) -> Reply {
        let (reply, done) = oneshot::channel();
        let request = Request {
            kind,
            offset,
            buf,
            done_bytes: 0,
            retries: 0,
            reply,
        };
        if let Err(crossbeam_channel::SendError(msg)) = self.requests.send(Message::Io(request)) {
            let buf = match msg {
                Message::Io(mut r) => r.buf.take(),
                Message::Shutdown => None,
            };
            return (buf, Err(io::Error::other("io_uring thread is gone")));
        }
        // AcqRel pairs with the ring thread's swap(false): see the invariants above.
        if !self.wake.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake.notify();
        }
        done.await.unwrap_or_else(|_| {
            (
                None,
                Err(io::Error::other("io_uring thread dropped the request")),
            )
        })
    }

    async fn transfer(
        &self,
        kind: Kind,
        offset: u64,
        buf: AlignedBuf,
    ) -> (AlignedBuf, io::Result<()>) {
        if let Err(e) = check_aligned(offset, buf.len(), self.size) {
            return (buf, Err(e));
        }
        match self.submit(kind, offset, Some(buf)).await {
            (Some(buf), r) => (buf, r),
            // The buffer was leaked with a broken ring; hand back a fresh one, as FileDevice does.
            (None, r) => (
                AlignedBuf::zeroed(0),
                r.and(Err(io::Error::other("io_uring lost the buffer"))),
            ),
        }
    }
}

impl BlockDevice for UringDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        Box::pin(self.transfer(Kind::Read, offset, buf))
    }

    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        Box::pin(self.transfer(Kind::Write { durable }, offset, buf))
    }

    fn flush(&self) -> IoFuture<'_, io::Result<()>> {
        Box::pin(async move { self.submit(Kind::Flush, 0, None).await.1 })
    }
}

impl Drop for UringDevice {
    fn drop(&mut self) {
        // Fails only if the thread is already gone, which join below reports.
        let _ = self.requests.send(Message::Shutdown);
        self.wake.notify();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("io_uring thread panicked");
            }
        }
    }
}

/// How SQEs name the device: its registered index, or the raw fd if registration failed.
#[derive(Clone, Copy)]
enum Target {
    Fixed,
    Fd(RawFd),
}

/// The state owned by the ring thread.
struct RingThread {
    ring: IoUring,
    /// Keeps the device fd open while ops may reference it.
    file: File,
    target: Target,
    wake: Arc<Wake>,
    receiver: Receiver<Message>,
    /// Requests not yet in the kernel: new ones, and the remainders of short or retried ops.
    backlog: VecDeque<Request>,
    /// Requests in the kernel, indexed by `user_data`.
    slots: Vec<Option<Request>>,
    free_slots: Vec<usize>,
    /// The eventfd read's target; boxed so it does not move while the kernel holds it.
    wake_buf: Box<u64>,
    wake_armed: bool,
    stopping: bool,
    /// Set when the eventfd read fails: the thread can no longer be woken.
    broken: Option<io::Error>,
}

impl RingThread {
    fn new(file: File, wake: Arc<Wake>, receiver: Receiver<Message>) -> io::Result<RingThread> {
        let ring = new_ring()?;
        let mut probe = io_uring::Probe::new();
        let supported = ring.submitter().register_probe(&mut probe).is_ok()
            && [opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE]
                .iter()
                .all(|&op| probe.is_supported(op));
        if !supported {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring is unavailable: the kernel lacks IORING_OP_READ/WRITE (Linux 5.6+)",
            ));
        }
        let target = match ring.submitter().register_files(&[file.as_raw_fd()]) {
            Ok(()) => Target::Fixed,
            Err(e) => {
                tracing::debug!("io_uring file registration failed ({e}), using the raw fd");
                Target::Fd(file.as_raw_fd())
            }
        };
        Ok(RingThread {
            ring,
            file,
            target,
            wake,
            receiver,
            backlog: VecDeque::new(),
            slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
            free_slots: (0..MAX_IN_FLIGHT).rev().collect(),
            wake_buf: Box::new(0),
            wake_armed: false,
            stopping: false,
            broken: None,
        })
    }

    fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.free_slots.len()
    }

    fn run(mut self) {
        loop {
            self.reap();
            if let Some(e) = self.broken.take() {
                return self.fail(e);
            }
            self.drain_channel();
            if let Err(e) = self.push_all() {
                return self.fail(e);
            }
            if self.stopping && self.in_flight() == 0 && !self.wake_armed {
                // The backlog is empty too: push_all answered it while stopping.
                tracing::debug!("io_uring thread for fd {} stopped", self.file.as_raw_fd());
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Moves every queued request into the backlog.
    fn drain_channel(&mut self) {
        loop {
            match self.receiver.try_recv() {
                Ok(Message::Io(r)) => self.backlog.push_back(r),
                Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// Turns the backlog into SQEs, up to `MAX_IN_FLIGHT`, and keeps the eventfd read armed.
    fn push_all(&mut self) -> io::Result<()> {
        if !self.wake_armed && !self.stopping {
            let entry = opcode::Read::new(
                types::Fd(self.wake.eventfd.as_raw_fd()),
                (&mut *self.wake_buf as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(WAKE_TOKEN);
            self.push(&entry)?;
            self.wake_armed = true;
        }
        while let Some(mut request) = self.backlog.pop_front() {
            if self.stopping {
                request.finish(Err(io::Error::other("device closed")));
                continue;
            }
            if request.reply.is_closed() {
                // The caller cancelled before the op reached the kernel: skip it.
                continue;
            }
            let Some(slot) = self.free_slots.pop() else {
                self.backlog.push_front(request);
                break;
            };
            let entry = self.entry(&mut request).user_data(slot as u64);
            if let Err(e) = self.push(&entry) {
                self.free_slots.push(slot);
                self.backlog.push_front(request);
                return Err(e);
            }
            // The buffer is referenced by the SQE from here until its CQE is reaped.
            self.slots[slot] = Some(request);
        }
        Ok(())
    }

    /// Pushes one SQE, submitting the queue first if it is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE points to is owned by `slots` or `wake_buf` until the
            // CQE for it is reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn entry(&self, request: &mut Request) -> squeue::Entry {
        let offset = request.offset + request.done_bytes as u64;
        let (ptr, len) = match &mut request.buf {
            Some(buf) => {
                let len = (buf.len() - request.done_bytes).min(MAX_TRANSFER_BYTES);
                // SAFETY: done_bytes < buf.len() while the request is unfinished.
                (
                    unsafe { buf.as_mut_ptr().add(request.done_bytes) },
                    len as u32,
                )
            }
            None => (std::ptr::null_mut(), 0),
        };
        macro_rules! on_target {
            ($fd:ident => $build:expr) => {
                match self.target {
                    Target::Fixed => {
                        let $fd = types::Fixed(0);
                        $build
                    }
                    Target::Fd(raw) => {
                        let $fd = types::Fd(raw);
                        $build
                    }
                }
            };
        }
        match request.kind {
            Kind::Read => on_target!(fd => opcode::Read::new(fd, ptr, len).offset(offset).build()),
            Kind::Write { durable } => {
                let flags = if durable { libc::RWF_DSYNC } else { 0 };
                on_target!(fd => opcode::Write::new(fd, ptr, len).offset(offset).rw_flags(flags).build())
            }
            Kind::Flush => {
                on_target!(fd => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build())
            }
        }
    }

    /// Handles every completion in the CQ.
    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, result) in done {
            if user_data == WAKE_TOKEN {
                self.wake_armed = false;
                if result < 0 && -result != libc::EINTR && -result != libc::EAGAIN {
                    // Re-arming would fail the same way and spin; nothing could wake the thread.
                    self.broken = Some(io::Error::from_raw_os_error(-result));
                }
                // Cleared before the channel is drained (see invariants).
                self.wake.wake_pending.swap(false, Ordering::AcqRel);
                continue;
            }
            let slot = user_data as usize;
            let Some(request) = self.slots.get_mut(slot).and_then(Option::take) else {
                tracing::error!("io_uring completion for unknown slot {slot}");
                continue;
            };
            self.free_slots.push(slot);
            self.complete(request, result);
        }
    }

    fn complete(&mut self, mut request: Request, result: i32) {
        if result < 0 {
            let errno = -result;
            if (errno == libc::EINTR || errno == libc::EAGAIN) && request.retries < MAX_RETRIES {
                request.retries += 1;
                self.backlog.push_front(request);
            } else {
                request.finish(Err(io::Error::from_raw_os_error(errno)));
            }
            return;
        }
        let len = request.buf.as_ref().map_or(0, |b| b.len());
        if request.kind == Kind::Flush {
            return request.finish(Ok(()));
        }
        if result == 0 {
            let at = request.offset + request.done_bytes as u64;
            let e = match request.kind {
                Kind::Read => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read {}+{len} ended at {at}: past the end of the device",
                        request.offset
                    ),
                ),
                _ => io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write {}+{len} made no progress at {at}", request.offset),
                ),
            };
            return request.finish(Err(e));
        }
        request.done_bytes += result as usize;
        if request.done_bytes >= len {
            request.finish(Ok(()))
        } else {
            // Short transfer: the remainder goes first, before newer requests.
            request.retries = 0;
            self.backlog.push_front(request);
        }
    }

    /// The ring is broken: fails everything, then answers requests with the error until shutdown.
    fn fail(mut self, e: io::Error) {
        tracing::error!("io_uring failed, device unusable: {e}");
        let error = |e: &io::Error| io::Error::new(e.kind(), format!("io_uring failed: {e}"));
        for slot in self.slots.iter_mut() {
            if let Some(mut request) = slot.take() {
                // The kernel may still write this buffer: leak it rather than free it.
                std::mem::forget(request.buf.take());
                request.finish(Err(error(&e)));
            }
        }
        for request in self.backlog.drain(..) {
            request.finish(Err(error(&e)));
        }
        // The eventfd read may still be pending in the kernel: leak its target too.
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        if self.stopping {
            return;
        }
        for msg in self.receiver.iter() {
            match msg {
                Message::Io(request) => request.finish(Err(error(&e))),
                Message::Shutdown => return,
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    // EBUSY: the CQ is full; the next wait reaps it. Cannot happen with MAX_IN_FLIGHT, kept for safety.
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// Creates the ring with the cheapest completion mode the kernel offers: deferred task work
/// (6.1), cooperative task work (5.19), or the default.
fn new_ring() -> io::Result<IoUring> {
    let modes: [fn() -> io::Result<IoUring>; 3] = [
        || {
            IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(RING_ENTRIES)
        },
        || IoUring::builder().setup_coop_taskrun().build(RING_ENTRIES),
        || IoUring::new(RING_ENTRIES),
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for mode in modes {
        match mode() {
            Ok(ring) => return Ok(ring),
            // An older kernel that does not know the flags: try the next mode.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(unavailable(last))
}

fn unavailable(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring support",
        Some(libc::EPERM) => "disabled by kernel.io_uring_disabled or a seccomp policy",
        Some(libc::ENOMEM) => "no locked memory for the ring (RLIMIT_MEMLOCK)",
        _ => "io_uring_setup failed",
    };
    io::Error::new(e.kind(), format!("io_uring is unavailable: {why}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, size: u64) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("atlant-uring-{name}-{}", std::process::id()));
            let f = File::create(&path).expect("create temp file");
            f.set_len(size).expect("size temp file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn open(path: &Path) -> Option<UringDevice> {
        match UringDevice::open(path) {
            Ok(d) => Some(d),
            Err(e) if e.to_string().contains("io_uring is unavailable") => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("open: {e}"),
        }
    }

    #[tokio::test]
    async fn round_trip() {
        let file = TempFile::new("round-trip", 1 << 20);
        let Some(dev) = open(&file.0) else { return };
        assert_eq!(dev.size(), 1 << 20);
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i * 7 % 251) as u8).collect();
        let (_, r) = dev.write(8192, AlignedBuf::from_slice(&data), true).await;
        r.unwrap();
        let (_, r) = dev.write(65536, AlignedBuf::from_slice(&data), false).await;
        r.unwrap();
        dev.flush().await.unwrap();
        for at in [8192, 65536] {
            let (buf, r) = dev.read(at, AlignedBuf::zeroed(data.len())).await;
            r.unwrap();
            assert_eq!(&buf[..], &data[..]);
        }
        let (buf, r) = dev.read(0, AlignedBuf::zeroed(8192)).await;
        r.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn past_the_end_fails_without_hanging() {
        let file = TempFile::new("short", 64 << 10);
        let Some(dev) = open(&file.0) else { return };
        let (buf, r) = dev.read(60 << 10, AlignedBuf::zeroed(8192)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(buf.len(), 8192);
        // The file shrinks under the device: the first half of the read succeeds, the
        // remainder is resubmitted, reads nothing and must fail.
        File::options()
            .write(true)
            .open(&file.0)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let read = dev.read(0, AlignedBuf::zeroed(8192));
        let (buf, r) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("read hung");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(buf.len(), 8192);
        let (_, r) = dev.read(32 << 10, AlignedBuf::zeroed(4096)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // The device still works afterwards.
        dev.write(0, AlignedBuf::from_slice(&[9; 4096]), true)
            .await
            .1
            .unwrap();
        dev.flush().await.unwrap();
    }

    #[tokio::test]
    async fn cancelled_requests_do_not_break_the_ring() {
        let file = TempFile::new("cancel", 1 << 20);
        let Some(dev) = open(&file.0) else { return };
        for i in 1..64u64 {
            // Dropped before (or while) the ring thread sees it.
            let _ = futures::FutureExt::now_or_never(dev.write(
                i * 4096,
                AlignedBuf::from_slice(&[1; 4096]),
                true,
            ));
        }
        dev.write(0, AlignedBuf::from_slice(&[2; 4096]), true)
            .await
            .1
            .unwrap();
        let (buf, r) = dev.read(0, AlignedBuf::zeroed(4096)).await;
        r.unwrap();
        assert!(buf.iter().all(|&b| b == 2));
        drop(dev);
    }
}
