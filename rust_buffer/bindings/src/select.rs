//! Arguments of the window samplers: task weights, slot lists, task subsets and 3-D output
//! arrays. Every refusal is a `TypeError` (wrong kind of object) or a `ValueError` (right kind,
//! wrong size or value) that says what was expected.

use numpy::{PyArrayDescrMethods, PyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt};

use crate::convert::{int64, out_array};

static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// `task_weights`: None, or a dict mapping int task ids to real weights.
pub(crate) fn task_weights(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<(i64, f64)>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let dict = obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "task_weights must be a dict mapping task id (int) to weight (float), got {}",
            type_name(obj)
        ))
    })?;
    let mut out = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let task = int64(&k, "task_weights key")?;
        let is_real = v.is_instance_of::<PyFloat>() || v.is_instance_of::<PyInt>();
        let w = v
            .extract::<f64>()
            .ok()
            .filter(|_| is_real || v.hasattr("__float__").unwrap_or(false))
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "task_weights[{task}] must be a real number, got {}",
                    type_name(&v)
                ))
            })?;
        out.push((task, w));
    }
    Ok(Some(out))
}

/// A 1-D array-like of ints (slot indices or task ids) as int64 values.
pub(crate) fn int_list(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<i64>> {
    let py = obj.py();
    let bad = |what: String| {
        PyTypeError::new_err(format!(
            "{name} must be a 1-D sequence or array of ints, got {what}"
        ))
    };
    let arr = ASARRAY
        .import(py, "numpy", "asarray")?
        .call1((obj,))
        .map_err(|_| bad(type_name(obj)))?;
    let arr = arr
        .cast_into::<PyUntypedArray>()
        .map_err(|_| bad(type_name(obj)))?;
    let kind = arr.dtype().kind();
    // An empty list converts to float64: accept it as no ints.
    let empty = arr.len() == 0;
    if kind != b'i' && kind != b'u' && !empty {
        return Err(bad(format!("{} of dtype {}", type_name(obj), arr.dtype())));
    }
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be 1-D, got a {}-D array",
            arr.ndim()
        )));
    }
    if empty {
        return Ok(Vec::new());
    }
    let list = arr.call_method0("tolist")?;
    list.extract::<Vec<i64>>()
        .map_err(|_| PyValueError::new_err(format!("{name} holds a value outside the int64 range")))
}

/// A caller-provided window output `(b, l, dim)` (see `convert::out_array`). Returns the
/// array, `b` and `l`.
pub(crate) fn out_windows<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: usize,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, usize, usize)> {
    let (array, shape) = out_array(obj, name, 3, "batch_size, length", dim)?;
    Ok((array, shape[0], shape[1]))
}
