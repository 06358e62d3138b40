//! Where a column's memory lives: the heap, or a shared memory-mapped file.
//!
//! [`Region`] is a fixed-length slice of atomics that derefs to `[A]`, so the slot protocol,
//! the columns and the samplers are written once against slices and run unchanged on either
//! storage. A heap region owns a zeroed allocation (`calloc`, see `sync::zeroed`); a mapped
//! region borrows a range of a shared file mapping (`memmap2::MmapRaw`) and keeps the mapping
//! alive through an `Arc`, so several processes mapping one file share the same atomics.
//! Either way the hot paths see one pointer and one length: no branch on the storage kind.

use std::ptr::NonNull;
#[cfg(not(loom))]
use std::sync::Arc;

use crate::error::BufferError;
use crate::sync::{zeroed, AtomicZero};

enum Owner {
    /// The region owns a `Box<[A]>` (turned into a raw pointer; rebuilt to drop it).
    Heap,
    /// The region is a range of a shared mapping that this `Arc` keeps mapped.
    #[cfg(not(loom))]
    #[allow(dead_code)]
    Map(Arc<memmap2::MmapRaw>),
}

/// `len` atomics at `ptr`, on the heap or in a shared mapping.
pub(crate) struct Region<A> {
    ptr: NonNull<A>,
    len: usize,
    owner: Owner,
}

// SAFETY: a region is a slice of atomics (`Sync`) that it owns or keeps mapped; sharing or
// moving it between threads is what `Box<[A]>` allows for the same `A`.
unsafe impl<A: Sync> Send for Region<A> {}
// SAFETY: as above; all access goes through `&[A]`.
unsafe impl<A: Sync> Sync for Region<A> {}

impl<A: AtomicZero> Region<A> {
    /// `n` zeroed atomics on the heap.
    pub(crate) fn zeroed(n: usize) -> Result<Self, BufferError> {
        let boxed = zeroed::<A>(n)?;
        let len = boxed.len();
        let raw = Box::into_raw(boxed) as *mut A;
        #[cfg(all(target_os = "linux", not(loom)))]
        advise_huge_pages(raw as *mut u8, std::mem::size_of::<A>() * len);
        // SAFETY: `Box::into_raw` never returns null (a dangling, aligned pointer when empty).
        let ptr = unsafe { NonNull::new_unchecked(raw) };
        Ok(Region {
            ptr,
            len,
            owner: Owner::Heap,
        })
    }
}

/// Ask Linux to back a large heap region with transparent huge pages, as NumPy does for its
/// large arrays (`madvise(MADV_HUGEPAGE)`; the machine's THP mode is often "madvise", so
/// without it every 4 KiB page costs a TLB entry). A batched add or window copy then misses
/// the TLB once per 2 MiB instead of once per 4 KiB. Only whole 2 MiB pages inside the
/// allocation are advised; the call is a hint, and its failure is ignored.
#[cfg(all(target_os = "linux", not(loom)))]
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: advice on whole pages inside an allocation we own; MADV_HUGEPAGE changes no
        // contents and no mapping, only how the kernel may back the pages.
        unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE) };
    }
}

#[cfg(not(loom))]
impl<A> Region<A> {
    /// `len` atomics at byte `offset` of `map`.
    ///
    /// # Safety
    /// `A` must be an atomic integer type (valid for every bit pattern, no drop glue); the
    /// caller must not create any non-atomic reference to the same bytes while the region
    /// lives (other processes mapping the file use atomics too).
    pub(crate) unsafe fn mapped(
        map: &Arc<memmap2::MmapRaw>,
        offset: usize,
        len: usize,
    ) -> Result<Self, BufferError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<A>())
            .and_then(|b| b.checked_add(offset))
            .ok_or(BufferError::TooLarge { elements: len })?;
        if bytes > map.len() || offset % std::mem::align_of::<A>() != 0 {
            return Err(BufferError::TooLarge { elements: len });
        }
        // SAFETY: `offset` is within the mapping (checked above), and the mapping's base is
        // page-aligned, so the pointer is non-null and aligned for `A`.
        let ptr = unsafe { NonNull::new_unchecked(map.as_mut_ptr().add(offset) as *mut A) };
        Ok(Region {
            ptr,
            len,
            owner: Owner::Map(Arc::clone(map)),
        })
    }
}

impl<A> std::ops::Deref for Region<A> {
    type Target = [A];

    #[inline(always)]
    fn deref(&self) -> &[A] {
        // SAFETY: `ptr` points to `len` initialized atomics that live as long as `self`
        // (owned heap memory or a mapping kept alive by `owner`); only shared references
        // are ever made.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<A> Drop for Region<A> {
    fn drop(&mut self) {
        // Under loom `Heap` is the only variant.
        #[allow(irrefutable_let_patterns)]
        if let Owner::Heap = self.owner {
            // SAFETY: a heap region's pointer came from `Box::into_raw` of a `Box<[A]>` of
            // `len` elements, and is dropped exactly once, here.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}
