//! File-backed stores: the columns, stamps and counters live in a memory-mapped file that
//! several processes map at once, running the same lock-free slot protocol on the shared
//! atomics.
//!
//! Layout (version 1, little-endian, see `docs/persistence.md`): a 4096-byte header page,
//! then six page-aligned sections: stamps (`u64 x capacity`), obs (`f32 x capacity x
//! obs_dim`), target, task_id, episode_id, step (`i64 x capacity`).
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `RBUFSHRD` |
//! | 8 | version (u32), 12: header length 4096 (u32) |
//! | 16, 24, 32 | capacity, obs_dim, target_dim (u64) |
//! | 40 | retention (u32: 0 fifo, 1 reservoir) |
//! | 48, 56 | placement seed, sampler seed (u64) |
//! | 64 | file length (u64) |
//! | 72 | CRC-32 of bytes 0..72 (u32) |
//! | 128, 136 | cursor, base (atomic u64) |
//! | 256 | process table: 64 atomic u64 (entry `i` = pid of the writer with tag `i`; 0 free) |
//!
//! **Dead writers.** Each handle takes an entry of the process table and stamps the slots it
//! writes `2k + 1 | entry << 56`. A writer killed mid-write leaves such a busy stamp behind;
//! readers skip busy slots as always. The slot is reclaimed (reset to empty, 0) when a writer
//! of a later lap has waited on it for a while and finds the entry's process gone, when any
//! process opens the store (a sweep of all stamps), or when a new process takes over the dead
//! process's entry (a sweep of that entry's stamps). Only the exact busy value is reset (a
//! compare-exchange), and rows are written once, so a live write is never reclaimed. A process
//! is gone when `/proc/<pid>` is missing or a zombie; without `/proc` nothing is reclaimed.
//!
//! **Stopped writers.** A stopped process (SIGSTOP, a debugger) is alive, so its busy slots
//! are never reclaimed: it may resume and finish the write. A writer that waits on such a slot
//! gives up after the store's wait timeout (see `wait`) with an error naming the process.
//!
//! **Truncation.** Touching a page of a mapping beyond the end of its file raises SIGBUS, and
//! POSIX offers no way to stop another process from truncating a file it may write. So every
//! handle keeps its file open and [`RingBuffer::check_file`] compares the file's length
//! (`fstat`) with the layout's before each call of the Python bindings: a truncated file is an
//! error, not a signal. A truncation that lands *during* a call can still raise SIGBUS; the
//! only full protection is not letting other processes write the file (permissions).
//!
//! **Opening** checks the counters (`base <= cursor < MAX_ROWS`: the header's counters are
//! live atomics, so they carry no checksum) and that every held row is finite.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;

use memmap2::MmapRaw;

use crate::column::{FloatColumn, Words};
use crate::error::BufferError;
use crate::format::{
    bad, check_counters, put_magic, put_u32, put_u64, retention_code, retention_of, seal, sealed,
    u32_at, u64_at, PersistError, SNAPSHOT_MAGIC,
};
use crate::region::Region;
use crate::rows::Options;
use crate::slots::{Reaper, Stamps, TAG_SHIFT};
use crate::store::{Backing, RingBuffer};
use crate::sync::{AtomicU64, Ordering};

/// The first 8 bytes of a file-backed store.
pub use crate::format::SHARED_MAGIC;
/// The layout version this build creates and opens.
pub const SHARED_VERSION: u32 = 1;
const PAGE: u64 = 4096;
const COUNTERS_AT: usize = 128;
const TABLE_AT: usize = 256;
/// Entries of the process table (entry 0 is never used: tag 0 means "untagged").
pub const MAX_HANDLES: usize = 64;

/// Section offsets of a store of this shape, and the file length.
#[derive(Debug, Clone, Copy)]
struct Layout {
    stamps: u64,
    obs: u64,
    target: u64,
    task_id: u64,
    episode_id: u64,
    step: u64,
    len: u64,
}

fn round_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE - 1).map(|v| v / PAGE * PAGE)
}

