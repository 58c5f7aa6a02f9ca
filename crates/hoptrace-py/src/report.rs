//! `tracer._core.report`: `hoptrace report` in one call (hoptrace_core::report): capture
//! files through the engine into the report's aggregates and, when asked, the Parquet
//! tables' columns as numpy arrays (zero-copy from the core's `Vec`s). The run is detached
//! from the interpreter; between batches it attaches for a moment to let Ctrl-C through
//! and to feed the progress line.

use hoptrace_core::columns::{
    Chunked, ChunkedStr, Columns, DictColumn, EndpointColumns, ProtoColumn, StrColumn,
};
use hoptrace_core::engine::EngineConfig;
use hoptrace_core::files::FileSet;
use hoptrace_core::report::{report_files, EndpointTexts, Report};
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::engine::Hooks;
use crate::reader::{inputs_of, InputTuple};

fn arr<'py, T: numpy::Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}

/// A column's chunks as a list of numpy arrays (one empty array for no rows).
fn chunks<'py, T: numpy::Element>(py: Python<'py>, c: Chunked<T>) -> PyResult<Bound<'py, PyList>> {
    let mut parts = c.chunks;
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    PyList::new(py, parts.into_iter().map(|v| arr(py, v)))
}

/// (offsets int32, bytes uint8): a string column as Arrow's string lays it out.
fn strings<'py>(py: Python<'py>, s: StrColumn) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [arr(py, s.offsets).into_any(), arr(py, s.data).into_any()],
    )
}

/// A string per row: a list of (offsets, bytes), one per chunk (one empty for no rows).
fn chunked_strings<'py>(py: Python<'py>, c: ChunkedStr) -> PyResult<Bound<'py, PyList>> {
    let mut parts = c.chunks;
    if parts.is_empty() {
        parts.push(StrColumn::default());
    }
    let list = PyList::empty(py);
    for s in parts {
        list.append(strings(py, s)?)?;
    }
    Ok(list)
}

/// (codes chunks int32 with -1 for null, offsets, bytes of the dictionary).
fn dict<'py, K>(py: Python<'py>, d: DictColumn<K>) -> PyResult<Bound<'py, PyTuple>> {
    coded(py, d.codes, d.values)
}

fn coded<'py>(
    py: Python<'py>,
    codes: Chunked<i32>,
    values: StrColumn,
) -> PyResult<Bound<'py, PyTuple>> {
    let values = strings(py, values)?;
    PyTuple::new(
        py,
        [
            chunks(py, codes)?.into_any(),
            values.get_item(0)?,
            values.get_item(1)?,
        ],
    )
}

fn proto<'py>(py: Python<'py>, p: ProtoColumn, names: StrColumn) -> PyResult<Bound<'py, PyTuple>> {
    coded(py, p.codes, names)
}

fn endpoints<'py>(
    py: Python<'py>,
    d: &Bound<'py, PyDict>,
    side: &str,
    e: EndpointColumns,
) -> PyResult<()> {
    d.set_item(format!("{side}_src"), dict(py, e.src)?)?;
    d.set_item(format!("{side}_sport"), chunks(py, e.sport)?)?;
    d.set_item(format!("{side}_sport_valid"), chunks(py, e.sport_valid)?)?;
    d.set_item(format!("{side}_dst"), dict(py, e.dst)?)?;
    d.set_item(format!("{side}_dport"), chunks(py, e.dport)?)?;
    d.set_item(format!("{side}_dport_valid"), chunks(py, e.dport_valid)?)?;
    Ok(())
}

