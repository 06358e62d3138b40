//! Windows of consecutive steps of one episode: `sample_sequences` (and the contiguous mode
//! of `sample_tasks`).
//!
//! A window of length `L` starting at slot `s` covers slots `s, s+1, ..., s+L-1` (mod
//! capacity). It is valid when its rows were inserted one after another (consecutive global
//! row indices, so it never crosses the write cursor or a gap left by a lapped or dropped
//! row) and share one `episode_id` and `task_id`, with steps `t, t+1, ..., t+L-1`, `t >= 0`.
//!
//! Sampling is rejection sampling over random start slots: the two ends are checked in `O(1)`
//! and, when they agree, the rows are copied and every row is re-checked while copying. The
//! cost per window is therefore independent of the capacity. Only when many random starts in
//! a row fail (valid windows are rare) does the sampler enumerate every valid start once
//! (`O(len)`), so "no valid window" is reported exactly rather than guessed.
//!
//! The ends-only check is a filter, never the verdict: in a FIFO ring agreeing ends imply an
//! intact window (absent concurrent writers), but a reservoir store places each later row in a
//! random slot, so a window's two ends can survive while a slot inside it was replaced. The
//! enumeration therefore checks every link between neighbouring slots
//! ([`RingBuffer::valid_starts`]), and per-start fallbacks use [`RingBuffer::window_intact`].

use crate::error::BufferError;
use crate::slots::stable_row;
use crate::store::{RingBuffer, RowInfo};
use crate::sync::{fence, Ordering};