impl Layout {
    fn new(capacity: u64, obs_dim: u64, target_dim: u64) -> Option<Layout> {
        let ids = capacity.checked_mul(8)?;
        let stamps = PAGE;
        let obs = round_up(stamps + ids)?;
        let target = round_up(obs.checked_add(capacity.checked_mul(obs_dim)?.checked_mul(4)?)?)?;
        let task_id =
            round_up(target.checked_add(capacity.checked_mul(target_dim)?.checked_mul(4)?)?)?;
        let episode_id = round_up(task_id.checked_add(ids)?)?;
        let step = round_up(episode_id.checked_add(ids)?)?;
        let len = round_up(step.checked_add(ids)?)?;
        Some(Layout {
            stamps,
            obs,
            target,
            task_id,
            episode_id,
            step,
            len,
        })
    }
}

/// Is process `pid` still running (Linux `/proc`; `true` where that cannot be told)?
fn pid_alive(pid: u64) -> bool {
    if pid == 0 {
        return false;
    }
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the last ')' (the command name may contain parentheses).
        Ok(stat) => !matches!(
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next()),
            Some('Z' | 'X' | 'x')
        ),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The file's process table, as seen by the slot protocol.
struct ProcessTable {
    table: Region<AtomicU64>,
}

impl Reaper for ProcessTable {
    fn is_dead(&self, tag: u64) -> bool {
        let pid = self.holder(tag);
        pid != 0 && !pid_alive(pid)
    }

    fn holder(&self, tag: u64) -> u64 {
        self.table[tag as usize % MAX_HANDLES].load(Ordering::SeqCst)
    }
}

/// What a file-backed handle keeps besides the regions.
struct SharedFile {
    table: Region<AtomicU64>,
    /// Entry of the process table this handle holds (its writer tag).
    entry: AtomicUsize,
    /// The process that holds `entry` (a forked child re-registers on its first add).
    pid: AtomicU32,
    path: std::path::PathBuf,
    /// The file, kept open so its length can be checked (`fstat`) before each access.
    file: File,
    /// The length the layout needs.
    len: u64,
}

impl SharedFile {
    /// Take a free entry of the table, or one whose process died (sweeping its stamps).
    fn register(&self, stamps: &Stamps) -> Result<(), BufferError> {
        let me = u64::from(std::process::id());
        for i in 1..MAX_HANDLES {
            if self.table[i]
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                self.took(i, stamps);
                return Ok(());
            }
        }
        for i in 1..MAX_HANDLES {
            let held = self.table[i].load(Ordering::SeqCst);
            if !pid_alive(held)
                && self.table[i]
                    .compare_exchange(held, me, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                // Busy stamps left by the dead holder: reset them before writing with its tag.
                for slot in 0..stamps.len() {
                    stamps.reap(slot, Some(i as u64));
                }
                self.took(i, stamps);
                return Ok(());
            }
        }
        Err(BufferError::TooManyHandles {
            max: MAX_HANDLES - 1,
        })
    }

    fn took(&self, i: usize, stamps: &Stamps) {
        self.entry.store(i, Ordering::Relaxed);
        self.pid.store(std::process::id(), Ordering::Relaxed);
        stamps.set_tag(i as u64);
    }
}

