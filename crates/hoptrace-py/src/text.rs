//! `tracer._core.term_safe`: the core's escaping of untrusted names for a terminal
//! (hoptrace_core::safe_text), for the differential tests against tracer/safe_text.py.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// ``term_safe`` of a name given as "surrogatepass" UTF-8 (``s.encode("utf-8",
/// "surrogatepass")``, how names reach the core), as UTF-8 bytes.
#[pyfunction]
fn term_safe<'py>(py: Python<'py>, name: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &hoptrace_core::safe_text::term_safe_wtf8(name))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(term_safe, m)?)
}
