//! Fuzz harness for every on-disk record decoder, on the stable toolchain (proptest-driven):
//! random bytes, and valid records with random bytes changed. A decoder must never panic,
//! and whatever it accepts must encode back to a record it accepts again.
//! `FUZZ_CASES` sets the number of cases per target (default 2000: the smoke run in
//! `make test`; `make test-long` runs far more).

use osd::store::layout::{
    reseal_block, CheckpointEntry, CheckpointHeader, JournalBlock, Record, Superblock, BLOCK,
    KIND_TRIM, KIND_WRITE,
};
use proptest::prelude::*;
use proto::{ObjectId, Version};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

fn valid_journal_block() -> Vec<u8> {
    let w = Record {
        kind: KIND_WRITE,
        id: 5,
        object: ObjectId {
            pool: 1,
            image: 2,
            index: 3,
        },
        version: Version { epoch: 4, seq: 5 },
        first_block: 1,
        nblocks: 2,
        phys: vec![7, 8],
        crcs: vec![9, 10],
    };
    let t = Record {
        kind: KIND_TRIM,
        id: 6,
        phys: vec![],
        crcs: vec![],
        ..w.clone()
    };
    let mut b = vec![0u8; BLOCK];
    JournalBlock {
        seq: 1,
        generation: 2,
        durable_upto: 4,
        records: vec![w, t],
    }
    .encode(&mut b);
    b
}

fn valid_checkpoint_body() -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..3u64 {
        CheckpointEntry {
            object: ObjectId {
                pool: 1,
                image: 2,
                index: i,
            },
            version: Version { epoch: 1, seq: i },
            last_record_id: i,
            blocks: vec![(0, i as u32, 1), (3, 100 + i as u32, 2)],
        }
        .encode(&mut body);
    }
    body
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for (at, v) in edits {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] = *v;
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn superblock_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..5000), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let _ = Superblock::decode(&bytes);
        let valid = Superblock::plan(1, 2, 3, 64 << 20).unwrap().encode();
        let mut resealed = mutate(valid.clone(), &edits);
        reseal_block(&mut resealed);
        for b in [mutate(valid, &edits), resealed] {
            if let Ok(sb) = Superblock::decode(&b) {
                prop_assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
            }
        }
    }

    #[test]
    fn journal_block_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..5000), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let _ = JournalBlock::decode(&bytes);
        // Past the checksum too: the record parser sees the mutated bytes.
        let mut resealed = mutate(valid_journal_block(), &edits);
        JournalBlock::reseal(&mut resealed);
        for b in [mutate(valid_journal_block(), &edits), resealed] {
            if let Ok(j) = JournalBlock::decode(&b) {
                let mut again = vec![0u8; BLOCK];
                j.encode(&mut again);
                prop_assert_eq!(JournalBlock::decode(&again).unwrap(), j);
            }
        }
    }

    #[test]
    fn checkpoint_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..5000), objects in 0u64..1_000_000, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let _ = CheckpointHeader::decode(&bytes);
        let mut header = mutate(CheckpointHeader { seq: 1, objects: 3, ..Default::default() }.encode(), &edits);
        reseal_block(&mut header);
        if let Ok(h) = CheckpointHeader::decode(&header) {
            prop_assert_eq!(CheckpointHeader::decode(&h.encode()).unwrap(), h);
        }
        let _ = CheckpointEntry::decode_all(&bytes, objects);
        if let Ok(entries) = CheckpointEntry::decode_all(&mutate(valid_checkpoint_body(), &edits), 3) {
            let mut again = Vec::new();
            for e in &entries {
                e.encode(&mut again);
            }
            prop_assert_eq!(CheckpointEntry::decode_all(&again, 3).unwrap(), entries);
        }
    }
}
