//! The block device seam. The store reads and writes whole, aligned 4 KiB blocks through
//! this trait; the file/block-device implementation uses O_DIRECT (so the page cache never
//! holds acknowledged data) and O_DSYNC (so a completed write is durable: the "immediate"
//! durability mode). The store issue replaces it with io_uring and adds a simulated device
//! that loses and tears unsynced writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub const ALIGN: usize = 4096;

pub trait BlockDevice: Send + Sync + 'static {
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset` (both aligned to `ALIGN`, `buf` too).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`; durable when it returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

pub struct FileDevice {
    file: File,
    size: u64,
}

impl FileDevice {
    /// Opens a block device or a regular file for direct, synchronous IO. Falls back to
    /// buffered+O_DSYNC only where the filesystem refuses O_DIRECT (tmpfs), and says so.
    pub fn open(path: &Path) -> io::Result<FileDevice> {
        let open = |flags: i32| OpenOptions::new().read(true).write(true).custom_flags(flags).open(path);
        let file = match open(libc::O_DIRECT | libc::O_DSYNC) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!("{}: O_DIRECT refused by the filesystem, using buffered O_DSYNC IO", path.display());
                open(libc::O_DSYNC)?
            }
            Err(e) => return Err(e),
        };
        let size = device_size(&file)?;
        Ok(FileDevice { file, size })
    }
}

/// The size of a regular file or a block device.
pub fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
}

/// A heap buffer aligned for O_DIRECT.
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
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b[..data.len()].copy_from_slice(data);
        b
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
