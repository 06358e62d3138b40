//! Uniform row sampling: `sample`, `sample_into`, `sample_recent`, `sample_task_rows`.
//!
//! All of them draw slots with a per-call random stream, copy each row under its seqlock
//! (redrawing a slot whose write is unfinished or that no longer matches), and prefetch a few
//! rows ahead because a random gather from a large store waits on memory, not on arithmetic.

use crate::error::BufferError;
use crate::rng::Rng;
use crate::rows::{Retention, RowInfo};
use crate::store::RingBuffer;

/// Rows of prefetch look-ahead in a gather.
const LOOKAHEAD: usize = 6;
/// Failed draws for one output row before a sampler gives up (only reachable when the store
/// is cleared or overwritten faster than it can be read).
pub(crate) const MAX_MISSES: u32 = 1 << 16;

/// A sampled batch: row-major `obs` (`n x obs_dim`), `target` (`n x target_dim`) and, when
/// asked for, the rows' metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `n x obs_dim` floats.
    pub obs: Vec<f32>,
    /// `n x target_dim` floats.
    pub target: Vec<f32>,
    /// Per-row metadata (`with_meta = true`).
    pub meta: Option<MetaBatch>,
}

/// Per-row metadata of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaBatch {
    /// Task ids.
    pub task_id: Vec<i64>,
    /// Episode ids.
    pub episode_id: Vec<i64>,
    /// Steps.
    pub step: Vec<i64>,
}

impl MetaBatch {
    fn zeros(n: usize) -> Self {
        MetaBatch {
            task_id: vec![0; n],
            episode_id: vec![0; n],
            step: vec![0; n],
        }
    }
}

/// Which rows a uniform gather draws from.
#[derive(Clone, Copy)]
enum Pool<'a> {
    /// Every slot `0..n`.
    All(usize),
    /// The newest `window` rows before global index `end`.
    Recent { end: u64, window: usize },
    /// These slots, whose rows must belong to `task`.
    Task { task: i64, slots: &'a [u32] },
}

impl RingBuffer {
    fn draw(&self, pool: Pool<'_>, rng: &mut Rng, base: u64) -> Option<usize> {
        match pool {
            Pool::All(n) => Some(rng.below(n)),
            Pool::Recent { end, window } => self.slot_for(end - 1 - rng.below(window) as u64, base),
            Pool::Task { slots, .. } => Some(slots[rng.below(slots.len())] as usize),
        }
    }

    fn accepts(pool: Pool<'_>, info: &RowInfo) -> bool {
        match pool {
            Pool::All(_) => true,
            Pool::Recent { end, window } => info.row + window as u64 >= end,
            Pool::Task { task, .. } => info.task_id == task,
        }
    }

    /// Gather `n` rows drawn from `pool` into `obs`/`target` (and `meta`).
    fn gather(
        &self,
        pool: Pool<'_>,
        obs: &mut [f32],
        target: &mut [f32],
        meta: Option<&mut MetaBatch>,
        rng: &mut Rng,
    ) -> Result<(), BufferError> {
        // Metadata is read only when returned or needed to accept a row.
        if meta.is_some() || matches!(pool, Pool::Task { .. }) {
            self.gather_rows::<true>(pool, obs, target, meta, rng)
        } else {
            self.gather_rows::<false>(pool, obs, target, meta, rng)
        }
    }

    fn gather_rows<const META: bool>(
        &self,
        pool: Pool<'_>,
        obs: &mut [f32],
        target: &mut [f32],
        mut meta: Option<&mut MetaBatch>,
        rng: &mut Rng,
    ) -> Result<(), BufferError> {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let n = obs.len() / d_o;
        let base = self.base();
        let mut slots: Vec<usize> = Vec::with_capacity(n);
        for _ in 0..n {
            slots.push(self.draw_some(pool, rng, base)?);
        }
        for &s in slots.iter().take(LOOKAHEAD) {
            self.prefetch::<META>(s, 1);
        }
        let rows = obs.chunks_exact_mut(d_o).zip(target.chunks_exact_mut(d_t));
        for (i, (o, t)) in rows.enumerate() {
            if let Some(&ahead) = slots.get(i + LOOKAHEAD) {
                self.prefetch::<META>(ahead, 1);
            }
            let mut slot = slots[i];
            let mut misses = 0u32;
            let info = loop {
                match self.read_row::<META>(slot, base, o, t) {
                    Some(info) if Self::accepts(pool, &info) => break info,
                    _ => {}
                }
                misses += 1;
                if misses > MAX_MISSES {
                    return Err(self.gave_up());
                }
                slot = self.draw_some(pool, rng, base)?;
            };
            if let Some(m) = meta.as_deref_mut() {
                m.task_id[i] = info.task_id;
                m.episode_id[i] = info.episode_id;
                m.step[i] = info.step;
            }
        }
        Ok(())
    }