/// The three tables' columns by table and column name (see tracer/sinks/analysis.py
/// `tables_from_core`, which reads them).
fn columns<'py>(
    py: Python<'py>,
    c: Columns,
    obs_proto: StrColumn,
    path_proto: StrColumn,
) -> PyResult<Bound<'py, PyDict>> {
    if c.overflow() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "too many paths for one Parquet file (over 2 GiB of path ids): export fewer files at once",
        ));
    }
    let (o, p, n) = (c.obs, c.paths, c.nat);
    let obs = PyDict::new(py);
    obs.set_item("path_id", chunked_strings(py, o.path_id)?)?;
    obs.set_item("flow", chunked_strings(py, o.flow)?)?;
    obs.set_item("flow_valid", chunks(py, o.flow_valid)?)?;
    obs.set_item("hop", chunks(py, o.hop)?)?;
    obs.set_item("ts_ns", chunks(py, o.ts_ns)?)?;
    obs.set_item("since_first_ns", chunks(py, o.since_first_ns)?)?;
    obs.set_item("node", dict(py, o.node)?)?;
    obs.set_item("iface", dict(py, o.iface)?)?;
    obs.set_item("netns", chunks(py, o.netns)?)?;
    obs.set_item("ifindex", chunks(py, o.ifindex)?)?;
    obs.set_item("dir", dict(py, o.dir)?)?;
    obs.set_item("source", dict(py, o.source)?)?;
    obs.set_item("family", chunks(py, o.family)?)?;
    obs.set_item("proto", proto(py, o.proto, obs_proto)?)?;
    obs.set_item("ethertype", chunks(py, o.ethertype)?)?;
    obs.set_item("src", dict(py, o.src)?)?;
    obs.set_item("dst", dict(py, o.dst)?)?;
    obs.set_item("has", chunks(py, o.has)?)?;
    obs.set_item("sport", chunks(py, o.sport)?)?;
    obs.set_item("dport", chunks(py, o.dport)?)?;
    obs.set_item("ip_id", chunks(py, o.ip_id)?)?;
    obs.set_item("ttl", chunks(py, o.ttl)?)?;
    obs.set_item("tcp_flags", chunks(py, o.tcp_flags)?)?;
    obs.set_item("tcp_seq", chunks(py, o.tcp_seq)?)?;
    obs.set_item("tcp_ack", chunks(py, o.tcp_ack)?)?;
    obs.set_item("icmp_type", chunks(py, o.icmp_type)?)?;
    obs.set_item("icmp_code", chunks(py, o.icmp_code)?)?;
    obs.set_item("icmp_id", chunks(py, o.icmp_id)?)?;
    obs.set_item("icmp_seq", chunks(py, o.icmp_seq)?)?;
    obs.set_item("length", chunks(py, o.length)?)?;
    obs.set_item("wire_len", chunks(py, o.wire_len)?)?;
    obs.set_item("skb", chunks(py, o.skb)?)?;
    obs.set_item("digest", chunks(py, o.digest)?)?;
    obs.set_item("drop_reason", dict(py, o.drop_reason)?)?;

    let paths = PyDict::new(py);
    paths.set_item("path_id", chunked_strings(py, p.path_id)?)?;
    paths.set_item("flow", chunked_strings(py, p.flow)?)?;
    paths.set_item("flow_valid", chunks(py, p.flow_valid)?)?;
    paths.set_item("proto", proto(py, p.proto, path_proto)?)?;
    paths.set_item("verdict", dict(py, p.verdict)?)?;
    paths.set_item("hops", chunks(py, p.hops)?)?;
    paths.set_item("first_ts_ns", chunks(py, p.first_ts_ns)?)?;
    paths.set_item("last_ts_ns", chunks(py, p.last_ts_ns)?)?;
    paths.set_item("latency_ns", chunks(py, p.latency_ns)?)?;
    paths.set_item("first_hop", dict(py, p.first_hop)?)?;
    paths.set_item("last_hop", dict(py, p.last_hop)?)?;
    paths.set_item("src", dict(py, p.src)?)?;
    paths.set_item("dst", dict(py, p.dst)?)?;
    paths.set_item("has", chunks(py, p.has)?)?;
    paths.set_item("sport", chunks(py, p.sport)?)?;
    paths.set_item("dport", chunks(py, p.dport)?)?;
    paths.set_item("nat", dict(py, p.nat)?)?;
    paths.set_item("drop_reason", dict(py, p.drop_reason)?)?;

    let nat = PyDict::new(py);
    nat.set_item("path_id", chunked_strings(py, n.path_id)?)?;
    nat.set_item("flow", chunked_strings(py, n.flow)?)?;
    nat.set_item("flow_valid", chunks(py, n.flow_valid)?)?;
    nat.set_item("seq", chunks(py, n.seq)?)?;
    nat.set_item("kind", dict(py, n.kind)?)?;
    nat.set_item("node", dict(py, n.node)?)?;
    nat.set_item("hook", dict(py, n.hook)?)?;
    nat.set_item("from_hop", chunks(py, n.from_hop)?)?;
    nat.set_item("to_hop", chunks(py, n.to_hop)?)?;
    nat.set_item("ts_ns", chunks(py, n.ts_ns)?)?;
    endpoints(py, &nat, "before", n.before)?;
    endpoints(py, &nat, "after", n.after)?;
    nat.set_item("icmp_id_before", chunks(py, n.icmp_id_before)?)?;
    nat.set_item("icmp_id_after", chunks(py, n.icmp_id_after)?)?;
    nat.set_item("icmp_id_valid", chunks(py, n.icmp_id_valid)?)?;

    let out = PyDict::new(py);
    out.set_item("observations", obs)?;
    out.set_item("paths", paths)?;
    out.set_item("nat", nat)?;
    Ok(out)
}

