//! Preallocated float32 columns whose rows are copied with relaxed atomic word accesses.
//!
//! A sampler may copy a row while a writer overwrites it; the slot stamps (see `slots`) make
//! it throw such a copy away. Under Rust's memory model that racing copy must still be made of
//! atomic accesses, or it is undefined behaviour even when discarded. So the storage is atomic
//! words, and rows move as relaxed loads/stores, which compile to plain moves on x86-64 and
//! aarch64. Rows of an even width move as 64-bit words (half the instructions of 32-bit ones);
//! odd widths use 32-bit words. Either way the memory is densely packed float32, row-major,
//! so NumPy and DLPack can view it directly.
//!
//! Blocks of at least `REP_MOVS_MIN_WORDS` 64-bit words (windows, batched adds) move with one
//! `rep movsq` on x86-64: one aligned 8-byte load and store per word, each single-copy atomic
//! on x86-64 and unordered with respect to the others - the same accesses, with the same
//! (absent) ordering, as a loop of `AtomicU64` Relaxed loads or stores, but moved by the CPU's
//! fast-string microcode at memcpy speed instead of one scalar move at a time.

use crate::error::BufferError;
use crate::region::Region;
use crate::sync::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Prefetch at most this much of one column per call.
#[cfg_attr(not(all(target_arch = "x86_64", not(loom))), allow(dead_code))]
const MAX_PREFETCH_BYTES: usize = 16 * 1024;

/// Hint the CPU to load the cache lines covering `bytes` bytes from `p`. Prefetches never
/// fault, even for invalid addresses, so no bounds are needed.
#[inline(always)]
#[cfg_attr(not(all(target_arch = "x86_64", not(loom))), allow(dead_code))]
pub(crate) fn prefetch_bytes(p: *const i8, bytes: usize) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        if bytes == 0 {
            return;
        }
        let first = p as usize & !63;
        let last = (p as usize).wrapping_add(bytes - 1) & !63;
        let mut line = first;
        while line <= last {
            // SAFETY: prefetch is a hint; it never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch(line as *const i8, std::arch::x86_64::_MM_HINT_T0)
            };
            line += 64;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = (p, bytes);
}

/// Below this many words the scalar loop beats `rep movsq`'s start-up cost.
#[cfg_attr(not(all(target_arch = "x86_64", not(loom))), allow(dead_code))]
const REP_MOVS_MIN_WORDS: usize = 128;

/// Relaxed copy of `src` words into `dst` (`dst.len() == 2 * src.len()`).
#[inline]
fn copy_words(src: &[AtomicU64], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), 2 * src.len());
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if src.len() >= REP_MOVS_MIN_WORDS {
        // SAFETY: (see the module docs) `rep movsq` performs one aligned 8-byte load per word
        // (single-copy atomic on x86-64, i.e. what `AtomicU64::load(Relaxed)` compiles to,
        // with no ordering between words, which Relaxed does not require either) and writes
        // the words to `dst`, which we borrow exclusively and which has room for them.
        unsafe {
            std::arch::asm!(
                "rep movsq",
                inout("rcx") src.len() => _,
                inout("rsi") src.as_ptr() => _,
                inout("rdi") dst.as_mut_ptr() => _,
                options(nostack, preserves_flags)
            );
        }
        return;
    }
    for (out, word) in dst.chunks_exact_mut(2).zip(src) {
        let b = word.load(Relaxed).to_ne_bytes();
        out[0] = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        out[1] = f32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    }
}

/// Relaxed store of `src` into `dst` words (`src.len() == 2 * dst.len()`).
#[inline]
fn store_words(src: &[f32], dst: &[AtomicU64]) {
    debug_assert_eq!(src.len(), 2 * dst.len());
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if dst.len() >= REP_MOVS_MIN_WORDS {
        // SAFETY: `rep movsq` reads `src` (ours to read) and performs one aligned 8-byte store
        // per destination word: single-copy atomic on x86-64, i.e. what
        // `AtomicU64::store(Relaxed)` compiles to, with no ordering between words.
        unsafe {
            std::arch::asm!(
                "rep movsq",
                inout("rcx") dst.len() => _,
                inout("rsi") src.as_ptr() => _,
                inout("rdi") dst.as_ptr() => _,
                options(nostack, preserves_flags)
            );
        }
        return;
    }
    for (pair, word) in src.chunks_exact(2).zip(dst) {
        let (lo, hi) = (u64::from(pair[0].to_bits()), u64::from(pair[1].to_bits()));
        let v = if cfg!(target_endian = "little") {
            lo | (hi << 32)
        } else {
            (lo << 32) | hi
        };
        word.store(v, Relaxed);
    }
}

