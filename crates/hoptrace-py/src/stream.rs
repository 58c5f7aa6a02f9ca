//! `tracer._core.Stream`: the engine of every command but `replay --json` (which runs
//! whole in `replay_ndjson`), fed by Python batch by batch (hoptrace_core::engine).
//!
//! A batch's rows (OBS_DTYPE), its frame bytes and the source's clock go in; the NDJSON
//! lines of the paths that finished and the flows that closed come back as one bytes
//! object and an index of its lines, so Python writes the bytes straight to an NDJSON
//! sink and builds row views (`PacketPath.from_json`) only for sinks that need objects.
//! The work runs with the GIL released.

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoptrace_core::annotate::{NoteProvider, Notes, RawNatNote, RawNote};
use hoptrace_core::bpf::Program;
use hoptrace_core::engine::{Engine, EngineConfig};
use hoptrace_core::finish::{PathSink, ShownPath};
use hoptrace_core::flow_view::FlowViewSink;
use hoptrace_core::flows::ClosedFlow;
use hoptrace_core::labels::Labels;
use hoptrace_core::obs::Obs;
use hoptrace_core::text_render::{Format, TextOptions};
use numpy::PyArray1;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::correlate::rows_into;
use crate::ebpf_ring::{misses_list, Batch, EbpfRing};
use crate::ring_record::{self, RingRecorder};

/// Kinds of lines in a step's index (the third column).
const PATH: u64 = 0;
const FLOW: u64 = 1;
const STATS: u64 = 2;

/// NDJSON bytes, their index: `(offset, length, kind)` per line, flattened into one
/// uint64 array (reshape to `(-1, 3)`); `length` leaves the newline out; kind 0 is a path,
/// 1 a flow, 2 a stats line; and what a path's line does not say of its hops, for row
/// views: `(ifindex, source, digest, wire_len)` per hop of each path line, in line order,
/// flattened (reshape to `(-1, 4)`).
type Output<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
);

/// One `feed_ring` step: the sightings fed, the hop keys to name first (nothing was fed
/// then), and the output as `feed` returns it.
type RingStep<'py> = (
    u64,
    Bound<'py, PyList>,
    Bound<'py, PyBytes>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
);

/// Per hop of each shown path, in the order the lines are written: what its line leaves out;
/// and the flow view (flow_view.rs), when one is attached; the third field false: no one
/// reads the extras (the lines go straight to a descriptor), so none are kept.
#[derive(Debug, Default)]
struct HopExtras(Arc<Mutex<Vec<u64>>>, Option<FlowViewSink>, Arc<AtomicBool>);

impl PathSink for HopExtras {
    fn path(&mut self, p: &ShownPath<'_>, labels: &Labels) {
        if let Some(view) = &mut self.1 {
            view.path(p, labels);
        }
        if !self.2.load(Ordering::Relaxed) {
            return;
        }
        // A poisoned lock (a panic elsewhere while held) still holds a whole Vec.
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for o in p.hops {
            v.extend([
                o.ifindex as u32 as u64,
                u64::from(o.source),
                o.digest,
                u64::from(o.wire_len),
            ]);
        }
    }

    fn flow(&mut self, _f: &ClosedFlow) {}
}

/// One answer as Python gives it: per hop its node ("surrogatepass" UTF-8 bytes or None),
/// per NAT event (node, NDJSON fields from `"rule"` on, text, conntrack id), per annotator
/// its NAT events without conntrack, provisional.
type PyNote = (
    Vec<Option<Vec<u8>>>,
    Vec<(Option<Vec<u8>>, Vec<u8>, Vec<u8>, Option<u64>)>,
    Vec<u64>,
    bool,
);

/// The Python provider of annotation answers: called (with the GIL, from the detached
/// step) once per step with the step's unseen path shapes. An exception is kept and
/// raised when the step returns; meanwhile the paths are written unannotated.
#[derive(Debug)]
struct PyNotes {
    provider: Py<PyAny>,
    error: Arc<Mutex<Option<PyErr>>>,
}

