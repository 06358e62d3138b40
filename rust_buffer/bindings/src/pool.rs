//! Output arrays backed by recycled buffers.
//!
//! A sampled batch is gathered by Rust into a `Vec<f32>` that NumPy then owns without a copy.
//! Fresh allocations of a megabyte or more come straight from the kernel (mmap) and are given
//! back when freed, so every such call would page-fault its whole output in again (about half
//! the time of a 4096-row sample on this machine). Instead, the array's base object is a
//! `PooledBuffer` that returns its `Vec` to a small free list when NumPy releases it; the next
//! call of a similar size reuses the warm pages.

use std::sync::Mutex;

use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Buffers smaller than this are not kept (malloc serves them well).
const MIN_POOLED_BYTES: usize = 64 * 1024;
/// Buffers larger than this are not kept (bounded memory).
const MAX_POOLED_BYTES: usize = 64 * 1024 * 1024;
/// Free buffers kept at most.
const MAX_FREE: usize = 16;

static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A `Vec<f32>` of `rows x cols` initialized values, recycled when one of a similar size is
/// free. Its contents are stale values: callers overwrite every element. An absurd size is a
/// `ValueError`, not an abort.
pub(crate) fn take(rows: usize, cols: usize) -> PyResult<Vec<f32>> {
    let n = rows
        .checked_mul(cols)
        .filter(|&n| n <= isize::MAX as usize / 4)
        .ok_or_else(|| too_large(rows))?;
    if n * 4 >= MIN_POOLED_BYTES {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = free.iter().position(|v| v.len() >= n && v.len() <= 2 * n) {
            let mut v = free.swap_remove(i);
            v.truncate(n);
            return Ok(v);
        }
    }
    zeros(n).map_err(|_| too_large(rows))
}

/// `n` zeros, or an error when they cannot be allocated.
pub(crate) fn zeros<T: Clone + Default>(
    n: usize,
) -> Result<Vec<T>, std::collections::TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize(n, T::default());
    Ok(v)
}

fn too_large(rows: usize) -> PyErr {
    PyValueError::new_err(format!(
        "cannot allocate an output of {rows} rows; request fewer"
    ))
}

/// `n` int64 zeros for metadata outputs (a `ValueError` when they cannot be allocated).
pub(crate) fn ids(n: usize) -> PyResult<Vec<i64>> {
    zeros(n).map_err(|_| too_large(n))
}

/// Hand a buffer back for reuse.
fn give_back(v: Vec<f32>) {
    let bytes = v.capacity() * 4;
    if !(MIN_POOLED_BYTES..=MAX_POOLED_BYTES).contains(&bytes) {
        return;
    }
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    if free.len() < MAX_FREE {
        // Keep the length at the capacity so a later `take` can truncate to any smaller size.
        let mut v = v;
        let cap = v.capacity();
        v.resize(cap, 0.0);
        free.push(v);
    }
}

/// The base object of a sampled array: owns its memory and recycles it on release.
#[pyclass(frozen, module = "rust_buffer")]
pub struct PooledBuffer {
    data: Vec<f32>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.data));
    }
}

/// A NumPy array of `shape` over `data` (no copy); writable, owned through a `PooledBuffer`.
pub(crate) fn array<'py>(
    py: Python<'py>,
    data: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    let mut data = data;
    // The heap buffer does not move when the Vec moves into the Python object.
    let ptr = data.as_mut_ptr();
    let owner = Bound::new(py, PooledBuffer { data })?;
    // SAFETY: `ptr` points at `shape.product()` initialized floats owned by `owner`; the Vec
    // is never resized or freed while `owner` lives, and the array keeps `owner` alive as its
    // base. The array is the only handle to this memory.
    let arr = unsafe {
        let view = ArrayViewD::from_shape_ptr(IxDyn(shape), ptr.cast_const());
        PyArrayDyn::<f32>::borrow_from_array(&view, owner.into_any())
    };
    Ok(arr.into_any())
}