impl Backing for SharedFile {
    /// Re-register after a fork (the child must not write under its parent's tag).
    #[inline]
    fn before_add(&self, stamps: &Stamps) -> Result<(), BufferError> {
        if self.pid.load(Ordering::Relaxed) != std::process::id() {
            self.register(stamps)?;
        }
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Fail when the file is now shorter than the mapping (truncated by another process).
    fn check(&self) -> Result<(), BufferError> {
        let actual = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if actual < self.len {
            return Err(BufferError::Truncated {
                path: self.path.display().to_string(),
                actual,
                expected: self.len,
            });
        }
        Ok(())
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        if self.pid.load(Ordering::Relaxed) == std::process::id() {
            let me = u64::from(std::process::id());
            let i = self.entry.load(Ordering::Relaxed);
            let _ = self.table[i].compare_exchange(me, 0, Ordering::SeqCst, Ordering::Relaxed);
        }
    }
}

/// The immutable part of the header.
struct SharedHeader {
    capacity: u64,
    obs_dim: u64,
    target_dim: u64,
    retention: u32,
    placement_seed: u64,
    sampler_seed: u64,
    file_len: u64,
}

impl SharedHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; PAGE as usize];
        put_magic(&mut h, &SHARED_MAGIC, SHARED_VERSION);
        put_u32(&mut h, 12, PAGE as u32);
        for (at, v) in [
            (16, self.capacity),
            (24, self.obs_dim),
            (32, self.target_dim),
            (48, self.placement_seed),
            (56, self.sampler_seed),
            (64, self.file_len),
        ] {
            put_u64(&mut h, at, v);
        }
        put_u32(&mut h, 40, self.retention);
        seal(&mut h, 72);
        h
    }

    fn decode(h: &[u8], actual_len: u64) -> Result<(SharedHeader, Layout), PersistError> {
        if h.len() < 80 {
            return bad(format!(
                "not a file-backed store: {} bytes is shorter than the header",
                h.len()
            ));
        }
        if h[0..8] != SHARED_MAGIC {
            let hint = if h[0..8] == SNAPSHOT_MAGIC {
                " (this is a snapshot: use RingBuffer.load)"
            } else {
                ""
            };
            return bad(format!(
                "wrong magic bytes: not a file-backed store made by RingBuffer.create{hint}"
            ));
        }
        crate::format::check_version(h, SHARED_VERSION, "opens")?;
        if !sealed(h, 72) || u64::from(u32_at(h, 12)) != PAGE {
            return bad("header checksum mismatch (the header is corrupted)");
        }
        let hd = SharedHeader {
            capacity: u64_at(h, 16),
            obs_dim: u64_at(h, 24),
            target_dim: u64_at(h, 32),
            retention: u32_at(h, 40),
            placement_seed: u64_at(h, 48),
            sampler_seed: u64_at(h, 56),
            file_len: u64_at(h, 64),
        };
        if hd.capacity == 0 || hd.obs_dim == 0 || hd.target_dim == 0 || hd.retention > 1 {
            return bad("invalid schema in the header");
        }
        let layout = Layout::new(hd.capacity, hd.obs_dim, hd.target_dim)
            .ok_or_else(|| PersistError::Format("the sizes in the header overflow".into()))?;
        if layout.len != hd.file_len || actual_len != layout.len {
            return bad(format!(
                "the header describes {} bytes but the file has {actual_len} (truncated or damaged)",
                layout.len
            ));
        }
        if usize::try_from(layout.len).is_err() {
            return bad("the store does not fit this machine's address space");
        }
        Ok((hd, layout))
    }
}

