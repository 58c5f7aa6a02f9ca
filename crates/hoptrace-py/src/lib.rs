//! The binding: `tracer._core`. Thin by design (polars' rule): conversions and
//! GIL handling only; every algorithm lives in `hoptrace-core`.

use pyo3::prelude::*;

mod bpf;
mod correlate;
mod decode;
mod drops;
mod ebpf_ring;
mod engine;
mod finish;
mod flow_view;
mod reader;
mod record;
mod report;
mod ring_record;
mod stages;
mod stream;
mod text;
mod tpacket;

/// The core's version (a stale extension shows here: compare with the package's).
#[pyfunction]
fn core_version() -> &'static str {
    hoptrace_core::VERSION
}

/// `OBS_DTYPE` as the core reads it: (name, numpy type, offset) per field, and the row size.
#[pyfunction]
fn obs_layout() -> (Vec<(&'static str, &'static str, usize)>, usize) {
    (
        hoptrace_core::obs::LAYOUT.to_vec(),
        hoptrace_core::obs::ROW_SIZE,
    )
}

/// Panics in the core on purpose: how tests see that a bug in the core reaches the user
/// as one line and exit 1 (tracer/cli.py), never an abort or a traceback.
#[pyfunction]
fn _panic_for_tests(message: &str) {
    panic!("{message}")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A panic becomes pyo3's PanicException, which tracer/cli.py turns into one line; the
    // default hook would first print the panic and a backtrace hint on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(obs_layout, m)?)?;
    bpf::register(m)?;
    correlate::register(m)?;
    decode::register(m)?;
    drops::register(m)?;
    ebpf_ring::register(m)?;
    engine::register(m)?;
    finish::register(m)?;
    reader::register(m)?;
    record::register(m)?;
    stages::register(m)?;
    report::register(m)?;
    ring_record::register(m)?;
    text::register(m)?;
    stream::register(m)?;
    tpacket::register(m)?;
    flow_view::register(m)?;
    Ok(())
}
