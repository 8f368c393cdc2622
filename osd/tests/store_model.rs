//! Model-based test of the object store on a real file: random writes, trims, reads and
//! reopens, compared after every step with a trivial in-memory model. (Crash points with
//! lost and torn writes come with the simulated device of the store issue.)

use bytes::Bytes;
use osd::store::device::FileDevice;
use osd::store::layout::Superblock;
use osd::store::{Store, StoreError};
use proto::checksum::block_crcs;
use proto::{ObjectId, Version};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const OBJECT_SIZE: u32 = 16 << 10;
const BLOCK: u32 = 4096;

fn new_store(path: &std::path::Path, slots: u64) -> Store {
    let size = 4096 + slots * (4096 + OBJECT_SIZE as u64);
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let dev = FileDevice::open(path).unwrap();
    let sb = Superblock { fsid: 1, store_uuid: 2, osd_id: 0, object_size: OBJECT_SIZE, device_size: size, slot_count: slots };
    Store::format(&dev, &sb).unwrap();
    Store::open_path(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_matches_model_across_reopens() {
    let dir = std::env::temp_dir().join(format!("atlant-store-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.img");
    let slots = 12;
    let mut store = new_store(&path, slots);
    let mut model: BTreeMap<ObjectId, (Vec<u8>, Version)> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xa71a);
    let mut seq = 0;
    for step in 0..1500 {
        let object = ObjectId { pool: 1, image: 7, index: rng.random_range(0..16) };
        let first = rng.random_range(0..OBJECT_SIZE / BLOCK);
        let blocks = rng.random_range(1..=OBJECT_SIZE / BLOCK - first);
        let (offset, length) = (first * BLOCK, blocks * BLOCK);
        match rng.random_range(0..10) {
            0..=4 => {
                let data: Vec<u8> = (0..length).map(|_| rng.random()).collect();
                seq += 1;
                let v = Version { epoch: 3, seq };
                let r = store.write(object, offset, Bytes::from(data.clone()), &block_crcs(&data), v).await;
                let full = !model.contains_key(&object) && model.len() as u64 == slots;
                match r {
                    Err(StoreError::NoSpace(_)) => assert!(full, "step {step}: ENOSPC with free slots"),
                    Err(e) => panic!("step {step}: {e}"),
                    Ok(()) => {
                        assert!(!full, "step {step}: write succeeded on a full store");
                        let e = model.entry(object).or_insert_with(|| (vec![0; OBJECT_SIZE as usize], Version::NONE));
                        e.0[offset as usize..(offset + length) as usize].copy_from_slice(&data);
                        e.1 = v;
                    }
                }
            }
            5 => {
                seq += 1;
                let v = Version { epoch: 3, seq };
                let full = !model.contains_key(&object) && model.len() as u64 == slots;
                match store.trim(object, offset, length, v).await {
                    Err(StoreError::NoSpace(_)) => assert!(full),
                    Err(e) => panic!("step {step}: {e}"),
                    Ok(()) => {
                        let e = model.entry(object).or_insert_with(|| (vec![0; OBJECT_SIZE as usize], Version::NONE));
                        e.0[offset as usize..(offset + length) as usize].fill(0);
                        e.1 = v;
                    }
                }
            }
            6 => {
                drop(store);
                store = Store::open_path(&path).unwrap();
            }
            _ => {
                let (data, crcs, version) = store.read(object, offset, length).await.unwrap();
                let (want, want_v) = model.get(&object).cloned().unwrap_or((vec![0; OBJECT_SIZE as usize], Version::NONE));
                assert_eq!(&data[..], &want[offset as usize..(offset + length) as usize], "step {step}: {object}");
                assert_eq!(crcs, block_crcs(&data));
                assert_eq!(version, want_v);
            }
        }
        assert_eq!(store.version(&object), model.get(&object).map(|m| m.1).unwrap_or_default());
    }
    // Every object, whole, after a last reopen.
    drop(store);
    let store = Store::open_path(&path).unwrap();
    for (object, (want, v)) in &model {
        let (data, _, version) = store.read(*object, 0, OBJECT_SIZE).await.unwrap();
        assert_eq!(&data[..], &want[..]);
        assert_eq!(version, *v);
    }
    assert_eq!(store.stats().objects as usize, model.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_flipped_bit_on_disk_is_a_checksum_error_not_bad_bytes() {
    let dir = std::env::temp_dir().join(format!("atlant-store-bitrot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.img");
    let store = new_store(&path, 4);
    let object = ObjectId { pool: 1, image: 1, index: 0 };
    let data = vec![0x5au8; OBJECT_SIZE as usize];
    store.write(object, 0, Bytes::from(data.clone()), &block_crcs(&data), Version { epoch: 1, seq: 1 }).await.unwrap();
    drop(store);
    // Slot 0's data starts after the superblock and the slot header.
    let mut raw = std::fs::read(&path).unwrap();
    raw[4096 + 4096 + 5000] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
    let store = Store::open_path(&path).unwrap();
    assert!(store.read(object, 0, BLOCK).await.is_ok(), "block 0 is intact");
    match store.read(object, 4096, BLOCK).await {
        Err(StoreError::Checksum { object: o, offset }) => {
            assert_eq!(o, object);
            assert_eq!(offset, 4096);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(store.checksum_errors(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