impl RingBuffer {
    /// Create a file-backed store at `path` (which must not exist). The file is sized to the
    /// full capacity but sparse: pages take disk space and memory only once written, so a
    /// store may be larger than RAM (the kernel pages it to and from the file).
    pub fn create_file(
        path: &Path,
        capacity: usize,
        obs_dim: usize,
        target_dim: usize,
        options: Options,
    ) -> Result<RingBuffer, PersistError> {
        // Validate the shape exactly as a heap store would, without allocating one.
        if capacity == 0 {
            return Err(PersistError::Store(BufferError::ZeroCapacity));
        }
        for (dim, column) in [
            (obs_dim, crate::error::Column::Obs),
            (target_dim, crate::error::Column::Target),
        ] {
            if dim == 0 {
                return Err(PersistError::Store(BufferError::ZeroDim { column }));
            }
        }
        let layout = Layout::new(capacity as u64, obs_dim as u64, target_dim as u64)
            .filter(|l| usize::try_from(l.len).is_ok() && l.len <= i64::MAX as u64)
            .ok_or(PersistError::Store(BufferError::TooLarge {
                elements: capacity.saturating_mul(obs_dim),
            }))?;
        let seed = options.seed.unwrap_or_else(crate::rng::Rng::os_seed);
        let header = SharedHeader {
            capacity: capacity as u64,
            obs_dim: obs_dim as u64,
            target_dim: target_dim as u64,
            retention: retention_code(options.retention),
            placement_seed: seed,
            sampler_seed: seed,
            file_len: layout.len,
        };
        // Build the file under a temporary name, then link it into place: another process
        // never sees a half-made header, and an existing file is never replaced.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".rbuf-create-{}-{:x}",
            std::process::id(),
            crate::rng::Rng::os_seed()
        ));
        let made = (|| {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.set_len(layout.len)?;
            f.write_all(&header.encode())?;
            f.sync_all()?;
            match fs::hard_link(&tmp, path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
                    // Filesystems without hard links: a rename (the existence check just
                    // before it is the only window in which another file could appear).
                    fs::rename(&tmp, path).map_err(|_| e)
                }
                other => other,
            }
        })();
        fs::remove_file(&tmp).ok();
        made?;
        Self::open_file(path, Some(seed))
    }

    /// Open a file-backed store made by [`create_file`](Self::create_file), from any process.
    /// `seed` is this handle's sampler seed (`None`: the seed given at creation).
    ///
    /// Refuses non-regular files (without blocking on a FIFO), damaged headers, counters at
    /// or above [`MAX_ROWS`](crate::MAX_ROWS) or with `base > cursor`, and stores
    /// holding a non-finite value (which only a write outside `add` can put there).
    pub fn open_file(path: &Path, seed: Option<u64>) -> Result<RingBuffer, PersistError> {
        crate::format::check_endian()?;
        let mut file = crate::format::open_regular(path, true)?;
        let actual = file.metadata()?.len();
        let mut head = vec![0u8; 80.min(actual as usize)];
        file.read_exact(&mut head)?;
        let (hd, layout) = SharedHeader::decode(&head, actual)?;
        let map = Arc::new(MmapRaw::map_raw(&file)?);
        let (cap, d_o, d_t) = (
            hd.capacity as usize,
            hd.obs_dim as usize,
            hd.target_dim as usize,
        );
        let words = |at: u64, dim: usize| -> Result<Words, BufferError> {
            // SAFETY (both arms): the sections are page-aligned ranges of the mapping, holding
            // only atomics; every process maps them as atomics.
            Ok(if dim % 2 == 0 {
                Words::W64(unsafe { Region::mapped(&map, at as usize, cap * dim / 2)? })
            } else {
                Words::W32(unsafe { Region::mapped(&map, at as usize, cap * dim)? })
            })
        };
        let store = (|| -> Result<RingBuffer, BufferError> {
            // SAFETY: as above for every region below.
            let ids = |at: u64| unsafe { Region::mapped(&map, at as usize, cap) };
            let table = unsafe { Region::mapped(&map, TABLE_AT, MAX_HANDLES)? };
            let reaper = ProcessTable {
                table: unsafe { Region::mapped(&map, TABLE_AT, MAX_HANDLES)? },
            };
            let stamps = Stamps::shared(
                unsafe { Region::mapped(&map, layout.stamps as usize, cap)? },
                Box::new(reaper),
            );
            let shared = SharedFile {
                table,
                entry: AtomicUsize::new(0),
                pid: AtomicU32::new(0),
                path: path.to_path_buf(),
                file,
                len: layout.len,
            };
            shared.register(&stamps)?;
            let store = RingBuffer::from_parts(
                cap,
                d_o,
                d_t,
                FloatColumn::from_words(words(layout.obs, d_o)?, d_o),
                FloatColumn::from_words(words(layout.target, d_t)?, d_t),
                [
                    ids(layout.task_id)?,
                    ids(layout.episode_id)?,
                    ids(layout.step)?,
                ],
                stamps,
                unsafe { Region::mapped(&map, COUNTERS_AT, 2)? },
                Options {
                    seed: Some(hd.placement_seed),
                    retention: retention_of(hd.retention),
                },
                Some(Box::new(shared)),
            );
            store.reseed(seed.unwrap_or(hd.sampler_seed));
            Ok(store)
        })()
        .map_err(PersistError::Store)?;
        check_counters(store.cursor(), store.base())?;
        store.check_finite()?;
        store.reap_dead_writers();
        Ok(store)
    }

    /// Fail on the first held row with a NaN or infinite value (block by block).
    fn check_finite(&self) -> Result<(), PersistError> {
        const BLOCK: usize = 4096;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let mut obs = vec![0.0f32; BLOCK * d_o];
        let mut target = vec![0.0f32; BLOCK * d_t];
        let rows = self.len();
        let mut a = 0;
        while a < rows {
            let n = BLOCK.min(rows - a);
            self.obs.load_rows(a, &mut obs[..n * d_o]);
            self.target.load_rows(a, &mut target[..n * d_t]);
            for (values, name, dim) in [
                (&obs[..n * d_o], "obs", d_o),
                (&target[..n * d_t], "target", d_t),
            ] {
                if let Some(i) = crate::store::first_non_finite(values) {
                    return bad(format!(
                        "slot {} {name} column {} is {}: stored rows must be finite (the file \
                         was written outside RingBuffer.add)",
                        a + i / dim,
                        i % dim,
                        values[i]
                    ));
                }
            }
            a += n;
        }
        Ok(())
    }

    /// Reset every slot of `0..len()` left busy by a writer whose process died (file-backed
    /// stores; see the module docs). Returns how many slots were reset. One pass over the
    /// held slots' stamps. Slots beyond `len()` (only after a `clear`) are reclaimed by the
    /// writer that next reaches them.
    pub fn reap_dead_writers(&self) -> usize {
        (0..self.len())
            .filter(|&slot| self.stamps.reap(slot, None))
            .count()
    }
}

