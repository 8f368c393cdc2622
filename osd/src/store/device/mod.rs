//! The block device seam. The store reads and writes whole, aligned 4 KiB blocks through
//! this trait and nothing else, so a simulated device can replace the real one.
//!
//! Durability contract (what the store relies on):
//! - a `write` with `durable = true` is on stable storage when it completes (O_DIRECT +
//!   RWF_DSYNC, i.e. FUA or write + cache flush);
//! - a `write` with `durable = false` may be lost, torn (partly applied, in sectors) or
//!   reordered with other such writes by a crash, until a later `flush` completes;
//! - `flush` makes every write completed before it durable;
//! - reads return the latest completed write.
//!
//! Implementations: `FileDevice` (a block device or file, positioned IO on a thread pool),
//! `uring::UringDevice` (io_uring), `sim::SimDevice` (in memory, with crashes), and
//! `delay::DelayedDevice` (any of them answering late, for fault tests).

use std::future::Future;
use std::io;
use std::pin::Pin;

pub const ALIGN: usize = 4096;

pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait BlockDevice: Send + Sync + 'static {
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset` into `buf` and hands the buffer back.
    fn read(&self, offset: u64, buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)>;
    /// Writes `buf` at `offset` (see the durability contract above).
    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)>;
    /// Makes every completed write durable.
    fn flush(&self) -> IoFuture<'_, io::Result<()>>;
}

pub fn check_aligned(offset: u64, len: usize, size: u64) -> io::Result<()> {
    if !offset.is_multiple_of(ALIGN as u64) || !len.is_multiple_of(ALIGN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unaligned io {offset}+{len}"),
        ));
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("io {offset}+{len} past the end {size}"),
        ));
    }
    Ok(())
}

/// A heap buffer aligned for O_DIRECT, a multiple of `ALIGN` bytes long.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// The buffer owns its allocation exclusively.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to `ALIGN`).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let len = len.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("aligned layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b[..data.len()].copy_from_slice(data);
        b
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, ALIGN).expect("aligned layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

pub mod delay;
pub mod file;
pub mod sim;
pub mod uring;

pub use file::FileDevice;
pub use sim::SimDevice;

/// Opens a device path with the fastest implementation available here: io_uring when the
/// kernel allows it, positioned IO on a thread pool otherwise (said once in the log).
/// With `ATLANT_OSD_DEVICE_DELAY` set, the device answers late (`delay`, for fault tests).
pub fn open_best(path: &std::path::Path) -> io::Result<std::sync::Arc<dyn BlockDevice>> {
    let delay = match std::env::var(delay::ENV) {
        Ok(v) => Some(
            v.parse::<delay::DelaySpec>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        ),
        Err(_) => None,
    };
    let dev = open_fastest(path)?;
    Ok(match delay {
        Some(spec) => {
            tracing::warn!(
                "{}: every IO delayed as {} says: {spec:?}",
                path.display(),
                delay::ENV
            );
            std::sync::Arc::new(delay::DelayedDevice::new(dev, spec, rand::random()))
        }
        None => dev,
    })
}

fn open_fastest(path: &std::path::Path) -> io::Result<std::sync::Arc<dyn BlockDevice>> {
    if std::env::var_os("ATLANT_NO_URING").is_none() {
        match uring::UringDevice::open(path) {
            Ok(d) => return Ok(std::sync::Arc::new(d)),
            Err(e) => tracing::warn!(
                "{}: {e}; using positioned IO on a thread pool",
                path.display()
            ),
        }
    }
    Ok(std::sync::Arc::new(FileDevice::open(path)?))
}
