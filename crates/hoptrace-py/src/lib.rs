//! The binding: `tracer._core`. Thin by design (polars' rule): conversions and
//! GIL handling only; every algorithm lives in `hoptrace-core`.

use pyo3::prelude::*;

/// The core's version (a stale extension shows here: compare with the package's).
#[pyfunction]
fn core_version() -> &'static str {
    hoptrace_core::VERSION
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    Ok(())
}
