//! Hostile and hand-built images: every check on the read path gives a
//! clear error, and concurrent readers through a tiny cache agree.

use super::features::{INCOMPAT_DATA_FILE, INCOMPAT_EXTL2};
use super::header::{Compression, EXT_DATA_FILE, MAGIC};
use super::l2::{OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::io::fault::MemStorage;
use crate::{Error, Image, OpenOptions};
use byteorder::{BigEndian, ByteOrder};
use std::path::Path;
use std::sync::Arc;

/// A qcow2 image under construction: header in cluster 0, a refcount table
/// in cluster 1 (never read here), the L1 table from cluster 2.
struct Builder {
    b: Vec<u8>,
    cb: u32,
    storage: MemStorage,
}

impl Builder {
    fn new(cb: u32, size: u64, incompat: u64, l1_size: u32) -> Builder {
        let cs = 1usize << cb;
        let mut b = vec![0u8; 3 * cs];
        b[..4].copy_from_slice(MAGIC);
        BigEndian::write_u32(&mut b[4..], 3);
        BigEndian::write_u32(&mut b[20..], cb);
        BigEndian::write_u64(&mut b[24..], size);
        BigEndian::write_u32(&mut b[36..], l1_size);
        BigEndian::write_u64(&mut b[40..], 2 * cs as u64);
        BigEndian::write_u64(&mut b[48..], cs as u64);
        BigEndian::write_u32(&mut b[56..], 1);
        BigEndian::write_u64(&mut b[72..], incompat);
        BigEndian::write_u32(&mut b[96..], 4);
        BigEndian::write_u32(&mut b[100..], 104);
        Builder {
            b,
            cb,
            storage: MemStorage::new(),
        }
    }

    fn cs(&self) -> u64 {
        1 << self.cb
    }

    fn put(&mut self, off: u64, v: u64) -> &mut Self {
        let o = off as usize;
        if self.b.len() < o + 8 {
            self.b.resize(o + 8, 0);
        }
        BigEndian::write_u64(&mut self.b[o..o + 8], v);
        self
    }

    fn bytes(&mut self, off: u64, data: &[u8]) -> &mut Self {
        let o = off as usize;
        if self.b.len() < o + data.len() {
            self.b.resize(o + data.len(), 0);
        }
        self.b[o..o + data.len()].copy_from_slice(data);
        self
    }

    fn l1(&mut self, i: u64, v: u64) -> &mut Self {
        let off = 2 * self.cs() + 8 * i;
        self.put(off, v)
    }

    /// A header extension at byte 104 (only one per image here).
    fn ext(&mut self, typ: u32, data: &[u8]) -> &mut Self {
        let mut e = vec![0u8; 8];
        BigEndian::write_u32(&mut e[0..], typ);
        BigEndian::write_u32(&mut e[4..], data.len() as u32);
        e.extend_from_slice(data);
        self.bytes(104, &e)
    }

    fn pad_to(&mut self, len: u64) -> &mut Self {
        if (self.b.len() as u64) < len {
            self.b.resize(len as usize, 0);
        }
        self
    }

    fn open_with(&self, opts: &OpenOptions) -> crate::Result<Image> {
        Image::open_in(self.fresh_storage(), Path::new("t.qcow2"), opts)
    }

    /// A storage holding the image as built and any other files put.
    fn fresh_storage(&self) -> Arc<MemStorage> {
        let mem = Arc::new(MemStorage::new());
        mem.insert("t.qcow2", self.b.clone());
        if let Some(f) = self.storage.file("t.data") {
            mem.insert("t.data", f.contents());
        }
        mem
    }

    /// The driver itself, for its internals.
    fn driver(&self, cache_size: u64) -> super::Qcow2 {
        use crate::io::{Access, Storage};
        let st = self.fresh_storage();
        let path = Path::new("t.qcow2");
        let file = st.open(path, Access::ReadOnly).unwrap();
        super::Qcow2::open(&crate::format::OpenCtx {
            storage: &*st,
            path,
            file,
            read_only: true,
            cache_size,
            snapshot: None,
            confine: None,
            metadata_only: false,
            format_opts: &[],
            repair: false,
        })
        .unwrap()
    }

    fn open(&self) -> crate::Result<Image> {
        self.open_with(&OpenOptions {
            read_only: true,
            format: Some("qcow2".into()),
            ..Default::default()
        })
    }
}

fn read_err(img: &Image, off: u64, len: usize) -> String {
    let mut buf = vec![0u8; len];
    let e = img.read(&mut buf, off).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    e.to_string()
}

#[test]
fn reads_a_hand_built_image() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    let cs = b.cs();
    b.l1(0, (3 * cs) | OFLAG_COPIED)
        .put(3 * cs, (4 * cs) | OFLAG_COPIED)
        .put(3 * cs + 8, 1) // zero, no host cluster
        .put(3 * cs + 16, (5 * cs) | 1) // zero, preallocated
        .bytes(4 * cs, &[7u8; 4096])
        .bytes(5 * cs, &[9u8; 4096]);
    let img = b.open().unwrap();
    let mut buf = vec![1u8; 4 * 4096];
    img.read(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&x| x == 7));
    assert!(buf[4096..].iter().all(|&x| x == 0));
    let (st, n) = img.block_status(2 * 4096, 4096).unwrap();
    assert_eq!((st.zero, st.offset, n), (true, Some(5 * cs), 4096));
    assert_eq!(img.info().unwrap().allocated_bytes, 4096);
}