/// Unused tag bits must stay clear of row numbers (documented limit).
const _: () = assert!(TAG_SHIFT >= 56);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rbuf-shared-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.rbs");
        fs::remove_file(&path).ok();
        path
    }

    fn dead_pid() -> u64 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        u64::from(pid)
    }

    fn add_ids(s: &RingBuffer, ids: std::ops::Range<u64>) {
        let obs: Vec<f32> = ids.clone().flat_map(|i| [i as f32, -(i as f32)]).collect();
        let target: Vec<f32> = ids.map(|i| i as f32 * 0.5).collect();
        s.add(&obs, &target, Meta::default()).unwrap();
    }

    fn ids(s: &RingBuffer) -> Vec<Option<u64>> {
        let (mut o, mut t) = ([0.0; 2], [0.0; 1]);
        (0..s.capacity())
            .map(|slot| {
                s.read_slot(slot, &mut o, &mut t).map(|info| {
                    assert_eq!(o, [info.row as f32, -(info.row as f32)], "torn row");
                    info.row
                })
            })
            .collect()
    }

    /// The process table of `s`'s file, through a mapping of its own (as another process
    /// would see it).
    fn table(s: &RingBuffer) -> Region<AtomicU64> {
        let file = crate::format::open_regular(s.path().unwrap(), true).unwrap();
        let map = Arc::new(MmapRaw::map_raw(&file).unwrap());
        // SAFETY: the table is a page-aligned range of atomics in every mapping of the file.
        unsafe { Region::mapped(&map, TABLE_AT, MAX_HANDLES).unwrap() }
    }

    /// Pretend a writer with tag `tag` (process `pid`) died while writing `row` into `slot`.
    fn forge_busy(s: &RingBuffer, tag: usize, pid: u64, slot: usize, row: u64) {
        table(s)[tag].store(pid, Ordering::SeqCst);
        s.stamps
            .set(slot, (2 * row + 1) | ((tag as u64) << TAG_SHIFT));
    }

    #[test]
    fn a_dead_writers_slot_is_skipped_then_reclaimed_by_a_later_lap() {
        let path = temp("lap");
        let s = RingBuffer::create_file(&path, 8, 2, 1, Options::default()).unwrap();
        add_ids(&s, 0..8);
        forge_busy(&s, 40, dead_pid(), 3, 11);
        assert_eq!(ids(&s)[3], None, "readers skip the busy slot");
        for _ in 0..200 {
            let b = s.sample(4, false).unwrap();
            assert!(
                b.obs.chunks(2).all(|r| r[0] != 3.0),
                "slot 3 is never sampled"
            );
        }
        // The next lap writes rows 8..16; row 11 waits on slot 3, finds its writer dead,
        // reclaims the slot and writes.
        add_ids(&s, 8..16);
        assert_eq!(ids(&s), (8..16).map(Some).collect::<Vec<_>>());
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_live_writers_slot_times_out_naming_its_process_and_the_other_rows_land() {
        let path = temp("stopped");
        let s = RingBuffer::create_file(&path, 8, 2, 1, Options::default()).unwrap();
        add_ids(&s, 0..8);
        // A live process (this one, standing in for a stopped writer) holds slots 3 and 4.
        let me = u64::from(std::process::id());
        forge_busy(&s, 40, me, 3, 11);
        forge_busy(&s, 40, me, 4, 12);
        s.set_wait_timeout(std::time::Duration::from_millis(50));
        let obs: Vec<f32> = (8..16u64).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let target: Vec<f32> = (8..16u64).map(|i| i as f32 * 0.5).collect();
        let err = s.add(&obs, &target, Meta::default()).unwrap_err();
        match err {
            BufferError::SlotBusy {
                slot,
                pid,
                waited_ms,
            } => {
                assert_eq!((slot, pid), (3, me));
                assert!(waited_ms >= 50);
            }
            other => panic!("expected SlotBusy, got {other}"),
        }
        assert!(err.to_string().contains(&format!("process {me}")), "{err}");
        let held = ids(&s);
        assert_eq!(held[3], None, "still busy: the live writer may finish");
        assert_eq!(held[4], None);
        let others: Vec<_> = [0, 1, 2, 5, 6, 7].iter().map(|&i| held[i]).collect();
        assert_eq!(others, [8, 9, 10, 13, 14, 15].map(Some));
        // The next add is not affected by the earlier failure.
        add_ids(&s, 16..18);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_interrupt_check_ends_the_wait() {
        let path = temp("interrupt");
        let s = RingBuffer::create_file(&path, 4, 2, 1, Options::default()).unwrap();
        add_ids(&s, 0..4);
        forge_busy(&s, 40, u64::from(std::process::id()), 0, 5);
        let (obs, target) = ([4.0, -4.0], [2.0]);
        let err = crate::wait::with_interrupt(
            || true,
            || s.add(&obs, &target, Meta::default()).unwrap_err(),
        );
        assert!(
            matches!(err, BufferError::Interrupted { slot: 0, .. }),
            "{err}"
        );
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn open_sweeps_dead_writers_but_never_live_ones() {
        let path = temp("open");
        let s = RingBuffer::create_file(&path, 8, 2, 1, Options::default()).unwrap();
        add_ids(&s, 0..8);
        forge_busy(&s, 40, dead_pid(), 2, 10);
        forge_busy(&s, 41, u64::from(std::process::id()), 5, 13);
        let t = RingBuffer::open_file(&path, None).unwrap();
        let held = ids(&t);
        assert_eq!(held[2], None);
        assert_eq!(held[5], None, "a live writer's slot stays busy");
        assert_eq!(t.stamps.peek(2), 0, "the dead writer's slot was reset");
        assert_eq!(t.stamps.peek(5) & 1, 1);
        assert_eq!(t.reap_dead_writers(), 0);
        // Once the table entry's process is gone, the slot is reclaimed too.
        table(&s)[41].store(dead_pid(), Ordering::SeqCst);
        assert_eq!(t.reap_dead_writers(), 1);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn save_of_a_shared_store_skips_a_dead_writers_slot() {
        let path = temp("save");
        let s = RingBuffer::create_file(&path, 8, 2, 1, Options::default()).unwrap();
        add_ids(&s, 0..8);
        forge_busy(&s, 40, dead_pid(), 6, 14);
        let mut bytes = std::io::Cursor::new(Vec::new());
        s.save_to(&mut bytes).unwrap();
        let bytes = bytes.into_inner();
        let t =
            RingBuffer::load_from(&mut std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let mut want: Vec<_> = (0..8).map(Some).collect();
        want[6] = None;
        assert_eq!(ids(&t), want);
        assert_eq!(t.total_added(), 8);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn handles_take_and_return_table_entries() {
        let path = temp("table");
        let s = RingBuffer::create_file(&path, 4, 1, 1, Options::default()).unwrap();
        let handles: Vec<_> = (0..MAX_HANDLES - 2)
            .map(|_| RingBuffer::open_file(&path, None).unwrap())
            .collect();
        let err = RingBuffer::open_file(&path, None).unwrap_err();
        assert!(err.to_string().contains("live handles"), "{err}");
        drop(handles);
        let again = RingBuffer::open_file(&path, Some(1)).unwrap();
        assert_eq!(again.seed(), 1);
        drop((s, again));
        fs::remove_file(&path).unwrap();
    }
}
