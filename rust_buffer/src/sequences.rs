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
            && last.step == first.step + span as i64;
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
        for (slot, step) in ranges.clone().into_iter().flatten().zip(first.step..) {
            let ok = self.task_id[slot].load(Ordering::Relaxed) == first.task_id
                && self.episode_id[slot].load(Ordering::Relaxed) == first.episode_id
                && self.step[slot].load(Ordering::Relaxed) == step;
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

    /// Every valid start slot (the exact, `O(len)` fallback).
    fn valid_starts(&self, len: usize, base: u64, n_slots: usize) -> Vec<usize> {
        let n_starts = self.start_range(len, n_slots);
        (0..n_starts)
            .filter(|&s| self.window_plausible(s, len, base, n_slots).is_some())
            .collect()
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
