//! Refcount blocks: entries of 1 to 64 bits. Pure decoding; the read side
//! uses it to detect metadata preallocation (as QEMU's block status does),
//! the write side will build on it.

use crate::error::{Error, Result};

/// The refcount of entry `index` in a refcount block, for entries of
/// `1 << order` bits. Sub-byte entries are packed from the least
/// significant bit of each byte; wider ones are big-endian.
pub fn entry(block: &[u8], index: u64, order: u32) -> Result<u64> {
    let bits = 1u64 << order;
    let bit = index
        .checked_mul(bits)
        .filter(|b| b / 8 < block.len() as u64)
        .ok_or_else(|| Error::Corrupt(format!("refcount entry {index} lies outside its block")))?;
    let byte = (bit / 8) as usize;
    Ok(if bits < 8 {
        let shift = bit % 8;
        ((block[byte] >> shift) as u64) & ((1 << bits) - 1)
    } else {
        let n = (bits / 8) as usize;
        block[byte..byte + n]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    })
}

/// Where the refcount of host cluster `cluster` lives: (refcount table
/// index, index inside the block).
pub fn position(cluster: u64, cluster_bits: u32, order: u32) -> (u64, u64) {
    let per_block_bits = cluster_bits + 3 - order;
    (
        cluster >> per_block_bits,
        cluster & ((1 << per_block_bits) - 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width() {
        let block = [
            0b1011_0110u8,
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a,
            0xbc,
            0xde,
            0xf0,
        ];
        // 1 bit: LSB first.
        let bits: Vec<u64> = (0..8).map(|i| entry(&block, i, 0).unwrap()).collect();
        assert_eq!(bits, vec![0, 1, 1, 0, 1, 1, 0, 1]);
        assert_eq!(entry(&block, 1, 1).unwrap(), 0b01);
        assert_eq!(entry(&block, 1, 2).unwrap(), 0b1011);
        assert_eq!(entry(&block, 1, 3).unwrap(), 0x12);
        assert_eq!(entry(&block, 1, 4).unwrap(), 0x3456);
        assert_eq!(entry(&block, 1, 5).unwrap(), 0x789a_bcde);
        assert_eq!(entry(&block[1..], 0, 6).unwrap(), 0x1234_5678_9abc_def0);
        assert!(entry(&block, 2, 6).is_err());
        assert!(entry(&block, u64::MAX, 6).is_err());
    }

    #[test]
    fn positions() {
        // 64 KiB clusters, 16-bit refcounts: 32768 entries per block.
        assert_eq!(position(32769, 16, 4), (1, 1));
        // 512-byte clusters, 64-bit refcounts: 64 entries per block.
        assert_eq!(position(130, 9, 6), (2, 2));
        // 512-byte clusters, 1-bit refcounts: 4096 entries per block.
        assert_eq!(position(4095, 9, 0), (0, 4095));
    }
}
