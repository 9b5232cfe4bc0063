//! Compression and decompression of clusters. Decompression output is
//! bounded to one cluster: the decoder fills exactly `out` and stops,
//! whatever the input claims.

use super::header::Compression;
use crate::error::{Error, Result};

/// Decompresses `input` (the bytes a compressed descriptor covers) into
/// `out`, which must be filled completely, as QEMU requires. Bytes after
/// the end of the compressed stream (the tail of the last sector) are
/// ignored.
pub fn decompress(kind: Compression, input: &[u8], out: &mut [u8]) -> Result<()> {
    match kind {
        Compression::Zlib => inflate_raw(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

/// Compresses one cluster as QEMU does (raw deflate with a 4 KiB window,
/// which QEMU's decoder requires; or one zstd frame), into at most `max`
/// bytes. `None` when the result would not fit: the caller then writes
/// the cluster uncompressed.
pub fn compress(kind: Compression, input: &[u8], max: usize) -> Result<Option<Vec<u8>>> {
    match kind {
        Compression::Zlib => deflate_raw(input, max),
        Compression::Zstd => {
            let mut out = vec![0u8; max];
            // An error here is "destination too small" (the input is a
            // plain buffer): not compressible enough.
            let n = zstd::bulk::compress_to_buffer(
                input,
                &mut out[..],
                zstd::DEFAULT_COMPRESSION_LEVEL,
            );
            Ok(n.ok().map(|n| {
                out.truncate(n);
                out
            }))
        }
    }
}

fn deflate_raw(input: &[u8], max: usize) -> Result<Option<Vec<u8>>> {
    use flate2::{Compress, Compression as Level, FlushCompress, Status};
    let mut c = Compress::new_with_window_bits(Level::default(), false, 12);
    let mut out = Vec::with_capacity(max);
    let st = c
        .compress_vec(input, &mut out, FlushCompress::Finish)
        .map_err(|e| Error::io("compressing a cluster (deflate)", std::io::Error::other(e)))?;
    Ok(match st {
        Status::StreamEnd => Some(out),
        _ => None,
    })
}

fn bad(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::BadData(format!("compressed cluster: {what}: {detail}"))
}

/// Raw deflate (no zlib header), as QEMU writes it.
fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<()> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut d = Decompress::new(false);
    loop {
        let inn = d.total_in() as usize;
        let outn = d.total_out() as usize;
        let st = d
            .decompress(&input[inn..], &mut out[outn..], FlushDecompress::Finish)
            .map_err(|e| bad("deflate data is invalid", e))?;
        let filled = d.total_out() as usize == out.len();
        match st {
            _ if filled => return Ok(()),
            Status::StreamEnd => {
                return Err(bad(
                    "deflate stream ends early",
                    format!("{} of {} bytes", d.total_out(), out.len()),
                ))
            }
            _ if d.total_in() as usize == inn && d.total_out() as usize == outn => {
                return Err(bad(
                    "deflate data is truncated",
                    format!("{} of {} bytes", d.total_out(), out.len()),
                ))
            }
            _ => {}
        }
    }
}

/// zstd frames, decoded with a streaming decoder into exactly `out`.
fn unzstd(input: &[u8], out: &mut [u8]) -> Result<()> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut d = Decoder::new().map_err(|e| bad("zstd decoder", e))?;
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    while outb.pos() < outb.capacity() {
        let (ip, op) = (inb.pos(), outb.pos());
        d.run(&mut inb, &mut outb)
            .map_err(|e| bad("zstd data is invalid", e))?;
        if inb.pos() == ip && outb.pos() == op {
            return Err(bad(
                "zstd data is truncated",
                format!("{} of {} bytes", outb.pos(), outb.capacity()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn compress_round_trips_and_gives_up_when_it_does_not_shrink() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 251) as u8).collect();
        for kind in [Compression::Zlib, Compression::Zstd] {
            let c = compress(kind, &data, data.len() - 1).unwrap().unwrap();
            assert!(c.len() < data.len() / 4, "{kind:?}: {}", c.len());
            let mut out = vec![0u8; data.len()];
            decompress(kind, &c, &mut out).unwrap();
            assert_eq!(out, data);
            // Random bytes do not shrink.
            let mut x = 0x1234_5678_9abc_def0u64;
            let noise: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(compress(kind, &noise, 4095).unwrap(), None, "{kind:?}");
        }
    }

    #[test]
    fn zlib_round_trip_with_sector_tail() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut c = deflate(&data);
        c.extend_from_slice(&[0xaa; 300]); // the rest of the last sector
        let mut out = vec![0u8; 4096];
        decompress(Compression::Zlib, &c, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zlib_short_or_garbage_is_an_error() {
        let data = vec![5u8; 4096];
        let c = deflate(&data[..1000]);
        let mut out = vec![0u8; 4096];
        let e = decompress(Compression::Zlib, &c, &mut out).unwrap_err();
        assert!(e.to_string().contains("ends early"), "{e}");
        let c = deflate(&data);
        let e = decompress(Compression::Zlib, &c[..c.len() / 2], &mut out).unwrap_err();
        assert!(e.to_string().contains("compressed cluster"), "{e}");
        let e = decompress(Compression::Zlib, &[0xff; 64], &mut out).unwrap_err();
        assert!(e.to_string().contains("compressed cluster"), "{e}");
    }

    #[test]
    fn output_is_bounded_to_the_cluster() {
        // A stream of 1 MiB decompresses into a 4 KiB cluster: only 4 KiB
        // are produced and the rest is never decoded.
        let big = vec![1u8; 1 << 20];
        let mut out = vec![0u8; 4096];
        decompress(Compression::Zlib, &deflate(&big), &mut out).unwrap();
        assert_eq!(out, vec![1u8; 4096]);
        let z = zstd::bulk::compress(&big, 3).unwrap();
        decompress(Compression::Zstd, &z, &mut out).unwrap();
        assert_eq!(out, vec![1u8; 4096]);
    }

    #[test]
    fn zstd_round_trip_and_errors() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let mut z = zstd::bulk::compress(&data, 3).unwrap();
        z.extend_from_slice(&[0; 100]);
        let mut out = vec![0u8; 65536];
        decompress(Compression::Zstd, &z, &mut out).unwrap();
        assert_eq!(out, data);
        let z = zstd::bulk::compress(&data[..100], 3).unwrap();
        assert!(decompress(Compression::Zstd, &z, &mut out).is_err());
        assert!(decompress(Compression::Zstd, &[0x28, 0xb5, 0x2f], &mut out).is_err());
    }
}
