//! The atomics the slot protocol is written against.
//!
//! Under `--cfg loom` these are loom's model-checked types, so `tests/loom.rs` explores every
//! interleaving of the real reservation/stamp code; otherwise they are `std`'s.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::error::BufferError;

/// Spin politely while another thread finishes a write: spin a little, then yield the core
/// (on a 2-core machine the writer we wait for may need our core to finish).
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(0)
    }

    pub(crate) fn snooze(&mut self) {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        {
            if self.0 < 6 {
                for _ in 0..(1u32 << self.0) {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::yield_now();
            }
        }
        self.0 = self.0.saturating_add(1);
    }
}

/// Atomic integers that can start as zero.
pub(crate) trait AtomicZero: Sized {
    fn zero() -> Self;
}

macro_rules! atomic_zero {
    ($($t:ty),*) => {$(
        impl AtomicZero for $t {
            fn zero() -> Self {
                <$t>::new(0)
            }
        }
    )*};
}
atomic_zero!(AtomicU32, AtomicU64, AtomicI64);

/// A zero-filled slice of `n` atomics.
///
/// Without loom this asks the allocator for zeroed memory (`calloc`: untouched pages cost
/// nothing until written), which is sound because std's atomic integers have the size,
/// alignment and bit validity of the plain integers. A failed allocation is an error, not an
/// abort, so a huge capacity from Python raises instead of killing the interpreter.
#[cfg(not(loom))]
pub(crate) fn zeroed<A: AtomicZero>(n: usize) -> Result<Box<[A]>, BufferError> {
    use std::alloc::{alloc_zeroed, Layout};
    let layout = Layout::array::<A>(n).map_err(|_| BufferError::TooLarge { elements: n })?;
    if layout.size() == 0 {
        return Ok((0..n).map(|_| A::zero()).collect());
    }
    // SAFETY: the layout has non-zero size; a null return is handled below.
    let ptr = unsafe { alloc_zeroed(layout) } as *mut A;
    if ptr.is_null() {
        return Err(BufferError::TooLarge { elements: n });
    }
    // SAFETY: `ptr` is a fresh allocation of `n` zero bytes-valued `A`s with `A`'s layout
    // (all-zero bytes are a valid atomic integer 0), owned by the returned box.
    Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) })
}

#[cfg(loom)]
pub(crate) fn zeroed<A: AtomicZero>(n: usize) -> Result<Box<[A]>, BufferError> {
    Ok((0..n).map(|_| A::zero()).collect())
}
