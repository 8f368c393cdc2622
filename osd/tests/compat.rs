//! Backward compatibility: a small device image written by store format 2 is checked in
//! (`fixtures/store-v2.blocks`: its non-zero 4 KiB blocks as `offset u64 LE` + bytes). Every
//! later version must open it, replay its journal, and read back exactly what was written.
//! The image holds a checkpoint and journal records written after it, so both paths count.
//! Regenerate only when adding a new format (`cargo test --release -p atlant-osd --test
//! compat -- --ignored write_fixture`), and keep the old fixtures.

use bytes::Bytes;
use osd::store::device::{AlignedBuf, BlockDevice, SimDevice};
use osd::store::layout::Superblock;
use osd::store::{Durability, Store};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use std::path::PathBuf;
use std::sync::Arc;

const DEVICE: u64 = 4 << 20;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2.blocks")
}

/// The writes the fixture holds: (object, offset, data, version); trims are in `trims`.
fn writes() -> Vec<(ObjectId, u32, Vec<u8>, Version)> {
    (0..6u64)
        .map(|i| {
            let data: Vec<u8> = (0..8192)
                .map(|k| (i as u8).wrapping_mul(31).wrapping_add((k / 7) as u8))
                .collect();
            (
                ObjectId {
                    pool: 1,
                    image: 42,
                    index: i,
                },
                (i as u32 % 3) * 4096,
                data,
                Version {
                    epoch: 3,
                    seq: i + 1,
                },
            )
        })
        .collect()
}

fn expected(object: ObjectId) -> (Vec<u8>, Version) {
    let mut b = vec![0u8; 32768];
    let mut v = Version::NONE;
    for (o, off, data, ver) in writes() {
        if o == object {
            b[off as usize..off as usize + data.len()].copy_from_slice(&data);
            v = ver;
        }
    }
    if object.index == 5 {
        b[4096 * 3..4096 * 4].fill(0);
        v = Version { epoch: 3, seq: 100 };
    }
    (b, v)
}

#[tokio::test]
#[ignore]
async fn write_fixture() {
    let dev = SimDevice::new(DEVICE);
    let sb = Superblock::plan(0xfeed, 0xbeef, 7, DEVICE).unwrap();
    Store::format(&*dev, &sb).await.unwrap();
    let store = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    for (o, off, data, v) in writes() {
        store
            .write(o, off, Bytes::from(data.clone()), &block_crcs(&data), v)
            .await
            .unwrap();
    }
    store
        .trim(
            ObjectId {
                pool: 1,
                image: 42,
                index: 5,
            },
            4096 * 3,
            4096,
            Version { epoch: 3, seq: 100 },
        )
        .await
        .unwrap();
    drop(store);
    let mut out = Vec::new();
    for at in (0..DEVICE).step_by(4096) {
        let (b, r) = dev.read(at, AlignedBuf::zeroed(4096)).await;
        r.unwrap();
        if b.iter().any(|&x| x != 0) {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
    std::fs::write(fixture(), out).unwrap();
}

#[tokio::test]
async fn format_2_fixture_still_reads() {
    let raw = std::fs::read(fixture()).expect("fixture present");
    assert_eq!(raw.len() % (8 + 4096), 0);
    let dev = SimDevice::new(DEVICE);
    for chunk in raw.chunks(8 + 4096) {
        let at = u64::from_le_bytes(chunk[..8].try_into().unwrap());
        dev.write(at, AlignedBuf::from_slice(&chunk[8..]), true)
            .await
            .1
            .unwrap();
    }
    let report = osd::store::fsck::fsck(&*dev).await;
    assert!(report.ok(), "{report}");
    let store: Arc<Store> = Store::open(dev.clone(), Durability::Immediate)
        .await
        .unwrap();
    assert_eq!(store.superblock.osd_id, 7);
    assert_eq!(store.superblock.fsid, 0xfeed);
    for i in 0..6u64 {
        let o = ObjectId {
            pool: 1,
            image: 42,
            index: i,
        };
        let (data, _, version) = store.read(o, 0, 32768).await.unwrap();
        let (want, v) = expected(o);
        assert_eq!(&data[..], &want[..], "object {i}");
        assert_eq!(version, v, "object {i}");
    }
}
