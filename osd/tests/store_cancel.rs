//! A store mutation runs to completion when its caller stops waiting (an op dropped by an
//! interval change or a closed connection). Found by the whole-cluster simulator: a write
//! dropped after its record was journaled but before it was applied stayed "in flight"
//! forever; its journal block held the ring's tail, and once the ring filled the journal
//! writer checkpointed in a loop and no write completed again.
//!
//! A write still in flight on a slow disk holds the ring's tail the same way, rightly,
//! until it lands: meanwhile no checkpoint is written, as none could move the tail (the
//! simulator found an OSD writing its whole index once per journal block).

use bytes::Bytes;
use osd::store::device::{AlignedBuf, BlockDevice, IoFuture, SimDevice};
use osd::store::layout::Superblock;
use osd::store::{Durability, Store};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const DEVICE: u64 = 4 << 20;

fn object(index: u64) -> ObjectId {
    ObjectId {
        pool: 1,
        image: 1,
        index,
    }
}

#[tokio::test]
async fn a_write_whose_caller_stops_waiting_completes_and_the_journal_moves_on() {
    let dev = SimDevice::new(DEVICE);
    let sb = Superblock::plan(1, 2, 3, DEVICE).unwrap();
    Store::format(&*dev, &sb).await.unwrap();
    let store = Store::open(dev, Durability::Immediate).await.unwrap();
    let journal_blocks = store.superblock.journal_blocks;

    let first = vec![7u8; 4096];
    let v1 = Version { epoch: 1, seq: 1 };
    let crcs = block_crcs(&first);
    {
        let write = store.write(object(0), 0, Bytes::from(first.clone()), &crcs, v1);
        tokio::pin!(write);
        // One poll (the record is allocated and on its way to the journal), then the
        // caller goes away.
        tokio::select! {
            biased;
            _ = &mut write => panic!("the write finished in its first poll"),
            _ = std::future::ready(()) => {}
        }
    }

    // Enough writes, one at a time, to wrap the journal ring three times.
    let n = journal_blocks * 3;
    let more = async {
        for i in 0..n {
            let data = vec![(i % 251) as u8; 4096];
            let v = Version {
                epoch: 1,
                seq: 2 + i,
            };
            store
                .write(
                    object(1 + i % 8),
                    0,
                    Bytes::from(data.clone()),
                    &block_crcs(&data),
                    v,
                )
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), more)
        .await
        .unwrap_or_else(|_| {
            panic!("writes stopped completing within {n} writes: the journal's tail is held")
        });

    // The abandoned write landed whole.
    let (data, _, version) = store.read(object(0), 0, 4096).await.unwrap();
    assert_eq!(version, v1);
    assert_eq!(&data[..], &first[..]);
}

/// A device whose first write at or after `from` waits until `release` is notified (a
/// data write stuck on a slow disk).
struct HoldOne {
    inner: Arc<SimDevice>,
    from: u64,
    holding: AtomicBool,
    held: AtomicBool,
    release: Notify,
}

impl BlockDevice for HoldOne {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read(&self, offset: u64, buf: AlignedBuf) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        self.inner.read(offset, buf)
    }

    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        durable: bool,
    ) -> IoFuture<'_, (AlignedBuf, io::Result<()>)> {
        let hold = offset >= self.from
            && self.holding.load(Ordering::SeqCst)
            && !self.held.swap(true, Ordering::SeqCst);
        Box::pin(async move {
            if hold {
                self.release.notified().await;
            }
            self.inner.write(offset, buf, durable).await
        })
    }

    fn flush(&self) -> IoFuture<'_, io::Result<()>> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn no_checkpoint_is_written_while_a_slow_write_holds_the_tail() {
    let sim = SimDevice::new(DEVICE);
    let sb = Superblock::plan(1, 2, 3, DEVICE).unwrap();
    Store::format(&*sim, &sb).await.unwrap();
    let dev = Arc::new(HoldOne {
        inner: sim,
        from: sb.data_block_offset(0),
        holding: AtomicBool::new(false),
        held: AtomicBool::new(false),
        release: Notify::new(),
    });
    let store = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    let journal_blocks = store.superblock.journal_blocks;
    let write = {
        let store = Arc::clone(&store);
        move |i: u64| {
            let store = Arc::clone(&store);
            async move {
                let data = vec![(i % 251) as u8; 4096];
                let v = Version { epoch: 1, seq: i };
                store
                    .write(
                        object(i % 8),
                        0,
                        Bytes::from(data.clone()),
                        &block_crcs(&data),
                        v,
                    )
                    .await
            }
        }
    };

    dev.holding.store(true, Ordering::SeqCst);
    let slow = tokio::spawn(write(1));
    while !dev.held.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // Past half the ring (each journal block would start a checkpoint), and on until the
    // ring is full and the writes wait for the slow one.
    let before = store.checkpoints_written();
    let writer = tokio::spawn({
        let write = write.clone();
        async move {
            for i in 2..journal_blocks * 3 {
                write(i).await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the ring filled with its tail held");
    let during = store.checkpoints_written() - before;
    assert_eq!(
        during, 0,
        "{during} checkpoints written while the slow write held the tail ({journal_blocks} journal blocks)"
    );

    // The slow write lands; the journal moves on, through the ring twice more.
    dev.release.notify_one();
    slow.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writes stopped completing after the slow write landed")
        .unwrap();
    assert!(store.checkpoints_written() > before);
}
