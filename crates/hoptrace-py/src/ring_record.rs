//! `tracer._core.RingRecorder`: `live --backend ebpf --record` on the direct road. The
//! recorder's IDBs and EPBs made while `Stream.feed_ring` feeds the ring's batches, without
//! the GIL (hoptrace_core::record_step); tracer/sinks/record.py takes them once a step
//! (`take`) and keeps the files (0600, rotation, the flush policy, disk full).

use hoptrace_core::record_step::{StepRecorder, NO_IFID};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::record::reason_units;

/// The recorder's state for the ring's steps (see hoptrace_core::record_step): made with the
/// recorder's ``snaplen``, its size limit in bytes (None: no rotation) and the drop reason
/// names ({code: name}); then told each hop label (``add_hop``, in index order), the current
/// file (``set_file``) and, when Python recorded rows itself, the file's interface ids
/// (``set_ifids``). ``Stream.set_recorder`` has ``feed_ring`` record into it.
#[pyclass(module = "tracer._core")]
pub struct RingRecorder {
    inner: StepRecorder,
    /// Borrowed by a `feed_ring` (its state away, without the GIL): a second stream feeding
    /// the same recorder at once would find it so.
    busy: bool,
}

#[pymethods]
impl RingRecorder {
    #[new]
    #[pyo3(signature = (snaplen, max_bytes, drop_reasons))]
    fn new(
        snaplen: u64,
        max_bytes: Option<u64>,
        drop_reasons: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let snaplen = u32::try_from(snaplen).unwrap_or(u32::MAX);
        Ok(Self {
            inner: StepRecorder::new(snaplen, max_bytes, reason_units(drop_reasons)?),
            busy: false,
        })
    }

    /// No interface id yet (``set_ifids``).
    #[classattr]
    const NO_IFID: u32 = NO_IFID;

    /// The next hop label: ``key`` the first hop index whose label equals it (its own index
    /// when none), ``idb`` its Interface Description Block. ValueError for a ``key`` that is
    /// not a first label.
    fn add_hop(&mut self, key: u32, idb: Vec<u8>) -> PyResult<()> {
        self.inner.add_hop(key, idb).map_err(PyValueError::new_err)
    }

    /// Hop labels told so far.
    #[getter]
    fn hops(&self) -> usize {
        self.inner.hops()
    }

    /// What the current file holds (bytes of whole blocks, written or queued; EPBs) and
    /// what a new file starts with (bytes), as the recorder counted them.
    fn set_file(&mut self, file_bytes: u64, file_packets: u64, header_len: u64) {
        self.inner.set_file(file_bytes, file_packets, header_len);
    }

    /// The current file's interface id of each hop label (uint32, ``NO_IFID``: none yet) and
    /// the next id to give.
    fn set_ifids(&mut self, ifids: PyReadonlyArray1<'_, u32>, next_ifid: u32) -> PyResult<()> {
        self.inner.set_ifids(ifids.as_slice()?, next_ifid);
        Ok(())
    }

    /// The blocks made since the last call: ``(data, segments, new_hops)``: ``data`` whole
    /// blocks; ``segments`` uint64 rows ``(end, packets, new_hops_end, rotate)``: the bytes up
    /// to ``end`` hold ``packets`` EPBs and the IDBs of ``new_hops[..new_hops_end]`` (hop
    /// indexes, in the order written) not in an earlier row, then the file rotates when
    /// ``rotate``. RuntimeError when a sighting named a hop label not told (nothing is
    /// recorded after it).
    #[allow(clippy::type_complexity)]
    fn take<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Bound<'py, PyArray1<u64>>,
        Bound<'py, PyArray1<u32>>,
    )> {
        if let Some(e) = self.inner.error() {
            return Err(PyRuntimeError::new_err(format!(
                "recording stopped: {e} (an internal error: please report it)"
            )));
        }
        Ok(self.inner.take(|data, segs, new| {
            let flat: Vec<u64> = segs
                .iter()
                .flat_map(|s| [s.end, s.packets, s.new_hops_end, u64::from(s.rotate)])
                .collect();
            (
                PyBytes::new(py, data),
                PyArray1::from_vec(py, flat),
                PyArray1::from_slice(py, new),
            )
        }))
    }
}

/// For `Stream.feed_ring`: the recorder's state, to record into without the GIL.
pub(crate) fn take_state(
    py: Python<'_>,
    rec: Option<&Py<RingRecorder>>,
) -> PyResult<Option<StepRecorder>> {
    let Some(rec) = rec else {
        return Ok(None);
    };
    let mut r = rec
        .try_borrow_mut(py)
        .map_err(|_| PyRuntimeError::new_err("the ring's recorder is in use elsewhere"))?;
    if r.busy {
        return Err(PyRuntimeError::new_err(
            "the ring's recorder is fed by another stream",
        ));
    }
    r.busy = true;
    Ok(Some(std::mem::take(&mut r.inner)))
}

/// For `Stream.feed_ring`: the state back after the step.
pub(crate) fn put_state(
    py: Python<'_>,
    rec: Option<&Py<RingRecorder>>,
    state: Option<StepRecorder>,
) {
    if let (Some(rec), Some(state)) = (rec, state) {
        if let Ok(mut r) = rec.try_borrow_mut(py) {
            r.inner = state;
            r.busy = false;
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RingRecorder>()
}
