//! raw: the guest sees the file as it is.

use super::{
    options, CreateCtx, Driver, Extent, Format, Mapping, OldReader, OpenCtx, OptDesc, OptKind,
};
use crate::error::{Error, Result};
use crate::io::BlockFile;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub static DRIVER: Driver = Driver {
    name: "raw",
    probe: |_, _| 1,
    create,
    open,
    create_opts: &CREATE_OPTS,
    supports_backing: false,
};

static CREATE_OPTS: [OptDesc; 1] = [OptDesc {
    name: options::SIZE,
    kind: OptKind::Size,
    help: "Virtual disk size",
}];

struct Raw {
    file: Arc<dyn BlockFile>,
    size: AtomicU64,
    read_only: bool,
}

fn create(ctx: &CreateCtx) -> Result<()> {
    ctx.opts.check_known("raw", &CREATE_OPTS)?;
    let size = ctx.opts.get_size(options::SIZE)?.unwrap_or(0);
    let f = ctx.storage.create(ctx.path, true)?;
    f.set_len(size)?;
    f.flush()
}

fn open(ctx: &OpenCtx) -> Result<Box<dyn Format>> {
    ctx.no_format_opts("raw")?;
    Ok(Box::new(Raw {
        size: AtomicU64::new(ctx.file.len()?),
        file: ctx.file.clone(),
        read_only: ctx.read_only,
    }))
}

impl Format for Raw {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn cluster_size(&self) -> u64 {
        0
    }
    fn backing(&self) -> Option<super::BackingSpec> {
        None
    }
    fn map(&self, off: u64, len: u64) -> Result<Extent> {
        Ok(Extent::new(
            Mapping::Data {
                host: off,
                in_place: true,
            },
            len,
        ))
    }
    fn map_cached(&self, off: u64, len: u64) -> Result<Option<Extent>> {
        self.map(off, len).map(Some)
    }
    fn passthrough(&self) -> bool {
        true
    }
    fn data_file(&self) -> &Arc<dyn BlockFile> {
        &self.file
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn allocate(&self, _guest: u64, _len: u64) -> Result<(u64, u64)> {
        Err(Error::Unsupported("raw images do not allocate".into()))
    }
    fn link(&self, _guest: u64, _len: u64, _host: u64) -> Result<()> {
        Err(Error::Unsupported("raw images do not allocate".into()))
    }
    fn discard(&self, guest: u64, len: u64) -> Result<()> {
        self.file.discard(guest, len)
    }
    fn flush(&self) -> Result<()> {
        self.file.flush()
    }
    fn truncate(&self, size: u64, _backing_len: Option<u64>, _old: OldReader) -> Result<()> {
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
    fn allocated_bytes(&self) -> Result<u64> {
        Ok(self.size())
    }
}