#[test]
fn l2_table_outside_the_file() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    b.l1(0, 100 * b.cs());
    let img = b.open().unwrap();
    assert!(read_err(&img, 0, 512).contains("outside the image file"));
    // An L1 entry past 2^56 is masked to the offset field, never used raw.
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    b.l1(0, u64::MAX >> 1);
    let img = b.open().unwrap();
    assert!(read_err(&img, 0, 512).contains("not cluster aligned"));
}

#[test]
fn unaligned_l2_and_data_offsets() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    b.l1(0, 3 * b.cs() + 512);
    assert!(read_err(&b.open().unwrap(), 0, 1).contains("L2 table offset"));
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    let cs = b.cs();
    b.l1(0, 3 * cs).put(3 * cs, 4 * cs + 512).pad_to(5 * cs);
    assert!(read_err(&b.open().unwrap(), 0, 1).contains("host cluster offset"));
}

#[test]
fn compressed_descriptors_outside_the_file_or_garbage() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    let cs = b.cs();
    // Offset far past the end of the file.
    b.l1(0, 3 * cs)
        .put(3 * cs, OFLAG_COMPRESSED | (1 << 40))
        .pad_to(4 * cs);
    let img = b.open().unwrap();
    assert!(bad_data(&img, 0, 100).contains("starts past the end"));
    // Starts inside, its sectors run far past the end: the missing bytes
    // read as zeros (as QEMU reads them), which are no deflate stream.
    let shift = 62 - (12 - 8);
    b.put(3 * cs, OFLAG_COMPRESSED | (15 << shift) | (4 * cs))
        .pad_to(4 * cs + 100);
    assert!(bad_data(&b.open().unwrap(), 0, 100).contains("deflate"));
    // Inside the file, but not deflate data.
    b.bytes(4 * cs, &[0xffu8; 4096]);
    let e = bad_data(&b.open().unwrap(), 0, 100);
    assert!(e.contains("compressed cluster"), "{e}");
    // A valid stream whose descriptor claims more sectors than the file
    // has: decoded, the rest ignored once the cluster is full (iotest 214)
    let data: Vec<u8> = (0..cs).map(|i| (i % 251) as u8).collect();
    let c = super::compress::compress(Compression::Zlib, &data, cs as usize)
        .unwrap()
        .unwrap();
    b.bytes(4 * cs, &c).pad_to(4 * cs + c.len() as u64);
    let mut buf = vec![0u8; cs as usize];
    b.open().unwrap().read(&mut buf, 0).unwrap();
    assert!(buf == data);
}

/// A read that fails on undecodable data: EIO, as QEMU's qcow2.
fn bad_data(img: &Image, off: u64, len: usize) -> String {
    let mut buf = vec![0u8; len];
    let e = img.read(&mut buf, off).unwrap_err();
    assert!(matches!(e, Error::BadData(_)), "{e}");
    assert_eq!(e.errno(), libc::EIO);
    e.to_string()
}

