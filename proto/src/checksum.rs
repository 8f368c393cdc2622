//! CRC-32C (Castagnoli) checksums, per 4 KiB block for data and over whole records for
//! frames and on-disk metadata.

use crate::map::BLOCK_SIZE;

pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// One crc32c per `BLOCK_SIZE` block of `data` (whose length is a multiple of it).
pub fn block_crcs(data: &[u8]) -> Vec<u32> {
    debug_assert_eq!(data.len() % BLOCK_SIZE as usize, 0);
    data.chunks(BLOCK_SIZE as usize).map(crc32c).collect()
}

/// The crc32c of a block of zeroes, which reads of never-written blocks carry.
pub fn zero_block_crc() -> u32 {
    static ZERO: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
    crc32c(&ZERO)
}

/// Checks `data` against `crcs`; returns the index of the first bad block.
pub fn verify_blocks(data: &[u8], crcs: &[u32]) -> Result<(), usize> {
    if data.len() != crcs.len() * BLOCK_SIZE as usize {
        return Err(0);
    }
    for (i, (block, crc)) in data.chunks(BLOCK_SIZE as usize).zip(crcs).enumerate() {
        if crc32c(block) != *crc {
            return Err(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The standard CRC-32C check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn verify_detects_a_flipped_bit() {
        let mut d = vec![7u8; 8192];
        let c = block_crcs(&d);
        assert!(verify_blocks(&d, &c).is_ok());
        d[5000] ^= 1;
        assert_eq!(verify_blocks(&d, &c), Err(1));
    }
}
