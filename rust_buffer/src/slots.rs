//! The slot protocol: one sequence stamp per slot (a seqlock whose value also names the row).
//!
//! Rows get a global index `k` (0, 1, 2, ... in reservation order) from one `fetch_add` on the
//! store's cursor. A slot's stamp is
//!
//! * `0`: never written;
//! * `2k + 1`: row `k` is being written (odd = busy);
//! * `2k + 2`: row `k` is complete (even = stable).
//!
//! **Writer** of row `k` into slot `s`: wait while the stamp is odd (another writer, for
//! example one a full lap behind, is still copying); if the stamp already names a row newer
//! than `k`, drop row `k` (it would have been overwritten anyway); else CAS the stable stamp
//! to `2k + 1` (Acquire: orders our copy after the previous writer's), `fence(Release)`, copy
//! the row with relaxed stores, and publish `2k + 2` with a Release store. The CAS makes two
//! writers that meet at one slot take turns, and the newer row always ends up in the slot.
//!
//! **Reader**: load the stamp (Acquire); skip the slot if it is odd, zero or names a cleared
//! row; copy with relaxed loads; `fence(Acquire)`; reload the stamp (Relaxed). Equal stamps
//! mean no write overlapped the copy: if one had, the reader's copy would have read a value
//! stored after the writer's release fence, so the acquire fence would make the odd stamp
//! visible to the reload (the classic seqlock argument, Boehm 2012).
//!
//! **Bounded waits.** The writer's wait on an odd stamp is the only place a call waits on
//! another writer. Every `REAP_AFTER` snoozes it asks the reaper whether the writer is dead
//! (then the slot is reclaimed), and it is bounded by the store's wait timeout and an
//! optional interrupt check (`wait`): a wait that gives up drops that row, the rest of the
//! `add` skips busy slots without waiting, and `add` reports the failure at its end.

use crate::error::BufferError;
use crate::region::Region;
use crate::sync::{fence, AtomicU64, Backoff, Ordering};

/// The row a stable stamp names, or `None` for empty/busy stamps.
#[inline]
pub(crate) fn stable_row(stamp: u64) -> Option<u64> {
    if stamp == 0 || stamp & 1 == 1 {
        None
    } else {
        Some(stamp / 2 - 1)
    }
}

/// Bit position of the writer tag in a busy (odd) stamp.
pub(crate) const TAG_SHIFT: u32 = 56;

/// Row counters (and so row numbers) stay below this: a stable stamp `2k + 2` must stay
/// clear of the writer tag bits (`k < 2^55 - 1`), with a margin for concurrent adds that pass
/// the check together. `add` refuses to go past it; `load` and `open` reject files at or
/// above it.
pub const MAX_ROWS: u64 = 1 << 54;

/// `Err` when adding `rows` rows to a store that has counted `cursor` would reach
/// [`MAX_ROWS`] (checked arithmetic: the counters never wrap).
#[inline]
pub(crate) fn check_room(cursor: u64, rows: usize) -> Result<(), BufferError> {
    match cursor.checked_add(rows as u64) {
        Some(end) if end < MAX_ROWS => Ok(()),
        _ => Err(BufferError::RowLimit {
            cursor,
            rows,
            limit: MAX_ROWS,
        }),
    }
}

/// Decides whether the writer that left a busy stamp is gone (file-backed stores only).
pub trait Reaper: Send + Sync {
    /// True when the writer with `tag` can never finish its write (its process died).
    fn is_dead(&self, tag: u64) -> bool;
    /// The process id behind `tag` (0 when the entry is free).
    fn holder(&self, tag: u64) -> u64;
}

