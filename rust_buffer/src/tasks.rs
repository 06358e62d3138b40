//! Per-task views of the store: `task_counts`, the rows of one task, and `sample_tasks`, the
//! MAML primitive (per-task disjoint support and query sets).
//!
//! The task index is a scan of the `task_id` column (each slot read under its stamp), so it
//! costs `O(len)` per call and is exact for a store that is not being written; under
//! concurrent adds it is a snapshot, and every row is re-checked when it is copied.

use crate::error::BufferError;
use crate::index::TaskSlots;
use crate::rng::Rng;
use crate::store::RingBuffer;

/// Attempts to re-draw one task's rows when concurrent writes overwrite them mid-copy.
const TASK_RETRIES: usize = 16;
/// Random window starts tried per task before enumerating all of the task's rows.
const WINDOW_TRIES: usize = 32;

/// Support and query sets of `n_tasks` tasks, row-major:
/// `support_*` are `n_tasks x n_support x dim`, `query_*` are `n_tasks x n_query x dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBatch {
    /// `n_tasks x n_support x obs_dim`.
    pub support_obs: Vec<f32>,
    /// `n_tasks x n_support x target_dim`.
    pub support_target: Vec<f32>,
    /// `n_tasks x n_query x obs_dim`.
    pub query_obs: Vec<f32>,
    /// `n_tasks x n_query x target_dim`.
    pub query_target: Vec<f32>,
    /// The task ids, distinct.
    pub task_ids: Vec<i64>,
}

/// Caller-provided outputs of [`RingBuffer::sample_tasks_into`], row-major:
/// `support_*` are `n_tasks x n_support x dim`, `query_*` are `n_tasks x n_query x dim`,
/// `task_ids` has `n_tasks` entries.
#[derive(Debug)]
pub struct TaskBuffers<'a> {
    /// `n_tasks x n_support x obs_dim`.
    pub support_obs: &'a mut [f32],
    /// `n_tasks x n_support x target_dim`.
    pub support_target: &'a mut [f32],
    /// `n_tasks x n_query x obs_dim`.
    pub query_obs: &'a mut [f32],
    /// `n_tasks x n_query x target_dim`.
    pub query_target: &'a mut [f32],
    /// `n_tasks` task ids.
    pub task_ids: &'a mut [i64],
}

/// Output rows for one task: support part then query part.
struct TaskOut<'a> {
    s_obs: &'a mut [f32],
    s_tgt: &'a mut [f32],
    q_obs: &'a mut [f32],
    q_tgt: &'a mut [f32],
}

impl RingBuffer {
    /// Rows held per task id, sorted by task id.
    pub fn task_counts(&self) -> Vec<(i64, usize)> {
        self.with_tasks(|index| index.tasks.iter().map(|(t, v)| (*t, v.len())).collect())
    }

    /// Pick `n_tasks` distinct tasks and, for each, `n_support + n_query` distinct rows split
    /// into a support and a disjoint query set. With `contiguous`, each task's rows are one
    /// stretch of consecutive steps of one episode (support first, then query).
    ///
    /// Tasks are drawn uniformly among those that qualify. Errors:
    /// [`BufferError::NotEnoughTasks`] when fewer than `n_tasks` qualify.
    pub fn sample_tasks(
        &self,
        n_tasks: usize,
        n_support: usize,
        n_query: usize,
        contiguous: bool,
    ) -> Result<TaskBatch, BufferError> {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let mut out = TaskBatch {
            support_obs: vec![0.0; n_tasks * n_support * d_o],
            support_target: vec![0.0; n_tasks * n_support * d_t],
            query_obs: vec![0.0; n_tasks * n_query * d_o],
            query_target: vec![0.0; n_tasks * n_query * d_t],
            task_ids: vec![0; n_tasks],
        };
        let buffers = TaskBuffers {
            support_obs: &mut out.support_obs,
            support_target: &mut out.support_target,
            query_obs: &mut out.query_obs,
            query_target: &mut out.query_target,
            task_ids: &mut out.task_ids,
        };
        self.sample_tasks_into(n_support, n_query, contiguous, buffers)?;
        Ok(out)
    }

    /// Like [`sample_tasks`](Self::sample_tasks), into caller-provided buffers
    /// (`n_tasks = out.task_ids.len()`).
    pub fn sample_tasks_into(
        &self,
        n_support: usize,
        n_query: usize,
        contiguous: bool,
        out: TaskBuffers<'_>,
    ) -> Result<(), BufferError> {
        let per_task = n_support + n_query;
        if per_task == 0 {
            return Err(BufferError::InvalidArgument {
                name: "n_support + n_query",
                expected: "at least 1",
                got: 0,
            });
        }
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let n_tasks = out.task_ids.len();
        let (so, st) = (n_support * d_o, n_support * d_t);
        let (qo, qt) = (n_query * d_o, n_query * d_t);
        for (name, got, per) in [
            ("support_obs", out.support_obs.len(), so),
            ("support_target", out.support_target.len(), st),
            ("query_obs", out.query_obs.len(), qo),
            ("query_target", out.query_target.len(), qt),
        ] {
            if got != n_tasks * per {
                return Err(BufferError::OutputSize {
                    name,
                    got,
                    expected: n_tasks * per,
                });
            }
        }
        if n_tasks == 0 {
            return Ok(());
        }
        if self.is_empty() {
            return Err(BufferError::Empty);
        }
        self.with_tasks(|index| self.tasks_from(index, n_support, n_query, contiguous, out))
    }

