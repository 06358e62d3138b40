//! Snapshots: `save` a store to one file and `load` it back, bit for bit.
//!
//! The format (version 1, little-endian; see `docs/persistence.md` for the byte table) is a
//! 128-byte header, a body of blocks, and an 8-byte trailer:
//!
//! * header: magic `RBUFSNAP`, version, header length, schema (capacity, dims, retention),
//!   rows per block, counters (rows saved, cursor, base), the sampler state (placement seed,
//!   sampler seed, sampler calls), the file's total length, and a CRC-32 of the header;
//! * body: rows `0..rows` in slot order, in blocks of `block_rows` rows; a block holds its
//!   rows' stamps (`u64`), then `obs` (`f32 x obs_dim`), `target` (`f32 x target_dim`),
//!   `task_id`, `episode_id` and `step` (`i64`);
//! * trailer: the CRC-32 of the body, then `b"RBUF"`.
//!
//! **Saving** streams: each block is gathered from the store's memory into small buffers
//! (a few MiB) and written, so memory does not grow with the store. It is safe while writers
//! run: a block is copied under the slot stamps (one seqlock section per block, with a
//! per-row retry for rows that changed), so every saved row is one whole write; a slot whose
//! write has not finished after a bounded wait is saved as empty (stamp 0). Rows added during
//! the save may or may not be in the file. A row is saved only if it sits in the slot the
//! saved base assigns it (a row added concurrently with an earlier `clear` can sit elsewhere
//! until overwritten). The base (the `clear` generation) is read before and after the copy:
//! if a `clear` ran in between, the copy is a mix of two generations and is retried, at most
//! [`SAVE_ATTEMPTS`] times, then the save fails ([`PersistError::Cleared`]).
//!
//! `save_file` refuses destinations that are not regular files (symlinks, FIFOs, devices,
//! directories), the store's own file and any file-backed store. It writes a temporary file
//! in the target's directory, fsyncs it, **reads it back and verifies it** exactly as `load`
//! would (without building a store), renames it over the target and fsyncs the directory: a
//! crash leaves the old file or the new one, and the target is only ever replaced by a file
//! that loads.
//!
//! **Loading** opens only regular files (a FIFO is refused without blocking), validates the
//! whole header (magic, version, CRC, counters below [`MAX_ROWS`], every size against the
//! file's length, with checked arithmetic) before allocating anything, then streams the
//! blocks into a fresh store, checking every stamp against the counters and the retention's
//! slot mapping, every value for finiteness, and the body's CRC at the end. Every failure is
//! a [`PersistError`], never a panic or an out-of-bounds read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::format::{
    bad, check_counters, check_endian, open_regular, put_magic, put_u32, put_u64, retention_code,
    retention_of, seal, u32_at, u64_at,
};
use crate::rows::Options;
use crate::slots::stable_row;
pub use crate::slots::MAX_ROWS;
use crate::store::{first_non_finite, RingBuffer, BASE, CURSOR};
use crate::sync::{fence, Backoff, Ordering};

/// Why a snapshot (or a file-backed store) could not be written or read.
pub use crate::format::PersistError;
/// The first 8 bytes of every snapshot.
pub use crate::format::SNAPSHOT_MAGIC as MAGIC;
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes in the header.
pub const HEADER_LEN: usize = 128;
/// Bytes in the trailer (body CRC-32, then `b"RBUF"`).
pub const TRAILER_LEN: usize = 8;
/// The trailer's end marker.
const END: [u8; 4] = *b"RBUF";
/// Target size of one block's buffers (and the most a loader allocates for one block,
/// unless a single row is larger).
const BLOCK_BYTES: usize = 4 << 20;
/// Most rows per block.
const MAX_BLOCK_ROWS: usize = 1 << 16;
/// How long a save waits for one unfinished write before saving that slot as empty.
const MAX_SNOOZES: u32 = 2000;
/// Copies a save makes before giving up when every one of them overlaps a `clear`.
pub const SAVE_ATTEMPTS: u32 = 8;