/// Per-slot sequence stamps.
///
/// A busy stamp is `2k + 1 | tag << 56`: the tag names the writer (0 in heap stores; in a
/// file-backed store, the writer's entry in the file's process table), so that a writer
/// killed mid-write can be recognised and its slot reclaimed (see [`Reaper`]). Stable stamps
/// carry no tag. Rows are numbered below `2^55`.
pub(crate) struct Stamps {
    s: Region<AtomicU64>,
    /// This handle's writer tag, already shifted (0 for heap stores).
    tag: std::sync::atomic::AtomicU64,
    /// Recognises dead writers (file-backed stores).
    reaper: Option<Box<dyn Reaper>>,
    /// How long a writer waits on another's busy slot before giving up (milliseconds).
    pub(crate) timeout_ms: std::sync::atomic::AtomicU64,
}

/// Snoozes spent waiting on one busy stamp before asking the reaper about its writer (and
/// checking the wait's deadline). 1 under loom, so models reach the reclaim path.
const REAP_AFTER: u32 = if cfg!(loom) { 1 } else { 64 };

fn default_timeout() -> std::sync::atomic::AtomicU64 {
    std::sync::atomic::AtomicU64::new(crate::wait::DEFAULT_WAIT_TIMEOUT_MS)
}

impl Stamps {
    pub(crate) fn new(capacity: usize) -> Result<Self, BufferError> {
        Ok(Stamps {
            s: Region::zeroed(capacity)?,
            tag: std::sync::atomic::AtomicU64::new(0),
            reaper: None,
            timeout_ms: default_timeout(),
        })
    }

    /// Stamps over an existing region (a shared mapping) with a reaper of dead writers.
    pub(crate) fn shared(s: Region<AtomicU64>, reaper: Box<dyn Reaper>) -> Self {
        Stamps {
            s,
            tag: std::sync::atomic::AtomicU64::new(0),
            reaper: Some(reaper),
            timeout_ms: default_timeout(),
        }
    }

