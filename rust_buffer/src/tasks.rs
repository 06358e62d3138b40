//! Per-task views of the store: `task_counts`, the rows of one task, and `sample_tasks`, the
//! MAML primitive (per-task disjoint support and query sets).
//!
//! Row sets draw from the task index (`index`); contiguous sets draw their tasks and windows
//! from the window index (`window_index`), so their cost does not grow with the number of
//! tasks or rows. Under concurrent adds the indexes are snapshots, and every row is re-checked
//! when it is copied.

use std::collections::HashSet;

use crate::error::BufferError;
use crate::index::TaskSlots;
use crate::rng::Rng;
use crate::store::RingBuffer;

/// Attempts to re-draw one task's rows when concurrent writes overwrite them mid-copy.
const TASK_RETRIES: usize = 16;
/// Uniform task draws (per task requested, plus a constant) tried before the contiguous
/// sampler lists every qualifying task.
const TASK_DRAWS: usize = 16;

/// Which tasks `sample_tasks` may pick, and with which generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskQuery<'a> {
    /// Only these task ids (for example one distributed rank's shard); `None`: every task.
    pub tasks: Option<&'a [i64]>,
    /// Draw from a fresh generator seeded with this (deterministic, independent of the
    /// store's shared generator); `None`: the store's generator.
    pub seed: Option<u64>,
}

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
        let query = TaskQuery::default();
        self.sample_tasks_with(n_tasks, n_support, n_query, contiguous, query)
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
        self.sample_tasks_query_into(n_support, n_query, contiguous, TaskQuery::default(), out)
    }

    /// [`sample_tasks`](Self::sample_tasks) restricted to `query.tasks` and/or drawn with
    /// `query.seed`'s own generator.
    pub fn sample_tasks_with(
        &self,
        n_tasks: usize,
        n_support: usize,
        n_query: usize,
        contiguous: bool,
        query: TaskQuery<'_>,
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
        self.sample_tasks_query_into(n_support, n_query, contiguous, query, buffers)?;
        Ok(out)
    }

    /// [`sample_tasks_into`](Self::sample_tasks_into) with a [`TaskQuery`].
    pub fn sample_tasks_query_into(
        &self,
        n_support: usize,
        n_query: usize,
        contiguous: bool,
        query: TaskQuery<'_>,
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
        let mut rng = self.rng_for(query.seed);
        if contiguous {
            return self.tasks_contiguous(n_support, query.tasks, out, &mut rng);
        }
        self.with_tasks(|index| {
            self.tasks_from(index, n_support, n_query, query.tasks, out, &mut rng)
        })
    }

    /// Row sets (`contiguous = false`) on a task index.
    fn tasks_from(
        &self,
        index: &TaskSlots<'_>,
        n_support: usize,
        n_query: usize,
        subset: Option<&[i64]>,
        out: TaskBuffers<'_>,
        rng: &mut Rng,
    ) -> Result<(), BufferError> {
        let per_task = n_support + n_query;
        let (d_o, d_t) = (self.obs_dim, self.target_dim);
        let n_tasks = out.task_ids.len();
        let (so, st) = (n_support * d_o, n_support * d_t);
        let (qo, qt) = (n_query * d_o, n_query * d_t);
        let allowed = subset.map(sorted_unique);
        let mut eligible: Vec<usize> = (0..index.tasks.len())
            .filter(|&i| {
                let (task, slots) = index.tasks[i];
                slots.len() >= per_task
                    && allowed
                        .as_ref()
                        .map_or(true, |a| a.binary_search(&task).is_ok())
            })
            .collect();
        let not_enough = |available| BufferError::NotEnoughTasks {
            requested: n_tasks,
            available,
            rows_per_task: per_task,
            contiguous: false,
            tasks_held: index.tasks.len(),
        };
        if eligible.len() < n_tasks {
            return Err(not_enough(eligible.len()));
        }
        rng.shuffle(&mut eligible);
        for (k, &e) in eligible.iter().take(n_tasks).enumerate() {
            let (task, slots) = index.tasks[e];
            let mut dst = TaskOut {
                s_obs: &mut out.support_obs[k * so..(k + 1) * so],
                s_tgt: &mut out.support_target[k * st..(k + 1) * st],
                q_obs: &mut out.query_obs[k * qo..(k + 1) * qo],
                q_tgt: &mut out.query_target[k * qt..(k + 1) * qt],
            };
            self.task_rows(task, slots, n_support, &mut dst, rng)?;
            out.task_ids[k] = task;
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

    /// Contiguous sets: `n_tasks` distinct tasks holding a window of `n_support + n_query`
    /// steps, drawn uniformly from the window index's task list (a task that does not
    /// qualify is drawn again; only after many misses are the qualifying tasks listed), then
    /// one uniform window of each.
    fn tasks_contiguous(
        &self,
        n_support: usize,
        subset: Option<&[i64]>,
        out: TaskBuffers<'_>,
        rng: &mut Rng,
    ) -> Result<(), BufferError> {
        let d_o = self.obs_dim;
        let n_tasks = out.task_ids.len();
        let per_task = (out.support_obs.len() + out.query_obs.len()) / d_o / n_tasks;
        let picked = self.with_windows(|ix| {
            let qualifies = |t: &i64| ix.tasks.get(t).is_some_and(|e| e.set.total(per_task) > 0);
            let mut chosen: Vec<i64> = Vec::with_capacity(n_tasks);
            match subset {
                Some(sub) => {
                    let mut c: Vec<i64> = sorted_unique(sub);
                    c.retain(qualifies);
                    if c.len() < n_tasks {
                        return Err(c.len());
                    }
                    rng.shuffle(&mut c);
                    chosen.extend_from_slice(&c[..n_tasks]);
                }
                None => {
                    let list = &ix.task_list;
                    let mut seen: HashSet<i64> = HashSet::with_capacity(2 * n_tasks);
                    let draws = if list.is_empty() {
                        0
                    } else {
                        TASK_DRAWS * (n_tasks + 4)
                    };
                    for _ in 0..draws {
                        if chosen.len() == n_tasks {
                            break;
                        }
                        let t = list[rng.below(list.len())];
                        if qualifies(&t) && seen.insert(t) {
                            chosen.push(t);
                        }
                    }
                    if chosen.len() < n_tasks {
                        // Qualifying tasks are rare: list them (exact, O(tasks)).
                        let mut rest: Vec<i64> = list
                            .iter()
                            .copied()
                            .filter(|t| !seen.contains(t) && qualifies(t))
                            .collect();
                        rest.sort_unstable();
                        let need = n_tasks - chosen.len();
                        if rest.len() < need {
                            return Err(chosen.len() + rest.len());
                        }
                        rng.shuffle(&mut rest);
                        chosen.extend_from_slice(&rest[..need]);
                    }
                }
            }
            let starts = chosen
                .iter()
                .map(|t| {
                    let set = &ix.tasks[t].set;
                    let u = rng.below(set.total(per_task) as usize) as u64;
                    ix.drawn(ix.start(set, per_task, u))
                })
                .collect::<Vec<(usize, u64)>>();
            Ok((chosen, starts))
        })?;
        let (chosen, starts) = picked.map_err(|available| BufferError::NotEnoughTasks {
            requested: n_tasks,
            available,
            rows_per_task: per_task,
            contiguous: true,
            tasks_held: self.task_counts().len(),
        })?;
        let (so, st) = (
            out.support_obs.len() / n_tasks,
            out.support_target.len() / n_tasks,
        );
        let (qo, qt) = (
            out.query_obs.len() / n_tasks,
            out.query_target.len() / n_tasks,
        );
        for (k, (&task, &first)) in chosen.iter().zip(&starts).enumerate() {
            let dst = [
                &mut out.support_obs[k * so..(k + 1) * so],
                &mut out.support_target[k * st..(k + 1) * st],
                &mut out.query_obs[k * qo..(k + 1) * qo],
                &mut out.query_target[k * qt..(k + 1) * qt],
            ];
            let [a, b, c, d] = dst;
            let (mut start, mut first_row) = first;
            let mut tries = 0;
            loop {
                let dst = [&mut *a, &mut *b, &mut *c, &mut *d];
                if self.read_certified(start, per_task, first_row, n_support, dst) == Some(task) {
                    break;
                }
                // Overwritten since it was drawn: another window of the same task.
                tries += 1;
                let redraw = self.with_windows(|ix| {
                    let set = &ix.tasks.get(&task)?.set;
                    let total = set.total(per_task);
                    let u = rng.below(total.max(1) as usize) as u64;
                    (total > 0).then(|| ix.drawn(ix.start(set, per_task, u)))
                })?;
                match redraw {
                    Some(s) if tries < TASK_RETRIES => (start, first_row) = s,
                    _ => return Err(BufferError::Contended),
                }
            }
            out.task_ids[k] = task;
        }
        Ok(())
    }
}

/// The ids sorted, without duplicates.
fn sorted_unique(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