impl NoteProvider for PyNotes {
    fn resolve(&mut self, lines: &[u8], extras: &[u64]) -> Option<Vec<RawNote>> {
        Python::attach(|py| {
            let got = self
                .provider
                .call1(
                    py,
                    (PyBytes::new(py, lines), PyArray1::from_slice(py, extras)),
                )
                .and_then(|r| r.extract::<Vec<PyNote>>(py));
            match got {
                Ok(notes) => Some(
                    notes
                        .into_iter()
                        .map(|(hop_nodes, nat, counts, provisional)| RawNote {
                            hop_nodes,
                            nat: nat
                                .into_iter()
                                .map(|(node, json, text, conntrack_id)| RawNatNote {
                                    node,
                                    json,
                                    text,
                                    conntrack_id,
                                })
                                .collect(),
                            counts,
                            provisional,
                        })
                        .collect(),
                ),
                Err(e) => {
                    let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(e);
                    None
                }
            }
        })
    }
}

/// The lines of `data`: every line the finisher writes starts `{"type": "<kind>"`, and
/// JSON strings escape newlines, so each newline ends one.
fn index_lines(data: &[u8], index: &mut Vec<u64>) {
    index.clear();
    let mut at = 0usize;
    while let Some(len) = data
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let kind = match data.get(at + 10) {
            Some(b'p') => PATH,
            Some(b'f') => FLOW,
            _ => STATS,
        };
        index.extend([at as u64, len as u64, kind]);
        at += len + 1;
    }
}

/// Batches of sightings in, NDJSON lines of finished paths and closed flows out.
///
/// ``count``: show at most that many paths (the rest, past it in output order, are
/// hidden: they still join flows, which list shown paths only); ``filter``: a path filter
/// runs, a path is shown when the frame of any of its sightings matches the program of
/// its hop's link type (``set_program``; a link type without one never matches);
/// ``text=(numeric, detail, color)``: text for people (``TextSink``'s blocks and flow
/// lines) instead of NDJSON, whose index is then empty.
#[pyclass(module = "tracer._core", name = "Stream")]
pub struct Stream {
    core: Engine,
    rows: Vec<Obs>,
    index: Vec<u64>,
    extras: Arc<Mutex<Vec<u64>>>,
    /// The annotation provider's exception, raised when the step returns.
    error: Arc<Mutex<Option<PyErr>>>,
    /// Text for people rather than NDJSON: the output is not indexed by line.
    text: bool,
    /// Whether the sink keeps hop extras (false once the output goes to `out`).
    want_extras: Arc<AtomicBool>,
    /// Where each step's output goes when set (``set_output_fd``): a duplicate of the
    /// caller's descriptor, written without the GIL; the steps then return nothing.
    out: Option<File>,
    /// Hop labels added so far (``add_hop``): rows' ``hop`` index them.
    hops: u32,
    /// Batches taken from an eBPF ring whose new hop keys Python names first (``feed_ring``),
    /// and whether their keys were handed out.
    pending: Vec<Batch>,
    asked: bool,
    /// Records every batch ``feed_ring`` feeds (``set_recorder``: ring_record.rs).
    recorder: Option<Py<RingRecorder>>,
}

impl Stream {
    /// Every shown path to `view` too (crates/hoptrace-py/src/flow_view.rs).
    pub(crate) fn attach_view(&mut self, view: FlowViewSink) {
        let extras = HopExtras(
            Arc::clone(&self.extras),
            Some(view),
            Arc::clone(&self.want_extras),
        );
        self.core.set_sink(Box::new(extras), true);
    }

    /// Paths' lines written (true) or not: while the flow view is shown only it hears of
    /// them (flow_view.rs), and the core neither renders nor annotates them.
    pub(crate) fn set_lines(&mut self, lines: bool) {
        if let Some(sink) = self.core.take_sink() {
            self.core.set_sink(sink, lines);
        }
    }

    /// The names the paths' hops index.
    pub(crate) fn labels(&self) -> &Labels {
        self.core.labels()
    }

