//! Thin PyO3 bindings of the `rust_buffer` core crate, built by maturin as
//! `rust_buffer._rust_buffer`. This layer only converts and checks arguments, releases the GIL
//! around copies, and hands gathered `Vec`s to NumPy without a second copy.

mod convert;
mod pool;
mod select;

use convert::{disjoint_outputs, float_rows, meta_arg, out_rows, size, MetaParam, DETACH_BYTES};
use numpy::ndarray::{Array1, ArrayView1, ArrayView2};
use numpy::npyffi::{_PyArray_GET_ITEM_DATA, NPY_ARRAY_WRITEABLE};
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyInterruptedError, PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rust_buffer::persist::PersistError;
use rust_buffer::{
    BufferError, Meta, MetaBatch, Options, Retention, RingBuffer, TaskBuffers, TaskQuery,
    WindowQuery,
};

fn to_py_err(e: BufferError) -> PyErr {
    match e {
        BufferError::Contended => PyRuntimeError::new_err(e.to_string()),
        BufferError::SlotBusy { .. } => PyTimeoutError::new_err(e.to_string()),
        // The signal's own exception (KeyboardInterrupt from Ctrl-C) when one was raised.
        BufferError::Interrupted { .. } => PENDING_SIGNAL
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| PyInterruptedError::new_err(e.to_string())),
        BufferError::Truncated { .. } => PyOSError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn persist_err(e: PersistError) -> PyErr {
    match e {
        PersistError::Io(e) => e.into(),
        PersistError::Store(e) => to_py_err(e),
        e @ PersistError::Cleared { .. } => PyRuntimeError::new_err(e.to_string()),
        e @ (PersistError::Format(_) | PersistError::Destination(_)) => {
            PyValueError::new_err(e.to_string())
        }
    }
}

thread_local! {
    /// The exception a signal handler raised during a wait (re-raised by `to_py_err`).
    static PENDING_SIGNAL: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// The interrupt check of a writer waiting on another's slot (every 20 ms of a long wait):
/// run Python's signal handlers (taking the GIL for a moment); true when one raised (Ctrl-C),
/// keeping its exception.
///
/// A small `add` runs with the GIL held; if it waits on a slot held by a GIL-free `add` of
/// another thread that is itself in this check (waiting for the GIL), neither could move. So
/// the check first lets the GIL go for a moment: whoever waits for it gets a turn.
fn python_interrupted() -> bool {
    Python::attach(|py| {
        py.detach(std::thread::yield_now);
        match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                PENDING_SIGNAL.with(|p| *p.borrow_mut() = Some(e));
                true
            }
        }
    })
}

/// How long a sampler keeps retrying while it reports `Contended` before the error reaches
/// Python: a sampler that keeps meeting rows overwritten under it (a small store or window,
/// many writers) backs off and tries again, so a training loop does not die of it.
const SAMPLE_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// Run a sampler, retrying with back-off (bounded by `SAMPLE_RETRY_BUDGET`) while it reports
/// `Contended`. Pauses release the GIL (so Python writer threads progress) and run Python's
/// signal handlers (so Ctrl-C works).
fn retry_contended<T>(
    py: Python<'_>,
    mut f: impl FnMut() -> Result<T, BufferError>,
) -> PyResult<T> {
    let mut start = None; // the clock is read only once a call has failed
    let mut attempt = 0u32;
    loop {
        match f() {
            Err(BufferError::Contended)
                if start.get_or_insert_with(std::time::Instant::now).elapsed()
                    < SAMPLE_RETRY_BUDGET =>
            {
                py.check_signals()?;
                // Yield first; then sleep 50 us, 100 us, ... up to 5 ms.
                let pause = std::time::Duration::from_micros((50u64 << attempt.min(7)).min(5000));
                py.detach(|| match attempt {
                    0..=3 => std::thread::yield_now(),
                    _ => std::thread::sleep(pause),
                });
                attempt += 1;
            }
            other => return other.map_err(to_py_err),
        }
    }
}

/// A metadata argument, or its default when omitted; `None` is a `TypeError`.
fn meta_or<'py>(
    v: &MetaParam<'py>,
    name: &str,
    rows: usize,
    default: i64,
) -> PyResult<convert::MetaArg<'py>> {
    match v {
        MetaParam::Given(v) if v.is_none() => Err(PyTypeError::new_err(format!(
            "{name}=None is not allowed; omit {name} for its default ({default}), or pass an \
             int or one int per row"
        ))),
        MetaParam::Given(v) => meta_arg(v, name, rows),
        MetaParam::Omitted => Ok(convert::MetaArg::Scalar(default)),
    }
}

