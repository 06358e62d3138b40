//! Named errors: every way a call can be refused, with a message that says what was expected.

use std::fmt;

/// Which float column an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The observation (model input) column.
    Obs,
    /// The target column.
    Target,
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Column::Obs => "obs",
            Column::Target => "target",
        })
    }
}

/// Why a store operation was refused. Nothing is inserted or changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferError {
    /// `capacity` was 0.
    ZeroCapacity,
    /// `obs_dim` or `target_dim` was 0.
    ZeroDim {
        /// The column whose width was 0.
        column: Column,
    },
    /// The store would need more memory than can be allocated.
    TooLarge {
        /// Number of elements requested for one column.
        elements: usize,
    },
    /// A flat row buffer's length is not a multiple of the column width.
    Columns {
        /// The column.
        column: Column,
        /// Elements given.
        got: usize,
        /// The column width.
        expected: usize,
    },
    /// `obs` and `target` describe different numbers of rows.
    RowMismatch {
        /// Rows of obs.
        obs_rows: usize,
        /// Rows of target.
        target_rows: usize,
    },
    /// A per-row metadata column has the wrong length.
    MetaLength {
        /// `task_id`, `episode_id` or `step`.
        name: &'static str,
        /// Values given.
        got: usize,
        /// Rows in the batch.
        expected: usize,
    },
    /// A value was NaN or infinite (the whole call is rejected).
    NonFinite {
        /// The column.
        column: Column,
        /// Row within the call.
        row: usize,
        /// Column index within the row.
        col: usize,
    },
    /// An output buffer has the wrong size.
    OutputSize {
        /// Which output.
        name: &'static str,
        /// Elements given.
        got: usize,
        /// Elements expected.
        expected: usize,
    },
    /// Sampling from a store that holds no rows.
    Empty,
    /// More rows requested than the store (or the selection) holds.
    NotEnoughRows {
        /// Rows requested.
        requested: usize,
        /// Rows available.
        available: usize,
        /// What was sampled from (`"the store"`, `"task 3"`, ...).
        from: String,
    },
    /// A size argument is invalid (for example a window or sequence length of 0).
    InvalidArgument {
        /// The argument name.
        name: &'static str,
        /// What was expected.
        expected: &'static str,
        /// The value given.
        got: i128,
    },
    /// `sample_recent` asked for a window larger than the rows held.
    WindowTooLarge {
        /// The window asked for.
        window: usize,
        /// Rows held.
        rows: usize,
    },
    /// A task id holds no rows.
    UnknownTask {
        /// The task id asked for.
        task_id: i64,
    },
    /// Fewer tasks than requested have enough rows (or a long enough episode stretch).
    NotEnoughTasks {
        /// Tasks requested.
        requested: usize,
        /// Tasks that qualify.
        available: usize,
        /// Rows each task needs.
        rows_per_task: usize,
        /// Whether one episode stretch of `rows_per_task` consecutive steps was required.
        contiguous: bool,
        /// Tasks held in total.
        tasks_held: usize,
    },
    /// No episode holds `seq_len` consecutive steps.
    NoValidWindow {
        /// The window length asked for.
        seq_len: usize,
        /// Rows held.
        rows: usize,
    },
    /// Every entry of a file-backed store's process table is held by a live process.
    TooManyHandles {
        /// Entries in the table.
        max: usize,
    },
    /// The store kept changing under a sampler (rows overwritten faster than they could be
    /// read); retrying the call is safe. (The Python bindings retry with back-off for up to
    /// 1 s before raising it.)
    Contended,
    /// A task weight is negative, NaN or infinite.
    BadWeight {
        /// The task the weight is for.
        task_id: i64,
        /// The weight given, as text.
        weight: String,
    },
    /// No task weight is positive.
    NoPositiveWeight,
    /// A slot index given by the caller is outside the rows held.
    SlotOutOfRange {
        /// The slot given.
        slot: i64,
        /// Rows held (valid slots are `0..rows`).
        rows: usize,
    },
    /// No valid window within a selection (tasks given weights, or the newest rows).
    NoValidWindowIn {
        /// The window length asked for.
        seq_len: usize,
        /// The selection, in words.
        within: String,
    },
    /// Another writer held a slot this `add` needed for longer than the store's wait timeout
    /// (it is alive but stopped or stuck). The add's other rows were written; the rows for
    /// slots that writer held were dropped.
    SlotBusy {
        /// The slot waited on.
        slot: usize,
        /// The process holding it (this process when another thread holds it).
        pid: u64,
        /// Milliseconds waited.
        waited_ms: u64,
    },
    /// A wait on another writer was interrupted (a signal, e.g. Ctrl-C, from the bindings).
    /// As for `SlotBusy`, rows for the held slots were dropped and the others written.
    Interrupted {
        /// The slot waited on.
        slot: usize,
        /// The process holding it.
        pid: u64,
    },
    /// Adding would take the row counter to the limit row numbers must stay below.
    RowLimit {
        /// Rows counted so far.
        cursor: u64,
        /// Rows in the call.
        rows: usize,
        /// The limit.
        limit: u64,
    },
    /// The file behind a file-backed store is shorter than its mapping: another process
    /// truncated it, and touching the lost pages would raise SIGBUS.
    Truncated {
        /// The file.
        path: String,
        /// Its length now.
        actual: u64,
        /// The length the store needs.
        expected: u64,
    },
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BufferError::*;
        match self {
            ZeroCapacity => write!(f, "capacity must be at least 1, got 0"),
            ZeroDim { column } => write!(f, "{column}_dim must be at least 1, got 0"),
            TooLarge { elements } if *elements == usize::MAX => write!(
                f,
                "capacity x dim overflows a 64-bit size; use a smaller capacity"
            ),
            TooLarge { elements } => {
                write!(f, "cannot allocate a column of {elements} values; use a smaller capacity")
            }
            Columns { column, got, expected } => write!(
                f,
                "{column} has {got} values, which is not a whole number of rows of {expected} columns"
            ),
            RowMismatch { obs_rows, target_rows } => {
                write!(f, "obs has {obs_rows} rows but target has {target_rows}; they must match")
            }
            MetaLength { name, got, expected } => write!(
                f,
                "{name} has {got} values, expected a scalar or one value per row ({expected})"
            ),
            NonFinite { column, row, col } => write!(
                f,
                "{column} row {row} column {col} is NaN or infinite; only finite values are accepted (nothing was inserted)"
            ),
            OutputSize { name, got, expected } => {
                write!(f, "{name} has {got} elements, expected {expected}")
            }
            Empty => write!(f, "cannot sample from an empty store; add rows first"),
            NotEnoughRows { requested, available, from } => write!(
                f,
                "requested {requested} rows but {from} holds only {available}"
            ),
            InvalidArgument { name, expected, got } => {
                write!(f, "{name} must be {expected}, got {got}")
            }
            WindowTooLarge { window, rows } => write!(
                f,
                "window of the newest {window} rows is larger than the {rows} rows held; use a window of at most {rows}"
            ),
            UnknownTask { task_id } => write!(f, "task {task_id} has no rows in the store"),
            NotEnoughTasks { requested, available, rows_per_task, contiguous, tasks_held } => {
                let what = if *contiguous {
                    format!("an episode stretch of {rows_per_task} consecutive steps")
                } else {
                    format!("at least {rows_per_task} rows")
                };
                write!(
                    f,
                    "requested {requested} tasks with {what}, but only {available} of the {tasks_held} tasks held qualify"
                )
            }
            NoValidWindow { seq_len, rows } => write!(
                f,
                "no episode in the store has {seq_len} consecutive steps (rows held: {rows}); use a shorter seq_len or add longer episodes with episode_id/step"
            ),
            TooManyHandles { max } => write!(
                f,
                "{max} live handles already have this file-backed store open; close some (each RingBuffer.open takes one)"
            ),
            Contended => write!(
                f,
                "rows were overwritten faster than they could be read, on every retry; use a \
                 larger capacity (or window), fewer concurrent writers or smaller batches (the \
                 call is safe to retry)"
            ),
            SlotBusy { slot, pid, waited_ms } => write!(
                f,
                "slot {slot} is still being written by process {pid} after waiting {:.1} s: \
                 that writer is alive but stopped or stuck (SIGSTOP, a debugger). This add \
                 dropped the rows for its slots and wrote the others. Resume or kill process \
                 {pid} (a dead writer's slots are reclaimed), or raise wait_timeout",
                *waited_ms as f64 / 1000.0
            ),
            Interrupted { slot, pid } => write!(
                f,
                "interrupted while waiting for slot {slot}, held by process {pid}; this add \
                 dropped the rows for the held slots and wrote the others"
            ),
            RowLimit { cursor, rows, limit } => write!(
                f,
                "the store has counted {cursor} rows; adding {rows} would reach the limit of \
                 {limit} rows (row numbers must fit the slot stamps); save what you need and \
                 start a new store"
            ),
            Truncated { path, actual, expected } => write!(
                f,
                "the file-backed store {path} was truncated to {actual} bytes by another \
                 process (it needs {expected}); this handle can no longer use it"
            ),
            BadWeight { task_id, weight } => write!(
                f,
                "task_weights[{task_id}] is {weight}; weights must be finite and >= 0"
            ),
            NoPositiveWeight => write!(
                f,
                "task_weights gives no task a positive weight; give at least one task a weight > 0"
            ),
            SlotOutOfRange { slot, rows } => write!(
                f,
                "slot {slot} is out of range; the store holds {rows} rows, so slots must be in [0, {rows})"
            ),
            NoValidWindowIn { seq_len, within } => write!(
                f,
                "no valid window of {seq_len} consecutive steps of one episode within {within}; use a shorter length or a wider selection"
            ),
        }
    }
}

impl std::error::Error for BufferError {}
