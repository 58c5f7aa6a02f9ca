//! `tracer._core.encode_epbs`: the recorder's Enhanced Packet Blocks for a batch
//! (hoptrace_core::pcapng_writer). One call per batch, the GIL released; Python keeps
//! the files (0600, rotation, disk-full policy: tracer/sinks/record.py).

use std::collections::HashMap;

use hoptrace_core::obs::ROW_SIZE;
use hoptrace_core::pcapng_writer;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The EPBs (uint8) and where each ends (int64).
type Blocks<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<i64>>);

/// EPBs for ``rows`` (a numpy ``OBS_DTYPE`` array), one per row in row order, as a uint8
/// array, and an int64 array of the byte offset where each ends. ``frames``: a 1-D uint8
/// array (the batch's frame buffer); ``ifids``: uint32, the interface id of each hop label;
/// ``drop_reasons``: {code: name}. A ValueError when a row names a hop past ``ifids``.
#[pyfunction]
fn encode_epbs<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyAny>,
    frames: PyReadonlyArray1<'py, u8>,
    ifids: PyReadonlyArray1<'py, u32>,
    snaplen: u64,
    drop_reasons: &Bound<'py, PyDict>,
) -> PyResult<Blocks<'py>> {
    let reasons = reason_units(drop_reasons)?;
    let snaplen = u32::try_from(snaplen).unwrap_or(u32::MAX); // frames are shorter anyway
    let bad = || PyTypeError::new_err("rows must be a numpy array of tracer.model.obs_dtype()");
    let np = py.import("numpy")?;
    let arr = np.call_method1("ascontiguousarray", (rows,))?;
    let itemsize: usize = arr.getattr("dtype")?.getattr("itemsize")?.extract()?;
    if itemsize != ROW_SIZE || arr.getattr("dtype")?.getattr("names")?.is_none() {
        return Err(bad());
    }
    let flat = arr
        .call_method1("reshape", (-1,))?
        .call_method1("view", (np.getattr("uint8")?,))?;
    let view: PyReadonlyArray1<u8> = flat.extract().map_err(|_| bad())?;
    let raw = view.as_slice().map_err(|_| bad())?;
    let frames = frames.as_slice()?;
    let ifids = ifids.as_slice()?;
    let (out, ends) = py
        .detach(|| {
            let mut out = Vec::with_capacity(raw.len() / ROW_SIZE * (snaplen as usize + 160));
            let mut ends = Vec::with_capacity(raw.len() / ROW_SIZE);
            pcapng_writer::encode_epbs(raw, frames, ifids, snaplen, &reasons, &mut out, &mut ends)
                .map(|()| (out, ends))
        })
        .map_err(PyValueError::new_err)?;
    let ends: Vec<i64> = ends.into_iter().map(|e| e as i64).collect();
    Ok((PyArray1::from_vec(py, out), PyArray1::from_vec(py, ends)))
}

/// Drop reason names by code as the encoder takes them.
pub(crate) fn reason_units(drop_reasons: &Bound<'_, PyDict>) -> PyResult<HashMap<u32, Vec<u16>>> {
    // A code no row can hold (negative, past u32: a kernel enum's masks) names nothing.
    // Names as UTF-16 units: a name may hold lone surrogates (surrogateescape'd bytes),
    // which json.dumps escapes one by one and a Rust String cannot hold.
    let mut reasons: HashMap<u32, Vec<u16>> = HashMap::with_capacity(drop_reasons.len());
    for (k, v) in drop_reasons.iter() {
        if let Ok(code) = k.extract::<u32>() {
            let units = match v.extract::<String>() {
                Ok(name) => name.encode_utf16().collect(),
                Err(_) => {
                    let raw = v.call_method1("encode", ("utf-16-le", "surrogatepass"))?;
                    raw.extract::<Vec<u8>>()?
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect()
                }
            };
            reasons.insert(code, units);
        }
    }
    Ok(reasons)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_epbs, m)?)
}