    fn raise(&self) -> PyResult<()> {
        match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Write what the step finished to the output descriptor, when there is one (called
    /// detached). An error (EPIPE: the reader went away) leaves the lines for the next step.
    fn write_out(core: &mut Engine, out: Option<&mut File>) -> std::io::Result<()> {
        match out {
            Some(f) => core.write_output(f),
            None => Ok(()),
        }
    }

    fn output<'py>(&mut self, py: Python<'py>) -> Output<'py> {
        let (index, text) = (&mut self.index, self.text);
        // Copied out of the core's buffer, which stays for the next batch (no fresh pages).
        let data = self.core.with_output(|data| {
            if text {
                index.clear();
            } else {
                index_lines(data, index);
            }
            PyBytes::new(py, data)
        });
        let extras = std::mem::take(&mut *self.extras.lock().unwrap_or_else(|e| e.into_inner()));
        (
            data,
            PyArray1::from_slice(py, &self.index),
            PyArray1::from_vec(py, extras),
        )
    }
}

/// A relay leg as Python gives it: (family, proto, src, sport, dst, dport).
type RelayLeg = (u8, u8, Vec<u8>, u16, Vec<u8>, u16);
/// A relayed connection as Python gives it (``Stream.add_relays``).
type RelayPair = (
    RelayLeg,
    RelayLeg,
    Vec<u8>,
    (Vec<u8>, Vec<u8>),
    (Vec<u8>, Vec<u8>),
);

fn relay_key(l: &RelayLeg) -> Option<hoptrace_core::flows::FlowKey> {
    let src: [u8; 16] = l.2.as_slice().try_into().ok()?;
    let dst: [u8; 16] = l.4.as_slice().try_into().ok()?;
    Some((l.0, l.1, src, Some(l.3), dst, Some(l.5)))
}