    /// Set this handle's writer tag (the shift is applied here).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn set_tag(&self, tag: u64) {
        self.tag
            .store(tag << TAG_SHIFT, std::sync::atomic::Ordering::Relaxed);
    }

    /// Slots in the store.
    #[cfg(not(loom))]
    pub(crate) fn len(&self) -> usize {
        self.s.len()
    }

    /// If `slot` is busy with a write by a dead writer (per the reaper, or `tag` when
    /// given), reset it to empty (0) so readers stop skipping it and writers can claim it.
    /// Returns whether it was reset.
    pub(crate) fn reap(&self, slot: usize, only_tag: Option<u64>) -> bool {
        let Some(reaper) = &self.reaper else {
            return false;
        };
        // SeqCst: the owner's table entry is read after the stamp, so a stamp made by a new
        // owner of the tag is judged by that (live) owner's entry.
        let cur = self.s[slot].load(Ordering::SeqCst);
        if cur & 1 == 0 {
            return false;
        }
        let tag = cur >> TAG_SHIFT;
        let dead = match only_tag {
            Some(t) => t == tag,
            None => tag != 0 && reaper.is_dead(tag),
        };
        dead && self.s[slot]
            .compare_exchange(cur, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// The process behind a busy stamp's tag (this process for untagged stamps).
    fn holder(&self, busy: u64) -> u64 {
        let tag = busy >> TAG_SHIFT;
        match &self.reaper {
            Some(r) if tag != 0 => r.holder(tag),
            _ => u64::from(std::process::id()),
        }
    }

    /// Claim `slot` for row `row`. `false`: a newer row holds the slot, or the wait for the
    /// slot's current writer gave up (timeout or interrupt, recorded for `add` to report), so
    /// skip the write.
    #[inline]
    pub(crate) fn begin_write(&self, slot: usize, row: u64) -> bool {
        self.claim(
            slot,
            row,
            self.tag.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// `begin_write` under the writer tag `tag` (already shifted).
    #[inline]
    fn claim(&self, slot: usize, row: u64, tag: u64) -> bool {
        let stamp = &self.s[slot];
        let mut backoff = Backoff::new();
        let mut cur = stamp.load(Ordering::Relaxed);
        let mut waited = 0u32;
        let mut wait = None;
        loop {
            if cur & 1 == 1 {
                // An earlier wait of this add gave up: do not wait again.
                if crate::wait::gave_up() {
                    return false;
                }
                backoff.snooze();
                waited += 1;
                if waited % REAP_AFTER == 0 && !self.reap(slot, None) {
                    let w = wait.get_or_insert_with(|| crate::wait::Wait::new(&self.timeout_ms));
                    if !w.tick(slot, || self.holder(cur)) {
                        return false;
                    }
                }
                cur = stamp.load(Ordering::Relaxed);
                continue;
            }
            if matches!(stable_row(cur), Some(held) if held > row) {
                return false;
            }
            let busy = (2 * row + 1) | tag;
            match stamp.compare_exchange_weak(cur, busy, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Orders the odd stamp before every data store of this write (seqlock writer fence).
        fence(Ordering::Release);
        true
    }

    /// Publish row `row` in `slot` after its data is written.
    #[inline]
    pub(crate) fn end_write(&self, slot: usize, row: u64) {
        self.s[slot].store(2 * row + 2, Ordering::Release);
    }

    /// The stamp now (Relaxed): the re-check of a multi-slot read, after its Acquire fence.
    #[inline]
    pub(crate) fn peek(&self, slot: usize) -> u64 {
        self.s[slot].load(Ordering::Relaxed)
    }

    /// Set a stamp outright (loading a snapshot into a store no one else sees yet).
    #[cfg(not(loom))]
    pub(crate) fn set(&self, slot: usize, stamp: u64) {
        self.s[slot].store(stamp, Ordering::Relaxed);
    }

    /// Address of `slot`'s stamp (for prefetching only).
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn addr(&self, slot: usize) -> *const i8 {
        self.s.as_ptr().wrapping_add(slot) as *const i8
    }

    /// First half of a read: the stamp to validate against later.
    #[inline]
    pub(crate) fn read_begin(&self, slot: usize) -> u64 {
        self.s[slot].load(Ordering::Acquire)
    }

    /// Second half of a read: did the copy made since `read_begin` see one whole write?
    #[inline]
    pub(crate) fn read_validate(&self, slot: usize, begun: u64) -> bool {
        fence(Ordering::Acquire);
        self.s[slot].load(Ordering::Relaxed) == begun
    }
}

/// The slot protocol with a reaper, exposed to the loom models of `tests/loom.rs` only (not
/// part of the API): the dead-writer reclaim path has no public entry point to drive it.
#[cfg(loom)]
#[doc(hidden)]
pub mod model {
    pub use super::Reaper;
    use super::*;

    /// Stamps of `capacity` slots with a reaper.
    pub struct Slots(Stamps);

    impl Slots {
        /// Zeroed stamps judged by `reaper`.
        pub fn new(capacity: usize, reaper: Box<dyn Reaper>) -> Self {
            Slots(Stamps::shared(
                Region::zeroed(capacity).expect("tiny"),
                reaper,
            ))
        }
        /// See `Stamps::begin_write`, as the writer with table entry `tag`.
        pub fn begin_write(&self, tag: u64, slot: usize, row: u64) -> bool {
            self.0.claim(slot, row, tag << TAG_SHIFT)
        }
        /// See `Stamps::end_write`.
        pub fn end_write(&self, slot: usize, row: u64) {
            self.0.end_write(slot, row)
        }
        /// See `Stamps::reap`.
        pub fn reap(&self, slot: usize, only_tag: Option<u64>) -> bool {
            self.0.reap(slot, only_tag)
        }
        /// See `Stamps::read_begin`.
        pub fn read_begin(&self, slot: usize) -> u64 {
            self.0.read_begin(slot)
        }
        /// See `Stamps::read_validate`.
        pub fn read_validate(&self, slot: usize, begun: u64) -> bool {
            self.0.read_validate(slot, begun)
        }
        /// The stamp now.
        pub fn peek(&self, slot: usize) -> u64 {
            self.0.peek(slot)
        }
    }
}
