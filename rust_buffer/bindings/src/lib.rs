use pyo3::prelude::*;

#[pymodule]
mod _rust_buffer {
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
