//! Bounded, interruptible waits on another writer.
//!
//! A writer that finds its slot busy with an older write waits for it (`slots`). That wait
//! ends, besides the slot becoming free or its dead writer being reclaimed, when
//!
//! * the store's **wait timeout** passes (default [`DEFAULT_WAIT_TIMEOUT_MS`], see
//!   [`RingBuffer::set_wait_timeout`](crate::RingBuffer::set_wait_timeout)): the writer is
//!   alive but stopped (SIGSTOP, a debugger) or stuck, and `add` fails with
//!   [`BufferError::SlotBusy`] naming its process; or
//! * the **interrupt check** installed with [`with_interrupt`] returns true (the Python
//!   bindings run Python's signal handlers there, so Ctrl-C works): [`BufferError::Interrupted`].
//!
//! A wait that gives up drops its row; the rest of the same `add` then skips busy slots
//! without waiting (one stopped writer may hold a whole chunk of slots), and `add` reports the
//! failure once its other rows are written. Long waits sleep instead of spinning, so a writer
//! stuck behind a stopped one does not burn a core.

use crate::error::BufferError;

/// Default wait timeout, in milliseconds (10 s).
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 10_000;

#[cfg(not(loom))]
pub use imp::*;

#[cfg(not(loom))]
mod imp {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use super::BufferError;

    /// How often a waiting writer runs the interrupt check.
    const INTERRUPT_EVERY: Duration = Duration::from_millis(20);
    /// Waits longer than this sleep between checks instead of spinning.
    const SLEEP_AFTER: Duration = Duration::from_millis(1);
    /// The longest sleep between checks.
    const MAX_SLEEP: Duration = Duration::from_millis(2);

    thread_local! {
        static INTERRUPT: Cell<Option<fn() -> bool>> = const { Cell::new(None) };
        /// Why this thread's current `add` gave up a wait (taken by `add` at its end).
        static GAVE_UP: Cell<Option<(usize, u64, Option<u64>)>> = const { Cell::new(None) };
    }

    /// Run `f` with `check` as this thread's interrupt check: a writer waiting on another's
    /// slot calls it every 20 ms and gives up when it returns true.
    pub fn with_interrupt<T>(check: fn() -> bool, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<fn() -> bool>);
        impl Drop for Restore {
            fn drop(&mut self) {
                INTERRUPT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(INTERRUPT.with(|c| c.replace(Some(check))));
        f()
    }

    /// Has a wait of this thread's current `add` given up?
    #[inline]
    pub(crate) fn gave_up() -> bool {
        GAVE_UP.with(|g| g.get().is_some())
    }

    /// The failure of this thread's current `add`, if a wait gave up (and reset it).
    #[inline]
    pub(crate) fn take_failure() -> Result<(), BufferError> {
        match GAVE_UP.with(|g| g.take()) {
            None => Ok(()),
            Some((slot, pid, Some(waited_ms))) => Err(BufferError::SlotBusy {
                slot,
                pid,
                waited_ms,
            }),
            Some((slot, pid, None)) => Err(BufferError::Interrupted { slot, pid }),
        }
    }

    /// One writer's wait on one busy slot.
    pub(crate) struct Wait {
        start: Instant,
        timeout: Duration,
        next_interrupt_check: Duration,
    }

    impl Wait {
        pub(crate) fn new(timeout_ms: &std::sync::atomic::AtomicU64) -> Self {
            let ms = timeout_ms.load(std::sync::atomic::Ordering::Relaxed);
            Wait {
                start: Instant::now(),
                timeout: Duration::from_millis(ms),
                next_interrupt_check: INTERRUPT_EVERY,
            }
        }

        /// Called periodically while waiting on `slot`; `false` when the wait gives up (the
        /// reason is recorded for `take_failure`). `holder` names the writer's process.
        pub(crate) fn tick(&mut self, slot: usize, holder: impl Fn() -> u64) -> bool {
            let waited = self.start.elapsed();
            if waited >= self.next_interrupt_check {
                self.next_interrupt_check = waited + INTERRUPT_EVERY;
                if INTERRUPT.with(|c| c.get()).is_some_and(|check| check()) {
                    GAVE_UP.with(|g| g.set(Some((slot, holder(), None))));
                    return false;
                }
            }
            if waited >= self.timeout {
                let ms = waited.as_millis().min(u128::from(u64::MAX)) as u64;
                GAVE_UP.with(|g| g.set(Some((slot, holder(), Some(ms)))));
                return false;
            }
            if waited >= SLEEP_AFTER {
                std::thread::sleep((waited / 8).min(MAX_SLEEP));
            }
            true
        }
    }
}

/// Loom models never time out or get interrupted: the waits are plain spins.
#[cfg(loom)]
mod imp_loom {
    use super::BufferError;

    #[inline]
    pub(crate) fn gave_up() -> bool {
        false
    }

    #[inline]
    pub(crate) fn take_failure() -> Result<(), BufferError> {
        Ok(())
    }

    pub(crate) struct Wait;

    impl Wait {
        pub(crate) fn new(_: &std::sync::atomic::AtomicU64) -> Self {
            Wait
        }

        pub(crate) fn tick(&mut self, _: usize, _: impl Fn() -> u64) -> bool {
            true
        }
    }
}
#[cfg(loom)]
pub(crate) use imp_loom::*;
