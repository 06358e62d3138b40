//! Window samplers over the window index (`window_index`): `sample_windows` (uniform,
//! task-weighted or recent windows, optionally with their own seed), `sample_sequences` (its
//! uniform case), `windows_at` (the windows around caller-chosen slots) and `gather` (rows by
//! slot).
//!
//! Starts are drawn under the index's mutex (`O(log)` each), then the windows are copied
//! outside it by `read_window`, which re-checks the window rule under the stamps; a window
//! overwritten in between is drawn again.

use std::collections::HashMap;

use crate::error::BufferError;
use crate::rng::Rng;
use crate::sequences::SequenceBatch;
use crate::slots::stable_row;
use crate::store::RingBuffer;
use crate::window_index::{LenSet, WindowIndex};

/// Bytes of windows to keep prefetching ahead (a third of L1: more evicts the windows being
/// copied), and the bounds on the number of windows that makes.
const LOOKAHEAD_BYTES: usize = 16 * 1024;
const LOOKAHEAD_MIN: usize = 2;
const LOOKAHEAD_MAX: usize = 8;
/// Redraws of one window whose rows were overwritten while it was copied.
const WINDOW_RETRIES: usize = 64;
/// Re-reads of one row (`gather`) that is being written right now.
const ROW_RETRIES: usize = 1 << 12;

/// Which windows `sample_windows` draws from, and with which generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowQuery<'a> {
    /// `(task_id, weight)`: draw a task with probability proportional to its weight among the
    /// listed tasks that hold at least one valid window, then a window of it uniformly.
    /// `None`: uniform over all valid windows.
    pub task_weights: Option<&'a [(i64, f64)]>,
    /// Only windows lying entirely within the newest `recent` rows added.
    pub recent: Option<usize>,
    /// Draw from a fresh generator seeded with this (deterministic, independent of the
    /// store's shared generator); `None`: the store's generator.
    pub seed: Option<u64>,
}

/// A uniform float in `[0, 1)`.
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Check weights: finite, `>= 0`, at least one positive.
fn check_weights(weights: &[(i64, f64)]) -> Result<(), BufferError> {
    for &(task_id, w) in weights {
        if !w.is_finite() || w < 0.0 {
            return Err(BufferError::BadWeight {
                task_id,
                weight: format!("{w}"),
            });
        }
    }
    if !weights.iter().any(|&(_, w)| w > 0.0) {
        return Err(BufferError::NoPositiveWeight);
    }
    Ok(())
}

/// Index `i` with probability `weights[i] / sum` (`sum > 0`).
fn pick_weighted(cum: &[f64], rng: &mut Rng) -> usize {
    let x = unit(rng) * cum[cum.len() - 1];
    cum.partition_point(|&c| c <= x).min(cum.len() - 1)
}

impl RingBuffer {
    /// A generator for one call: `seed`'s own, or the next stream of the store's.
    pub(crate) fn rng_for(&self, seed: Option<u64>) -> Rng {
        match seed {
            Some(s) => Rng::new(s),
            None => self.rng(),
        }
    }