#[pymethods]
impl Stream {
    #[new]
    #[pyo3(signature = (*, count=None, filter=false, window_ns=None, flow_idle_ns=None, max_flow_paths=None, text=None,
                        join_window_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        count: Option<u64>,
        filter: bool,
        window_ns: Option<u64>,
        flow_idle_ns: Option<u64>,
        max_flow_paths: Option<usize>,
        text: Option<(bool, i8, bool)>,
        join_window_ns: Option<u64>,
    ) -> PyResult<Self> {
        let mut cfg = EngineConfig {
            filter,
            count,
            ..EngineConfig::default()
        };
        if let Some((numeric, detail, color)) = text {
            cfg.finish.format = Format::Text(TextOptions {
                numeric,
                detail: detail.clamp(-1, 2),
                color,
            });
        }
        if let Some(w) = window_ns {
            cfg.join.window_ns = w;
            cfg.finish.window_ns = w;
        }
        if let Some(j) = join_window_ns {
            cfg.join.join_window_ns = j;
        }
        if let Some(f) = flow_idle_ns {
            cfg.finish.flow_idle_ns = f;
        }
        if let Some(m) = max_flow_paths {
            if m == 0 {
                return Err(PyValueError::new_err("max_flow_paths must be at least 1"));
            }
            cfg.finish.max_flow_paths = m;
        }
        let mut core = Engine::new(cfg);
        let extras = Arc::new(Mutex::new(Vec::new()));
        let want_extras = Arc::new(AtomicBool::new(true));
        core.set_sink(
            Box::new(HopExtras(
                Arc::clone(&extras),
                None,
                Arc::clone(&want_extras),
            )),
            true,
        );
        Ok(Stream {
            core,
            rows: Vec::new(),
            index: Vec::new(),
            extras,
            error: Arc::new(Mutex::new(None)),
            text: text.is_some(),
            want_extras,
            out: None,
            hops: 0,
            pending: Vec::new(),
            asked: false,
            recorder: None,
        })
    }

    /// From the next ``feed_ring`` on, its batches are recorded by ``recorder`` too (a
    /// ``RingRecorder``: its blocks taken once a step, ``RingRecorder.take``); None: no more.
    #[pyo3(signature = (recorder))]
    fn set_recorder(&mut self, recorder: Option<Py<RingRecorder>>) {
        self.recorder = recorder;
    }

    /// From now on each step writes its output to descriptor ``fd`` (a file or pipe, which
    /// stays the caller's: a duplicate is written, closed by ``set_output_fd(None)``) without
    /// the GIL, and returns empty output: no bytes object, line index or hop extras per batch.
    /// Whatever the caller buffered for ``fd`` must be flushed first; a write error
    /// (BrokenPipeError, ...) is raised by the step, its lines kept for the next. For a sink
    /// that takes the lines as they are. None: the output is returned again.
    #[pyo3(signature = (fd))]
    fn set_output_fd(&mut self, fd: Option<RawFd>) -> PyResult<()> {
        let Some(fd) = fd else {
            self.out = None;
            self.want_extras.store(true, Ordering::Relaxed);
            return Ok(());
        };
        if fd < 0 {
            return Err(PyValueError::new_err(
                "set_output_fd: not a file descriptor",
            ));
        }
        // SAFETY: the caller's descriptor is open for the duration of this call (Python holds
        // the file object); it is only duplicated here, the duplicate owned by the File.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        self.out = Some(File::from(dup));
        self.want_extras.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The source's next hop label (rows' ``hop`` indexes labels in the order they are
    /// added): names as "surrogatepass" UTF-8 bytes, and the link type of its frames.
    fn add_hop(&mut self, node: &[u8], iface: &[u8], linktype: u32) {
        self.core.add_hop(node, iface, linktype);
        self.hops = self.hops.saturating_add(1);
    }

    /// Where NAT may change a packet's header between two of its sightings: in any network
    /// namespace (None: replay, which knows no rules), or only in these (netns inodes: live,
    /// those with NAT rules or conntrack entries; set again when they change).
    #[pyo3(signature = (netns))]
    fn set_nat_namespaces(&mut self, netns: Option<Vec<u64>>) {
        self.core.set_nat_namespaces(netns.as_deref());
    }

    /// The name ("surrogatepass" UTF-8 bytes) of drop reason ``code`` in the rows.
    fn set_drop_reason(&mut self, code: u32, name: &[u8]) {
        self.core.set_drop_reason(code, name);
    }

    /// Where and when raw ICMP sockets were open: (netns, from_ns, to_ns) spans, replacing
    /// the table (paths judged later see it).
    fn set_raw_sockets(&mut self, spans: Vec<(u64, u64, u64)>) {
        self.core.set_raw_sockets(&spans);
    }

    /// Link types of the hops so far that the path filter has no program for yet.
    fn linktypes_without_program(&self) -> Vec<u32> {
        self.core.linktypes_without_program()
    }

    /// The path filter's program for frames of ``linktype``: libpcap's ``struct bpf_insn``
    /// bytes, or None (the expression means nothing there: never a match).
    #[pyo3(signature = (linktype, insns))]
    fn set_program(&mut self, linktype: u32, insns: Option<&[u8]>) -> PyResult<()> {
        let program = match insns {
            Some(raw) => {
                Some(Program::from_bytes(raw).map_err(|e| PyValueError::new_err(e.to_string()))?)
            }
            None => None,
        };
        self.core.set_program(linktype, program);
        Ok(())
    }

    /// One batch: ``rows`` (an OBS_DTYPE array, or its bytes), ``frames`` (the bytes the
    /// rows' ``frame_off``/``frame_len`` slice) and, from a live source, its clock
    /// ``now_ns``. Returns what finished: ``(ndjson, index, hops)``.
    #[pyo3(signature = (rows, frames, now_ns=None))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        frames: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<Output<'py>> {
        rows_into(rows, &mut self.rows)?;
        let (core, rows, fd) = (&mut self.core, &self.rows, self.out.as_mut());
        let written = py.detach(|| {
            core.feed(rows, frames, now_ns);
            Self::write_out(core, fd)
        });
        let out = self.output(py);
        self.raise()?;
        written?;
        Ok(out)
    }

    /// The batches ``ring`` (an ``EbpfRing`` whose reader thread runs, or with events held by
    /// ``poll``/``push``) decoded, fed in order straight from the core: no numpy array, no
    /// bytes object per batch. Waits up to ``timeout_s`` for one without the GIL. Returns
    /// ``(sightings, misses, ndjson, index, hops)``: when the batches hold hop keys seen
    /// first, nothing is fed and ``misses`` lists them as ``EbpfRing.take`` does; the caller
    /// adds their labels (``add_hop``, in index order), then calls again: the batches wait
    /// here and go first, or, if a key's index still has no label, RuntimeError (a row is
    /// never fed with another hop's name). A panic in the ring's reader thread is raised here.
    #[pyo3(signature = (ring, timeout_s))]
    fn feed_ring<'py>(
        &mut self,
        py: Python<'py>,
        ring: &Bound<'py, EbpfRing>,
        timeout_s: f64,
    ) -> PyResult<RingStep<'py>> {
        if self.pending.is_empty() {
            let wait = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or_default();
            self.pending = ring.borrow().take_ready(py, wait)?;
            self.asked = false;
        }
        let mut new = self.pending.iter().flat_map(|b| &b.misses).peekable();
        if new.peek().is_some() && !self.asked {
            self.asked = true;
            let misses = misses_list(py, new)?;
            return Ok((
                0,
                misses,
                PyBytes::new(py, b""),
                PyArray1::from_slice(py, &[]),
                PyArray1::from_slice(py, &[]),
            ));
        }
        let have = self.hops;
        if let Some(m) = self
            .pending
            .iter()
            .flat_map(|b| &b.misses)
            .find(|m| m.index >= have)
        {
            return Err(PyRuntimeError::new_err(format!(
                "hop label {} out of step with the ring's hop keys: {have} labels added",
                m.index
            )));
        }
        let mut rec = ring_record::take_state(py, self.recorder.as_ref())?;
        let batches = std::mem::take(&mut self.pending);
        let (core, mut fd) = (&mut self.core, self.out.as_mut());
        let (fed, written) = py.detach(|| {
            let mut fed = 0u64;
            for b in &batches {
                fed += b.obs.len() as u64;
                if let Some(r) = rec.as_mut() {
                    r.record(&b.obs, &b.frames);
                }
                core.feed(&b.obs, &b.frames, None);
                // A batch at a time: a consumer that fell behind takes many batches at once,
                // and their output would pile up in one buffer (fresh pages on every step).
                if let Err(e) = Self::write_out(core, fd.as_deref_mut()) {
                    return (fed, Err(e));
                }
            }
            (fed, Ok(()))
        });
        ring_record::put_state(py, self.recorder.as_ref(), rec);
        ring.borrow().recycle(batches);
        let (data, index, extras) = self.output(py);
        self.raise()?;
        written?;
        Ok((fed, PyList::empty(py), data, index, extras))
    }

    /// Nothing was seen until ``now_ns`` (a live source's clock): paths and flows idle
    /// long enough finish. Returns ``(ndjson, index, hops)``.
    fn advance<'py>(&mut self, py: Python<'py>, now_ns: u64) -> PyResult<Output<'py>> {
        let (core, fd) = (&mut self.core, self.out.as_mut());
        let written = py.detach(|| {
            core.advance(now_ns);
            Self::write_out(core, fd)
        });
        let out = self.output(py);
        self.raise()?;
        written?;
        Ok(out)
    }

    /// End of input, one slice at a time (the longest idle paths first): returns
    /// ``(ndjson, index, hops, more)``; once ``more`` is False every flow has closed and
    /// its line is in that last output.
    #[allow(clippy::type_complexity)]
    fn flush_slice<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Bound<'py, PyArray1<u64>>,
        Bound<'py, PyArray1<u64>>,
        bool,
    )> {
        let (core, fd) = (&mut self.core, self.out.as_mut());
        let (more, written) = py.detach(|| {
            let more = core.flush_slice();
            (more, Self::write_out(core, fd))
        });
        let (data, index, extras) = self.output(py);
        self.raise()?;
        written?;
        Ok((data, index, extras, more))
    }

    /// Annotate shown paths through tables (hoptrace_core::annotate): ``provider(lines,
    /// hops)`` is called once per step with the NDJSON lines of the path shapes not seen
    /// yet (and their hops' ``(ifindex, source, digest, wire_len)``, flattened), and
    /// returns one answer per line: ``(hop_nodes, nat, counts, provisional)`` with
    /// ``hop_nodes`` a list of bytes or None per hop, ``nat`` a list of ``(node, json,
    /// text, conntrack_id)`` per NAT event, ``counts`` per annotator the NAT events
    /// without a conntrack entry, ``provisional`` to be asked again next step.
    /// ``per_packet``: the answers read each packet's IP ID.
    #[pyo3(signature = (provider, *, per_packet=false))]
    fn set_notes(&mut self, provider: Py<PyAny>, per_packet: bool) {
        let p = PyNotes {
            provider,
            error: Arc::clone(&self.error),
        };
        self.core.set_notes(Notes::new(Box::new(p), per_packet));
    }

    /// The provider's tables changed: every path shape is asked again.
    fn forget_notes(&mut self) {
        if let Some(n) = self.core.notes_mut() {
            n.forget();
        }
    }

    /// Per annotator, NAT events written without a conntrack entry since the last call.
    fn take_note_counts(&mut self) -> Vec<u64> {
        self.core
            .notes_mut()
            .map(|n| n.take_counts())
            .unwrap_or_default()
    }

    /// Say who took the packets of paths that ended locally (hoptrace_core::local; the
    /// answers come from tracer/annotate/local.py through ``take_local_misses`` and
    /// ``set_locals``).
    fn enable_locals(&mut self) {
        self.core.enable_locals();
    }

    /// The keys of paths that ended locally first seen since the last call: records of
    /// ``hoptrace_core::local::MISS_SIZE`` bytes (tracer/annotate/local.py ``MISS_DTYPE``).
    fn take_local_misses<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let misses = self
            .core
            .locals_mut()
            .map(|l| l.take_misses())
            .unwrap_or_default();
        PyBytes::new(py, &misses)
    }

    /// Answers for misses: ``(slot, epoch, json, text)`` each, ``json`` the ``"local"``
    /// object's fields after ``"node"`` and ``text`` what the text says before ``on NODE``
    /// (UTF-8 bytes).
    fn set_locals(&mut self, answers: Vec<(u32, u32, Vec<u8>, Vec<u8>)>) {
        if let Some(l) = self.core.locals_mut() {
            for (slot, epoch, json, text) in &answers {
                l.set(*slot, *epoch, json, text);
            }
        }
    }

    /// Recorded answers (a replay: ``FileReader.take_locals``): ``(record, json, text)``
    /// each; paths that end at a record's key from now on, and their flows, say it.
    fn preset_locals(&mut self, notes: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) {
        for (record, json, text) in notes {
            let note = hoptrace_core::local::LocalNote { record, json, text };
            self.core.preset_local(&note);
        }
    }

    /// Say which connections a userland proxy relayed (hoptrace_core::relay; the pairs come
    /// from tracer/annotate/relay.py ``RelayLinker`` through ``add_relays``).
    fn enable_relays(&mut self) {
        self.core.enable_relays();
    }

    /// Relayed connections: ``(inbound, outbound, by, texts, fields)`` each, a leg as
    /// ``(family, proto, src, sport, dst, dport)`` in its original direction (addresses as 16
    /// bytes, IPv4 in the first 4), ``by`` the ``{"pid": ..., "comm": ...}`` JSON, ``texts``
    /// what each leg's text says and ``fields`` the JSON fields its ``"relay"`` ends with
    /// (inbound first; UTF-8 bytes). A pair with a leg that is not one (a bad address) is skipped.
    #[allow(clippy::type_complexity)]
    fn add_relays(&mut self, pairs: Vec<RelayPair>) {
        if let Some(r) = self.core.relays_mut() {
            for (a, b, by, texts, fields) in &pairs {
                if let (Some(a), Some(b)) = (relay_key(a), relay_key(b)) {
                    r.add(a, b, by, [&texts.0, &texts.1], [&fields.0, &fields.1]);
                }
            }
        }
    }

    /// Sightings fed so far.
    #[getter]
    fn observations(&self) -> u64 {
        self.core.observations()
    }

    /// Paths shown so far.
    #[getter]
    fn paths(&self) -> u64 {
        self.core.paths()
    }

    /// Paths still open.
    #[getter]
    fn open_paths(&self) -> usize {
        self.core.open_paths()
    }

    /// The count is reached: nothing more will be shown.
    #[getter]
    fn done(&self) -> bool {
        self.core.done()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Stream>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_indexed_by_kind() {
        let data =
            b"{\"type\": \"path\", \"id\": \"p1\"}\n{\"type\": \"flow\"}\n{\"type\": \"stats\"}\n";
        let mut index = Vec::new();
        index_lines(data, &mut index);
        assert_eq!(index, [0, 28, PATH, 29, 16, FLOW, 46, 17, STATS]);
        index_lines(b"", &mut index);
        assert!(index.is_empty());
    }
}