/// Random starts tried for one window before enumerating all valid starts.
const START_TRIES: usize = 64;
/// Windows of prefetch look-ahead.
const WINDOW_LOOKAHEAD: usize = 2;

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
    /// Cheap check of a window's two ends; returns the first row's info when they agree.
    pub(crate) fn window_plausible(
        &self,
        start: usize,
        len: usize,
        base: u64,
        n_slots: usize,
    ) -> Option<RowInfo> {
        if len > n_slots || (n_slots < self.capacity && start + len > n_slots) {
            return None;
        }
        let first = self.read_meta(start, base)?;
        if first.step < 0 {
            return None;
        }
        if len == 1 {
            return Some(first);
        }
        let last = self.read_meta((start + len - 1) % self.capacity, base)?;
        let span = (len - 1) as u64;
        let ok = last.row == first.row + span
            && last.episode_id == first.episode_id
            && last.task_id == first.task_id
            && first.step.checked_add(span as i64) == Some(last.step);
        ok.then_some(first)
    }

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
        let first = RowInfo {
            row: first_row,
            task_id: self.task_id[start].load(Ordering::Relaxed),
            episode_id: self.episode_id[start].load(Ordering::Relaxed),
            step: self.step[start].load(Ordering::Relaxed),
        };
        if !consecutive || first.step < 0 {
            return None;
        }
        // Checked: a window never wraps from step 2^63 - 1 to -2^63.
        let steps = (0i64..).map(|k| first.step.checked_add(k));
        for (slot, step) in ranges.clone().into_iter().flatten().zip(steps) {
            let ok = self.task_id[slot].load(Ordering::Relaxed) == first.task_id
                && self.episode_id[slot].load(Ordering::Relaxed) == first.episode_id
                && Some(self.step[slot].load(Ordering::Relaxed)) == step;
            if !ok {
                return None;
            }
        }
        let [a_obs, a_tgt, b_obs, b_tgt] = dst;
        self.copy_rows(start, a_obs, a_tgt);
        let second = start + split;
        self.copy_rows(
            if second >= cap { second - cap } else { second },
            b_obs,
            b_tgt,
        );
        fence(Ordering::Acquire);
        let unchanged = ranges
            .into_iter()
            .flatten()
            .zip(stamps.iter())
            .all(|(slot, &s)| self.stamps.peek(slot) == s);
        unchanged.then_some(first)
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

    /// Like [`window_plausible`](Self::window_plausible), but checks every row of the window
    /// (`O(len)` metadata reads), so no later row replaced one of its slots. This is exact
    /// when no writer runs concurrently; [`read_window`](Self::read_window) still re-validates.
    pub(crate) fn window_intact(
        &self,
        start: usize,
        len: usize,
        base: u64,
        n_slots: usize,
    ) -> Option<RowInfo> {
        let first = self.window_plausible(start, len, base, n_slots)?;
        for i in 1..len.saturating_sub(1) {
            let info = self.read_meta((start + i) % self.capacity, base)?;
            if !continues(&first, &info, i as u64) {
                return None;
            }
        }
        Some(first)
    }

    /// Every valid start slot, in increasing order (the exact, `O(len)` fallback).
    ///
    /// One backward scan over the slots keeps `run`, the number of intact consecutive rows
    /// starting at the current slot (capped at `len`): a slot extends the run of its successor
    /// when the successor holds the next row of the same episode. Checking every link (not
    /// only a window's ends) matters for reservoir stores, where a later row can replace a
    /// slot in the middle of a window. When every slot is filled, windows may wrap from the
    /// last slot to slot 0, so the scan goes round twice: the first lap only settles `run` at
    /// slot 0 (exact after one lap, because insertion indices strictly increase along a run, so
    /// no run can go all the way round), the second collects the starts.
    pub(crate) fn valid_starts(&self, len: usize, base: u64, n_slots: usize) -> Vec<usize> {
        let wraps = n_slots == self.capacity;
        let n_starts = self.start_range(len, n_slots);
        let laps = if wraps { 2 } else { 1 };
        let mut starts = Vec::new();
        let mut run = 0usize;
        // The row in the slot after the current one (`None` past the last slot on lap one).
        let mut next: Option<RowInfo> = None;
        for lap in 0..laps {
            for slot in (0..n_slots).rev() {
                let info = self.read_meta(slot, base);
                run = match (&info, &next) {
                    (Some(a), _) if a.step < 0 => 0,
                    (Some(a), Some(b)) if continues(a, b, 1) => (run + 1).min(len),
                    (Some(_), _) => 1,
                    (None, _) => 0,
                };
                if lap + 1 == laps && run >= len && slot < n_starts {
                    starts.push(slot);
                }
                // After slot 0 this is slot 0's row: the successor of the last slot next lap.
                next = info;
            }
        }
        starts.reverse();
        starts
    }

    fn start_range(&self, len: usize, n_slots: usize) -> usize {
        if n_slots == self.capacity {
            n_slots
        } else {
            n_slots + 1 - len
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

    /// `batch` windows of `seq_len` consecutive steps of one episode each, drawn uniformly
    /// among all valid windows (with replacement).
    ///
    /// Errors: `seq_len` is 0, the store is empty, or no episode holds `seq_len` consecutive
    /// steps ([`BufferError::NoValidWindow`]).
    pub fn sample_sequences(
        &self,
        batch: usize,
        seq_len: usize,
    ) -> Result<SequenceBatch, BufferError> {
        let mut out = SequenceBatch {
            obs: vec![0.0; batch * seq_len * self.obs_dim],
            target: vec![0.0; batch * seq_len * self.target_dim],
            task_ids: vec![0; batch],
        };
        self.sample_sequences_into(seq_len, &mut out.obs, &mut out.target, &mut out.task_ids)?;
        Ok(out)
    }

    /// Like [`sample_sequences`](Self::sample_sequences), into caller-provided row-major
    /// buffers: `obs` is `batch x seq_len x obs_dim`, `target` is `batch x seq_len x
    /// target_dim`, with `batch = task_ids.len()`.
    pub fn sample_sequences_into(
        &self,
        seq_len: usize,
        obs: &mut [f32],
        target: &mut [f32],
        task_ids: &mut [i64],
    ) -> Result<(), BufferError> {
        if seq_len == 0 {
            return Err(BufferError::InvalidArgument {
                name: "seq_len",
                expected: "at least 1",
                got: 0,
            });
        }
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let batch = task_ids.len();
        for (name, got, per) in [("obs", obs.len(), d_o), ("target", target.len(), d_t)] {
            if got != batch * seq_len * per {
                return Err(BufferError::OutputSize {
                    name,
                    got,
                    expected: batch * seq_len * per,
                });
            }
        }
        if batch == 0 {
            return Ok(());
        }
        let n_slots = self.len();
        if n_slots == 0 {
            return Err(BufferError::Empty);
        }
        let no_window = BufferError::NoValidWindow {
            seq_len,
            rows: n_slots,
        };
        if seq_len > n_slots {
            return Err(no_window);
        }
        let base = self.base();
        let n_starts = self.start_range(seq_len, n_slots);
        let mut rng = self.rng();
        let mut exact: Option<Vec<usize>> = None;
        let mut stamps = Vec::with_capacity(seq_len);
        // Candidate starts are drawn ahead so the window two ahead can be prefetched.
        let mut starts: Vec<usize> = (0..batch).map(|_| rng.below(n_starts)).collect();
        for &s in starts.iter().take(WINDOW_LOOKAHEAD) {
            self.prefetch::<true>(s, seq_len);
        }
        let windows = obs
            .chunks_exact_mut(seq_len * d_o)
            .zip(target.chunks_exact_mut(seq_len * d_t));
        for (w, ((o, t), task)) in windows.zip(task_ids.iter_mut()).enumerate() {
            if let Some(&ahead) = starts.get(w + WINDOW_LOOKAHEAD) {
                self.prefetch::<true>(ahead, seq_len);
            }
            let mut tries = 0usize;
            let info = loop {
                let start = starts[w];
                if self
                    .window_plausible(start, seq_len, base, n_slots)
                    .is_some()
                {
                    let dst = [&mut *o, &mut *t, &mut [], &mut []];
                    let got = self.read_window(start, seq_len, base, seq_len, dst, &mut stamps);
                    if let Some(info) = got {
                        break info;
                    }
                }
                tries += 1;
                if tries >= START_TRIES {
                    if exact.is_some() {
                        return Err(BufferError::Contended);
                    }
                    let list = self.valid_starts(seq_len, base, n_slots);
                    if list.is_empty() {
                        return Err(no_window);
                    }
                    exact = Some(list);
                    tries = 0;
                }
                starts[w] = match &exact {
                    None => rng.below(n_starts),
                    Some(list) => list[rng.below(list.len())],
                };
            };
            *task = info.task_id;
        }
        Ok(())
    }
}

/// Is `b` the row `offset` rows after `a` in the same episode and task (insertion index and
/// step both `offset` further)?
#[inline]
fn continues(a: &RowInfo, b: &RowInfo, offset: u64) -> bool {
    b.row == a.row + offset
        && b.episode_id == a.episode_id
        && b.task_id == a.task_id
        && a.step.checked_add(offset as i64) == Some(b.step)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::{Meta, MetaValues, Options, Retention};

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
                        metas[(start + i) % n].is_some_and(|m| continues(&first, &m, i as u64))
                    })
            })
            .collect()
    }

    /// Random episodes (lengths 1..12, some with step -1) added in random chunks.
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
            }
            added += ep_len;
            episode += 1;
        }
        s
    }

    #[test]
    fn valid_starts_match_brute_force() {
        for seed in 0..40u64 {
            for reservoir in [false, true] {
                let cap = 5 + (seed as usize * 7) % 60;
                for rows in [cap / 2, cap, cap + 3, 4 * cap] {
                    let s = random_store(cap, rows.max(1), reservoir, seed);
                    let n = s.len();
                    for len in 1..=n.min(14) {
                        let want = brute_force(&s, len);
                        assert_eq!(
                            s.valid_starts(len, s.base(), n),
                            want,
                            "seed {seed} reservoir {reservoir} cap {cap} rows {rows} len {len}"
                        );
                        let intact: Vec<usize> = (0..s.start_range(len, n))
                            .filter(|&st| s.window_intact(st, len, s.base(), n).is_some())
                            .collect();
                        assert_eq!(intact, want, "window_intact, seed {seed} len {len}");
                    }
                }
            }
        }
    }
}
