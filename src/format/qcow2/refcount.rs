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

/// Stores `value` as entry `index` of a refcount block (the encoding
/// `entry` reads). A value too wide for the entry is an error (the
/// caller reports the overflow); the block is unchanged then.
pub fn set_entry(block: &mut [u8], index: u64, order: u32, value: u64) -> Result<()> {
    let bits = 1u64 << order;
    if bits < 64 && value >> bits != 0 {
        return Err(Error::TooLarge(format!(
            "refcount {value} does not fit in {bits} bits"
        )));
    }
    let bit = index
        .checked_mul(bits)
        .filter(|b| b / 8 < block.len() as u64)
        .ok_or_else(|| Error::Corrupt(format!("refcount entry {index} lies outside its block")))?;
    let byte = (bit / 8) as usize;
    if bits < 8 {
        let shift = bit % 8;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        block[byte] = (block[byte] & !mask) | ((value << shift) as u8 & mask);
    } else {
        let n = (bits / 8) as usize;
        for (i, b) in block[byte..byte + n].iter_mut().enumerate() {
            *b = (value >> (8 * (n - 1 - i))) as u8;
        }
    }
    Ok(())
}

/// The largest refcount an entry of `1 << order` bits holds.
pub fn max_value(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
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
    fn encoder_round_trips_every_width() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 64];
            let n = 64 * 8 / (1u64 << order);
            let max = max_value(order);
            for i in 0..n {
                let v = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 3) & max;
                set_entry(&mut block, i, order, v).unwrap();
            }
            for i in 0..n {
                let v = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 3) & max;
                assert_eq!(
                    entry(&block, i, order).unwrap(),
                    v,
                    "order {order} entry {i}"
                );
            }
            if order < 6 {
                let before = block.clone();
                assert!(set_entry(&mut block, 0, order, max + 1).is_err());
                assert_eq!(block, before);
            }
            assert!(set_entry(&mut block, n, order, 0).is_err());
        }
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