/// From this many 64-bit words on (32 KiB), a block store bypasses the cache (see
/// `stream_words`).
#[cfg_attr(not(all(target_arch = "x86_64", not(loom))), allow(dead_code))]
const STREAM_MIN_WORDS: usize = 4096;

/// Store `src` into `dst` words with non-temporal `movnti` stores; true when it did (the
/// caller must then `store_fence` before publishing), false for short blocks or other CPUs.
///
/// A batched add writes rows that are not in any cache (the ring's oldest). Ordinary stores
/// first read each line from memory, then write it back later; `movnti` writes whole lines
/// straight to memory, so the copy moves half the bytes and leaves the caches (and the
/// caller's batch in them) alone. Each `movnti` is one aligned 8-byte store, single-copy
/// atomic like `AtomicU64::store(Relaxed)`; its weaker ordering is why `store_fence` follows.
#[inline]
fn stream_words(src: &[f32], dst: &[AtomicU64]) -> bool {
    debug_assert_eq!(src.len(), 2 * dst.len());
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    if dst.len() >= STREAM_MIN_WORDS {
        let words = src.as_ptr() as *const u64;
        for (k, word) in dst.iter().enumerate() {
            // SAFETY: `src` holds `2 * dst.len()` floats, so word `k` (8 bytes at 8 * k) is
            // inside it (read unaligned: `src` is only 4-byte aligned). The store goes to
            // `word`, an aligned `AtomicU64` of the column (see above for why a non-atomic
            // instruction is the same access as a relaxed atomic store here).
            unsafe {
                let v = std::ptr::read_unaligned(words.add(k));
                std::arch::x86_64::_mm_stream_si64(word.as_ptr() as *mut i64, v as i64);
            }
        }
        return true;
    }
    let _ = (src, dst);
    false
}