#[test]
fn invalid_extended_l2_entries() {
    let mut b = Builder::new(14, 1 << 20, INCOMPAT_EXTL2, 1);
    let cs = b.cs();
    // Subcluster 0 allocated, but no host cluster.
    b.l1(0, 3 * cs).put(3 * cs + 8, 1).pad_to(4 * cs);
    assert!(read_err(&b.open().unwrap(), 0, 1).contains("invalid L2 entry"));
    // Allocated and zero at once.
    b.put(3 * cs, 4 * cs)
        .put(3 * cs + 8, 1 | (1 << 32))
        .pad_to(5 * cs);
    assert!(read_err(&b.open().unwrap(), 0, 1).contains("invalid L2 entry"));
}

#[test]
fn external_data_file_rules() {
    let mut b = Builder::new(12, 1 << 20, INCOMPAT_DATA_FILE, 1);
    let cs = b.cs();
    b.ext(EXT_DATA_FILE, b"t.data")
        .l1(0, 3 * cs)
        .put(3 * cs, OFLAG_COPIED) // guest 0 at host 0: fine
        .put(3 * cs + 8, (7 * cs) | OFLAG_COPIED) // guest 4k at 28k: wrong
        .put(3 * cs + 16, OFLAG_COMPRESSED | 5) // compressed: not allowed
        .pad_to(4 * cs);
    // Without the data file, opening fails naming it.
    let e = b.open().err().unwrap().to_string();
    assert!(e.contains("external data file 't.data'"), "{e}");
    b.storage.insert("t.data", vec![3u8; 1 << 20]);
    let img = b.open().unwrap();
    let mut buf = vec![0u8; 4096];
    img.read(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![3u8; 4096]);
    assert!(read_err(&img, cs, 1).contains("does not match"));
    assert!(read_err(&img, 2 * cs, 1).contains("external data file"));
    // The bit without a name.
    let mut b = Builder::new(12, 1 << 20, INCOMPAT_DATA_FILE, 1);
    b.pad_to(3 * b.cs());
    let e = b.open().err().unwrap().to_string();
    assert!(e.contains("does not name it"), "{e}");
}

#[test]
fn l1_table_past_the_end_of_the_file_reads_zeros() {
    // 32 MiB of L1 entries announced, 12 KiB of file: nothing is read or
    // allocated past the file, and the guest reads zeros.
    let size = (4u64 << 20) * (1 << 21); // 8 TiB
    let b = Builder::new(12, size, 0, 4 << 20);
    let img = b.open().unwrap();
    let mut buf = vec![1u8; 4096];
    img.read(&mut buf, size - 4096).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    // Open reads none of the table; a lookup past the file loads nothing,
    // one inside it loads one chunk.
    use crate::format::Format;
    let d = b.driver(0);
    assert_eq!(d.l1.load().loaded_chunks(), 0);
    d.map(size - 4096, 4096).unwrap();
    assert_eq!(d.l1.load().loaded_chunks(), 0);
    d.map(0, 4096).unwrap();
    assert_eq!(d.l1.load().loaded_chunks(), 1);
}

#[test]
fn an_l2_table_shared_by_two_l1_entries_is_refused_when_counting() {
    let mut b = Builder::new(9, 1 << 20, 0, 32);
    let cs = b.cs();
    b.l1(0, 3 * cs).l1(1, 3 * cs).pad_to(4 * cs);
    let img = b.open().unwrap();
    let e = img.info().err().unwrap().to_string();
    assert!(e.contains("more than one L1 entry"), "{e}");
}

