//! `tracer._core.decode_into`: the live sources' decoder. A batch of frames in one
//! buffer (eBPF ring events back to back, or the taps' copied ring blocks) decoded
//! straight into the caller's numpy `OBS_DTYPE` rows: no copy of the frames or the
//! rows, the GIL released, nothing per row on the Python side.

use hoptrace_core::decode::{self, LinkTypes};
use hoptrace_core::obs::{LAYOUT, ROW_SIZE};
use numpy::{
    PyArray1, PyArrayDescr, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1,
    PyReadwriteArray1, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};

/// `OBS_DTYPE` as numpy describes it, built once from the core's layout.
static OBS_DESCR: PyOnceLock<Py<PyArrayDescr>> = PyOnceLock::new();

pub(crate) fn obs_descr(py: Python<'_>) -> PyResult<&Bound<'_, PyArrayDescr>> {
    let descr = OBS_DESCR.get_or_try_init(py, || -> PyResult<_> {
        let spec = PyDict::new(py);
        spec.set_item("names", LAYOUT.iter().map(|f| f.0).collect::<Vec<_>>())?;
        spec.set_item("formats", LAYOUT.iter().map(|f| f.1).collect::<Vec<_>>())?;
        spec.set_item("offsets", LAYOUT.iter().map(|f| f.2).collect::<Vec<_>>())?;
        spec.set_item("itemsize", ROW_SIZE)?;
        Ok(PyArrayDescr::new(py, &spec)?.unbind())
    })?;
    Ok(descr.bind(py))
}

#[derive(FromPyObject)]
enum Offsets<'py> {
    U64(PyReadonlyArray1<'py, u64>),
    I64(PyReadonlyArray1<'py, i64>),
}

#[derive(FromPyObject)]
enum Links<'py> {
    One(u32),
    Each(PyReadonlyArray1<'py, u32>),
}

/// Fill the packet fields of ``rows`` (a 1-D C-contiguous numpy array of ``OBS_DTYPE``,
/// one row per frame) from frame ``i`` = ``frames[offsets[i]:offsets[i] + lengths[i]]``,
/// as the Python reference decoder's ``decode_into`` does (tests/reference/decode.py, the tests'
/// oracle; tests/unit/test_core_decode_live.py holds the two equal). The other fields
/// of each row (ts_ns, skb, netns, hop, ifindex, dir, source, drop_reason, frame_off,
/// frame_len, wire_len) keep what the caller put there. ``frames``: bytes or a 1-D
/// uint8 array; ``offsets``: uint64 or int64 array; ``lengths``: uint32 array;
/// ``linktypes``: one pcap ``LINKTYPE_*`` for all, or a uint32 array of one per frame.
/// Runs without the GIL; a ValueError (nothing written) when the counts differ or a
/// frame lies outside ``frames``.
#[pyfunction]
fn decode_into<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyAny>,
    frames: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    linktypes: Links<'py>,
) -> PyResult<()> {
    let arr = rows.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err("rows must be a numpy array of tracer.model.obs_dtype()")
    })?;
    if arr.ndim() != 1 || !arr.dtype().is_equiv_to(obs_descr(py)?) {
        return Err(PyTypeError::new_err(
            "rows must be a 1-D numpy array of tracer.model.obs_dtype()",
        ));
    }
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "rows must be C-contiguous (np.zeros(n, dtype=obs_dtype()), not a strided slice)",
        ));
    }
    // The same memory as bytes: a view, not a copy (raises when rows is read-only).
    let mut raw: PyReadwriteArray1<'py, u8> = rows
        .call_method1("view", (numpy::dtype::<u8>(py),))?
        .cast_into::<PyArray1<u8>>()?
        .try_readwrite()
        .map_err(|e| PyValueError::new_err(format!("rows cannot be written: {e}")))?;
    let frames_arr: PyReadonlyArray1<'py, u8>;
    let buf: &[u8] = if let Ok(b) = frames.cast::<PyBytes>() {
        b.as_bytes()
    } else if let Ok(a) = frames.extract::<PyReadonlyArray1<'py, u8>>() {
        frames_arr = a;
        frames_arr.as_slice()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "frames must be bytes or a 1-D uint8 numpy array, not {}",
            frames.get_type().name()?
        )));
    };
    let offsets: Offsets<'py> = offsets
        .extract()
        .map_err(|_| PyTypeError::new_err("offsets must be a 1-D uint64 or int64 numpy array"))?;
    let lengths: PyReadonlyArray1<'py, u32> = lengths
        .extract()
        .map_err(|_| PyTypeError::new_err("lengths must be a 1-D uint32 numpy array"))?;
    let lens = lengths.as_slice()?;
    let signed: Vec<u64>;
    let offs: &[u64] = match &offsets {
        Offsets::U64(a) => a.as_slice()?,
        Offsets::I64(a) => {
            let a = a.as_slice()?;
            if let Some((i, o)) = a.iter().enumerate().find(|(_, o)| **o < 0) {
                return Err(PyValueError::new_err(format!(
                    "frame {i} has a negative offset ({o})"
                )));
            }
            signed = a.iter().map(|&o| o.unsigned_abs()).collect();
            &signed
        }
    };
    let lts_arr;
    let lts = match &linktypes {
        Links::One(lt) => LinkTypes::One(*lt),
        Links::Each(a) => {
            lts_arr = a.as_slice()?;
            LinkTypes::Each(lts_arr)
        }
    };
    let out = raw.as_slice_mut()?;
    py.detach(|| decode::decode_rows(buf, offs, lens, lts, out))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_into, m)?)
}