/// The fixed-size header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Store capacity (rows).
    pub capacity: u64,
    /// Floats per obs row.
    pub obs_dim: u64,
    /// Floats per target row.
    pub target_dim: u64,
    /// 0 = FIFO, 1 = reservoir.
    pub retention: u32,
    /// Rows per body block.
    pub block_rows: u32,
    /// Slots saved (`0..rows`).
    pub rows: u64,
    /// The store's cursor (`total_added`).
    pub cursor: u64,
    /// The store's base (first row after the last `clear`).
    pub base: u64,
    /// Seed of reservoir slot choices.
    pub placement_seed: u64,
    /// Sampler seed.
    pub sampler_seed: u64,
    /// Sampling calls made (the position in the sampler's streams).
    pub sampler_calls: u64,
    /// The whole file's length in bytes.
    pub file_len: u64,
}

impl Header {
    /// Bytes of one saved row: stamp + obs + target + three i64.
    fn row_bytes(&self) -> Option<u64> {
        self.obs_dim
            .checked_add(self.target_dim)?
            .checked_mul(4)?
            .checked_add(32)
    }

    /// The file length these sizes imply.
    fn expected_len(&self) -> Option<u64> {
        self.rows
            .checked_mul(self.row_bytes()?)?
            .checked_add((HEADER_LEN + TRAILER_LEN) as u64)
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        put_magic(&mut h, &MAGIC, VERSION);
        put_u32(&mut h, 12, HEADER_LEN as u32);
        let words = [
            (16, self.capacity),
            (24, self.obs_dim),
            (32, self.target_dim),
            (48, self.rows),
            (56, self.cursor),
            (64, self.base),
            (72, self.placement_seed),
            (80, self.sampler_seed),
            (88, self.sampler_calls),
            (96, self.file_len),
        ];
        for (at, v) in words {
            put_u64(&mut h, at, v);
        }
        put_u32(&mut h, 40, self.retention);
        put_u32(&mut h, 44, self.block_rows);
        seal(&mut h, 124);
        h
    }

    /// Decode and fully validate a header against the file's actual length.
    pub fn decode(h: &[u8], actual_len: u64) -> Result<Header, PersistError> {
        if h.len() < 8 {
            return bad(format!(
                "the file ends early (truncated): {} bytes, a snapshot has at least {}",
                h.len(),
                HEADER_LEN + TRAILER_LEN
            ));
        }
        if h[0..8] != MAGIC {
            return bad("wrong magic bytes (expected a file written by RingBuffer.save)");
        }
        if h.len() < HEADER_LEN {
            return bad(format!(
                "the file ends early (truncated): {} bytes, the header alone needs {HEADER_LEN}",
                h.len()
            ));
        }
        crate::format::check_version(h, VERSION, "reads")?;
        if u32_at(h, 12) as usize != HEADER_LEN {
            return bad(format!(
                "header length {} (expected {HEADER_LEN})",
                u32_at(h, 12)
            ));
        }
        if !crate::format::sealed(h, 124) {
            return bad("header checksum mismatch (the header is corrupted)");
        }
        if h[104..124].iter().any(|&b| b != 0) {
            return bad("reserved header bytes are not zero");
        }
        let hd = Header {
            capacity: u64_at(h, 16),
            obs_dim: u64_at(h, 24),
            target_dim: u64_at(h, 32),
            retention: u32_at(h, 40),
            block_rows: u32_at(h, 44),
            rows: u64_at(h, 48),
            cursor: u64_at(h, 56),
            base: u64_at(h, 64),
            placement_seed: u64_at(h, 72),
            sampler_seed: u64_at(h, 80),
            sampler_calls: u64_at(h, 88),
            file_len: u64_at(h, 96),
        };
        hd.validate(actual_len)?;
        Ok(hd)
    }

