//! Error type used inside the library; the C ABI turns it into a negative
//! errno plus a readable message.

use std::io;

/// Every failure the library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error, with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The image's on-disk contents break the format's rules.
    #[error("invalid image: {0}")]
    Corrupt(String),
    /// Stored data that cannot be decoded (a compressed cluster whose
    /// bytes are not a valid stream): EIO, as QEMU's qcow2 reads fail.
    #[error("invalid data: {0}")]
    BadData(String),
    /// A feature or version this build does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A caller passed a bad argument (size, option, offset, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request lies outside the image.
    #[error("request out of range: {0}")]
    OutOfRange(String),
    /// A write was attempted on a read-only image.
    #[error("image is read-only: {0}")]
    ReadOnly(String),
    /// A file that must exist does not.
    #[error("no such file: {0}")]
    NotFound(String),
    /// A size exceeds what the format or this library allows.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The file format was not recognised.
    #[error("unknown format: {0}")]
    UnknownFormat(String),
    /// Another open of the file holds a conflicting lock (`io::lock`).
    #[error("{0}")]
    Locked(String),
    /// An operation refused by policy (QEMU's EPERM), such as a write that
    /// would change a probed raw image's format.
    #[error("not permitted: {0}")]
    PermissionDenied(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an OS error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The positive errno value QEMU would use for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Corrupt(_) => libc::EINVAL,
            Error::BadData(_) => libc::EIO,
            Error::Unsupported(_) => libc::ENOTSUP,
            Error::InvalidArgument(_) => libc::EINVAL,
            // QEMU's block layer answers requests past the end with EIO.
            Error::OutOfRange(_) => libc::EIO,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NotFound(_) => libc::ENOENT,
            Error::TooLarge(_) => libc::EFBIG,
            Error::UnknownFormat(_) => libc::EINVAL,
            Error::Locked(_) => libc::EAGAIN,
            Error::PermissionDenied(_) => libc::EPERM,
        }
    }

    /// Prefixes the message with more context, keeping the errno.
    pub fn context(self, what: impl AsRef<str>) -> Self {
        let w = what.as_ref();
        match self {
            Error::Io { context, source } => Error::Io {
                context: format!("{w}: {context}"),
                source,
            },
            Error::Corrupt(m) => Error::Corrupt(format!("{w}: {m}")),
            Error::BadData(m) => Error::BadData(format!("{w}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{w}: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{w}: {m}")),
            Error::OutOfRange(m) => Error::OutOfRange(format!("{w}: {m}")),
            Error::ReadOnly(m) => Error::ReadOnly(format!("{w}: {m}")),
            Error::NotFound(m) => Error::NotFound(format!("{w}: {m}")),
            Error::TooLarge(m) => Error::TooLarge(format!("{w}: {m}")),
            Error::UnknownFormat(m) => Error::UnknownFormat(format!("{w}: {m}")),
            Error::Locked(m) => Error::Locked(format!("{w}: {m}")),
            Error::PermissionDenied(m) => Error::PermissionDenied(format!("{w}: {m}")),
        }
    }
}