/// Run `f` with the GIL released when it copies at least `DETACH_BYTES`.
fn maybe_detach<T: Send, F: Send + FnOnce() -> T>(py: Python<'_>, bytes: usize, f: F) -> T {
    if bytes >= DETACH_BYTES {
        py.detach(f)
    } else {
        f()
    }
}

fn vector<'py>(py: Python<'py>, v: Vec<i64>) -> Bound<'py, PyAny> {
    Array1::from_vec(v).into_pyarray(py).into_any()
}

/// A seed argument: an int in [0, 2**64) (ValueError outside it, TypeError for non-ints).
fn seed_arg(s: &Bound<'_, PyAny>, expected: &str) -> PyResult<u64> {
    s.extract::<u64>().map_err(|_| {
        let msg = format!("seed must be {expected}, got {s}");
        if s.extract::<i128>().is_ok() || s.is_instance_of::<pyo3::types::PyInt>() {
            PyValueError::new_err(msg)
        } else {
            PyTypeError::new_err(msg)
        }
    })
}

/// `"fifo"` or `"reservoir"`.
fn retention_arg(retention: &str) -> PyResult<Retention> {
    match retention {
        "fifo" => Ok(Retention::Fifo),
        "reservoir" => Ok(Retention::Reservoir),
        other => Err(PyValueError::new_err(format!(
            "retention must be 'fifo' or 'reservoir', got {other:?}"
        ))),
    }
}

/// An optional seed argument (None or an int in [0, 2**64)).
fn opt_seed(seed: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match seed {
        Some(s) if !s.is_none() => Some(seed_arg(s, "None or an int in [0, 2**64)")).transpose(),
        _ => Ok(None),
    }
}

/// An optional size argument (None or an int >= 1).
fn opt_size(v: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<usize>> {
    match v {
        Some(v) if !v.is_none() => Ok(Some(size(v, name, 1)?)),
        _ => Ok(None),
    }
}

/// The window samplers' keyword arguments (`task_weights`, `recent`, `seed`), parsed; the
/// weights are owned here and borrowed by [`WindowArgs::query`].
struct WindowArgs {
    weights: Option<Vec<(i64, f64)>>,
    recent: Option<usize>,
    seed: Option<u64>,
}

impl WindowArgs {
    fn parse(
        task_weights: Option<&Bound<'_, PyAny>>,
        recent: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(Self {
            weights: select::task_weights(task_weights)?,
            recent: opt_size(recent, "recent")?,
            seed: opt_seed(seed)?,
        })
    }

    fn query(&self) -> WindowQuery<'_> {
        WindowQuery {
            task_weights: self.weights.as_deref(),
            recent: self.recent,
            seed: self.seed,
        }
    }
}

/// A lock-free ring of float32 `obs`/`target` rows with int64 `task_id`, `episode_id`, `step`.
#[pyclass(frozen, module = "rust_buffer", name = "RingBuffer")]
pub struct PyRingBuffer {
    inner: RingBuffer,
}

impl PyRingBuffer {
    /// The store, after checking that a file-backed store's file was not truncated (where
    /// touching it would raise SIGBUS); every method that reads the store goes through here.
    fn store(&self) -> PyResult<&RingBuffer> {
        self.inner.check_file().map_err(to_py_err)?;
        Ok(&self.inner)
    }

    fn row_bytes(&self) -> usize {
        4 * (self.inner.obs_dim() + self.inner.target_dim())
    }