    /// Draw until the pool yields a slot (reservoir pools can name dropped rows).
    fn draw_some(&self, pool: Pool<'_>, rng: &mut Rng, base: u64) -> Result<usize, BufferError> {
        for _ in 0..MAX_MISSES {
            if let Some(slot) = self.draw(pool, rng, base) {
                return Ok(slot);
            }
        }
        Err(self.gave_up())
    }

    pub(crate) fn gave_up(&self) -> BufferError {
        if self.is_empty() {
            BufferError::Empty
        } else {
            BufferError::Contended
        }
    }

    /// Can `batch` rows be sampled from the store (`sample`, `sample_into`)? The same check
    /// the samplers make, available before allocating outputs.
    pub fn check_batch(&self, batch: usize) -> Result<(), BufferError> {
        Self::check_count(batch, self.len(), || "the store".into())
    }

    /// `batch` rows must fit in `available`.
    pub(crate) fn check_count(
        batch: usize,
        available: usize,
        from: impl FnOnce() -> String,
    ) -> Result<(), BufferError> {
        if batch > 0 && available == 0 {
            return Err(BufferError::Empty);
        }
        if batch > available {
            return Err(BufferError::NotEnoughRows {
                requested: batch,
                available,
                from: from(),
            });
        }
        Ok(())
    }

    fn batch_from(
        &self,
        batch: usize,
        with_meta: bool,
        pool: Pool<'_>,
        rng: &mut Rng,
    ) -> Result<Batch, BufferError> {
        let mut obs = vec![0.0; batch * self.obs_dim];
        let mut target = vec![0.0; batch * self.target_dim];
        let mut meta = with_meta.then(|| MetaBatch::zeros(batch));
        self.gather(pool, &mut obs, &mut target, meta.as_mut(), rng)?;
        Ok(Batch { obs, target, meta })
    }

    /// `batch` rows drawn uniformly (with replacement) from the rows held.
    ///
    /// Errors: the store is empty, or `batch` exceeds the rows held.
    pub fn sample(&self, batch: usize, with_meta: bool) -> Result<Batch, BufferError> {
        let n = self.len();
        Self::check_count(batch, n, || "the store".into())?;
        let mut rng = self.rng();
        self.batch_from(batch, with_meta, Pool::All(n), &mut rng)
    }

    /// Like [`sample`](Self::sample), into caller-provided row-major buffers; the batch size
    /// is `obs.len() / obs_dim`.
    pub fn sample_into(
        &self,
        obs: &mut [f32],
        target: &mut [f32],
        meta: Option<&mut MetaBatch>,
    ) -> Result<(), BufferError> {
        let batch = self.check_outputs(obs, target, meta.as_deref())?;
        let n = self.len();
        Self::check_count(batch, n, || "the store".into())?;
        let mut rng = self.rng();
        self.gather(Pool::All(n), obs, target, meta, &mut rng)
    }

    fn check_outputs(
        &self,
        obs: &[f32],
        target: &[f32],
        meta: Option<&MetaBatch>,
    ) -> Result<usize, BufferError> {
        if obs.len() % self.obs_dim != 0 {
            return Err(BufferError::OutputSize {
                name: "obs_out",
                got: obs.len(),
                expected: (obs.len() / self.obs_dim) * self.obs_dim,
            });
        }
        let batch = obs.len() / self.obs_dim;
        if target.len() != batch * self.target_dim {
            return Err(BufferError::OutputSize {
                name: "target_out",
                got: target.len(),
                expected: batch * self.target_dim,
            });
        }
        if let Some(m) = meta {
            for (name, v) in [
                ("task_id", &m.task_id),
                ("episode_id", &m.episode_id),
                ("step", &m.step),
            ] {
                if v.len() != batch {
                    return Err(BufferError::OutputSize {
                        name,
                        got: v.len(),
                        expected: batch,
                    });
                }
            }
        }
        Ok(batch)
    }