    /// `sample_tasks_into` on a task index.
    fn tasks_from(
        &self,
        index: &TaskSlots<'_>,
        n_support: usize,
        n_query: usize,
        contiguous: bool,
        out: TaskBuffers<'_>,
    ) -> Result<(), BufferError> {
        let per_task = n_support + n_query;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let n_tasks = out.task_ids.len();
        let (so, st) = (n_support * d_o, n_support * d_t);
        let (qo, qt) = (n_query * d_o, n_query * d_t);
        let mut eligible: Vec<usize> = (0..index.tasks.len())
            .filter(|&i| index.tasks[i].1.len() >= per_task)
            .collect();
        let not_enough = |available| BufferError::NotEnoughTasks {
            requested: n_tasks,
            available,
            rows_per_task: per_task,
            contiguous,
            tasks_held: index.tasks.len(),
        };
        if eligible.len() < n_tasks {
            return Err(not_enough(eligible.len()));
        }
        let mut rng = self.rng();
        rng.shuffle(&mut eligible);
        let mut found = 0;
        for &e in &eligible {
            if found == n_tasks {
                break;
            }
            let (task, slots) = index.tasks[e];
            let k = found;
            let mut dst = TaskOut {
                s_obs: &mut out.support_obs[k * so..(k + 1) * so],
                s_tgt: &mut out.support_target[k * st..(k + 1) * st],
                q_obs: &mut out.query_obs[k * qo..(k + 1) * qo],
                q_tgt: &mut out.query_target[k * qt..(k + 1) * qt],
            };
            let ok = if contiguous {
                self.task_window(task, slots, n_support, &mut dst, &mut rng)?
            } else {
                self.task_rows(task, slots, n_support, &mut dst, &mut rng)?;
                true
            };
            if ok {
                out.task_ids[k] = task;
                found += 1;
            }
        }
        if found < n_tasks {
            return Err(not_enough(found));
        }
        Ok(())
    }

    /// Distinct random rows of one task into `dst` (support first).
    fn task_rows(
        &self,
        task: i64,
        slots: &[u32],
        n_support: usize,
        dst: &mut TaskOut<'_>,
        rng: &mut Rng,
    ) -> Result<(), BufferError> {
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let per_task = dst.s_obs.len() / d_o + dst.q_obs.len() / d_o;
        let base = self.base();
        'attempt: for _ in 0..TASK_RETRIES {
            let picks = rng.distinct(slots.len(), per_task);
            for (j, &p) in picks.iter().enumerate() {
                let (o, t) = if j < n_support {
                    (
                        &mut dst.s_obs[j * d_o..(j + 1) * d_o],
                        &mut dst.s_tgt[j * d_t..(j + 1) * d_t],
                    )
                } else {
                    let q = j - n_support;
                    (
                        &mut dst.q_obs[q * d_o..(q + 1) * d_o],
                        &mut dst.q_tgt[q * d_t..(q + 1) * d_t],
                    )
                };
                match self.read_row::<true>(slots[p] as usize, base, o, t) {
                    Some(info) if info.task_id == task => {}
                    _ => continue 'attempt,
                }
            }
            return Ok(());
        }
        Err(BufferError::Contended)
    }

    /// One window of consecutive steps of one episode of `task` into `dst`; `Ok(false)` when
    /// the task has none.
    fn task_window(
        &self,
        task: i64,
        slots: &[u32],
        n_support: usize,
        dst: &mut TaskOut<'_>,
        rng: &mut Rng,
    ) -> Result<bool, BufferError> {
        let len = dst.s_obs.len() / self.obs_dim + dst.q_obs.len() / self.obs_dim;
        let base = self.base();
        let n_slots = self.len();
        let mut stamps = Vec::with_capacity(len);
        let mut try_start = |start: usize, dst: &mut TaskOut<'_>| -> bool {
            self.window_plausible(start, len, base, n_slots)
                .is_some_and(|first| first.task_id == task)
                && self
                    .read_window(
                        start,
                        len,
                        base,
                        n_support,
                        [
                            &mut *dst.s_obs,
                            &mut *dst.s_tgt,
                            &mut *dst.q_obs,
                            &mut *dst.q_tgt,
                        ],
                        &mut stamps,
                    )
                    .is_some()
        };
        for _ in 0..WINDOW_TRIES {
            if try_start(slots[rng.below(slots.len())] as usize, dst) {
                return Ok(true);
            }
        }
        let starts: Vec<usize> = slots
            .iter()
            .map(|&s| s as usize)
            .filter(|&s| {
                // Every row, not only the ends: a reservoir can replace a slot mid-window.
                self.window_intact(s, len, base, n_slots)
                    .is_some_and(|first| first.task_id == task)
            })
            .collect();
        if starts.is_empty() {
            return Ok(false);
        }
        for _ in 0..TASK_RETRIES {
            if try_start(starts[rng.below(starts.len())], dst) {
                return Ok(true);
            }
        }
        Err(BufferError::Contended)
    }
}
