//! A block device or regular file driven with positioned O_DIRECT IO on tokio's blocking
//! thread pool. Durable writes use `pwritev2(RWF_DSYNC)`; `flush` is `fdatasync`.
//! `UringDevice` is the fast path; this one is the portable fallback and the reference the
//! conformance suite compares against.

use super::{check_aligned, AlignedBuf, BlockDevice, IoFuture};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

pub struct FileDevice {
    file: Arc<File>,
    size: u64,
    _lock: DeviceLock,
}

/// An exclusive advisory lock on a device path, held while a device is open on it: two
/// processes (two OSDs started on one store, or fsck beside a running OSD) would each
/// replay and overwrite the other's journal. Taken on a descriptor of its own, so it is
/// released when the device is dropped even if the kernel still holds the data descriptor
/// (an io_uring ring tears down asynchronously).
pub struct DeviceLock {
    _file: File,
}

impl DeviceLock {
    pub fn take(path: &Path) -> io::Result<DeviceLock> {
        let file = OpenOptions::new().read(true).open(path)?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is in use by another process (another OSD or fsck on the same \
                         device?); refusing to open it twice",
                        path.display()
                    ),
                ));
            }
            return Err(e);
        }
        Ok(DeviceLock { _file: file })
    }
}

/// Opens a device or file for direct IO; where the filesystem refuses O_DIRECT (tmpfs) it
/// falls back to buffered IO and says so (durable writes and flushes still sync).
pub fn open_direct(path: &Path) -> io::Result<File> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "{}: O_DIRECT refused by the filesystem, using buffered IO",
                path.display()
            );
            open(0)
        }
        Err(e) => Err(e),
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

impl FileDevice {
    pub fn open(path: &Path) -> io::Result<FileDevice> {
        let lock = DeviceLock::take(path)?;
        let file = open_direct(path)?;
        let size = device_size(&file)?;
        Ok(FileDevice {
            file: Arc::new(file),
            size,
            _lock: lock,
        })
    }
}

fn pwrite_dsync(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_ptr() as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: iov points into `buf`, which outlives the call.
        let n = unsafe {
            libc::pwritev2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as i64,
                libc::RWF_DSYNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "device accepted no bytes",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))
}

impl FileDevice {
    /// Checks the range, then runs `io` on the blocking pool and hands the buffer back.
    fn positioned(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
        io: impl FnOnce(&File, &mut [u8], u64) -> io::Result<()> + Send + 'static,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        let file = Arc::clone(&self.file);
        let size = self.size;
        Box::pin(async move {
            if let Err(e) = check_aligned(offset, buf.len(), size) {
                return (buf, Err(e));
            }
            match blocking(move || {
                let r = io(&file, &mut buf, offset);
                (buf, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => (AlignedBuf::zeroed(0), Err(e)),
            }
        })
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        self.positioned(offset, buf, |file, buf, offset| {
            file.read_exact_at(buf, offset)
        })
    }

    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        self.positioned(offset, buf, move |file, buf, offset| {
            if durable {
                pwrite_dsync(file, buf, offset)
            } else {
                file.write_all_at(buf, offset)
            }
        })
    }

    fn flush(&self) -> IoFuture<'_, io::Result<()>> {
        let file = Arc::clone(&self.file);
        Box::pin(async move { blocking(move || file.sync_data()).await? })
    }
}
