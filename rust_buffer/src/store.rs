//! The store itself: columns, stamps, the write cursor, construction, `add` and `clear`
//! (single-row reads are in `reads`, the row types in `rows`).

use std::any::Any;
use std::path::Path;
use std::sync::Mutex;

use crate::column::FloatColumn;
use crate::error::{BufferError, Column};
use crate::region::Region;
use crate::rng::{splitmix64, Rng};
use crate::rows::{Meta, Options, Retention};
use crate::slots::Stamps;
use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// What a store's storage asks of the store beyond its regions. The shared-file layer
/// (`shared`) implements it for file-backed stores; heap stores have none. The write path
/// calls it through this trait, so the store does not depend on the file layer (which
/// depends on the store).
pub(crate) trait Backing: Send + Sync {
    /// Called by `add` before it reserves rows: a forked child takes a writer tag of its
    /// own here instead of writing under its parent's.
    fn before_add(&self, stamps: &Stamps) -> Result<(), BufferError>;
    /// Fail when the storage is no longer whole (another process truncated the file).
    fn check(&self) -> Result<(), BufferError>;
    /// The file behind the storage.
    fn path(&self) -> &Path;
}

/// A query's cache (the task index, the window index), kept between queries behind a mutex
/// that only those queries take (`add` never does). The cache's type belongs to the module
/// that builds it (`index`, `window_index`), which uses the store; the store holds the cache
/// without naming its type, so it does not use those modules back.
#[derive(Default)]
pub(crate) struct CacheSlot(Mutex<Option<Box<dyn Any + Send>>>);

impl CacheSlot {
    /// Run `f` on the cache, `None` when there is none yet (or it was forgotten). `f` may
    /// build, update or drop it; what it leaves is kept for the next query. A panic in `f`
    /// drops the cache (the next query rebuilds it).
    pub(crate) fn with<T: Any + Send, R>(&self, f: impl FnOnce(&mut Option<Box<T>>) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = guard.take().and_then(|b| b.downcast::<T>().ok());
        let result = f(&mut cache);
        *guard = cache.map(|c| c as Box<dyn Any + Send>);
        result
    }

    /// Drop the cache; the next query rebuilds it.
    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Index of the cursor in `RingBuffer::counters`.
pub(crate) const CURSOR: usize = 0;
/// Index of the base in `RingBuffer::counters`.
pub(crate) const BASE: usize = 1;

/// A fixed-capacity, columnar, lock-free experience store. See the crate docs.
pub struct RingBuffer {
    pub(crate) capacity: usize,
    pub(crate) obs_dim: usize,
    pub(crate) target_dim: usize,
    pub(crate) obs: FloatColumn,
    pub(crate) target: FloatColumn,
    pub(crate) task_id: Region<AtomicI64>,
    pub(crate) episode_id: Region<AtomicI64>,
    pub(crate) step: Region<AtomicI64>,
    pub(crate) stamps: Stamps,
    /// `[cursor, base]`: rows reserved since creation (the next row's global index), and the
    /// global index of the first row after the last `clear`. A region, so that a file-backed
    /// store shares them between processes.
    pub(crate) counters: Region<AtomicU64>,
    retention: Retention,
    /// Seed of the reservoir's slot choices (fixed at construction).
    placement_seed: u64,
    /// Seed of the samplers (construction seed until [`RingBuffer::reseed`]).
    seed: AtomicU64,
    /// Sampling calls since construction or the last `reseed`: call `n` draws from random
    /// stream `n` of the seed.
    calls: AtomicU64,
    /// The task index, kept between task queries (see `index`).
    pub(crate) index: CacheSlot,
    /// The window index, kept between window queries (see `window_index`).
    pub(crate) windows: CacheSlot,
    /// The file and process-table entry of a file-backed store (`None`: heap store).
    pub(crate) backing: Option<Box<dyn Backing>>,
}

impl std::fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuffer")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("obs_dim", &self.obs_dim)
            .field("target_dim", &self.target_dim)
            .field("retention", &self.retention)
            .field("total_added", &self.total_added())
            .finish()
    }
}

/// Index of the first non-finite value of `v`, if any. The all-finite case (every accepted
/// `add`) is one branch-free pass at vector width; only a batch with a bad value is searched.
pub(crate) fn first_non_finite(v: &[f32]) -> Option<usize> {
    if !any_non_finite(v) {
        return None;
    }
    v.iter().position(|x| !x.is_finite())
}