#[test]
fn snapshot_table_limits_at_open() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    let cs = b.cs();
    let mut e = vec![0u8; 48];
    BigEndian::write_u64(&mut e[0..], 2 * cs);
    BigEndian::write_u32(&mut e[8..], 1);
    BigEndian::write_u16(&mut e[12..], 1);
    e[40] = b'1';
    b.bytes(4 * cs, &e);
    BigEndian::write_u32(&mut b.b[60..], 1);
    BigEndian::write_u64(&mut b.b[64..], 4 * cs);
    let img = b.open().unwrap();
    assert_eq!(img.snapshots()[0].id, "1");
    // Too much extra data.
    BigEndian::write_u32(&mut b.b[(4 * cs + 36) as usize..], 4096);
    let e = b.open().err().unwrap().to_string();
    assert!(e.contains("extra data"), "{e}");
    // A snapshot L1 table over the limit, refused when it is opened.
    BigEndian::write_u32(&mut b.b[(4 * cs + 36) as usize..], 0);
    BigEndian::write_u32(&mut b.b[(4 * cs + 8) as usize..], u32::MAX);
    assert!(b.open().is_ok());
    let e = b
        .open_with(&OpenOptions {
            read_only: true,
            snapshot: Some("1".into()),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("32 MiB"), "{e}");
}

#[test]
fn truncated_and_empty_files() {
    let b = Builder::new(16, 1 << 20, 0, 1);
    for len in [0usize, 3, 50, 104, 4096] {
        let mut t = Builder::new(16, 1 << 20, 0, 1);
        t.b = b.b[..len.min(b.b.len())].to_vec();
        match t.open() {
            Ok(img) => {
                // A header that survived: every read is zeros or an error.
                let mut buf = vec![0u8; 65536];
                let _ = img.read(&mut buf, 0);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let mut b = Builder::new(12, 1 << 20, 0, 1);
    let cs = b.cs();
    b.l1(0, (3 * cs) | OFLAG_COPIED);
    for i in 0..64u64 {
        let v = match i % 4 {
            0 => ((4 + i) * cs) | OFLAG_COPIED,
            1 => 1,
            2 => OFLAG_COMPRESSED | (3 << 54) | ((4 + i) * cs),
            _ => 0,
        };
        b.put(3 * cs + 8 * i, v);
    }
    b.pad_to(80 * cs);
    let good = b.b.clone();
    let mut seed = 12345u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed >> 33
    };
    for _ in 0..300 {
        let mut bad = good.clone();
        for _ in 0..1 + next() % 8 {
            // Mostly metadata: header, L1, L2.
            let pos = match next() % 3 {
                0 => next() % 120,
                1 => 2 * cs + next() % 16,
                _ => 3 * cs + next() % 512,
            } as usize;
            bad[pos] ^= 1 << (next() % 8);
        }
        let mut t = Builder::new(12, 0, 0, 0);
        t.b = bad;
        if let Ok(img) = t.open() {
            let size = img.size().min(1 << 20);
            let mut buf = vec![0u8; 65536];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(65536) as usize;
                let _ = img.read(&mut buf[..n], off);
                let _ = img.block_status(off, n as u64);
                off += n as u64;
            }
            let _ = img.info();
        }
    }
}

#[test]
fn concurrent_readers_through_a_tiny_cache() {
    // 512-byte clusters: 64 entries per L2 table, 32 KiB per table; 64
    // tables, each cluster holding its own guest index.
    let cb = 9;
    let tables = 64u64;
    let size = tables * 64 * 512;
    let mut b = Builder::new(cb, size, 0, tables as u32);
    let cs = b.cs();
    let l2_base = 4 * cs;
    let data_base = l2_base + tables * cs;
    for t in 0..tables {
        b.l1(t, (l2_base + t * cs) | OFLAG_COPIED);
        for i in 0..64 {
            let g = t * 64 + i;
            b.put(
                l2_base + t * cs + 8 * i,
                (data_base + g * cs) | OFLAG_COPIED,
            );
            let mut c = vec![0u8; 512];
            BigEndian::write_u64(&mut c, g);
            b.bytes(data_base + g * cs, &c);
        }
    }
    let img = Arc::new(
        b.open_with(&OpenOptions {
            read_only: true,
            cache_size: 2 * 512,
            ..Default::default()
        })
        .unwrap(),
    );
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut seed = t + 1;
                for _ in 0..3000 {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let g = (seed >> 33) % (size / 512);
                    let mut buf = [0u8; 8];
                    img.read(&mut buf, g * 512).unwrap();
                    assert_eq!(BigEndian::read_u64(&buf), g);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // The cache really was two tables, and a default one covers the disk.
    assert_eq!(b.driver(2 * 512).l2_cache.capacity(), 2);
    assert_eq!(b.driver(0).l2_cache.capacity(), 64);
}
