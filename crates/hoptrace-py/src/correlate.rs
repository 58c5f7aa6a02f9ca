//! `tracer._core.Joiner`: the core's join (hoptrace_core::correlate) over
//! batches of OBS_DTYPE rows. Batches in, columns out; the join runs with the
//! GIL released.

use hoptrace_core::correlate::{self, keys, Finished, JoinConfig};
use hoptrace_core::obs::{Obs, ROW_SIZE};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;

/// Finished paths, in the order they finished:
/// `(num, step, offsets, sightings, rows)`. Path `k` is number `num[k]`
/// (`p{num}`), finished in expiry step `step[k]` (a step hands its paths out
/// by number), and its sightings in path order are
/// `sightings[offsets[k]:offsets[k + 1]]`, indices into the stream of every
/// row fed; `rows` holds those sightings as OBS_DTYPE bytes (a uint8 array)
/// when the joiner keeps rows, else None.
type Joined<'py> = (
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Option<Bound<'py, PyArray1<u8>>>,
);

/// Three uint64 columns and a bool one.
type Columns4<'py> = (
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<bool>>,
);

fn joined<'py>(py: Python<'py>, out: &mut Finished, rows: bool) -> Joined<'py> {
    let n = out.paths.len();
    let mut num = Vec::with_capacity(n);
    let mut step = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u64);
    for p in &out.paths {
        num.push(p.num);
        step.push(p.step);
        offsets.push(p.end as u64);
    }
    let sightings = std::mem::take(&mut out.sightings);
    let bytes = rows.then(|| hoptrace_core::obs::write_rows(&out.obs));
    out.clear();
    (
        PyArray1::from_vec(py, num),
        PyArray1::from_vec(py, step),
        PyArray1::from_vec(py, offsets),
        PyArray1::from_vec(py, sightings),
        bytes.map(|b| PyArray1::from_vec(py, b)),
    )
}

/// Rows of `bytes` or of a numpy OBS_DTYPE array (any shape, made contiguous), parsed
/// into `out` (a buffer kept between batches: no fresh pages per batch).
pub(crate) fn rows_into(obj: &Bound<'_, PyAny>, out: &mut Vec<Obs>) -> PyResult<()> {
    let mut parse = |buf: &[u8]| {
        out.clear();
        out.extend(
            buf.chunks_exact(ROW_SIZE)
                .filter_map(|c| <&[u8; ROW_SIZE]>::try_from(c).ok())
                .map(Obs::read_row),
        );
    };
    let bad = || {
        PyValueError::new_err(format!(
            "rows must be bytes or a numpy array of tracer.model.obs_dtype() ({ROW_SIZE}-byte rows)"
        ))
    };
    if let Ok(b) = obj.cast::<PyBytes>() {
        let buf = b.as_bytes();
        if buf.len() % ROW_SIZE != 0 {
            return Err(bad());
        }
        parse(buf);
        return Ok(());
    }
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("ascontiguousarray", (obj,))?;
    let itemsize: usize = arr.getattr("dtype")?.getattr("itemsize")?.extract()?;
    if itemsize != ROW_SIZE || arr.getattr("dtype")?.getattr("names")?.is_none() {
        return Err(bad());
    }
    let flat = arr
        .call_method1("reshape", (-1,))?
        .call_method1("view", (np.getattr("uint8")?,))?;
    let view: PyReadonlyArray1<u8> = flat.extract().map_err(|_| bad())?;
    parse(view.as_slice().map_err(|_| bad())?);
    Ok(())
}

/// The join (the rules of tests/reference/correlate.py): which sightings form one packet's
/// path, and the order paths finish in. `feed(rows, now_ns=None)`,
/// `advance(now_ns)` and `flush(max_paths=None)` return the paths that
/// finished (see `Joined` above).
#[pyclass(module = "tracer._core")]
pub struct Joiner {
    inner: correlate::Joiner,
    out: Finished,
    rows: bool,
    obs: Vec<Obs>,
    /// Node names -> ids, for `set_hops`.
    nodes: HashMap<Vec<u8>, u32>,
}