/// True when some value of `v` is NaN or infinite: the widest vector unit the CPU has
/// (checked once per process by std), since this pass reads every byte of a batched add.
fn any_non_finite(v: &[f32]) -> bool {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { any_non_finite_avx512(v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { any_non_finite_avx2(v) };
        }
    }
    any_non_finite_lanes::<16>(v)
}

#[cfg(all(target_arch = "x86_64", not(loom)))]
#[target_feature(enable = "avx512f")]
unsafe fn any_non_finite_avx512(v: &[f32]) -> bool {
    any_non_finite_lanes::<64>(v)
}

#[cfg(all(target_arch = "x86_64", not(loom)))]
#[target_feature(enable = "avx2")]
unsafe fn any_non_finite_avx2(v: &[f32]) -> bool {
    any_non_finite_lanes::<32>(v)
}

/// A float is NaN or infinite exactly when its bits without the sign are at least those of
/// infinity, so one running maximum over `N` lanes (an unrolled vector `max`) decides a
/// whole batch. Inlined into each `target_feature` wrapper so it compiles at that width.
#[inline(always)]
fn any_non_finite_lanes<const N: usize>(v: &[f32]) -> bool {
    const ABS: u32 = 0x7fff_ffff;
    const INF: u32 = 0x7f80_0000;
    let mut lanes = [0u32; N];
    let blocks = v.chunks_exact(N);
    let rest = blocks.remainder();
    for block in blocks {
        for (m, x) in lanes.iter_mut().zip(block) {
            *m = (*m).max(x.to_bits() & ABS);
        }
    }
    let tail = rest.iter().fold(0, |m: u32, x| m.max(x.to_bits() & ABS));
    lanes.iter().fold(tail, |m, &x| m.max(x)) >= INF
}

impl RingBuffer {
    /// An empty store of `capacity` rows, seeded from the OS, FIFO retention.
    pub fn new(capacity: usize, obs_dim: usize, target_dim: usize) -> Result<Self, BufferError> {
        Self::with_options(capacity, obs_dim, target_dim, Options::default())
    }

    /// An empty store with explicit seed and retention.
    pub fn with_options(
        capacity: usize,
        obs_dim: usize,
        target_dim: usize,
        options: Options,
    ) -> Result<Self, BufferError> {
        if capacity == 0 {
            return Err(BufferError::ZeroCapacity);
        }
        if obs_dim == 0 {
            return Err(BufferError::ZeroDim {
                column: Column::Obs,
            });
        }
        if target_dim == 0 {
            return Err(BufferError::ZeroDim {
                column: Column::Target,
            });
        }
        Ok(Self::from_parts(
            capacity,
            obs_dim,
            target_dim,
            FloatColumn::new(capacity, obs_dim)?,
            FloatColumn::new(capacity, target_dim)?,
            [
                Region::zeroed(capacity)?,
                Region::zeroed(capacity)?,
                Region::zeroed(capacity)?,
            ],
            Stamps::new(capacity)?,
            Region::zeroed(2)?,
            options,
            None,
        ))
    }

