//! A store mutation runs to completion when its caller stops waiting (an op dropped by an
//! interval change or a closed connection). Found by the whole-cluster simulator: a write
//! dropped after its record was journaled but before it was applied stayed "in flight"
//! forever; its journal block held the ring's tail, and once the ring filled the journal
//! writer checkpointed in a loop and no write completed again.

use bytes::Bytes;
use osd::store::device::SimDevice;
use osd::store::layout::Superblock;
use osd::store::{Durability, Store};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use std::time::Duration;

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