    /// `batch` windows of `seq_len` consecutive steps of one episode each (with
    /// replacement), drawn as `query` says (default: uniformly among all valid windows).
    ///
    /// Errors: `seq_len` is 0, the store is empty, a weight is negative or not finite or none
    /// is positive, a weighted task holds no episode rows ([`BufferError::UnknownTask`]),
    /// `recent` is 0, or no valid window exists ([`BufferError::NoValidWindow`], or
    /// [`BufferError::NoValidWindowIn`] within the selection).
    pub fn sample_windows(
        &self,
        batch: usize,
        seq_len: usize,
        query: WindowQuery<'_>,
    ) -> Result<SequenceBatch, BufferError> {
        let mut out = SequenceBatch {
            obs: vec![0.0; batch * seq_len * self.obs_dim],
            target: vec![0.0; batch * seq_len * self.target_dim],
            task_ids: vec![0; batch],
        };
        self.sample_windows_into(
            seq_len,
            query,
            &mut out.obs,
            &mut out.target,
            &mut out.task_ids,
        )?;
        Ok(out)
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
    /// target_dim`, with `batch = task_ids.len()`. This is
    /// [`sample_windows_into`](Self::sample_windows_into) with the default query.
    pub fn sample_sequences_into(
        &self,
        seq_len: usize,
        obs: &mut [f32],
        target: &mut [f32],
        task_ids: &mut [i64],
    ) -> Result<(), BufferError> {
        self.sample_windows_into(seq_len, WindowQuery::default(), obs, target, task_ids)
    }

    /// Check a window request before allocating outputs: `seq_len >= 1`, rows held, weights
    /// well formed, `recent >= 1`.
    pub fn check_windows(
        &self,
        seq_len: usize,
        query: &WindowQuery<'_>,
    ) -> Result<(), BufferError> {
        require_seq_len(seq_len)?;
        if let Some(w) = query.task_weights {
            check_weights(w)?;
        }
        if query.recent == Some(0) {
            return Err(BufferError::InvalidArgument {
                name: "recent",
                expected: "at least 1",
                got: 0,
            });
        }
        if self.is_empty() {
            return Err(BufferError::Empty);
        }
        Ok(())
    }

    /// Like [`sample_windows`](Self::sample_windows), into caller-provided row-major buffers:
    /// `obs` is `batch x seq_len x obs_dim`, `target` is `batch x seq_len x target_dim`, with
    /// `batch = task_ids.len()`.
    pub fn sample_windows_into(
        &self,
        seq_len: usize,
        query: WindowQuery<'_>,
        obs: &mut [f32],
        target: &mut [f32],
        task_ids: &mut [i64],
    ) -> Result<(), BufferError> {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let batch = task_ids.len();
        for (name, got, per) in [("obs", obs.len(), d_o), ("target", target.len(), d_t)] {
            if got != batch.saturating_mul(seq_len).saturating_mul(per) {
                return Err(BufferError::OutputSize {
                    name,
                    got,
                    expected: batch.saturating_mul(seq_len).saturating_mul(per),
                });
            }
        }
        self.check_windows(seq_len, &query)?;
        if batch == 0 {
            return Ok(());
        }
        let n_slots = self.len();
        if seq_len > n_slots {
            return Err(BufferError::NoValidWindow {
                seq_len,
                rows: n_slots,
            });
        }
        let mut rng = self.rng_for(query.seed);
        let mut starts = vec![(0usize, 0u64); batch];
        self.draw_starts(seq_len, &query, &mut rng, &mut starts)?;
        let window_bytes = seq_len * (d_o + d_t) * 4;
        let lookahead = (LOOKAHEAD_BYTES / window_bytes).clamp(LOOKAHEAD_MIN, LOOKAHEAD_MAX);
        for &(s, _) in starts.iter().take(lookahead) {
            self.prefetch_window(s, seq_len);
        }
        let windows = obs
            .chunks_exact_mut(seq_len * d_o)
            .zip(target.chunks_exact_mut(seq_len * d_t));
        for (w, ((o, t), task)) in windows.zip(task_ids.iter_mut()).enumerate() {
            if let Some(&(ahead, _)) = starts.get(w + lookahead) {
                self.prefetch_window(ahead, seq_len);
            }
            let mut tries = 0;
            *task = loop {
                let dst = [&mut *o, &mut *t, &mut [], &mut []];
                let (start, first_row) = starts[w];
                if let Some(task) = self.read_certified(start, seq_len, first_row, seq_len, dst) {
                    break task;
                }
                // Overwritten since it was drawn: draw this one again from the updated index.
                tries += 1;
                if tries >= WINDOW_RETRIES {
                    return Err(BufferError::Contended);
                }
                self.draw_starts(seq_len, &query, &mut rng, &mut starts[w..w + 1])?;
            };
        }
        Ok(())
    }

    /// Start loading what `read_certified` reads of a window: its rows, stamps and first task id.
    fn prefetch_window(&self, start: usize, len: usize) {
        self.prefetch::<false>(start, len);
        #[cfg(not(loom))]
        crate::column::prefetch_bytes(self.task_id.as_ptr().wrapping_add(start) as *const i8, 8);
    }

    /// Fill `out` with window starts (slot, first row) drawn as `query` says (under the
    /// index's lock).
    fn draw_starts(
        &self,
        len: usize,
        query: &WindowQuery<'_>,
        rng: &mut Rng,
        out: &mut [(usize, u64)],
    ) -> Result<(), BufferError> {
        self.with_windows(|ix| {
            let drawn = match query.recent {
                Some(recent) => self.draw_recent(ix, len, recent, query.task_weights, rng, out),
                None => self.draw_indexed(ix, len, query.task_weights, rng, out),
            };
            match drawn {
                // The index stopped at a row still being written: the rows from there on may
                // hold windows once finished, so "none" is not known yet. Retryable, like a
                // torn read (the bindings retry `Contended`), not an answer.
                Err(BufferError::NoValidWindow { .. } | BufferError::NoValidWindowIn { .. })
                    if ix.upto < self.cursor() =>
                {
                    Err(BufferError::Contended)
                }
                other => other,
            }
        })?
    }

    /// Draws from the index's length sets: `O(log)` per window.
    fn draw_indexed(
        &self,
        ix: &WindowIndex,
        len: usize,
        weights: Option<&[(i64, f64)]>,
        rng: &mut Rng,
        out: &mut [(usize, u64)],
    ) -> Result<(), BufferError> {
        let Some(weights) = weights else {
            let total = ix.all.total(len);
            if total == 0 {
                return Err(BufferError::NoValidWindow {
                    seq_len: len,
                    rows: self.len(),
                });
            }
            for o in out {
                *o = ix.drawn(ix.start(&ix.all, len, rng.below(total as usize) as u64));
            }
            return Ok(());
        };
        let mut sets: Vec<(&LenSet, u64)> = Vec::new();
        let mut cum: Vec<f64> = Vec::new();
        let mut acc = 0.0;
        for &(task, w) in weights {
            let Some(t) = ix.tasks.get(&task) else {
                return Err(BufferError::UnknownTask { task_id: task });
            };
            let total = t.set.total(len);
            if w > 0.0 && total > 0 {
                acc += w;
                cum.push(acc);
                sets.push((&t.set, total));
            }
        }
        if sets.is_empty() {
            return Err(BufferError::NoValidWindowIn {
                seq_len: len,
                within: "the tasks given positive weights".into(),
            });
        }
        for o in out {
            let (set, total) = sets[pick_weighted(&cum, rng)];
            *o = ix.drawn(ix.start(set, len, rng.below(total as usize) as u64));
        }
        Ok(())
    }

    /// Draws among the windows within the newest `recent` rows: one pass over those rows
    /// (`O(recent)`), walking them newest first and counting how many linked rows follow each.
    fn draw_recent(
        &self,
        ix: &WindowIndex,
        len: usize,
        recent: usize,
        weights: Option<&[(i64, f64)]>,
        rng: &mut Rng,
        out: &mut [(usize, u64)],
    ) -> Result<(), BufferError> {
        let base = self.base();
        let lo = base.max(self.cursor().saturating_sub(recent as u64));
        let mut candidates: Vec<usize> = Vec::new();
        let mut run = 0usize;
        for row in (lo..ix.upto).rev() {
            let Some(s) = self.slot_for(row, base) else {
                run = 0;
                continue;
            };
            let held = ix.present(s) && stable_row(self.stamps.peek(s)) == Some(row);
            run = match (held, ix.linked(s)) {
                (false, _) => 0,
                (true, true) => (run + 1).min(len),
                (true, false) => 1,
            };
            if run >= len {
                candidates.push(s);
            }
        }
        let within = || format!("the newest {recent} rows");
        let Some(weights) = weights else {
            if candidates.is_empty() {
                return Err(BufferError::NoValidWindowIn {
                    seq_len: len,
                    within: within(),
                });
            }
            for o in out {
                *o = ix.drawn(candidates[rng.below(candidates.len())]);
            }
            return Ok(());
        };
        let mut by_task: HashMap<i64, Vec<usize>> = HashMap::new();
        for &s in &candidates {
            by_task.entry(ix.task[s]).or_default().push(s);
        }
        let mut lists: Vec<&[usize]> = Vec::new();
        let mut cum: Vec<f64> = Vec::new();
        let mut acc = 0.0;
        for &(task, w) in weights {
            if !ix.tasks.contains_key(&task) {
                return Err(BufferError::UnknownTask { task_id: task });
            }
            if let Some(list) = by_task.get(&task).filter(|_| w > 0.0) {
                acc += w;
                cum.push(acc);
                lists.push(list);
            }
        }
        if lists.is_empty() {
            return Err(BufferError::NoValidWindowIn {
                seq_len: len,
                within: format!("{} for the tasks given positive weights", within()),
            });
        }
        for o in out {
            let list = lists[pick_weighted(&cum, rng)];
            *o = ix.drawn(list[rng.below(list.len())]);
        }
        Ok(())
    }

    /// Valid windows of `seq_len` rows per task, sorted by task id (tasks with none are
    /// left out): what `sample_windows` draws among. `O(tasks x log)`.
    pub fn window_counts(&self, seq_len: usize) -> Result<Vec<(i64, u64)>, BufferError> {
        require_seq_len(seq_len)?;
        let mut counts = self.with_windows(|ix| {
            ix.tasks
                .iter()
                .map(|(&t, e)| (t, e.set.total(seq_len)))
                .filter(|&(_, n)| n > 0)
                .collect::<Vec<_>>()
        })?;
        counts.sort_unstable();
        Ok(counts)
    }

    /// For each slot in `anchors`, the window of `seq_len` rows ending at it if valid, else
    /// the one starting at it, into `obs` (`k x seq_len x obs_dim`) and `target`
    /// (`k x seq_len x target_dim`); `valid[i]` says whether either was valid (when neither
    /// is, that window is zero-filled). The validity rule is `sample_windows`'.
    ///
    /// Errors: `seq_len` is 0, an output has the wrong size, or an anchor is not a slot in
    /// `0..len()` ([`BufferError::SlotOutOfRange`]).
    pub fn windows_at_into(
        &self,
        anchors: &[i64],
        seq_len: usize,
        obs: &mut [f32],
        target: &mut [f32],
        valid: &mut [bool],
    ) -> Result<(), BufferError> {
        require_seq_len(seq_len)?;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let k = anchors.len();
        for (name, got, expected) in [
            ("obs", obs.len(), k * seq_len * d_o),
            ("target", target.len(), k * seq_len * d_t),
            ("valid", valid.len(), k),
        ] {
            if got != expected {
                return Err(BufferError::OutputSize {
                    name,
                    got,
                    expected,
                });
            }
        }
        let n_slots = self.len();
        self.check_slots(anchors, n_slots)?;
        let (cap, base) = (self.capacity, self.base());
        let full = n_slots == cap;
        let mut stamps = Vec::with_capacity(seq_len);
        let windows = obs
            .chunks_exact_mut(seq_len * d_o)
            .zip(target.chunks_exact_mut(seq_len * d_t));
        for ((o, t), (&a, ok)) in windows.zip(anchors.iter().zip(valid.iter_mut())) {
            let a = a as usize;
            let ending = if a + 1 >= seq_len {
                Some(a + 1 - seq_len)
            } else {
                full.then(|| a + 1 + cap - seq_len)
            };
            let starting = (full || a + seq_len <= n_slots).then_some(a);
            *ok = seq_len <= n_slots
                && [ending, starting].into_iter().flatten().any(|s| {
                    let dst = [&mut *o, &mut *t, &mut [], &mut []];
                    self.read_window(s, seq_len, base, seq_len, dst, &mut stamps)
                        .is_some()
                });
            if !*ok {
                o.fill(0.0);
                t.fill(0.0);
            }
        }
        Ok(())
    }

    /// Every slot must be in `0..n_slots`.
    fn check_slots(&self, slots: &[i64], n_slots: usize) -> Result<(), BufferError> {
        match slots.iter().find(|&&s| s < 0 || s as u64 >= n_slots as u64) {
            Some(&slot) => Err(BufferError::SlotOutOfRange {
                slot,
                rows: n_slots,
            }),
            None => Ok(()),
        }
    }

    /// The rows held in `slots` into `obs` (`k x obs_dim`) and `target` (`k x target_dim`),
    /// each copied under its stamp (a row being written is re-read until its write is done).
    ///
    /// Errors: a slot is not in `0..len()`, an output has the wrong size, or a slot kept
    /// being rewritten ([`BufferError::Contended`]).
    pub fn gather_into(
        &self,
        slots: &[i64],
        obs: &mut [f32],
        target: &mut [f32],
    ) -> Result<(), BufferError> {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let k = slots.len();
        for (name, got, expected) in [
            ("obs", obs.len(), k * d_o),
            ("target", target.len(), k * d_t),
        ] {
            if got != expected {
                return Err(BufferError::OutputSize {
                    name,
                    got,
                    expected,
                });
            }
        }
        self.check_slots(slots, self.len())?;
        let base = self.base();
        const AHEAD: usize = 6;
        for &s in slots.iter().take(AHEAD) {
            self.prefetch::<false>(s as usize, 1);
        }
        let rows = obs.chunks_exact_mut(d_o).zip(target.chunks_exact_mut(d_t));
        for (i, ((o, t), &s)) in rows.zip(slots).enumerate() {
            if let Some(&ahead) = slots.get(i + AHEAD) {
                self.prefetch::<false>(ahead as usize, 1);
            }
            let mut tries = 0;
            while self.read_row::<false>(s as usize, base, o, t).is_none() {
                tries += 1;
                if tries >= ROW_RETRIES {
                    return Err(self.gave_up());
                }
                std::hint::spin_loop();
            }
        }
        Ok(())
    }
}

/// Windows have at least one row: `seq_len == 0` is an invalid argument.
fn require_seq_len(seq_len: usize) -> Result<(), BufferError> {
    if seq_len == 0 {
        return Err(BufferError::InvalidArgument {
            name: "seq_len",
            expected: "at least 1",
            got: 0,
        });
    }
    Ok(())
}