    /// A store over existing storage (heap allocations, or regions of a shared mapping).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        capacity: usize,
        obs_dim: usize,
        target_dim: usize,
        obs: FloatColumn,
        target: FloatColumn,
        [task_id, episode_id, step]: [Region<AtomicI64>; 3],
        stamps: Stamps,
        counters: Region<AtomicU64>,
        options: Options,
        backing: Option<Box<dyn Backing>>,
    ) -> Self {
        let seed = options.seed.unwrap_or_else(Rng::os_seed);
        RingBuffer {
            capacity,
            obs_dim,
            target_dim,
            obs,
            target,
            task_id,
            episode_id,
            step,
            stamps,
            counters,
            retention: options.retention,
            placement_seed: seed,
            seed: AtomicU64::new(seed),
            calls: AtomicU64::new(0),
            index: CacheSlot::default(),
            windows: CacheSlot::default(),
            backing,
        }
    }

    /// Maximum number of rows held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Floats per observation row.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// Floats per target row.
    pub fn target_dim(&self) -> usize {
        self.target_dim
    }

    /// The retention policy.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The seed of the samplers (the last one given to [`reseed`](Self::reseed), else the
    /// construction seed).
    pub fn seed(&self) -> u64 {
        self.seed.load(Ordering::Acquire)
    }

    /// Seed of the reservoir's slot choices: the construction seed, never changed by
    /// [`reseed`](Self::reseed), so where kept rows land does not depend on when samplers
    /// were reseeded.
    pub fn placement_seed(&self) -> u64 {
        self.placement_seed
    }

    /// Sampling calls made since construction or the last [`reseed`](Self::reseed): the
    /// sampler's position in its random streams (saved by snapshots).
    pub fn sampler_calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }

    /// Restart the samplers' random streams from `seed`: the next sampling calls draw exactly
    /// what a fresh store with this seed and the same rows would draw. Rows, counters and
    /// reservoir placement are untouched. Sampling calls running concurrently with `reseed`
    /// may draw from either the old or the new streams; for reproducible batches, reseed
    /// while no sampler runs.
    pub fn reseed(&self, seed: u64) {
        self.seed.store(seed, Ordering::Release);
        self.calls.store(0, Ordering::Release);
        self.forget_window_index();
    }

    /// Drop the window index; the next window query rebuilds it from the rows held. Window
    /// draws depend on the order the index lists segments in, which depends on when it was
    /// queried; a rebuilt index lists them as a fresh store with the same rows would, so a
    /// reseeded store (or one just saved, and its loaded copy) draws the same windows.
    pub fn forget_window_index(&self) {
        self.windows.forget();
    }

    /// Restore the sampler's state (seed and calls made) from a snapshot.
    #[cfg(not(loom))]
    pub(crate) fn restore_sampler(&self, seed: u64, calls: u64) {
        self.seed.store(seed, Ordering::Release);
        self.calls.store(calls, Ordering::Release);
    }

    /// Rows currently held (reserved ones included: a concurrent `add` counts from the moment
    /// it reserves its slots; samplers skip slots whose write is unfinished).
    pub fn len(&self) -> usize {
        let c = self.counters[CURSOR].load(Ordering::Acquire);
        let b = self.counters[BASE].load(Ordering::Acquire);
        c.saturating_sub(b).min(self.capacity as u64) as usize
    }

    /// True when no rows are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows ever added since creation (not reset by `clear`; dropped reservoir rows count).
    pub fn total_added(&self) -> u64 {
        self.counters[CURSOR].load(Ordering::Acquire)
    }

    /// Forget every row. Slots are reused from slot 0; later samplers never see old rows.
    /// Rows added concurrently with `clear` may land on either side of it.
    pub fn clear(&self) {
        let c = self.counters[CURSOR].load(Ordering::SeqCst);
        self.counters[BASE].fetch_max(c, Ordering::SeqCst);
    }

    pub(crate) fn base(&self) -> u64 {
        self.counters[BASE].load(Ordering::Acquire)
    }

    pub(crate) fn cursor(&self) -> u64 {
        self.counters[CURSOR].load(Ordering::Acquire)
    }

    /// Check that the file behind a file-backed store still has its full length: `Err`
    /// ([`BufferError::Truncated`]) when another process truncated it, where touching the
    /// lost pages would raise SIGBUS. One `fstat`; always `Ok` for heap stores. The Python
    /// bindings call it before every operation.
    pub fn check_file(&self) -> Result<(), BufferError> {
        match &self.backing {
            Some(backing) => backing.check(),
            None => Ok(()),
        }
    }

    /// The file behind a file-backed store (`None` for heap stores).
    pub fn path(&self) -> Option<&Path> {
        self.backing.as_ref().map(|b| b.path())
    }

    /// How long an `add` waits on a slot that another writer is still writing before
    /// giving up with [`BufferError::SlotBusy`] (default 10 s). Only a stopped or stuck
    /// writer holds a slot that long; a dead one's slots are reclaimed instead.
    #[cfg(not(loom))]
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.stamps
                .timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Set this handle's wait timeout (see [`wait_timeout`](Self::wait_timeout)).
    #[cfg(not(loom))]
    pub fn set_wait_timeout(&self, timeout: std::time::Duration) {
        let ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        self.stamps
            .timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// A fresh random stream for one sampling call.
    pub(crate) fn rng(&self) -> Rng {
        let call = self.calls.fetch_add(1, Ordering::AcqRel);
        Rng::stream(self.seed.load(Ordering::Acquire), call)
    }

    /// The slot row `row` goes to (or went to), or `None` when it is not kept.
    #[inline]
    pub(crate) fn slot_for(&self, row: u64, base: u64) -> Option<usize> {
        let k = row.checked_sub(base)?;
        let cap = self.capacity as u64;
        if k < cap {
            return Some(k as usize);
        }
        match self.retention {
            Retention::Fifo => Some((k % cap) as usize),
            Retention::Reservoir => {
                let mut st = self.placement_seed
                    ^ 0xA076_1D64_78BD_642F
                    ^ k.wrapping_mul(0xE703_7ED1_A0B4_28DB);
                let h = splitmix64(&mut st);
                let j = ((h as u128 * (k as u128 + 1)) >> 64) as u64;
                (j < cap).then_some(j as usize)
            }
        }
    }

    /// Validate a call's shapes and values; returns the number of rows.
    fn check_add(
        &self,
        obs: &[f32],
        target: &[f32],
        meta: &Meta<'_>,
    ) -> Result<usize, BufferError> {
        if obs.len() % self.obs_dim != 0 {
            return Err(BufferError::Columns {
                column: Column::Obs,
                got: obs.len(),
                expected: self.obs_dim,
            });
        }
        if target.len() % self.target_dim != 0 {
            return Err(BufferError::Columns {
                column: Column::Target,
                got: target.len(),
                expected: self.target_dim,
            });
        }
        let rows = obs.len() / self.obs_dim;
        let target_rows = target.len() / self.target_dim;
        if rows != target_rows {
            return Err(BufferError::RowMismatch {
                obs_rows: rows,
                target_rows,
            });
        }
        meta.task_id.check("task_id", rows)?;
        meta.episode_id.check("episode_id", rows)?;
        meta.step.check("step", rows)?;
        for (values, column, dim) in [
            (obs, Column::Obs, self.obs_dim),
            (target, Column::Target, self.target_dim),
        ] {
            if let Some(i) = first_non_finite(values) {
                return Err(BufferError::NonFinite {
                    column,
                    row: i / dim,
                    col: i % dim,
                });
            }
        }
        Ok(rows)
    }

    /// Append rows: `obs` is `n x obs_dim` and `target` is `n x target_dim`, row-major.
    ///
    /// Either every row is accepted or, on error, none is. Lock-free: one `fetch_add`
    /// reserves `n` consecutive row indices, then each row takes its slot's stamp.
    /// Returns the number of rows added.
    pub fn add(&self, obs: &[f32], target: &[f32], meta: Meta<'_>) -> Result<usize, BufferError> {
        let rows = self.check_add(obs, target, &meta)?;
        if rows == 0 {
            return Ok(0);
        }
        if let Some(backing) = &self.backing {
            backing.before_add(&self.stamps)?;
        }
        crate::slots::check_room(self.counters[CURSOR].load(Ordering::Relaxed), rows)?;
        let first = self.counters[CURSOR].fetch_add(rows as u64, Ordering::AcqRel);
        let base = self.base();
        let end = first + rows as u64;
        match self.retention {
            Retention::Fifo => {
                // Rows of this call that a later row of the same call overwrites are skipped, and
                // so are rows reserved before a concurrent `clear` (below `base`).
                let begin = (end.saturating_sub(self.capacity as u64))
                    .max(first)
                    .max(base);
                if begin < end {
                    // Consecutive rows go to consecutive slots: one division per call.
                    let slot = ((begin - base) % self.capacity as u64) as usize;
                    self.write_run(slot, begin, end, first, obs, target, &meta);
                }
            }
            Retention::Reservoir => {
                for row in first..end {
                    if let Some(slot) = self.slot_for(row, base) {
                        self.write_row(slot, row, (row - first) as usize, obs, target, &meta);
                    }
                }
            }
        }
        // A wait on another writer that timed out or was interrupted (see `wait`).
        crate::wait::take_failure()?;
        Ok(rows)
    }

    /// Write rows `begin..end` (row `r` is row `r - first` of the call) into consecutive
    /// slots from `slot` on, in chunks of up to `CHUNK` rows: claim the chunk's stamps in slot
    /// order, copy its obs and target rows as two contiguous blocks (non-temporal when long:
    /// see `column::stream_words`), then publish. Claiming in increasing slot order (and
    /// releasing a chunk before claiming the next; a chunk never wraps round the ring) means
    /// writers that meet can only wait on each other in one direction, so they cannot
    /// deadlock. Chunks of 1024 rows make a typical batched add one chunk: one fence and two
    /// block copies per call.
    #[allow(clippy::too_many_arguments)]
    fn write_run(
        &self,
        mut slot: usize,
        begin: u64,
        end: u64,
        first: u64,
        obs: &[f32],
        target: &[f32],
        meta: &Meta<'_>,
    ) {
        const CHUNK: usize = 1024;
        const WORDS: usize = CHUNK / 64;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let mut row = begin;
        while row < end {
            let n = CHUNK.min((end - row) as usize).min(self.capacity - slot);
            let next = if slot + n == self.capacity {
                0
            } else {
                slot + n
            };
            let mut claimed = [0u64; WORDS];
            let mut all = true;
            for j in 0..n {
                if self.stamps.begin_write(slot + j, row + j as u64) {
                    claimed[j / 64] |= 1 << (j % 64);
                } else {
                    all = false;
                }
            }
            let is_claimed = |j: usize| claimed[j / 64] & (1 << (j % 64)) != 0;
            let i0 = (row - first) as usize;
            if all {
                let a = self
                    .obs
                    .store_rows_streaming(slot, &obs[i0 * d_o..(i0 + n) * d_o]);
                let b = self
                    .target
                    .store_rows_streaming(slot, &target[i0 * d_t..(i0 + n) * d_t]);
                if a || b {
                    // Non-temporal stores are weakly ordered: complete them before any stamp
                    // says the rows are written.
                    crate::column::store_fence();
                }
            } else {
                for j in (0..n).filter(|&j| is_claimed(j)) {
                    let i = i0 + j;
                    self.obs.store_row(slot + j, &obs[i * d_o..(i + 1) * d_o]);
                    self.target
                        .store_row(slot + j, &target[i * d_t..(i + 1) * d_t]);
                }
            }
            for j in (0..n).filter(|&j| is_claimed(j)) {
                let (s, i) = (slot + j, i0 + j);
                self.task_id[s].store(meta.task_id.get(i), Ordering::Relaxed);
                self.episode_id[s].store(meta.episode_id.get(i), Ordering::Relaxed);
                self.step[s].store(meta.step.get(i), Ordering::Relaxed);
                self.stamps.end_write(s, row + j as u64);
            }
            row += n as u64;
            slot = next;
        }
    }

    /// Write row `i` of an `add` call as global row `row` into `slot` under its stamp.
    #[inline]
    fn write_row(
        &self,
        slot: usize,
        row: u64,
        i: usize,
        obs: &[f32],
        target: &[f32],
        meta: &Meta<'_>,
    ) {
        if !self.stamps.begin_write(slot, row) {
            return;
        }
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        self.obs.store_row(slot, &obs[i * d_o..(i + 1) * d_o]);
        self.target.store_row(slot, &target[i * d_t..(i + 1) * d_t]);
        self.task_id[slot].store(meta.task_id.get(i), Ordering::Relaxed);
        self.episode_id[slot].store(meta.episode_id.get(i), Ordering::Relaxed);
        self.step[slot].store(meta.step.get(i), Ordering::Relaxed);
        self.stamps.end_write(slot, row);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::CacheSlot;

    #[test]
    fn a_cache_slot_keeps_what_a_query_leaves_until_forgotten() {
        let slot = CacheSlot::default();
        assert!(slot.with(|c: &mut Option<Box<u64>>| c.is_none()));
        slot.with(|c: &mut Option<Box<u64>>| *c = Some(Box::new(7)));
        slot.with(|c: &mut Option<Box<u64>>| **c.as_mut().unwrap() += 1);
        assert_eq!(
            slot.with(|c: &mut Option<Box<u64>>| c.as_deref().copied()),
            Some(8)
        );
        slot.forget();
        assert_eq!(
            slot.with(|c: &mut Option<Box<u64>>| c.as_deref().copied()),
            None
        );
    }
}
