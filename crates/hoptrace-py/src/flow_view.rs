//! `tracer._core.FlowView`: the per-flow aggregates of a `Stream`'s shown paths
//! (hoptrace_core::flow_view), read by Python as one small table per refresh.
//!
//! Attached to a stream, the view hears of every path the stream shows, in Rust; Python asks
//! for a snapshot a few times a second, from the thread that feeds the stream, and gets the
//! busiest flows as a float64 array of figures and one bytes object of texts with offsets.

use std::sync::{Arc, Mutex};

use hoptrace_core::flow_view::{FlowTable, FlowView, FlowViewSink};
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::stream::Stream;

/// Figures per row of a snapshot (its float64 array reshapes to `(-1, COLUMNS)`).
const COLUMNS: usize = 8;

/// Texts per row of a snapshot: flow, NAT, drops.
const TEXTS: usize = 3;

/// ``FlowView(stream, *, window_ns, now_ns)``: every path ``stream`` shows from now on is
/// added to per-flow aggregates over the last ``window_ns`` of the caller's clock (``now_ns``
/// is its reading now: ``time.monotonic_ns()``).
#[pyclass(module = "tracer._core", name = "FlowView")]
pub struct PyFlowView {
    view: Arc<Mutex<FlowView>>,
}

type Snapshot<'py> = (
    u64,
    u64,
    u64,
    u64,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyBytes>,
    Bound<'py, PyArray1<u64>>,
);

#[pymethods]
impl PyFlowView {
    #[new]
    #[pyo3(signature = (stream, *, window_ns, now_ns))]
    fn new(stream: &Bound<'_, Stream>, window_ns: u64, now_ns: u64) -> Self {
        let view = Arc::new(Mutex::new(FlowView::new(window_ns, now_ns)));
        stream
            .borrow_mut()
            .attach_view(FlowViewSink(Arc::clone(&view)));
        PyFlowView { view }
    }

    /// The busiest ``limit`` flows over the window as of ``now_ns``; what arrived since the
    /// last snapshot becomes the window's newest bucket. Returns ``(span_ns, paths, bytes,
    /// flows, figures, texts, offsets)``: the window's span, its paths and bytes and flows
    /// (all of them), and per row (busiest first) ``figures`` (float64, reshape to ``(-1,
    /// 8)``: paths, bytes, paths/s, bytes/s, timed paths, p50 ns, p99 ns, drops; NaN for a
    /// percentile without a timed path) and three texts (flow, NAT, drops; "surrogatepass"
    /// UTF-8), text ``k`` of row ``r`` being ``texts[offsets[3r+k]:offsets[3r+k+1]]``. The work
    /// runs without the GIL.
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        stream: PyRef<'py, Stream>,
        now_ns: u64,
        limit: usize,
    ) -> Snapshot<'py> {
        let labels = stream.labels();
        let view = &self.view;
        // Merging the window's buckets and ranking latencies take milliseconds: not with the
        // GIL, which the UI's event loop needs meanwhile.
        let table: FlowTable = py.detach(|| {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            v.snapshot(now_ns, limit, labels)
        });
        let mut figures = Vec::with_capacity(table.rows.len() * COLUMNS);
        let mut texts = Vec::new();
        let mut offsets = Vec::with_capacity(table.rows.len() * TEXTS + 1);
        offsets.push(0u64);
        for r in &table.rows {
            figures.extend([
                r.paths as f64,
                r.bytes as f64,
                r.paths_per_s,
                r.bytes_per_s,
                r.timed as f64,
                r.p50_ns.map_or(f64::NAN, |v| v as f64),
                r.p99_ns.map_or(f64::NAN, |v| v as f64),
                r.drops as f64,
            ]);
            for t in [&r.flow_text, &r.nat_text, &r.drops_text] {
                texts.extend_from_slice(t);
                offsets.push(texts.len() as u64);
            }
        }
        (
            table.span_ns,
            table.paths,
            table.bytes,
            table.flows,
            PyArray1::from_vec(py, figures),
            PyBytes::new(py, &texts),
            PyArray1::from_vec(py, offsets),
        )
    }

    /// ``stream`` writes its paths' lines (``True``, as it starts) or not (``False``: while
    /// the view is all anyone reads, the core neither renders nor annotates them).
    fn set_lines(&self, mut stream: PyRefMut<'_, Stream>, lines: bool) {
        stream.set_lines(lines);
    }

    /// Forget every bucket: the window starts again at ``now_ns`` (while nobody reads the
    /// view, now and then, so that its flows do not pile up).
    fn reset(&self, now_ns: u64) {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset(now_ns);
    }

    /// Paths the view heard of since it was attached.
    #[getter]
    fn total_paths(&self) -> u64 {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total_paths
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFlowView>()
}
