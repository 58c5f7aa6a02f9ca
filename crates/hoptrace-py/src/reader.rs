//! `tracer._core.FileReader` and `decode_frames`: capture files and frames into
//! `OBS_DTYPE` rows (as uint8 buffers the caller views with `obs_dtype()`),
//! read and decoded with the GIL released. Batches only cross the boundary.

use std::path::PathBuf;
use std::sync::Arc;

use hoptrace_core::decode;
use hoptrace_core::files::{FileSet, Frames, Input};
use hoptrace_core::obs::{Obs, ROW_SIZE};
use hoptrace_core::reader::Origin;
use numpy::PyArray1;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

create_exception!(
    _core,
    CaptureError,
    PyException,
    "A capture file is unreadable: args are (index of the file, problem)."
);

/// (path, stem, (node, iface) label) of one input, as the constructor takes it.
pub(crate) type InputTuple = (PathBuf, Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

/// The inputs as the core takes them (path `"-"` is stdin).
pub(crate) fn inputs_of(inputs: Vec<InputTuple>) -> Vec<Input> {
    inputs
        .into_iter()
        .map(|(path, stem, label)| Input {
            origin: if path.as_os_str() == "-" {
                Origin::Stdin
            } else {
                Origin::Path(path)
            },
            stem,
            label,
        })
        .collect()
}

type HopTuple<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, u64, i32, u32);
type BatchTuple<'py> = (
    Bound<'py, PyArray1<u8>>,
    Vec<HopTuple<'py>>,
    Bound<'py, PyBytes>,
    Vec<(u32, Bound<'py, PyBytes>)>,
);

/// Capture files as batches, merged by time: `FileReader(inputs, chunk_bytes, batch_rows)`
/// with inputs `[(path, stem, (node, iface) | None), ...]` (path `"-"` is stdin; stem,
/// node and iface as "surrogatepass" UTF-8 bytes). Iterating yields
/// `(rows uint8 array, new hop labels, frames, new drop reasons)`; hop labels are
/// `(node, iface, netns, ifindex, linktype)`, drop reasons `(id, name)`.
/// A damaged file raises `CaptureError(file index, problem)` after its good batches.
#[pyclass(module = "tracer._core")]
pub struct FileReader {
    files: FileSet,
    /// The last shared read buffer handed out, and its bytes object (one copy per buffer).
    frames_cache: Option<(Arc<Vec<u8>>, Py<PyBytes>)>,
    /// The recorded raw socket spans read so far (hoptrace_core::raw_block).
    raws: hoptrace_core::raw_block::RawSpans,
}

#[pymethods]
impl FileReader {
    #[new]
    #[pyo3(signature = (inputs, chunk_bytes = hoptrace_core::reader::CHUNK_BYTES, batch_rows = hoptrace_core::reader::BATCH_ROWS))]
    fn new(inputs: Vec<InputTuple>, chunk_bytes: usize, batch_rows: usize) -> FileReader {
        FileReader {
            files: FileSet::with_sizes(inputs_of(inputs), chunk_bytes, batch_rows),
            frames_cache: None,
            raws: hoptrace_core::raw_block::RawSpans::new(),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Bytes read from the files so far (a progress line's numerator).
    #[getter]
    fn bytes_read(&self) -> u64 {
        self.files.bytes_read()
    }

    fn __next__<'py>(mut slf: PyRefMut<'py, Self>) -> PyResult<Option<BatchTuple<'py>>> {
        let py = slf.py();
        let this = &mut *slf;
        let files = &mut this.files;
        let got = py.detach(|| {
            files
                .next_batch()
                .map(|b| b.map(|b| (b.row_bytes(), b.frames)))
        });
        let (rows, frames) = match got {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => return Err(CaptureError::new_err((e.file, e.error.to_string()))),
        };
        let frames = match frames {
            Frames::Owned(v) => PyBytes::new(py, &v),
            Frames::Shared(buf) => match &this.frames_cache {
                Some((cached, obj)) if Arc::ptr_eq(cached, &buf) => obj.bind(py).clone(),
                _ => {
                    let obj = PyBytes::new(py, buf.as_slice());
                    this.frames_cache = Some((buf, obj.clone().unbind()));
                    obj
                }
            },
        };
        let hops = this
            .files
            .new_hops()
            .iter()
            .map(|h| {
                (
                    PyBytes::new(py, &h.node),
                    PyBytes::new(py, &h.iface),
                    h.netns,
                    h.ifindex,
                    h.linktype,
                )
            })
            .collect();
        let reasons = this
            .files
            .new_drop_reasons()
            .iter()
            .map(|(id, name)| (*id, PyBytes::new(py, name)))
            .collect();
        Ok(Some((PyArray1::from_vec(py, rows), hops, frames, reasons)))
    }

    /// hoptrace's recorded answers of who took packets (hoptrace_core::local) read since the
    /// last call: ``(record, json, text)`` each, checked (a damaged one is left out).
    fn take_locals<'py>(
        &mut self,
        py: Python<'py>,
    ) -> Vec<(
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
    )> {
        self.files
            .new_locals()
            .iter()
            .map(|n| {
                (
                    PyBytes::new(py, &n.record),
                    PyBytes::new(py, &n.json),
                    PyBytes::new(py, &n.text),
                )
            })
            .collect()
    }

