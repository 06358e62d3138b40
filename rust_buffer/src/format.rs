//! What the two file formats share: magic and version checks, little-endian fields, the
//! header CRC-32, the endianness guard, and opening a path that must be a regular file.
//!
//! Snapshots (`persist`) and file-backed stores (`shared`) both start with an 8-byte magic, a
//! `u32` version and little-endian fields sealed by a CRC-32; these helpers are their one
//! implementation, with the error type both report ([`PersistError`]), both magics (each
//! format names the other in its errors), the retention field and the counter check both
//! apply when opening. Only `error`, `rows` (`Retention`) and `slots` (the row limit) are
//! used here, so both formats depend on this module and never on each other.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use crate::error::BufferError;
use crate::rows::Retention;
use crate::slots::MAX_ROWS;

/// The first 8 bytes of every snapshot (`persist`).
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RBUFSNAP";
/// The first 8 bytes of a file-backed store (`shared`).
pub const SHARED_MAGIC: [u8; 8] = *b"RBUFSHRD";

/// Why a snapshot could not be written or read.
#[derive(Debug)]
pub enum PersistError {
    /// The operating system refused (missing file, permissions, disk full...).
    Io(io::Error),
    /// The file is not a valid snapshot: the message says what is wrong.
    Format(String),
    /// The file is valid but the store it describes cannot be built (too large to allocate).
    Store(BufferError),
    /// A path that `save`/`load` refuse: not a regular file, a symlink, or a file-backed store.
    Destination(String),
    /// Every copy a save made overlapped a `clear` (nothing was written to the destination).
    Cleared {
        /// Copies made.
        attempts: u32,
    },
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Io(e) => write!(f, "{e}"),
            PersistError::Format(m) => write!(f, "invalid rust_buffer file: {m}"),
            PersistError::Store(e) => write!(f, "{e}"),
            PersistError::Destination(m) => f.write_str(m),
            PersistError::Cleared { attempts } => write!(
                f,
                "the store was cleared during each of {attempts} attempts to copy it, so no \
                 consistent snapshot was taken; the destination is unchanged (save while no \
                 thread calls clear)"
            ),
        }
    }
}

impl std::error::Error for PersistError {}

impl From<io::Error> for PersistError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            PersistError::Format("the file ends early (truncated)".into())
        } else {
            PersistError::Io(e)
        }
    }
}

/// A `Format` error with `msg`.
pub(crate) fn bad<T>(msg: impl Into<String>) -> Result<T, PersistError> {
    Err(PersistError::Format(msg.into()))
}

/// The counters a file may hold: `base <= cursor < MAX_ROWS` (row numbers must fit the slot
/// stamps, and the next `add` must not wrap them). Shared by snapshots and file-backed stores.
pub(crate) fn check_counters(cursor: u64, base: u64) -> Result<(), PersistError> {
    if cursor >= MAX_ROWS {
        return bad(format!(
            "the row counter {cursor} is at or above the limit of {MAX_ROWS} rows (2^54); \
             the counters are forged or corrupted"
        ));
    }
    if base > cursor {
        return bad(format!("base {base} is beyond the cursor {cursor}"));
    }
    Ok(())
}

/// The retention field of both headers: 0 FIFO, 1 reservoir.
pub(crate) fn retention_code(retention: Retention) -> u32 {
    match retention {
        Retention::Fifo => 0,
        Retention::Reservoir => 1,
    }
}

/// The policy of a retention field already checked to be 0 or 1.
pub(crate) fn retention_of(code: u32) -> Retention {
    if code == 1 {
        Retention::Reservoir
    } else {
        Retention::Fifo
    }
}

/// Both formats are little-endian and read by reinterpreting memory.
pub(crate) fn check_endian() -> Result<(), PersistError> {
    if cfg!(target_endian = "big") {
        return bad("rust_buffer files are little-endian; this machine is big-endian");
    }
    Ok(())
}

/// Little-endian field `at` of a header.
pub(crate) fn u32_at(h: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"))
}

/// Little-endian field `at` of a header.
pub(crate) fn u64_at(h: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"))
}

/// Write `v` little-endian at `at`.
pub(crate) fn put_u32(h: &mut [u8], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Write `v` little-endian at `at`.
pub(crate) fn put_u64(h: &mut [u8], at: usize, v: u64) {
    h[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Write the magic and version at the start of a header.
pub(crate) fn put_magic(h: &mut [u8], magic: &[u8; 8], version: u32) {
    h[0..8].copy_from_slice(magic);
    put_u32(h, 8, version);
}

/// Store the CRC-32 of `h[..at]` at `at`.
pub(crate) fn seal(h: &mut [u8], at: usize) {
    let crc = crc32fast::hash(&h[..at]);
    put_u32(h, at, crc);
}

/// Does the CRC-32 at `at` match `h[..at]`?
pub(crate) fn sealed(h: &[u8], at: usize) -> bool {
    crc32fast::hash(&h[..at]) == u32_at(h, at)
}

/// Check the version field after the magic matched (`what` names the call that opens it).
pub(crate) fn check_version(h: &[u8], version: u32, what: &str) -> Result<(), PersistError> {
    let got = u32_at(h, 8);
    if got != version {
        return bad(format!(
            "format version {got} is not supported (this build {what} version {version})"
        ));
    }
    Ok(())
}

/// Open `path` for reading (and writing with `write`), refusing anything but a regular file
/// without blocking: a FIFO is opened non-blocking (so `open` itself cannot hang waiting for
/// a writer), then the open file is checked with `fstat`.
pub(crate) fn open_regular(path: &Path, write: bool) -> Result<File, PersistError> {
    let mut options = OpenOptions::new();
    options.read(true).write(write);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(PersistError::Destination(format!(
            "{} is not a regular file ({}); rust_buffer reads and writes only regular files",
            path.display(),
            describe(kind)
        )));
    }
    #[cfg(unix)]
    clear_nonblock(&file);
    Ok(file)
}

/// Restore blocking mode (O_NONBLOCK has no effect on regular files, but later owners of the
/// descriptor should not inherit a surprising flag).
#[cfg(unix)]
fn clear_nonblock(file: &File) {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is a valid open descriptor owned by `file`; F_GETFL/F_SETFL only change its
    // status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// A file type in words, for error messages.
pub(crate) fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device node";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}