    fn validate(&self, actual_len: u64) -> Result<(), PersistError> {
        if self.capacity == 0 || self.obs_dim == 0 || self.target_dim == 0 {
            return bad(format!(
                "capacity and dims must be at least 1 (capacity {}, obs_dim {}, target_dim {})",
                self.capacity, self.obs_dim, self.target_dim
            ));
        }
        if usize::try_from(self.capacity).is_err()
            || usize::try_from(self.obs_dim).is_err()
            || usize::try_from(self.target_dim).is_err()
        {
            return bad("sizes do not fit this machine's address space");
        }
        if self.retention > 1 {
            return bad(format!(
                "retention code {} (expected 0 = fifo or 1 = reservoir)",
                self.retention
            ));
        }
        check_counters(self.cursor, self.base)?;
        let held = (self.cursor - self.base).min(self.capacity);
        if self.rows > held {
            return bad(format!(
                "{} rows saved but the counters allow at most {held}",
                self.rows
            ));
        }
        let row_bytes = self
            .row_bytes()
            .ok_or_else(|| PersistError::Format("row size overflows (dims too large)".into()))?;
        let block = u64::from(self.block_rows);
        if self.block_rows == 0
            || block > MAX_BLOCK_ROWS as u64
            || (block > 1 && block.saturating_mul(row_bytes) > 2 * BLOCK_BYTES as u64)
        {
            return bad(format!("block size of {} rows is invalid", self.block_rows));
        }
        let expected = self
            .expected_len()
            .ok_or_else(|| PersistError::Format("the sizes in the header overflow".into()))?;
        if self.file_len != expected {
            return bad(format!(
                "the header's file length {} does not match its sizes ({expected} bytes)",
                self.file_len
            ));
        }
        if actual_len != expected {
            let what = if actual_len < expected {
                "truncated"
            } else {
                "trailing bytes"
            };
            return bad(format!(
                "the header describes {expected} bytes but the file has {actual_len} ({what})"
            ));
        }
        Ok(())
    }
}

/// Plain-old-data element types of the body (every bit pattern valid, no padding).
trait Pod: Copy + Default {}
impl Pod for u64 {}
impl Pod for i64 {}
impl Pod for f32 {}

