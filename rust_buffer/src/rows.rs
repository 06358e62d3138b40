//! The row types of the public API: what `add` takes (`Meta`, `MetaValues`), what reads
//! return (`RowInfo`), and how a store is configured (`Options`, `Retention`). Plain data:
//! only `error` is used here.

use crate::error::BufferError;

/// What happens to new rows once the store is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// A ring: each new row overwrites the oldest one (slot = row index mod capacity).
    #[default]
    Fifo,
    /// Reservoir sampling (Vitter's algorithm R): once full, the `k`-th row (1-based) is kept
    /// with probability `capacity / k`, in a uniformly chosen slot. The store then holds a
    /// uniform sample of everything ever added. The choice is a hash of (seed, row index), so
    /// it is reproducible and needs no shared random state.
    Reservoir,
}

/// Construction options beyond the shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Seed of every sampler (and of reservoir slot choices); `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Retention policy once full.
    pub retention: Retention,
}

/// Metadata for the rows of one `add` call: one value for all rows, or one per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaValues<'a> {
    /// The same value for every row.
    Scalar(i64),
    /// One value per row.
    PerRow(&'a [i64]),
}

impl MetaValues<'_> {
    #[inline]
    pub(crate) fn get(&self, i: usize) -> i64 {
        match self {
            MetaValues::Scalar(v) => *v,
            MetaValues::PerRow(v) => v[i],
        }
    }

    pub(crate) fn check(&self, name: &'static str, rows: usize) -> Result<(), BufferError> {
        match self {
            MetaValues::PerRow(v) if v.len() != rows => Err(BufferError::MetaLength {
                name,
                got: v.len(),
                expected: rows,
            }),
            _ => Ok(()),
        }
    }
}

/// The integer metadata of the rows given to `add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    /// Task id (default 0).
    pub task_id: MetaValues<'a>,
    /// Episode id (default -1: no episode).
    pub episode_id: MetaValues<'a>,
    /// Step within the episode (default -1: unknown).
    pub step: MetaValues<'a>,
}

impl Default for Meta<'_> {
    fn default() -> Self {
        Meta {
            task_id: MetaValues::Scalar(0),
            episode_id: MetaValues::Scalar(-1),
            step: MetaValues::Scalar(-1),
        }
    }
}

impl<'a> Meta<'a> {
    /// Metadata with one episode: `task_id`, `episode_id`, steps given per row.
    pub fn episode(task_id: i64, episode_id: i64, steps: &'a [i64]) -> Self {
        Meta {
            task_id: MetaValues::Scalar(task_id),
            episode_id: MetaValues::Scalar(episode_id),
            step: MetaValues::PerRow(steps),
        }
    }
}

/// The identity and metadata of one stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowInfo {
    /// Global insertion index of the row (0 for the first row ever added).
    pub row: u64,
    /// Task id.
    pub task_id: i64,
    /// Episode id.
    pub episode_id: i64,
    /// Step within the episode.
    pub step: i64,
}