    /// Run a window sampler for `batch` windows of `len` rows into pooled buffers (GIL
    /// released for large batches) and return `(obs, target, task_ids)` shaped (b, l, dim).
    fn window_tuple<'py, F>(
        &self,
        py: Python<'py>,
        batch: usize,
        len: usize,
        mut sample: F,
    ) -> PyResult<Bound<'py, PyTuple>>
    where
        F: Send + FnMut(&mut [f32], &mut [f32], &mut [i64]) -> Result<(), BufferError>,
    {
        let (d_o, d_t) = (self.inner.obs_dim(), self.inner.target_dim());
        let bl = batch.saturating_mul(len);
        let mut obs = pool::take(bl, d_o)?;
        let mut target = pool::take(bl, d_t)?;
        let mut ids = pool::ids(batch)?;
        retry_contended(py, || {
            maybe_detach(py, bl.saturating_mul(self.row_bytes()), || {
                sample(&mut obs, &mut target, &mut ids)
            })
        })?;
        PyTuple::new(
            py,
            [
                pool::array(py, obs, &[batch, len, d_o])?,
                pool::array(py, target, &[batch, len, d_t])?,
                vector(py, ids),
            ],
        )
    }

    /// Run a uniform gather of `batch` rows into pooled buffers (GIL released for large
    /// batches, or always with `always_detach`) and return `(obs, target)` or `(obs, target, task_id, episode_id, step)`.
    fn gather_tuple<'py, F>(
        &self,
        py: Python<'py>,
        batch: usize,
        with_meta: bool,
        always_detach: bool,
        gather: F,
    ) -> PyResult<Bound<'py, PyTuple>>
    where
        F: Send + FnMut(&mut [f32], &mut [f32], Option<&mut MetaBatch>) -> Result<(), BufferError>,
    {
        let (d_o, d_t) = (self.inner.obs_dim(), self.inner.target_dim());
        // Every uniform sampler needs batch <= len: check before allocating the outputs.
        self.store()?.check_batch(batch).map_err(to_py_err)?;
        let mut obs = pool::take(batch, d_o)?;
        let mut target = pool::take(batch, d_t)?;
        let mut meta = match with_meta {
            true => Some(MetaBatch {
                task_id: pool::ids(batch)?,
                episode_id: pool::ids(batch)?,
                step: pool::ids(batch)?,
            }),
            false => None,
        };
        let bytes = if always_detach {
            usize::MAX
        } else {
            batch * self.row_bytes()
        };
        let mut gather = gather;
        retry_contended(py, || {
            maybe_detach(py, bytes, || gather(&mut obs, &mut target, meta.as_mut()))
        })?;
        let mut items = vec![
            pool::array(py, obs, &[batch, d_o])?,
            pool::array(py, target, &[batch, d_t])?,
        ];
        if let Some(m) = meta {
            items.extend([
                vector(py, m.task_id),
                vector(py, m.episode_id),
                vector(py, m.step),
            ]);
        }
        PyTuple::new(py, items)
    }
}

/// A read-only NumPy view of `rows x cols` values at `ptr`, kept alive by `owner`.
fn view<'py, T: Element>(
    owner: &Bound<'py, PyRingBuffer>,
    ptr: *const T,
    rows: usize,
    cols: Option<usize>,
) -> Bound<'py, PyAny> {
    let container = owner.clone().into_any();
    // SAFETY: `ptr` is a column of the store, `capacity` rows long, allocated once and never
    // moved or freed while the store lives; the array's base (`container`) keeps the store
    // alive. `rows <= capacity`. Values may change under the view (concurrent adds): the
    // view is documented as a window on live memory, and it is made read-only below.
    let array = unsafe {
        match cols {
            Some(c) => {
                let v = ArrayView2::from_shape_ptr((rows, c), ptr);
                PyArray2::borrow_from_array(&v, container).into_any()
            }
            None => {
                let v = ArrayView1::from_shape_ptr(rows, ptr);
                PyArray1::borrow_from_array(&v, container).into_any()
            }
        }
    };
    let untyped = array
        .cast::<numpy::PyUntypedArray>()
        .expect("just created an ndarray");
    // SAFETY: clearing WRITEABLE on an array we just created, as PyArray_CLEARFLAGS does.
    unsafe { (*_PyArray_GET_ITEM_DATA(untyped.as_array_ptr())).flags &= !NPY_ARRAY_WRITEABLE };
    array
}

#[pymethods]
impl PyRingBuffer {
    #[new]
    #[pyo3(signature = (capacity, obs_dim, target_dim, *, seed=None, retention="fifo"))]
    fn new(
        capacity: &Bound<'_, PyAny>,
        obs_dim: &Bound<'_, PyAny>,
        target_dim: &Bound<'_, PyAny>,
        seed: Option<&Bound<'_, PyAny>>,
        retention: &str,
    ) -> PyResult<Self> {
        let capacity = size(capacity, "capacity", 1)?;
        let obs_dim = size(obs_dim, "obs_dim", 1)?;
        let target_dim = size(target_dim, "target_dim", 1)?;
        let retention = retention_arg(retention)?;
        let seed = opt_seed(seed)?;
        let inner =
            RingBuffer::with_options(capacity, obs_dim, target_dim, Options { seed, retention })
                .map_err(to_py_err)?;
        Ok(PyRingBuffer { inner })
    }

