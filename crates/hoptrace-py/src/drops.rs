//! The drop reason table (hoptrace-core's drops.rs) for the TUI and the text in Python.

use pyo3::prelude::*;

/// The table of every kernel drop reason: ``name<TAB>kind<TAB>meaning`` lines, ``#``
/// comments (kind: ``loss`` or ``delivered``).
#[pyfunction]
fn drop_reason_table() -> &'static str {
    hoptrace_core::drops::TABLE
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(drop_reason_table, m)?)?;
    Ok(())
}
