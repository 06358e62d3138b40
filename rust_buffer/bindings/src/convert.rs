//! Python -> Rust argument conversion and checks. Every refusal is a `TypeError` (wrong kind
//! of object) or a `ValueError` (right kind, wrong size or value) that says what was expected.

use numpy::npyffi::{_PyArray_GET_ITEM_DATA, NPY_ARRAY_ALIGNED, NPY_ARRAY_WRITEABLE};
use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt};
use rust_buffer::MetaValues;

/// Copies at or above this many bytes run with the GIL released; below it, releasing and
/// re-taking the GIL (~0.1-0.2 us) would cost more than the copy itself.
pub(crate) const DETACH_BYTES: usize = 8 * 1024;

static REQUIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(crate) fn has_flags(arr: &Bound<'_, PyUntypedArray>, flags: i32) -> bool {
    // SAFETY: `arr` is a live ndarray; reading its flags field is what PyArray_FLAGS does.
    unsafe { (*_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).flags & flags == flags }
}

/// A size argument: an int that is at least `min`. Non-ints are a `TypeError`; ints out of
/// range (negative, or beyond 2**63) a `ValueError`.
pub(crate) fn size(obj: &Bound<'_, PyAny>, name: &str, min: i64) -> PyResult<usize> {
    let value = match obj.extract::<i64>() {
        Ok(v) => v,
        Err(_) if obj.call_method0("__index__").is_ok() => {
            return Err(PyValueError::new_err(format!(
                "{name} is too large: {obj} (expected an int below 2**63)"
            )))
        }
        Err(_) => {
            let t = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(PyTypeError::new_err(format!(
                "{name} must be an int, got {t}"
            )));
        }
    };
    if value < min {
        let what = if min == 0 {
            "a non-negative int"
        } else {
            "a positive int"
        };
        return Err(PyValueError::new_err(format!(
            "{name} must be {what}, got {value}"
        )));
    }
    Ok(value as usize)
}

/// One int64 value (`TypeError` for non-ints, `ValueError` outside the int64 range).
pub(crate) fn int64(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    obj.extract::<i64>().map_err(|_| {
        if obj.call_method0("__index__").is_ok() {
            PyValueError::new_err(format!("{name} value {obj} is outside the int64 range"))
        } else {
            let t = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!("{name} must be an int, got {t}"))
        }
    })
}

/// Rows of one float column given to `add`, as a C-contiguous, aligned float32 array.
pub(crate) struct FloatRows<'py> {
    pub(crate) array: Bound<'py, PyArrayDyn<f32>>,
    pub(crate) rows: usize,
    pub(crate) batched: bool,
}

impl FloatRows<'_> {
    /// The values, row-major.
    pub(crate) fn values(&self) -> &[f32] {
        // SAFETY: the array is C-contiguous and aligned (checked or produced by np.require) and
        // kept alive by `self`. Like NumPy's own GIL-free loops, we read it without a borrow
        // flag: a caller mutating it from another thread at the same time gets unspecified rows.
        unsafe { std::slice::from_raw_parts(self.array.data(), self.array.len()) }
    }
}

/// Accept anything convertible to float32 (lists, float64, strided arrays) as one row
/// (1-D) or a batch (2-D) of `dim` columns. float32 C-contiguous arrays are used in place.
pub(crate) fn float_rows<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: usize,
) -> PyResult<FloatRows<'py>> {
    let py = obj.py();
    let array = match obj.cast::<PyArrayDyn<f32>>() {
        Ok(a) if has_flags(a.as_untyped(), NPY_ARRAY_ALIGNED) && a.is_c_contiguous() => a.clone(),
        _ => {
            reject_none(obj, name)?;
            let require = REQUIRE.import(py, "numpy", "require")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("dtype", "float32")?;
            kwargs.set_item("requirements", "CA")?;
            let converted = require.call((obj,), Some(&kwargs)).map_err(|e| {
                PyTypeError::new_err(format!(
                    "{name} must be an array-like of numbers convertible to float32: {}",
                    e.value(py)
                ))
            })?;
            converted.cast_into::<PyArrayDyn<f32>>().map_err(|_| {
                PyTypeError::new_err(format!("{name} could not be converted to a float32 array"))
            })?
        }
    };
    let shape = array.shape().to_vec();
    let (rows, cols, batched) = match shape.as_slice() {
        [c] => (1, *c, false),
        [r, c] => (*r, *c, true),
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name} must be one row (1-D, {dim} values) or a batch (2-D, n x {dim}), got shape {shape:?}"
            )))
        }
    };
    if cols != dim {
        return Err(PyValueError::new_err(format!(
            "{name} has {cols} columns, store expects {dim}"
        )));
    }
    Ok(FloatRows {
        array,
        rows,
        batched,
    })
}

