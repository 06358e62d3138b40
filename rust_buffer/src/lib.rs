//! A lock-free, columnar experience store for meta-learning and replay.
//!
//! [`RingBuffer`] holds `capacity` rows of float32 `obs` and `target` plus integer
//! `task_id`, `episode_id` and `step`, in preallocated columns. Many threads may [`add`] and
//! sample at once: inserts reserve slots with one atomic `fetch_add` and publish each row
//! through a per-slot sequence stamp, so a sampler never returns a torn or half-written row.
//!
//! ```
//! use rust_buffer::{BufferError, Meta, RingBuffer, WindowQuery};
//!
//! let store = RingBuffer::new(1000, 2, 1)?; // capacity, obs_dim, target_dim
//! // Two rows of one episode of task 7: obs is rows x obs_dim, row-major.
//! store.add(&[0.0, 1.0, 2.0, 3.0], &[0.5, 0.6], Meta::episode(7, 0, &[0, 1]))?;
//! assert_eq!(store.len(), 2);
//!
//! let batch = store.sample(2, true)?; // uniform, with replacement, plus metadata
//! assert_eq!(batch.obs.len(), 2 * 2);
//! assert_eq!(batch.meta.unwrap().task_id, [7, 7]);
//!
//! let windows = store.sample_sequences(3, 2)?; // 3 windows of 2 consecutive steps
//! assert_eq!(windows.obs, [0.0, 1.0, 2.0, 3.0].repeat(3));
//!
//! // Task-weighted windows from a generator of their own (reproducible, shared stream untouched).
//! let weights = [(7, 1.0)];
//! let query = WindowQuery { task_weights: Some(&weights), seed: Some(3), ..Default::default() };
//! assert_eq!(store.sample_windows(2, 2, query)?.task_ids, [7, 7]);
//!
//! // Errors are named and say what was expected.
//! let err = store.add(&[1.0; 3], &[0.0], Meta::default()).unwrap_err();
//! assert!(matches!(err, BufferError::Columns { .. }));
//! # Ok::<(), BufferError>(())
//! ```
//!
//! Modules, one idea each: `slots` (the reservation/stamp protocol), `column` (atomic float
//! columns), `rows` (the row types: `Meta`, `RowInfo`, `Options`...), `store` (construction,
//! add, clear), `reads` (single-row reads), `sample` (uniform gathers), `tasks`
//! (MAML support/query sets), `index` (the task index), `sequences` (episode windows), [`rng`]
//! (seeded xoshiro256++), `window_index` (every valid window start, by length and task),
//! `windows` (weighted, recent and anchored windows, gathers by slot), [`error`] (named
//! errors), `sync` (std or loom atomics), `region`
//! (heap or memory-mapped storage), [`persist`] (snapshots), [`shared`] (file-backed stores
//! shared between processes), `format` (what both file formats share), `wait` (bounded,
//! interruptible waits on another writer). No two modules use each other, directly or
//! through others (`docs/rust_buffer.md`, "Module dependencies"; checked by
//! `tests/modules.rs`).
//!
//! [`add`]: RingBuffer::add

#![warn(missing_docs)]

mod column;
pub mod error;
#[cfg(not(loom))]
mod format;
mod index;
#[cfg(not(loom))]
pub mod persist;
mod reads;
mod region;
pub mod rng;
mod rows;
mod sample;
mod sequences;
#[cfg(not(loom))]
pub mod shared;
mod slots;
mod store;
mod sync;
mod tasks;
mod wait;
mod window_index;
mod windows;

pub use error::{BufferError, Column};
pub use rows::{Meta, MetaValues, Options, Retention, RowInfo};
pub use sample::{Batch, MetaBatch};
pub use sequences::SequenceBatch;
pub use slots::MAX_ROWS;
pub use store::RingBuffer;
pub use tasks::{TaskBatch, TaskBuffers, TaskQuery};
#[cfg(not(loom))]
pub use wait::with_interrupt;
pub use wait::DEFAULT_WAIT_TIMEOUT_MS;

#[cfg(loom)]
#[doc(hidden)]
pub use slots::model;
pub use windows::WindowQuery;

/// The crate version.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