/// Order every earlier non-temporal store before later stores (`sfence`): after
/// `store_rows_streaming` and before the rows' stamps are published.
#[inline]
pub(crate) fn store_fence() {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    // SAFETY: `sfence` has no operands and no effect beyond ordering stores.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

pub(crate) enum Words {
    /// Even widths: two floats per word.
    W64(Region<AtomicU64>),
    /// Odd widths: one float per word.
    W32(Region<AtomicU32>),
}

/// One `capacity x dim` float32 column.
pub(crate) struct FloatColumn {
    words: Words,
    dim: usize,
}

impl FloatColumn {
    pub(crate) fn new(capacity: usize, dim: usize) -> Result<Self, BufferError> {
        let n = capacity.checked_mul(dim).ok_or(BufferError::TooLarge {
            elements: usize::MAX,
        })?;
        let words = if dim % 2 == 0 {
            Words::W64(Region::zeroed(n / 2)?)
        } else {
            Words::W32(Region::zeroed(n)?)
        };
        Ok(FloatColumn { words, dim })
    }

    /// A column over existing words (`W64` for even `dim`, `W32` for odd).
    pub(crate) fn from_words(words: Words, dim: usize) -> Self {
        debug_assert_eq!(matches!(words, Words::W64(_)), dim % 2 == 0);
        FloatColumn { words, dim }
    }

    /// Copy the row in `slot` into `dst` (`dst.len() == dim`).
    #[inline]
    pub(crate) fn load_row(&self, slot: usize, dst: &mut [f32]) {
        let d = self.dim;
        match &self.words {
            Words::W64(w) => {
                let half = d / 2;
                let src = &w[slot * half..slot * half + half];
                for (out, word) in dst.chunks_exact_mut(2).zip(src) {
                    let b = word.load(Relaxed).to_ne_bytes();
                    out[0] = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                    out[1] = f32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
                }
            }
            Words::W32(w) => {
                for (out, word) in dst.iter_mut().zip(&w[slot * d..slot * d + d]) {
                    *out = f32::from_bits(word.load(Relaxed));
                }
            }
        }
    }

    /// Copy `dst.len() / dim` consecutive rows starting at `slot` (no wrap-around) into `dst`
    /// in one pass: for windows, the per-row overhead of `load_row` is most of the cost.
    #[inline]
    pub(crate) fn load_rows(&self, slot: usize, dst: &mut [f32]) {
        let d = self.dim;
        match &self.words {
            Words::W64(w) => {
                let start = slot * d / 2;
                let src = &w[start..start + dst.len() / 2];
                copy_words(src, dst);
            }
            Words::W32(w) => {
                let (start, n) = (slot * d, dst.len());
                for (out, word) in dst.iter_mut().zip(&w[start..start + n]) {
                    *out = f32::from_bits(word.load(Relaxed));
                }
            }
        }
    }

    /// Copy `src.len() / dim` consecutive rows into the slots from `slot` on (no wrap-around)
    /// in one pass.
    #[inline]
    pub(crate) fn store_rows(&self, slot: usize, src: &[f32]) {
        let d = self.dim;
        match &self.words {
            Words::W64(w) => {
                let start = slot * d / 2;
                store_words(src, &w[start..start + src.len() / 2]);
            }
            Words::W32(w) => {
                let (start, n) = (slot * d, src.len());
                for (word, v) in w[start..start + n].iter().zip(src) {
                    word.store(v.to_bits(), Relaxed);
                }
            }
        }
    }

    /// Like [`store_rows`](Self::store_rows), with non-temporal stores for long blocks of
    /// even-width rows. Returns true when it streamed: call [`store_fence`] before publishing.
    #[inline]
    pub(crate) fn store_rows_streaming(&self, slot: usize, src: &[f32]) -> bool {
        if let Words::W64(w) = &self.words {
            let start = slot * self.dim / 2;
            if stream_words(src, &w[start..start + src.len() / 2]) {
                return true;
            }
        }
        self.store_rows(slot, src);
        false
    }

    /// Copy `src` (`src.len() == dim`) into the row in `slot`.
    #[inline]
    pub(crate) fn store_row(&self, slot: usize, src: &[f32]) {
        let d = self.dim;
        match &self.words {
            Words::W64(w) => {
                let half = d / 2;
                let dst = &w[slot * half..slot * half + half];
                for (pair, word) in src.chunks_exact(2).zip(dst) {
                    let a = pair[0].to_ne_bytes();
                    let b = pair[1].to_ne_bytes();
                    word.store(
                        u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]),
                        Relaxed,
                    );
                }
            }
            Words::W32(w) => {
                for (word, v) in w[slot * d..slot * d + d].iter().zip(src) {
                    word.store(v.to_bits(), Relaxed);
                }
            }
        }
    }

    /// Ask the CPU to start loading `rows` rows from `slot` on (random gathers and windows
    /// are latency-bound, and scalar atomic copies keep few misses in flight by themselves;
    /// prefetching a few rows or a window ahead restores memcpy-like throughput).
    #[inline]
    pub(crate) fn prefetch_rows(&self, slot: usize, rows: usize) {
        #[cfg(not(loom))]
        {
            let bytes = (rows * self.dim * 4).min(MAX_PREFETCH_BYTES);
            prefetch_bytes(
                self.as_ptr().wrapping_add(slot * self.dim) as *const i8,
                bytes,
            );
        }
        #[cfg(loom)]
        let _ = (slot, rows);
    }

    /// Address of the first float (for zero-copy views). Writes through it are not allowed.
    #[cfg(not(loom))]
    pub(crate) fn as_ptr(&self) -> *const f32 {
        match &self.words {
            Words::W64(w) => w.as_ptr() as *const f32,
            Words::W32(w) => w.as_ptr() as *const f32,
        }
    }
}
