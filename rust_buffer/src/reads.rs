//! Single-row reads of the store: `read_slot`, and the stamped row and metadata reads that
//! the samplers and indexes build on, their prefetch, and the raw column addresses.

use crate::rows::RowInfo;
use crate::slots::stable_row;
use crate::store::RingBuffer;
use crate::sync::Ordering;

impl RingBuffer {
    /// Copy the row held in `slot` (`obs`: `obs_dim` floats, `target`: `target_dim` floats).
    ///
    /// `None` when the slot is empty, cleared, or being written right now (nothing torn is
    /// ever returned). Slots `0..len()` hold the rows, in slot order.
    pub fn read_slot(&self, slot: usize, obs: &mut [f32], target: &mut [f32]) -> Option<RowInfo> {
        if slot >= self.capacity || obs.len() != self.obs_dim || target.len() != self.target_dim {
            return None;
        }
        self.read_row::<true>(slot, self.base(), obs, target)
    }

    /// Read the metadata of `slot` if it holds a complete row added since the last clear.
    #[inline]
    pub(crate) fn read_meta(&self, slot: usize, base: u64) -> Option<RowInfo> {
        let s1 = self.stamps.read_begin(slot);
        let row = stable_row(s1).filter(|&r| r >= base)?;
        let info = RowInfo {
            row,
            task_id: self.task_id[slot].load(Ordering::Relaxed),
            episode_id: self.episode_id[slot].load(Ordering::Relaxed),
            step: self.step[slot].load(Ordering::Relaxed),
        };
        self.stamps.read_validate(slot, s1).then_some(info)
    }

    /// Copy the row in `slot` into `obs`/`target` (one row each) if it holds a complete row
    /// added since the last clear; `None` (and garbage in the outputs) otherwise. With
    /// `META = false` the metadata columns are not touched (three fewer cache misses per
    /// random row) and the returned info carries only `row`.
    #[inline]
    pub(crate) fn read_row<const META: bool>(
        &self,
        slot: usize,
        base: u64,
        obs: &mut [f32],
        target: &mut [f32],
    ) -> Option<RowInfo> {
        let s1 = self.stamps.read_begin(slot);
        let row = stable_row(s1).filter(|&r| r >= base)?;
        self.obs.load_row(slot, obs);
        self.target.load_row(slot, target);
        let info = if META {
            RowInfo {
                row,
                task_id: self.task_id[slot].load(Ordering::Relaxed),
                episode_id: self.episode_id[slot].load(Ordering::Relaxed),
                step: self.step[slot].load(Ordering::Relaxed),
            }
        } else {
            RowInfo {
                row,
                task_id: 0,
                episode_id: 0,
                step: 0,
            }
        };
        self.stamps.read_validate(slot, s1).then_some(info)
    }

    /// Start loading `rows` rows from `slot` (and their stamps, and metadata with `META`)
    /// into cache.
    #[inline]
    pub(crate) fn prefetch<const META: bool>(&self, slot: usize, rows: usize) {
        self.obs.prefetch_rows(slot, rows);
        self.target.prefetch_rows(slot, rows);
        #[cfg(not(loom))]
        {
            let bytes = rows * 8;
            crate::column::prefetch_bytes(self.stamps.addr(slot), bytes);
            if META {
                for col in [&self.task_id, &self.episode_id, &self.step] {
                    let p = col.as_ptr().wrapping_add(slot) as *const i8;
                    crate::column::prefetch_bytes(p, bytes);
                }
            }
        }
    }
}

/// Raw column addresses for zero-copy views (bindings only).
///
/// The memory is `capacity` rows, row-major, densely packed: obs `f32[capacity][obs_dim]`,
/// target `f32[capacity][target_dim]`, metadata `i64[capacity]`. It stays valid, at a fixed
/// address, for the store's lifetime. Readers through these pointers race with writers:
/// values may change under them (never torn below 4 bytes per element), so a view of rows
/// being overwritten can show a mix of old and new rows.
#[cfg(not(loom))]
impl RingBuffer {
    /// Address of `obs[0][0]`.
    pub fn obs_ptr(&self) -> *const f32 {
        self.obs.as_ptr()
    }

    /// Address of `target[0][0]`.
    pub fn target_ptr(&self) -> *const f32 {
        self.target.as_ptr()
    }

    /// Address of `task_id[0]`.
    pub fn task_id_ptr(&self) -> *const i64 {
        self.task_id.as_ptr() as *const i64
    }

    /// Address of `episode_id[0]`.
    pub fn episode_id_ptr(&self) -> *const i64 {
        self.episode_id.as_ptr() as *const i64
    }

    /// Address of `step[0]`.
    pub fn step_ptr(&self) -> *const i64 {
        self.step.as_ptr() as *const i64
    }
}
