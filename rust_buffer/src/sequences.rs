//! Windows of consecutive steps of one episode: the batch they come in (`SequenceBatch`),
//! `check_seq_len`, and `read_window`, the copy of one window that every window sampler
//! (`windows`, contiguous `sample_tasks`) uses.
//!
//! Which windows are valid is decided once, by the rule in `window_index` ([`links`]): the
//! window's rows were inserted one after another (consecutive global row indices, so it
//! never crosses the write cursor or a gap left by a lapped or dropped row) and share one
//! `episode_id` and `task_id`, with steps `t, t+1, ..., t+L-1`, `t >= 0`. Starts are drawn
//! from the window index (`O(log)` per window at any store size); `read_window` re-checks the
//! rule for every row under the stamps while copying, so a window written concurrently is
//! never returned.

use crate::error::BufferError;
use crate::rows::RowInfo;
use crate::slots::stable_row;
use crate::store::RingBuffer;
use crate::sync::{fence, Ordering};
use crate::window_index::links;

/// A batch of windows, row-major: `obs` is `batch x seq_len x obs_dim`, `target` is
/// `batch x seq_len x target_dim`, `task_ids` has one entry per window.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceBatch {
    /// `batch x seq_len x obs_dim`.
    pub obs: Vec<f32>,
    /// `batch x seq_len x target_dim`.
    pub target: Vec<f32>,
    /// The task of each window.
    pub task_ids: Vec<i64>,
}

impl RingBuffer {
    /// Copy the window starting at `start` (rows `0..split` into `dst[0..2]`, the rest into
    /// `dst[2..4]`: obs then target of each part), checking every row. `None` when invalid.
    ///
    /// The window is read as one seqlock section: all its stamps (Acquire), the metadata and
    /// the rows (Relaxed, copied in at most a few contiguous blocks), one Acquire fence, then
    /// all stamps again. Unchanged stamps mean no write touched any of its slots meanwhile.
    /// `stamps` is scratch space (reused across calls).
    pub(crate) fn read_window(
        &self,
        start: usize,
        len: usize,
        base: u64,
        split: usize,
        dst: [&mut [f32]; 4],
        stamps: &mut Vec<u64>,
    ) -> Option<RowInfo> {
        let cap = self.capacity;
        // The window's slots as at most two contiguous ranges (it may wrap at the ring's end).
        let head = len.min(cap - start);
        let ranges = [start..start + head, 0..len - head];
        stamps.clear();
        for slot in ranges.clone().into_iter().flatten() {
            stamps.push(self.stamps.read_begin(slot));
        }
        let first_row = stable_row(stamps[0]).filter(|&r| r >= base)?;
        let consecutive = stamps
            .iter()
            .zip(first_row..)
            .all(|(&s, row)| s == 2 * row + 2);
        let meta = |slot: usize, row: u64| RowInfo {
            row,
            task_id: self.task_id[slot].load(Ordering::Relaxed),
            episode_id: self.episode_id[slot].load(Ordering::Relaxed),
            step: self.step[slot].load(Ordering::Relaxed),
        };
        let first = meta(start, first_row);
        if !consecutive || first.step < 0 {
            return None;
        }
        // The window rule, row by row (the row indices were checked with the stamps).
        let slots = ranges
            .clone()
            .into_iter()
            .flatten()
            .zip(first_row..)
            .skip(1);
        for (slot, row) in slots {
            if !links(&first, &meta(slot, row), row - first_row) {
                return None;
            }
        }
        self.copy_split(start, split, dst);
        fence(Ordering::Acquire);
        let unchanged = ranges
            .into_iter()
            .flatten()
            .zip(stamps.iter())
            .all(|(slot, &s)| self.stamps.peek(slot) == s);
        unchanged.then_some(first)
    }

    /// Copy the window of `len` rows starting at `start` that the window index certified as
    /// rows `first_row, first_row + 1, ...` (same split and outputs as
    /// [`read_window`](Self::read_window)); returns its task, or `None` when any of its slots
    /// no longer holds exactly that row.
    ///
    /// The index checked the window rule between these very rows when they were added, and a
    /// row never changes once written, so the stamps alone decide: each slot's stamp must name
    /// the certified row, before the copy (Acquire) and after it (one Acquire fence, then
    /// Relaxed). Unlike `read_window`, no metadata column is read but the first task id, so a
    /// window costs two passes over its stamps and the row copies.
    pub(crate) fn read_certified(
        &self,
        start: usize,
        len: usize,
        first_row: u64,
        split: usize,
        dst: [&mut [f32]; 4],
    ) -> Option<i64> {
        let cap = self.capacity;
        let head = len.min(cap - start);
        let ranges = [start..start + head, 0..len - head];
        let expected = ranges.clone().into_iter().flatten().zip(first_row..);
        for (slot, row) in expected.clone() {
            if self.stamps.read_begin(slot) != 2 * row + 2 {
                return None;
            }
        }
        let task = self.task_id[start].load(Ordering::Relaxed);
        self.copy_split(start, split, dst);
        fence(Ordering::Acquire);
        let unchanged = expected
            .into_iter()
            .all(|(slot, row)| self.stamps.peek(slot) == 2 * row + 2);
        unchanged.then_some(task)
    }

