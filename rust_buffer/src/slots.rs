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

/// Decides whether the writer that left a busy stamp is gone (file-backed stores only).
pub(crate) trait Reaper: Send + Sync {
    /// True when the writer with `tag` can never finish its write (its process died).
    fn is_dead(&self, tag: u64) -> bool;
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
}

/// Snoozes spent waiting on one busy stamp before asking the reaper about its writer.
const REAP_AFTER: u32 = 64;

impl Stamps {
    pub(crate) fn new(capacity: usize) -> Result<Self, BufferError> {
        Ok(Stamps {
            s: Region::zeroed(capacity)?,
            tag: std::sync::atomic::AtomicU64::new(0),
            reaper: None,
        })
    }

    /// Stamps over an existing region (a shared mapping) with a reaper of dead writers.
    #[cfg(not(loom))]
    pub(crate) fn shared(s: Region<AtomicU64>, reaper: Box<dyn Reaper>) -> Self {
        Stamps {
            s,
            tag: std::sync::atomic::AtomicU64::new(0),
            reaper: Some(reaper),
        }
    }

    /// Set this handle's writer tag (the shift is applied here).
    #[cfg(not(loom))]
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

    /// Claim `slot` for row `row`. `false`: a newer row holds the slot, so skip the write.
    #[inline]
    pub(crate) fn begin_write(&self, slot: usize, row: u64) -> bool {
        let stamp = &self.s[slot];
        let mut backoff = Backoff::new();
        let mut cur = stamp.load(Ordering::Relaxed);
        let mut waited = 0u32;
        loop {
            if cur & 1 == 1 {
                backoff.snooze();
                waited += 1;
                if waited % REAP_AFTER == 0 {
                    self.reap(slot, None);
                }
                cur = stamp.load(Ordering::Relaxed);
                continue;
            }
            if matches!(stable_row(cur), Some(held) if held > row) {
                return false;
            }
            let busy = (2 * row + 1) | self.tag.load(std::sync::atomic::Ordering::Relaxed);
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