/// NumPy turns `None` into NaN when converting an object array to float: report it as what
/// it is. Only object arrays (and lists holding non-numbers) are scanned, element by element.
fn reject_none(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
    let py = obj.py();
    let Ok(arr) = ASARRAY.import(py, "numpy", "asarray")?.call1((obj,)) else {
        return Ok(()); // not array-like: the conversion below reports it
    };
    let Ok(arr) = arr.cast_into::<PyUntypedArray>() else {
        return Ok(());
    };
    if arr.dtype().kind() != b'O' {
        return Ok(());
    }
    let shape = arr.shape().to_vec();
    for (i, item) in arr.call_method0("ravel")?.try_iter()?.enumerate() {
        if item?.is_none() {
            let at = match shape.as_slice() {
                [_, c] if *c > 0 => format!("[{}, {}]", i / c, i % c),
                _ => format!("[{i}]"),
            };
            return Err(PyTypeError::new_err(format!(
                "{name}{at} is None, which is not a number; {name} must hold numbers"
            )));
        }
    }
    Ok(())
}

/// A metadata keyword of `add`: omitted (the default applies) or given (`None` included, so
/// that `meta_or` can refuse it by name instead of letting it mean the default).
pub(crate) enum MetaParam<'py> {
    Omitted,
    Given(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for MetaParam<'py> {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(MetaParam::Given(obj.to_owned()))
    }
}

/// Per-row metadata (or a scalar) for `add`.
pub(crate) enum MetaArg<'py> {
    Scalar(i64),
    PerRow(Bound<'py, PyArrayDyn<i64>>),
}

impl MetaArg<'_> {
    pub(crate) fn values(&self) -> MetaValues<'_> {
        match self {
            MetaArg::Scalar(v) => MetaValues::Scalar(*v),
            // SAFETY: a C-contiguous aligned int64 array produced by np.require, kept alive by
            // `self`; read without a borrow flag like the float inputs.
            MetaArg::PerRow(a) => {
                MetaValues::PerRow(unsafe { std::slice::from_raw_parts(a.data(), a.len()) })
            }
        }
    }
}

/// An int, or a 1-D sequence of ints with one value per row.
pub(crate) fn meta_arg<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    rows: usize,
) -> PyResult<MetaArg<'py>> {
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(MetaArg::Scalar(v));
    }
    if obj.is_instance_of::<PyInt>() {
        return Err(PyValueError::new_err(format!(
            "{name} value {obj} is outside the int64 range"
        )));
    }
    let py = obj.py();
    let type_name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let bad_type = |what: String| {
        PyTypeError::new_err(format!(
            "{name} must be an int or a 1-D sequence of ints (one per row), got {what}"
        ))
    };
    let asarray = ASARRAY.import(py, "numpy", "asarray")?;
    let arr = asarray
        .call1((obj,))
        .map_err(|_| bad_type(type_name.clone()))?;
    let arr = arr
        .cast_into::<PyUntypedArray>()
        .map_err(|_| bad_type(type_name.clone()))?;
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' && kind != b'b' {
        return Err(bad_type(format!("{type_name} of dtype {}", arr.dtype())));
    }
    match arr.ndim() {
        0 => Ok(MetaArg::Scalar(arr.call_method0("item")?.extract::<i64>()?)),
        1 if arr.len() != rows => Err(PyValueError::new_err(format!(
            "{name} has {} values, expected a scalar or one value per row ({rows})",
            arr.len()
        ))),
        1 => {
            if kind == b'u' && arr.len() > 0 {
                let max: u64 = arr.call_method0("max")?.extract()?;
                if max > i64::MAX as u64 {
                    return Err(PyValueError::new_err(format!(
                        "{name} value {max} is outside the int64 range"
                    )));
                }
            }
            let require = REQUIRE.import(py, "numpy", "require")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("dtype", "int64")?;
            kwargs.set_item("requirements", "CA")?;
            let a = require.call((arr,), Some(&kwargs))?;
            Ok(MetaArg::PerRow(a.cast_into::<PyArrayDyn<i64>>()?))
        }
        n => Err(PyValueError::new_err(format!(
            "{name} must be a scalar or 1-D (one value per row), got a {n}-D array"
        ))),
    }
}