fn bytes_of<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is plain old data without padding; the byte view covers exactly `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytes_of_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above, and every bit pattern is a valid `T`, so any bytes may be written.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// One block's worth of rows, column by column.
struct Block {
    stamps: Vec<u64>,
    obs: Vec<f32>,
    target: Vec<f32>,
    task_id: Vec<i64>,
    episode_id: Vec<i64>,
    step: Vec<i64>,
}

impl Block {
    fn new(rows: usize, d_o: usize, d_t: usize) -> Self {
        Block {
            stamps: vec![0; rows],
            obs: vec![0.0; rows * d_o],
            target: vec![0.0; rows * d_t],
            task_id: vec![0; rows],
            episode_id: vec![0; rows],
            step: vec![0; rows],
        }
    }

    /// Zero row `j` (an empty slot).
    fn clear_row(&mut self, j: usize, d_o: usize, d_t: usize) {
        self.obs[j * d_o..(j + 1) * d_o].fill(0.0);
        self.target[j * d_t..(j + 1) * d_t].fill(0.0);
        self.task_id[j] = 0;
        self.episode_id[j] = 0;
        self.step[j] = 0;
    }

    /// The first `n` rows' columns, as byte slices in file order.
    fn parts(&self, n: usize, d_o: usize, d_t: usize) -> [&[u8]; 6] {
        [
            bytes_of(&self.stamps[..n]),
            bytes_of(&self.obs[..n * d_o]),
            bytes_of(&self.target[..n * d_t]),
            bytes_of(&self.task_id[..n]),
            bytes_of(&self.episode_id[..n]),
            bytes_of(&self.step[..n]),
        ]
    }
}

/// Rows per block for rows of `row_bytes` bytes.
fn block_rows_for(row_bytes: usize) -> usize {
    (BLOCK_BYTES / row_bytes.max(1)).clamp(1, MAX_BLOCK_ROWS)
}

impl RingBuffer {
    /// Copy slots `a..a + n` into `blk` under their stamps; returns the largest row seen + 1.
    fn snapshot_block(&self, a: usize, n: usize, base: u64, blk: &mut Block) -> u64 {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        for j in 0..n {
            blk.stamps[j] = self.stamps.read_begin(a + j);
        }
        self.obs.load_rows(a, &mut blk.obs[..n * d_o]);
        self.target.load_rows(a, &mut blk.target[..n * d_t]);
        for j in 0..n {
            blk.task_id[j] = self.task_id[a + j].load(Ordering::Relaxed);
            blk.episode_id[j] = self.episode_id[a + j].load(Ordering::Relaxed);
            blk.step[j] = self.step[a + j].load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        let mut end = 0;
        for j in 0..n {
            let s = blk.stamps[j];
            let settled = s & 1 == 0 && self.stamps.peek(a + j) == s;
            if !settled {
                self.snapshot_row(a + j, j, blk);
            }
            // A row that is not in the slot `base` assigns it (it was added concurrently with
            // an earlier clear) is left out: `load` would rightly reject it.
            blk.stamps[j] = match stable_row(blk.stamps[j]) {
                Some(row) if row >= base && self.slot_for(row, base) == Some(a + j) => {
                    end = end.max(row + 1);
                    blk.stamps[j]
                }
                _ => {
                    // An empty slot is saved as zeros: its memory may hold half a write (a
                    // writer that was stopped or died mid-row), which views would show.
                    blk.clear_row(j, d_o, d_t);
                    0
                }
            };
        }
        end
    }

    /// Re-copy one slot whose stamp moved during the block copy: retry until one whole write
    /// is seen, waiting a bounded time for an unfinished one (then saved as empty).
    fn snapshot_row(&self, slot: usize, j: usize, blk: &mut Block) {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let mut backoff = Backoff::new();
        for attempt in 1..=MAX_SNOOZES {
            // A file-backed store's slot may be busy for good (its writer process died).
            if attempt % 64 == 0 && self.stamps.reap(slot, None) {
                blk.stamps[j] = 0;
                return;
            }
            let s1 = self.stamps.read_begin(slot);
            if s1 & 1 == 0 {
                self.obs
                    .load_row(slot, &mut blk.obs[j * d_o..(j + 1) * d_o]);
                self.target
                    .load_row(slot, &mut blk.target[j * d_t..(j + 1) * d_t]);
                blk.task_id[j] = self.task_id[slot].load(Ordering::Relaxed);
                blk.episode_id[j] = self.episode_id[slot].load(Ordering::Relaxed);
                blk.step[j] = self.step[slot].load(Ordering::Relaxed);
                if self.stamps.read_validate(slot, s1) {
                    blk.stamps[j] = s1;
                    return;
                }
            }
            backoff.snooze();
        }
        blk.stamps[j] = 0;
    }

    /// Write a snapshot of the store to `w` (header first, rewritten at the end through
    /// `Seek`). Safe while other threads add and sample; see the module docs. Fails with
    /// [`PersistError::Cleared`] (after writing to `w`) when a `clear` ran during the copy;
    /// [`save_file`](Self::save_file) then retries.
    pub fn save_to<W: Write + Seek>(&self, w: &mut W) -> Result<Header, PersistError> {
        check_endian()?;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let base = self.base();
        let rows = self.len();
        let row_bytes = 32 + 4 * (d_o + d_t);
        let block_rows = block_rows_for(row_bytes).min(rows.max(1));
        let start = w.stream_position()?;
        w.write_all(&[0u8; HEADER_LEN])?;
        let mut crc = crc32fast::Hasher::new();
        let mut blk = Block::new(block_rows, d_o, d_t);
        let mut seen_end = 0;
        let mut a = 0;
        while a < rows {
            let n = block_rows.min(rows - a);
            seen_end = seen_end.max(self.snapshot_block(a, n, base, &mut blk));
            for part in blk.parts(n, d_o, d_t) {
                crc.update(part);
                w.write_all(part)?;
            }
            a += n;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
        w.write_all(&END)?;
        // SeqCst pairs with `clear`'s: a clear that ran before this load is seen here.
        if self.counters[BASE].load(Ordering::SeqCst) != base {
            return Err(PersistError::Cleared { attempts: 1 });
        }
        let header = Header {
            capacity: self.capacity as u64,
            obs_dim: d_o as u64,
            target_dim: d_t as u64,
            retention: retention_code(self.retention()),
            block_rows: block_rows as u32,
            rows: rows as u64,
            // Every row seen in a stamp was reserved before it was seen.
            cursor: self.cursor().max(seen_end).max(base + rows as u64),
            base,
            placement_seed: self.placement_seed(),
            sampler_seed: self.seed(),
            sampler_calls: self.sampler_calls(),
            file_len: (HEADER_LEN + TRAILER_LEN + rows * row_bytes) as u64,
        };
        let end = w.stream_position()?;
        w.seek(SeekFrom::Start(start))?;
        w.write_all(&header.encode())?;
        w.seek(SeekFrom::Start(end))?;
        Ok(header)
    }

    /// Save to `path` atomically and verified: a temporary file in the same directory is
    /// written, flushed to disk (fsync), read back and checked as `load` checks it, and only
    /// then renamed over `path`; then the directory is fsynced. A crash at any point leaves
    /// the old file or the new one. Refuses destinations that are not regular files, symlinks,
    /// the store's own file and file-backed stores ([`PersistError::Destination`]).
    pub fn save_file(&self, path: &Path) -> Result<Header, PersistError> {
        self.check_destination(path)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| {
            PersistError::Format(format!("{} is not a file path", path.display()))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp{}-{:x}",
            std::process::id(),
            crate::rng::Rng::os_seed()
        ));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let mut attempt = 1;
            let header = loop {
                match self.save_to(&mut w) {
                    Err(PersistError::Cleared { .. }) if attempt < SAVE_ATTEMPTS => {
                        attempt += 1;
                        w.flush()?;
                        w.get_mut().set_len(0)?;
                        w.seek(SeekFrom::Start(0))?;
                    }
                    Err(PersistError::Cleared { .. }) => {
                        return Err(PersistError::Cleared { attempts: attempt })
                    }
                    other => break other?,
                }
            };
            let mut file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            self.verify(&mut file, &header).map_err(|e| {
                let why = match e {
                    PersistError::Format(m) => m,
                    other => other.to_string(),
                };
                PersistError::Format(format!(
                    "the snapshot read back fails verification, so {} was not replaced: {why}",
                    path.display()
                ))
            })?;
            drop(file);
            // The destination may have changed kind since the first check.
            self.check_destination(path)?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Ok(d) = File::open(&dir) {
                d.sync_all().ok();
            }
            Ok(header)
        })();
        if result.is_err() {
            fs::remove_file(&tmp).ok();
        }
        result
    }

    /// Refuse a save destination that is not a regular file (or absent), is a symlink, is
    /// this store's own file, or is any file-backed store: renaming over a live store's file
    /// would leave every process that maps it writing into a deleted file.
    fn check_destination(&self, path: &Path) -> Result<(), PersistError> {
        let meta = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        let refuse = |why: String| Err(PersistError::Destination(why));
        if meta.file_type().is_symlink() {
            return refuse(format!(
                "{} is a symbolic link; save refuses to replace links (pass the real path)",
                path.display()
            ));
        }
        if !meta.is_file() {
            return refuse(format!(
                "{} is {}, not a regular file; save writes only regular files",
                path.display(),
                crate::format::describe(meta.file_type())
            ));
        }
        #[cfg(unix)]
        if let Some(own) = self.path().and_then(|p| fs::metadata(p).ok()) {
            use std::os::unix::fs::MetadataExt;
            if (own.dev(), own.ino()) == (meta.dev(), meta.ino()) {
                return refuse(format!(
                    "{} is this store's own file; save a snapshot to another path",
                    path.display()
                ));
            }
        }
        let mut magic = [0u8; 8];
        let got = match open_regular(path, false) {
            Ok(mut f) => read_up_to(&mut f, &mut magic)?,
            // Unreadable: not a store this process could have open; replacing it needs
            // only the directory's permission, as before.
            Err(PersistError::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => 0,
            Err(e) => return Err(e),
        };
        if got == magic.len() && magic == crate::format::SHARED_MAGIC {
            return refuse(format!(
                "{} is a file-backed store (RingBuffer.create); save will not replace it, \
                 since processes that have it open would keep writing into a deleted file",
                path.display()
            ));
        }
        Ok(())
    }

    /// Read back a snapshot just written to `file` and check it as `load` would, without
    /// building a store: the header must be the one written, and the body must pass every
    /// check of [`load_from`](Self::load_from).
    fn verify(&self, file: &mut File, written: &Header) -> Result<(), PersistError> {
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(1 << 20, &mut *file);
        let mut head = [0u8; HEADER_LEN];
        let got = read_up_to(&mut r, &mut head)?;
        let hd = Header::decode(&head[..got], len)?;
        if hd != *written {
            return bad("the header read back differs from the one written");
        }
        let mut problem = None;
        read_body(&mut r, &hd, |a, n, blk| {
            if problem.is_none() {
                problem = self.block_problem(a, n, blk, &hd);
            }
        })?;
        problem.map_or(Ok(()), bad)
    }

    /// Read a snapshot from `r`, whose total length is `len` bytes.
    pub fn load_from<R: Read>(r: &mut R, len: u64) -> Result<RingBuffer, PersistError> {
        check_endian()?;
        let mut head = [0u8; HEADER_LEN];
        let got = read_up_to(r, &mut head)?;
        let hd = Header::decode(&head[..got], len)?;
        let (cap, d_o, d_t) = (
            hd.capacity as usize,
            hd.obs_dim as usize,
            hd.target_dim as usize,
        );
        let store = RingBuffer::with_options(
            cap,
            d_o,
            d_t,
            Options {
                seed: Some(hd.placement_seed),
                retention: retention_of(hd.retention),
            },
        )
        .map_err(PersistError::Store)?;
        store.counters[CURSOR].store(hd.cursor, Ordering::Relaxed);
        store.counters[BASE].store(hd.base, Ordering::Relaxed);
        store.restore_sampler(hd.sampler_seed, hd.sampler_calls);
        let mut problem = None;
        read_body(r, &hd, |a, n, blk| {
            if problem.is_none() {
                problem = store.block_problem(a, n, blk, &hd);
            }
            store.restore_block(a, n, blk);
        })?;
        // Reported after the body's checksum, so that damaged data is reported as such.
        if let Some(p) = problem {
            return bad(p);
        }
        Ok(store)
    }

    /// Load a snapshot written by [`save_file`](Self::save_file).
    /// Only regular files are read: a FIFO or device is refused without blocking.
    pub fn load_file(path: &Path) -> Result<RingBuffer, PersistError> {
        let file = open_regular(path, false)?;
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        Self::load_from(&mut r, len)
    }

    /// The first problem of a block read from a snapshot of this store's shape and
    /// placement, if any: a stamp that no row of the store can have (outside the counters, or
    /// not in the slot the retention assigns its row), or a value that is NaN or infinite.
    fn block_problem(&self, a: usize, n: usize, blk: &Block, hd: &Header) -> Option<String> {
        for j in 0..n {
            let (slot, stamp) = (a + j, blk.stamps[j]);
            let ok = stamp == 0
                || matches!(stable_row(stamp), Some(row) if row >= hd.base
                    && row < hd.cursor
                    && self.slot_for(row, hd.base) == Some(slot));
            if !ok {
                return Some(format!(
                    "slot {slot} has stamp {stamp}, which no row of this store can have"
                ));
            }
        }
        for (values, name, dim) in [
            (&blk.obs[..n * self.obs_dim], "obs", self.obs_dim),
            (
                &blk.target[..n * self.target_dim],
                "target",
                self.target_dim,
            ),
        ] {
            if let Some(i) = first_non_finite(values) {
                return Some(format!(
                    "slot {} {name} column {} is {} (stored rows must be finite)",
                    a + i / dim,
                    i % dim,
                    values[i]
                ));
            }
        }
        None
    }

    /// Put a loaded block into slots `a..a + n` (checked by `block_problem`).
    fn restore_block(&self, a: usize, n: usize, blk: &Block) {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        self.obs.store_rows(a, &blk.obs[..n * d_o]);
        self.target.store_rows(a, &blk.target[..n * d_t]);
        for j in 0..n {
            let slot = a + j;
            self.task_id[slot].store(blk.task_id[j], Ordering::Relaxed);
            self.episode_id[slot].store(blk.episode_id[j], Ordering::Relaxed);
            self.step[slot].store(blk.step[j], Ordering::Relaxed);
            self.stamps.set(slot, blk.stamps[j]);
        }
    }
}

/// Stream the body and trailer of a snapshot whose header is `hd` from `r`, handing each
/// block (first slot, rows, columns) to `each`; fails on a short body, a missing end marker
/// or a body checksum mismatch.
fn read_body<R: Read>(
    r: &mut R,
    hd: &Header,
    mut each: impl FnMut(usize, usize, &Block),
) -> Result<(), PersistError> {
    let (d_o, d_t) = (hd.obs_dim as usize, hd.target_dim as usize);
    let rows = hd.rows as usize;
    let block_rows = hd.block_rows as usize;
    let mut blk = Block::new(block_rows.min(rows.max(1)), d_o, d_t);
    let mut crc = crc32fast::Hasher::new();
    let mut a = 0;
    while a < rows {
        let n = block_rows.min(rows - a);
        read_block(r, &mut blk, n, d_o, d_t, &mut crc)?;
        each(a, n, &blk);
        a += n;
    }
    let mut trailer = [0u8; TRAILER_LEN];
    r.read_exact(&mut trailer)?;
    if trailer[4..] != END {
        return bad("missing end marker (the file is truncated or corrupted)");
    }
    if crc.finalize() != u32_at(&trailer, 0) {
        return bad("data checksum mismatch (the rows are corrupted)");
    }
    Ok(())
}

/// Read `n` rows of a block into `blk`, updating the body CRC.
fn read_block<R: Read>(
    r: &mut R,
    blk: &mut Block,
    n: usize,
    d_o: usize,
    d_t: usize,
    crc: &mut crc32fast::Hasher,
) -> Result<(), PersistError> {
    let parts: [&mut [u8]; 6] = [
        bytes_of_mut(&mut blk.stamps[..n]),
        bytes_of_mut(&mut blk.obs[..n * d_o]),
        bytes_of_mut(&mut blk.target[..n * d_t]),
        bytes_of_mut(&mut blk.task_id[..n]),
        bytes_of_mut(&mut blk.episode_id[..n]),
        bytes_of_mut(&mut blk.step[..n]),
    ];
    for part in parts {
        r.read_exact(part)?;
        crc.update(part);
    }
    Ok(())
}

/// Read as many bytes as `buf` holds or the reader has, whichever is fewer.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