#[pymethods]
impl Joiner {
    #[new]
    #[pyo3(signature = (*, window_ns=correlate::DEFAULT_WINDOW_NS, max_open_rows=correlate::DEFAULT_MAX_OPEN_ROWS,
                        chunk_rows=correlate::CHUNK_ROWS, max_same_fp=correlate::MAX_SAME_FP, rows=false,
                        join_window_ns=correlate::DEFAULT_JOIN_WINDOW_NS))]
    fn new(
        window_ns: u64,
        max_open_rows: usize,
        chunk_rows: usize,
        max_same_fp: usize,
        rows: bool,
        join_window_ns: u64,
    ) -> PyResult<Self> {
        if chunk_rows == 0 || max_same_fp == 0 {
            return Err(PyValueError::new_err(
                "chunk_rows and max_same_fp must be at least 1",
            ));
        }
        let cfg = JoinConfig {
            window_ns,
            join_window_ns,
            max_open_rows,
            chunk_rows,
            max_same_fp,
            keep_obs: rows,
        };
        Ok(Joiner {
            inner: correlate::Joiner::new(cfg),
            out: Finished::default(),
            rows,
            obs: Vec::new(),
            nodes: HashMap::new(),
        })
    }

    /// The node of each hop, as "surrogatepass" UTF-8 bytes (rows' ``hop`` index this list;
    /// the rows fed so far keep theirs): which namespace a sighting without a netns is in.
    fn set_hops(&mut self, nodes: Vec<Vec<u8>>) {
        let ids: Vec<u32> = nodes
            .into_iter()
            .map(|n| {
                let next = self.nodes.len() as u32;
                *self.nodes.entry(n).or_insert(next)
            })
            .collect();
        self.inner.set_hop_nodes(&ids);
    }

    /// Where NAT may change a header: any namespace (None), or only these netns inodes.
    #[pyo3(signature = (netns))]
    fn set_nat_namespaces(&mut self, netns: Option<Vec<u64>>) {
        self.inner.set_nat_namespaces(netns.as_deref());
    }

    #[pyo3(signature = (rows, now_ns=None))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Joined<'py>> {
        rows_into(rows, &mut self.obs)?;
        let (inner, out, obs) = (&mut self.inner, &mut self.out, &self.obs);
        py.detach(|| inner.feed(obs, now_ns, out));
        Ok(joined(py, &mut self.out, self.rows))
    }

    fn advance<'py>(&mut self, py: Python<'py>, now_ns: u64) -> Joined<'py> {
        let (inner, out) = (&mut self.inner, &mut self.out);
        py.detach(|| inner.advance(now_ns, out));
        joined(py, &mut self.out, self.rows)
    }

    #[pyo3(signature = (max_paths=None))]
    fn flush<'py>(&mut self, py: Python<'py>, max_paths: Option<usize>) -> Joined<'py> {
        let (inner, out) = (&mut self.inner, &mut self.out);
        py.detach(|| inner.flush(max_paths, out));
        joined(py, &mut self.out, self.rows)
    }

    #[getter]
    fn open_paths(&self) -> usize {
        self.inner.open_paths()
    }

    #[getter]
    fn open_rows(&self) -> usize {
        self.inner.open_rows()
    }

    /// Sightings fed so far (the next one's index).
    #[getter]
    fn fed(&self) -> u64 {
        self.inner.fed()
    }
}

/// The join's keys of each row: (fingerprint, hop signature, header) as uint64 arrays,
/// 64-bit hashes of what tests/reference/correlate.py's `fingerprint`, `hop_signature` and
/// `header` compare (equal rows, equal keys), and whether each row is link-local or
/// multicast (`scoped`, a bool array).
#[pyfunction]
pub fn join_keys<'py>(py: Python<'py>, rows: &Bound<'py, PyAny>) -> PyResult<Columns4<'py>> {
    let mut obs = Vec::new();
    rows_into(rows, &mut obs)?;
    let (fp, hop, hdr, scoped) = py.detach(|| {
        (
            obs.iter().map(keys::fingerprint).collect::<Vec<_>>(),
            obs.iter().map(keys::hop_signature).collect::<Vec<_>>(),
            obs.iter().map(keys::header).collect::<Vec<_>>(),
            obs.iter().map(keys::scoped).collect::<Vec<_>>(),
        )
    });
    Ok((
        PyArray1::from_vec(py, fp),
        PyArray1::from_vec(py, hop),
        PyArray1::from_vec(py, hdr),
        PyArray1::from_vec(py, scoped),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Joiner>()?;
    m.add_function(wrap_pyfunction!(join_keys, m)?)?;
    Ok(())
}