    /// hoptrace's recorded relayed connections (hoptrace_core::relay) read since the last
    /// call, as ``Stream.add_relays`` takes them; checked (a damaged one is left out).
    #[allow(clippy::type_complexity)]
    fn take_relays(
        &mut self,
    ) -> Vec<(
        (u8, u8, Vec<u8>, u16, Vec<u8>, u16),
        (u8, u8, Vec<u8>, u16, Vec<u8>, u16),
        Vec<u8>,
        (Vec<u8>, Vec<u8>),
        (Vec<u8>, Vec<u8>),
    )> {
        let leg = |k: &hoptrace_core::flows::FlowKey| {
            (
                k.0,
                k.1,
                k.2.to_vec(),
                k.3.unwrap_or(0),
                k.4.to_vec(),
                k.5.unwrap_or(0),
            )
        };
        self.files
            .new_relays()
            .iter()
            .map(|n| {
                (
                    leg(&n.inbound),
                    leg(&n.outbound),
                    n.by.clone(),
                    (n.texts[0].clone(), n.texts[1].clone()),
                    (n.fields[0].clone(), n.fields[1].clone()),
                )
            })
            .collect()
    }

    /// hoptrace's recorded raw socket spans (hoptrace_core::raw_block): None when no block
    /// was read since the last call, else every span read so far, ``(netns, from_ns,
    /// to_ns)`` each, as ``Stream.set_raw_sockets`` takes them (a damaged block is left out).
    fn take_raw_sockets(&mut self) -> Option<Vec<(u64, u64, u64)>> {
        self.raws
            .take_in(self.files.new_raw_sockets())
            .then(|| self.raws.spans())
    }

    /// Packets read so far, over all files.
    #[getter]
    fn packets(&self) -> u64 {
        self.files.packets()
    }
}

#[derive(FromPyObject)]
enum LinkTypes {
    One(u32),
    Each(Vec<u32>),
}

/// Rows (a uint8 buffer of `OBS_DTYPE` rows) with the packet fields of each frame
/// decoded as the reference decoder's `decode_frames` does (tests/reference/decode.py);
/// every other field is 0.
#[pyfunction]
fn decode_frames<'py>(
    py: Python<'py>,
    frames: Vec<PyBackedBytes>,
    linktypes: LinkTypes,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    if let LinkTypes::Each(lts) = &linktypes {
        if lts.len() != frames.len() {
            return Err(PyValueError::new_err(format!(
                "{} frames but {} link types",
                frames.len(),
                lts.len()
            )));
        }
    }
    let out = py.detach(|| {
        let mut out = vec![0u8; frames.len() * ROW_SIZE];
        for (k, (f, row)) in frames
            .iter()
            .zip(out.chunks_exact_mut(ROW_SIZE))
            .enumerate()
        {
            let lt = match &linktypes {
                LinkTypes::One(lt) => *lt,
                LinkTypes::Each(lts) => lts.get(k).copied().unwrap_or(0),
            };
            let mut o = Obs::default();
            decode::decode(f, lt, &mut o);
            if let Ok(row) = <&mut [u8; ROW_SIZE]>::try_from(row) {
                o.write_row(row);
            }
        }
        out
    });
    Ok(PyArray1::from_vec(py, out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FileReader>()?;
    m.add_function(wrap_pyfunction!(decode_frames, m)?)?;
    m.add("CaptureError", m.py().get_type::<CaptureError>())?;
    Ok(())
}