    /// Add one row (1-D `obs`, `target`) or a batch (2-D); metadata is a scalar or one int per
    /// row. Anything convertible to float32 is accepted; NaN/inf rejects the whole call.
    #[pyo3(
        signature = (
            obs, target, *,
            task_id=MetaParam::Omitted, episode_id=MetaParam::Omitted, step=MetaParam::Omitted
        ),
        text_signature = "(self, obs, target, *, task_id=0, episode_id=-1, step=-1)"
    )]
    fn add<'py>(
        &self,
        py: Python<'py>,
        obs: &Bound<'py, PyAny>,
        target: &Bound<'py, PyAny>,
        task_id: MetaParam<'py>,
        episode_id: MetaParam<'py>,
        step: MetaParam<'py>,
    ) -> PyResult<()> {
        let o = float_rows(obs, "obs", self.inner.obs_dim())?;
        let t = float_rows(target, "target", self.inner.target_dim())?;
        if o.batched != t.batched {
            return Err(PyValueError::new_err(format!(
                "obs is {}-D but target is {}-D; pass one row as two 1-D arrays or a batch as two 2-D arrays",
                1 + usize::from(o.batched),
                1 + usize::from(t.batched)
            )));
        }
        if o.rows != t.rows {
            return Err(PyValueError::new_err(format!(
                "obs has {} rows but target has {}; they must match",
                o.rows, t.rows
            )));
        }
        let rows = o.rows;
        let task_id = meta_or(&task_id, "task_id", rows, 0)?;
        let episode_id = meta_or(&episode_id, "episode_id", rows, -1)?;
        let step = meta_or(&step, "step", rows, -1)?;
        let meta = Meta {
            task_id: task_id.values(),
            episode_id: episode_id.values(),
            step: step.values(),
        };
        let (ov, tv) = (o.values(), t.values());
        let inner = self.store()?;
        // A wait on another writer's slot runs Python's signal handlers (Ctrl-C works).
        rust_buffer::with_interrupt(python_interrupted, || {
            maybe_detach(py, rows * self.row_bytes(), || inner.add(ov, tv, meta))
        })
        .map_err(to_py_err)?;
        Ok(())
    }

    /// `batch_size` uniform random rows (with replacement) as `(obs, target)`, or
    /// `(obs, target, task_id, episode_id, step)` with `with_meta=True`.
    #[pyo3(signature = (batch_size, *, with_meta=false))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        batch_size: &Bound<'_, PyAny>,
        with_meta: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let b = size(batch_size, "batch_size", 0)?;
        let inner = self.store()?;
        self.gather_tuple(py, b, with_meta, false, |o, t, m| {
            inner.sample_into(o, t, m)
        })
    }

    /// Gather `obs_out.shape[0]` uniform random rows straight into the caller's C-contiguous,
    /// writable float32 arrays `obs_out` (b, obs_dim) and `target_out` (b, target_dim).
    fn sample_into(
        &self,
        py: Python<'_>,
        obs_out: &Bound<'_, PyAny>,
        target_out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (mut o, b) = out_rows(obs_out, "obs_out", self.inner.obs_dim())?;
        let (mut t, bt) = out_rows(target_out, "target_out", self.inner.target_dim())?;
        if b != bt {
            return Err(PyValueError::new_err(format!(
                "obs_out has {b} rows but target_out has {bt}; they must match"
            )));
        }
        // SAFETY: both passed the output checks and `o`/`t` keep them alive for the call;
        // nothing else in this call borrows their data.
        let (os, ts) = unsafe { disjoint_outputs(&mut o, &mut t)? };
        let inner = self.store()?;
        retry_contended(py, || {
            maybe_detach(py, b * self.row_bytes(), || inner.sample_into(os, ts, None))
        })
    }

    /// `(support_obs, support_target, query_obs, query_target, task_ids)`: `n_tasks` distinct
    /// tasks, each with disjoint support (n_support rows) and query (n_query rows) sets;
    /// `contiguous=True` takes one stretch of consecutive steps of one episode per task.
    /// `tasks` restricts the draw to these task ids (a rank's shard); `seed` draws with a
    /// fresh generator seeded with it instead of the store's.
    #[pyo3(signature = (n_tasks, n_support, n_query, *, contiguous=false, tasks=None, seed=None))]
    #[allow(clippy::too_many_arguments)]
    fn sample_tasks<'py>(
        &self,
        py: Python<'py>,
        n_tasks: &Bound<'_, PyAny>,
        n_support: &Bound<'_, PyAny>,
        n_query: &Bound<'_, PyAny>,
        contiguous: bool,
        tasks: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let t = size(n_tasks, "n_tasks", 1)?;
        let s = size(n_support, "n_support", 0)?;
        let q = size(n_query, "n_query", 0)?;
        let subset = match tasks {
            Some(v) if !v.is_none() => Some(select::int_list(v, "tasks")?),
            _ => None,
        };
        let seed = opt_seed(seed)?;
        let inner = self.store()?;
        let (d_o, d_t) = (inner.obs_dim(), inner.target_dim());
        // Distinct tasks with distinct rows: more than the store holds can never be satisfied
        // (checked before allocating, so absurd sizes are a ValueError, not an abort).
        let rows = t.saturating_mul(s.saturating_add(q));
        if rows > inner.len() {
            return Err(PyValueError::new_err(format!(
                "requested {t} tasks x {} rows each but the store holds only {} rows",
                s + q,
                inner.len()
            )));
        }
        let mut so = pool::take(t * s, d_o)?;
        let mut st = pool::take(t * s, d_t)?;
        let mut qo = pool::take(t * q, d_o)?;
        let mut qt = pool::take(t * q, d_t)?;
        let mut ids = pool::ids(t)?;
        retry_contended(py, || {
            maybe_detach(py, t * (s + q) * self.row_bytes(), || {
                let out = TaskBuffers {
                    support_obs: &mut so,
                    support_target: &mut st,
                    query_obs: &mut qo,
                    query_target: &mut qt,
                    task_ids: &mut ids,
                };
                let query = TaskQuery {
                    tasks: subset.as_deref(),
                    seed,
                };
                inner.sample_tasks_query_into(s, q, contiguous, query, out)
            })
        })?;
        PyTuple::new(
            py,
            [
                pool::array(py, so, &[t, s, d_o])?,
                pool::array(py, st, &[t, s, d_t])?,
                pool::array(py, qo, &[t, q, d_o])?,
                pool::array(py, qt, &[t, q, d_t])?,
                vector(py, ids),
            ],
        )
    }

    /// `(obs, target, task_ids)`: `batch_size` windows of `seq_len` consecutive steps of one
    /// episode each, shaped (b, l, obs_dim), (b, l, target_dim), (b,).
    fn sample_sequences<'py>(
        &self,
        py: Python<'py>,
        batch_size: &Bound<'_, PyAny>,
        seq_len: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let b = size(batch_size, "batch_size", 0)?;
        let l = size(seq_len, "seq_len", 1)?;
        let inner = self.store()?;
        inner.check_seq_len(l).map_err(to_py_err)?;
        self.window_tuple(py, b, l, |obs, target, ids| {
            inner.sample_sequences_into(l, obs, target, ids)
        })
    }

    /// `(obs, target, task_ids)`: `batch_size` windows of `length` consecutive steps of one
    /// episode, shaped (b, l, obs_dim), (b, l, target_dim), (b,). Uniform over all valid
    /// windows, or: `task_weights` (dict task id -> weight) draws a task by weight among the
    /// given tasks holding a valid window, then a window of it uniformly; `recent` keeps only
    /// windows within the newest `recent` rows; `seed` draws with a fresh generator seeded
    /// with it instead of the store's.
    #[pyo3(signature = (batch_size, length, *, task_weights=None, recent=None, seed=None))]
    fn sample_windows<'py>(
        &self,
        py: Python<'py>,
        batch_size: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
        task_weights: Option<&Bound<'_, PyAny>>,
        recent: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let b = size(batch_size, "batch_size", 0)?;
        let l = size(length, "length", 1)?;
        let args = WindowArgs::parse(task_weights, recent, seed)?;
        let inner = self.store()?;
        let query = args.query();
        inner.check_windows(l, &query).map_err(to_py_err)?;
        self.window_tuple(py, b, l, |obs, target, ids| {
            inner.sample_windows_into(l, query, obs, target, ids)
        })
    }

    /// Like `sample_windows`, into the caller's C-contiguous, writable float32 arrays
    /// `obs_out` (b, l, obs_dim) and `target_out` (b, l, target_dim), with the GIL released;
    /// returns task_ids (b,).
    #[pyo3(signature = (obs_out, target_out, length, *, task_weights=None, recent=None, seed=None))]
    #[allow(clippy::too_many_arguments)]
    fn sample_windows_into<'py>(
        &self,
        py: Python<'py>,
        obs_out: &Bound<'_, PyAny>,
        target_out: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
        task_weights: Option<&Bound<'_, PyAny>>,
        recent: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let l = size(length, "length", 1)?;
        let (mut o, b, lo) = select::out_windows(obs_out, "obs_out", self.inner.obs_dim())?;
        let (mut t, bt, lt) =
            select::out_windows(target_out, "target_out", self.inner.target_dim())?;
        if (b, lo) != (bt, l) || lt != l {
            return Err(PyValueError::new_err(format!(
                "obs_out is ({b}, {lo}, ...) and target_out is ({bt}, {lt}, ...); both must be (batch_size, length={l}, dim)"
            )));
        }
        let args = WindowArgs::parse(task_weights, recent, seed)?;
        // SAFETY: both passed the output checks and `o`/`t` keep them alive for the call;
        // nothing else in this call borrows their data.
        let (os, ts) = unsafe { disjoint_outputs(&mut o, &mut t)? };
        let mut ids = pool::ids(b)?;
        let inner = self.store()?;
        let query = args.query();
        retry_contended(py, || {
            py.detach(|| inner.sample_windows_into(l, query, &mut *os, &mut *ts, &mut ids))
        })?;
        Ok(vector(py, ids))
    }

    /// Valid windows of `length` rows held per task id (tasks with none left out): what
    /// `sample_windows` draws among.
    fn window_counts<'py>(
        &self,
        py: Python<'py>,
        length: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let l = size(length, "length", 1)?;
        let inner = self.store()?;
        let counts = py.detach(|| inner.window_counts(l)).map_err(to_py_err)?;
        let d = PyDict::new(py);
        for (t, n) in counts {
            d.set_item(t, n)?;
        }
        Ok(d)
    }

    /// `(obs, target, valid)`: for each slot in `anchors` (1-D ints in [0, len)), the window
    /// of `length` rows ending at it if valid, else the one starting at it, shaped
    /// (k, l, obs_dim), (k, l, target_dim); `valid` (k,) bool is False where neither is
    /// valid (those windows are zero-filled).
    fn windows_at<'py>(
        &self,
        py: Python<'py>,
        anchors: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let anchors = select::int_list(anchors, "anchors")?;
        let l = size(length, "length", 1)?;
        let inner = self.store()?;
        let (d_o, d_t) = (inner.obs_dim(), inner.target_dim());
        let k = anchors.len();
        let kl = k.saturating_mul(l);
        let mut obs = pool::take(kl, d_o)?;
        let mut target = pool::take(kl, d_t)?;
        let mut valid = pool::zeros::<bool>(k)
            .map_err(|_| PyValueError::new_err("cannot allocate the output; pass fewer anchors"))?;
        retry_contended(py, || {
            maybe_detach(py, kl.saturating_mul(self.row_bytes()), || {
                inner.windows_at_into(&anchors, l, &mut obs, &mut target, &mut valid)
            })
        })?;
        PyTuple::new(
            py,
            [
                pool::array(py, obs, &[k, l, d_o])?,
                pool::array(py, target, &[k, l, d_t])?,
                Array1::from_vec(valid).into_pyarray(py).into_any(),
            ],
        )
    }

    /// `(obs, target)`: the rows held in the slots `rows` (1-D ints in [0, len)), shaped
    /// (k, obs_dim), (k, target_dim), each copied under its stamp (never torn).
    fn gather<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let slots = select::int_list(rows, "rows")?;
        let inner = self.store()?;
        let (d_o, d_t) = (inner.obs_dim(), inner.target_dim());
        let k = slots.len();
        let mut obs = pool::take(k, d_o)?;
        let mut target = pool::take(k, d_t)?;
        retry_contended(py, || {
            maybe_detach(py, k.saturating_mul(self.row_bytes()), || {
                inner.gather_into(&slots, &mut obs, &mut target)
            })
        })?;
        PyTuple::new(
            py,
            [
                pool::array(py, obs, &[k, d_o])?,
                pool::array(py, target, &[k, d_t])?,
            ],
        )
    }

    /// Uniform rows from the newest `window` rows added.
    #[pyo3(signature = (batch_size, window, *, with_meta=false))]
    fn sample_recent<'py>(
        &self,
        py: Python<'py>,
        batch_size: &Bound<'_, PyAny>,
        window: &Bound<'_, PyAny>,
        with_meta: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let b = size(batch_size, "batch_size", 0)?;
        let w = size(window, "window", 1)?;
        let inner = self.store()?;
        self.gather_tuple(py, b, with_meta, false, |o, t, m| {
            inner.sample_recent_into(w, o, t, m)
        })
    }

    /// Uniform rows of one task (ValueError if the task holds none).
    #[pyo3(signature = (task_id, batch_size, *, with_meta=false))]
    fn sample_task_rows<'py>(
        &self,
        py: Python<'py>,
        task_id: &Bound<'_, PyAny>,
        batch_size: &Bound<'_, PyAny>,
        with_meta: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let task_id = convert::int64(task_id, "task_id")?;
        let b = size(batch_size, "batch_size", 0)?;
        let inner = self.store()?;
        // Always without the GIL: finding the task's rows scans the task_id column.
        self.gather_tuple(py, b, with_meta, true, |o, t, m| {
            inner.sample_task_rows_into(task_id, o, t, m)
        })
    }

    /// Rows currently held per task id.
    fn task_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.store()?;
        let counts = py.detach(|| inner.task_counts());
        let d = PyDict::new(py);
        for (t, n) in counts {
            d.set_item(t, n)?;
        }
        Ok(d)
    }

    /// Zero-copy read-only view of the obs column: (len, obs_dim) float32, slot order.
    fn obs_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let s = slf.get().store()?;
        Ok(view(slf, s.obs_ptr(), s.len(), Some(s.obs_dim())))
    }

    /// Zero-copy read-only view of the target column: (len, target_dim) float32.
    fn target_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let s = slf.get().store()?;
        Ok(view(slf, s.target_ptr(), s.len(), Some(s.target_dim())))
    }

    /// Zero-copy read-only view of the task_id column: (len,) int64.
    fn task_id_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let s = slf.get().store()?;
        Ok(view(slf, s.task_id_ptr(), s.len(), None))
    }

    /// Zero-copy read-only view of the episode_id column: (len,) int64.
    fn episode_id_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let s = slf.get().store()?;
        Ok(view(slf, s.episode_id_ptr(), s.len(), None))
    }

    /// Zero-copy read-only view of the step column: (len,) int64.
    fn step_view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let s = slf.get().store()?;
        Ok(view(slf, s.step_ptr(), s.len(), None))
    }

    /// Forget every row (total_added keeps counting).
    fn clear(&self) -> PyResult<()> {
        self.store()?.clear();
        Ok(())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.store()?.len())
    }

    /// Maximum number of rows.
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Floats per obs row.
    #[getter]
    fn obs_dim(&self) -> usize {
        self.inner.obs_dim()
    }

    /// Floats per target row.
    #[getter]
    fn target_dim(&self) -> usize {
        self.inner.target_dim()
    }

    /// Rows ever added since creation (not reset by clear).
    #[getter]
    fn total_added(&self) -> PyResult<u64> {
        Ok(self.store()?.total_added())
    }

    /// Seconds an `add` waits on a slot another writer is still writing before raising
    /// TimeoutError (default 10). Only a stopped or stuck writer holds a slot that long; a
    /// dead writer's slots are reclaimed instead. Per handle.
    #[getter]
    fn wait_timeout(&self) -> f64 {
        self.inner.wait_timeout().as_secs_f64()
    }

    #[setter]
    fn set_wait_timeout(&self, seconds: f64) -> PyResult<()> {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "wait_timeout must be a finite number of seconds >= 0, got {seconds}"
            )));
        }
        self.inner
            .set_wait_timeout(std::time::Duration::from_secs_f64(seconds.min(1e9)));
        Ok(())
    }

    /// "fifo" or "reservoir".
    #[getter]
    fn retention(&self) -> &'static str {
        match self.inner.retention() {
            Retention::Fifo => "fifo",
            Retention::Reservoir => "reservoir",
        }
    }

    /// The seed of the samplers (drawn from the OS when constructed with seed=None).
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed()
    }

    /// Restart the samplers' random streams from `seed` (an int in [0, 2**64)): the next
    /// sampling calls draw what a fresh store with this seed and the same rows would draw.
    /// Rows and counters are untouched.
    fn reseed(&self, seed: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.reseed(seed_arg(seed, "an int in [0, 2**64)")?);
        Ok(())
    }

    /// Save the store to `path` (str or os.PathLike) in the documented snapshot format:
    /// written to a temporary file beside it, fsynced and renamed over `path`, so a crash
    /// leaves the old file or the new one. Safe while other threads add or sample.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = self.store()?;
        py.detach(|| inner.save_file(&path))
            .map(|_| ())
            .map_err(persist_err)?;
        // The loaded copy builds its window index from the rows held; so does this store
        // from now on, so both draw the same windows.
        self.inner.forget_window_index();
        Ok(())
    }

    /// Load a store saved by `save`: the same rows, metadata, counters and sampler state
    /// (the next samples equal those the saved store would have drawn). A damaged, truncated
    /// or foreign file raises ValueError; a missing one, FileNotFoundError.
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<PyRingBuffer> {
        let inner = py
            .detach(|| RingBuffer::load_file(&path))
            .map_err(persist_err)?;
        Ok(PyRingBuffer { inner })
    }

    /// Create a file-backed store at `path` (which must not exist): the store lives in a
    /// memory-mapped file that other processes open with `RingBuffer.open(path)` and then
    /// add to and sample from concurrently, lock-free. The file is sparse: its pages use disk
    /// and memory only once written, so stores larger than RAM work.
    #[staticmethod]
    #[pyo3(signature = (path, capacity, obs_dim, target_dim, *, seed=None, retention="fifo"))]
    fn create(
        py: Python<'_>,
        path: std::path::PathBuf,
        capacity: &Bound<'_, PyAny>,
        obs_dim: &Bound<'_, PyAny>,
        target_dim: &Bound<'_, PyAny>,
        seed: Option<&Bound<'_, PyAny>>,
        retention: &str,
    ) -> PyResult<PyRingBuffer> {
        let capacity = size(capacity, "capacity", 1)?;
        let obs_dim = size(obs_dim, "obs_dim", 1)?;
        let target_dim = size(target_dim, "target_dim", 1)?;
        let options = Options {
            seed: opt_seed(seed)?,
            retention: retention_arg(retention)?,
        };
        let inner = py
            .detach(|| RingBuffer::create_file(&path, capacity, obs_dim, target_dim, options))
            .map_err(persist_err)?;
        Ok(PyRingBuffer { inner })
    }

    /// Open a file-backed store made by `RingBuffer.create`, from this or another process.
    /// `seed` seeds this handle's samplers (None: the seed given to `create`). Slots left
    /// half-written by a writer process that died are reclaimed on open.
    #[staticmethod]
    #[pyo3(signature = (path, *, seed=None))]
    fn open(
        py: Python<'_>,
        path: std::path::PathBuf,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyRingBuffer> {
        let seed = opt_seed(seed)?;
        let inner = py
            .detach(|| RingBuffer::open_file(&path, seed))
            .map_err(persist_err)?;
        Ok(PyRingBuffer { inner })
    }

    /// The file behind a file-backed store, or None for an in-memory store.
    #[getter]
    fn path(&self) -> Option<std::path::PathBuf> {
        self.inner.path().map(|p| p.to_path_buf())
    }

    /// Reset slots left half-written by writer processes that died (file-backed stores;
    /// `open` does this too). Returns how many were reset.
    fn reap_dead_writers(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.store()?;
        Ok(py.detach(|| inner.reap_dead_writers()))
    }

    fn __repr__(&self) -> PyResult<String> {
        let s = self.store()?;
        Ok(format!(
            "RingBuffer(len={}, capacity={}, obs_dim={}, target_dim={}, retention='{}', total_added={})",
            s.len(),
            s.capacity(),
            s.obs_dim(),
            s.target_dim(),
            self.retention(),
            s.total_added()
        ))
    }
}

#[pymodule]
mod _rust_buffer {
    #[pymodule_export]
    use super::PyRingBuffer;

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
