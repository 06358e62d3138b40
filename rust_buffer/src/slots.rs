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
use crate::sync::{fence, zeroed, AtomicU64, Backoff, Ordering};

/// The row a stable stamp names, or `None` for empty/busy stamps.
#[inline]
pub(crate) fn stable_row(stamp: u64) -> Option<u64> {
    if stamp == 0 || stamp & 1 == 1 {
        None
    } else {
        Some(stamp / 2 - 1)
    }
}

/// Per-slot sequence stamps.
pub(crate) struct Stamps {
    s: Box<[AtomicU64]>,
}

impl Stamps {
    pub(crate) fn new(capacity: usize) -> Result<Self, BufferError> {
        Ok(Stamps {
            s: zeroed(capacity)?,
        })
    }

    /// Claim `slot` for row `row`. `false`: a newer row holds the slot, so skip the write.
    #[inline]
    pub(crate) fn begin_write(&self, slot: usize, row: u64) -> bool {
        let stamp = &self.s[slot];
        let mut backoff = Backoff::new();
        let mut cur = stamp.load(Ordering::Relaxed);
        loop {
            if cur & 1 == 1 {
                backoff.snooze();
                cur = stamp.load(Ordering::Relaxed);
                continue;
            }
            if matches!(stable_row(cur), Some(held) if held > row) {
                return false;
            }
            match stamp.compare_exchange_weak(
                cur,
                2 * row + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
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