/// The caller's `obs_out` and `target_out` arrays as mutable slices, refused when their
/// memory overlaps (the sampler writes both at once).
///
/// # Safety
/// Both arrays must have passed `out_rows`/`out_windows` (C-contiguous, aligned, writable),
/// and nothing else may borrow their data while the slices live (the `&mut` handles only
/// tie the slices' lifetime to them; numpy arrays are shared objects). Like NumPy's own GIL-free
/// loops, other Python threads touching them meanwhile see unspecified values.
pub(crate) unsafe fn disjoint_outputs<'a>(
    o: &'a mut Bound<'_, PyArrayDyn<f32>>,
    t: &'a mut Bound<'_, PyArrayDyn<f32>>,
) -> PyResult<(&'a mut [f32], &'a mut [f32])> {
    let (op, tp) = (o.data(), t.data());
    let (ol, tl) = (o.len(), t.len());
    let (o_end, t_end) = (op.wrapping_add(ol) as usize, tp.wrapping_add(tl) as usize);
    if ol > 0 && tl > 0 && (op as usize) < t_end && (tp as usize) < o_end {
        return Err(PyValueError::new_err(
            "obs_out and target_out overlap; pass separate arrays",
        ));
    }
    // SAFETY: the caller's contract above; the two ranges were just checked to be disjoint.
    unsafe {
        Ok((
            std::slice::from_raw_parts_mut(op, ol),
            std::slice::from_raw_parts_mut(tp, tl),
        ))
    }
}

/// A caller-provided output array: `shape.len()` dims ending in `dim` columns (the error
/// names the leading ones as `lead`), float32, C-contiguous, aligned, writable. Returns the
/// array and its shape.
pub(crate) fn out_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    lead: &str,
    dim: usize,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, Vec<usize>)> {
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a numpy.ndarray of float32 (for a torch tensor pass tensor.numpy()), got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    let array = untyped.cast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} has dtype {}, expected float32",
            untyped.dtype()
        ))
    })?;
    let shape = untyped.shape().to_vec();
    if shape.len() != ndim || shape[ndim - 1] != dim {
        return Err(PyValueError::new_err(format!(
            "{name} has shape {shape:?}, expected ({lead}, {dim})"
        )));
    }
    if !untyped.is_c_contiguous() || !has_flags(untyped, NPY_ARRAY_ALIGNED) {
        return Err(PyValueError::new_err(format!(
            "{name} must be C-contiguous and aligned (use np.ascontiguousarray or a fresh torch.empty)"
        )));
    }
    if !has_flags(untyped, NPY_ARRAY_WRITEABLE) {
        return Err(PyValueError::new_err(format!(
            "{name} is read-only; pass a writable array"
        )));
    }
    Ok((array.clone(), shape))
}

/// A caller-provided row output `(b, dim)` (see `out_array`). Returns the array and `b`.
pub(crate) fn out_rows<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: usize,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, usize)> {
    let (array, shape) = out_array(obj, name, 2, "batch_size", dim)?;
    Ok((array, shape[0]))
}