fn text<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, b)
}

fn endpoint_tuple<'py>(py: Python<'py>, e: &EndpointTexts) -> PyResult<Bound<'py, PyTuple>> {
    (
        String::from_utf8_lossy(&e.src),
        e.sport,
        String::from_utf8_lossy(&e.dst),
        e.dport,
    )
        .into_pyobject(py)
}

/// The report as a dict of small lists (names as "surrogatepass" UTF-8 bytes), and the
/// columns when asked.
fn report_dict<'py>(py: Python<'py>, r: Report, wanted: bool) -> PyResult<Bound<'py, PyDict>> {
    let s = r.summary;
    let d = PyDict::new(py);
    d.set_item("observations", r.observations)?;
    d.set_item("paths", s.paths)?;
    d.set_item("elapsed_s", r.elapsed_s)?;
    d.set_item("error", r.error.map(|e| (e.file, e.error.to_string())))?;
    let rows = PyList::empty(py);
    for (p, v, n) in &s.by_proto_verdict {
        rows.append((String::from_utf8_lossy(p), *v, *n))?;
    }
    d.set_item("by_proto_verdict", rows)?;
    let rows = PyList::empty(py);
    for (k, n) in &s.nat {
        rows.append((
            text(py, &k.node),
            k.kind,
            k.hook,
            (String::from_utf8_lossy(&k.before.0), k.before.1),
            (String::from_utf8_lossy(&k.after.0), k.after.1),
            *n,
        ))?;
    }
    d.set_item("nat", rows)?;
    let rows = PyList::empty(py);
    for (h, reason, n) in &s.drops {
        rows.append((text(py, h), text(py, reason), *n))?;
    }
    d.set_item("drops", rows)?;
    let rows = PyList::empty(py);
    for h in &s.hop_latency {
        rows.append((
            text(py, &h.from),
            text(py, &h.to),
            h.count,
            h.percentiles.to_vec(),
        ))?;
    }
    d.set_item("hop_latency", rows)?;
    d.set_item(
        "path_latency",
        s.path_latency.map(|(n, ps)| (n, ps.to_vec())),
    )?;
    let rows = PyList::empty(py);
    for f in &s.flows {
        rows.append((
            f.num,
            String::from_utf8_lossy(&f.proto),
            endpoint_tuple(py, &f.original)?,
            endpoint_tuple(py, &f.reply)?,
            f.paths,
            f.relayed,
        ))?;
    }
    d.set_item("flows", rows)?;
    match r.columns {
        Some((c, op, pp)) => d.set_item("columns", columns(py, c, op, pp)?)?,
        None if wanted => {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "internal error: the Parquet columns' thread failed",
            ))
        }
        None => d.set_item("columns", py.None())?,
    }
    Ok(d)
}

/// ``hoptrace report`` of capture files: ``inputs`` as ``FileReader`` takes them. Returns a
/// dict: ``observations``, ``paths``, ``elapsed_s``, ``error`` ((file index, problem) when
/// a file was damaged or unreadable: what was read before is in the report, else None),
/// ``by_proto_verdict`` [(proto, verdict, paths)], ``nat`` [(node, kind, hook, (before
/// address, port), (after address, port), packets)] (the rewritten side), ``drops`` [(hop,
/// reason, packets)], ``hop_latency`` [(from, to, count, [p50, p90, p99])], ``path_latency``
/// (count, [p50, p90, p99]) or None, ``flows`` [(number, proto, (src, sport, dst, dport)
/// original, reply, paths)]; node and hop names as "surrogatepass" UTF-8 bytes. With
/// ``columns``, ``columns`` holds the Parquet tables' columns as numpy arrays (else None).
/// ``on_batch(records, bytes_read)`` between batches; Ctrl-C stops the run
/// (KeyboardInterrupt); ``program(linktype)``: a path filter, as ``replay_ndjson`` takes it.
#[pyfunction]
#[pyo3(signature = (inputs, *, columns=false, on_batch=None, program=None))]
fn report<'py>(
    py: Python<'py>,
    inputs: Vec<InputTuple>,
    columns: bool,
    on_batch: Option<Py<PyAny>>,
    program: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut files = FileSet::new(inputs_of(inputs));
    let cfg = EngineConfig {
        filter: program.is_some(),
        ..EngineConfig::default()
    };
    let mut hooks = Hooks {
        on_batch,
        before_write: None,
        program,
        failed: None,
    };
    let got = py.detach(|| report_files(&mut files, cfg, columns, &mut hooks))?;
    if let Some(e) = hooks.failed.take() {
        return Err(e);
    }
    report_dict(py, got, columns)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(report, m)?)
}