    /// `batch` rows drawn uniformly from the newest `window` rows added; in reservoir mode,
    /// from those of them still held.
    ///
    /// Errors: `window` is 0 or larger than the rows held, or `batch` exceeds the rows in it.
    pub fn sample_recent(
        &self,
        batch: usize,
        window: usize,
        with_meta: bool,
    ) -> Result<Batch, BufferError> {
        let end = self.recent_window(batch, window)?;
        let mut rng = self.rng();
        self.batch_from(batch, with_meta, Pool::Recent { end, window }, &mut rng)
    }

    /// Check a `sample_recent` request; returns the cursor the window ends at.
    fn recent_window(&self, batch: usize, window: usize) -> Result<u64, BufferError> {
        if window == 0 {
            return Err(BufferError::InvalidArgument {
                name: "window",
                expected: "at least 1",
                got: 0,
            });
        }
        let end = self.cursor();
        let base = self.base();
        let len = self.len();
        if len == 0 {
            return Err(BufferError::Empty);
        }
        if window > len {
            return Err(BufferError::WindowTooLarge { window, rows: len });
        }
        let held = match self.retention() {
            Retention::Fifo => window,
            Retention::Reservoir => (end - window as u64..end)
                .filter(|&r| {
                    self.slot_for(r, base)
                        .and_then(|s| self.read_meta(s, base))
                        .is_some_and(|i| i.row == r)
                })
                .count(),
        };
        Self::check_count(batch, held, || format!("the newest {window} rows"))?;
        Ok(end)
    }

    /// Like [`sample_recent`](Self::sample_recent), into caller-provided buffers (batch size
    /// `obs.len() / obs_dim`).
    pub fn sample_recent_into(
        &self,
        window: usize,
        obs: &mut [f32],
        target: &mut [f32],
        meta: Option<&mut MetaBatch>,
    ) -> Result<(), BufferError> {
        let batch = self.check_outputs(obs, target, meta.as_deref())?;
        let end = self.recent_window(batch, window)?;
        let mut rng = self.rng();
        self.gather(Pool::Recent { end, window }, obs, target, meta, &mut rng)
    }

    /// Like [`sample_task_rows`](Self::sample_task_rows), into caller-provided buffers.
    pub fn sample_task_rows_into(
        &self,
        task_id: i64,
        obs: &mut [f32],
        target: &mut [f32],
        meta: Option<&mut MetaBatch>,
    ) -> Result<(), BufferError> {
        let batch = self.check_outputs(obs, target, meta.as_deref())?;
        self.with_tasks(|index| {
            let slots = index
                .get(task_id)
                .ok_or(BufferError::UnknownTask { task_id })?;
            Self::check_count(batch, slots.len(), || format!("task {task_id}"))?;
            let mut rng = self.rng();
            let pool = Pool::Task {
                task: task_id,
                slots,
            };
            self.gather(pool, obs, target, meta, &mut rng)
        })
    }

    /// `batch` rows drawn uniformly from the rows of one task.
    ///
    /// Errors: the task holds no rows ([`BufferError::UnknownTask`]) or fewer than `batch`.
    pub fn sample_task_rows(
        &self,
        task_id: i64,
        batch: usize,
        with_meta: bool,
    ) -> Result<Batch, BufferError> {
        self.with_tasks(|index| {
            let slots = index
                .get(task_id)
                .ok_or(BufferError::UnknownTask { task_id })?;
            Self::check_count(batch, slots.len(), || format!("task {task_id}"))?;
            let mut rng = self.rng();
            let pool = Pool::Task {
                task: task_id,
                slots,
            };
            self.batch_from(batch, with_meta, pool, &mut rng)
        })
    }
}