    /// Relaxed copy of the window starting at `start`: rows `0..split` into `dst[0..2]`, the
    /// rest into `dst[2..4]` (obs then target of each part), wrapping at the ring's end.
    fn copy_split(&self, start: usize, split: usize, dst: [&mut [f32]; 4]) {
        let [a_obs, a_tgt, b_obs, b_tgt] = dst;
        self.copy_rows(start, a_obs, a_tgt);
        let second = start + split;
        let cap = self.capacity;
        self.copy_rows(
            if second >= cap { second - cap } else { second },
            b_obs,
            b_tgt,
        );
    }

    /// Relaxed copy of consecutive rows from `slot` on (wrapping at the end of the ring).
    fn copy_rows(&self, slot: usize, obs: &mut [f32], target: &mut [f32]) {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let rows = obs.len() / d_o;
        let before_wrap = rows.min(self.capacity - slot);
        let (o1, o2) = obs.split_at_mut(before_wrap * d_o);
        let (t1, t2) = target.split_at_mut(before_wrap * d_t);
        self.obs.load_rows(slot, o1);
        self.target.load_rows(slot, t1);
        if !o2.is_empty() {
            self.obs.load_rows(0, o2);
            self.target.load_rows(0, t2);
        }
    }

    /// Can windows of `seq_len` rows exist at all (`1 <= seq_len <= len`)? Checked before
    /// allocating outputs; whether an episode is long enough is only known when sampling.
    pub fn check_seq_len(&self, seq_len: usize) -> Result<(), BufferError> {
        let rows = self.len();
        if seq_len == 0 {
            return Err(BufferError::InvalidArgument {
                name: "seq_len",
                expected: "at least 1",
                got: 0,
            });
        }
        if rows == 0 {
            return Err(BufferError::Empty);
        }
        if seq_len > rows {
            return Err(BufferError::NoValidWindow { seq_len, rows });
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::rows::{Meta, MetaValues, Options, Retention};

    /// Every start whose whole window holds consecutive steps of one episode, by brute force.
    fn brute_force(s: &RingBuffer, len: usize) -> Vec<usize> {
        let (base, n) = (s.base(), s.len());
        let metas: Vec<Option<RowInfo>> = (0..n).map(|slot| s.read_meta(slot, base)).collect();
        let n_starts = if n == s.capacity { n } else { n + 1 - len };
        (0..n_starts)
            .filter(|&start| {
                let Some(first) = metas[start] else {
                    return false;
                };
                first.step >= 0
                    && (1..len).all(|i| {
                        metas[(start + i) % n].is_some_and(|m| {
                            m.row == first.row + i as u64
                                && m.task_id == first.task_id
                                && m.episode_id == first.episode_id
                                && m.step == first.step + i as i64
                        })
                    })
            })
            .collect()
    }

    /// Every start the window index holds for `len`, sorted.
    fn indexed(s: &RingBuffer, len: usize) -> Vec<usize> {
        let mut v = s
            .with_windows(|ix| {
                (0..ix.all.total(len))
                    .map(|u| ix.start(&ix.all, len, u))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        v.sort_unstable();
        v
    }

    /// Random episodes (lengths 1..12, some with step -1) added in random chunks; the index
    /// is queried between chunks so that it is updated incrementally.
    fn random_store(cap: usize, rows: usize, reservoir: bool, seed: u64) -> RingBuffer {
        let retention = if reservoir {
            Retention::Reservoir
        } else {
            Retention::Fifo
        };
        let opts = Options {
            seed: Some(seed),
            retention,
        };
        let s = RingBuffer::with_options(cap, 2, 1, opts).unwrap();
        let mut rng = Rng::new(seed);
        let (mut added, mut episode) = (0usize, 0i64);
        while added < rows {
            let ep_len = 1 + rng.below(12);
            let no_steps = rng.below(8) == 0;
            let steps: Vec<i64> = (0..ep_len as i64)
                .map(|t| if no_steps { -1 } else { t })
                .collect();
            for chunk in steps.chunks(1 + rng.below(ep_len)) {
                let k = chunk.len();
                let meta = Meta {
                    task_id: MetaValues::Scalar(episode % 3),
                    episode_id: MetaValues::Scalar(episode),
                    step: MetaValues::PerRow(chunk),
                };
                s.add(&vec![0.5; 2 * k], &vec![0.5; k], meta).unwrap();
                if rng.below(4) == 0 {
                    s.with_windows(|_| ()).unwrap();
                }
            }
            added += ep_len;
            episode += 1;
        }
        s
    }

    #[test]
    fn index_matches_brute_force() {
        for seed in 0..40u64 {
            for reservoir in [false, true] {
                let cap = 5 + (seed as usize * 7) % 60;
                for rows in [cap / 2, cap, cap + 3, 4 * cap] {
                    let s = random_store(cap, rows.max(1), reservoir, seed);
                    let n = s.len();
                    for len in 1..=n.min(14) {
                        assert_eq!(
                            indexed(&s, len),
                            brute_force(&s, len),
                            "seed {seed} reservoir {reservoir} cap {cap} rows {rows} len {len}"
                        );
                    }
                }
            }
        }
    }
}
