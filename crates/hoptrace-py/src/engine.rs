//! `tracer._core.replay_ndjson`: `hoptrace replay --json` in one call, files to a file
//! descriptor (hoptrace_core::engine). The whole run is detached from the interpreter;
//! between batches it attaches for a moment to let Ctrl-C through (as polars does) and
//! to draw the progress line.

use std::os::fd::BorrowedFd;

use hoptrace_core::bpf::Program;
use hoptrace_core::engine::{self, EngineConfig, ReplayError, ReplayHooks};
use hoptrace_core::files::FileSet;
use hoptrace_core::text_render::{Format, TextOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::reader::{inputs_of, InputTuple};

/// (observations, paths, (file index, problem) of a damaged or unreadable file).
type Replayed = (u64, u64, Option<(usize, String)>);

/// The Python callbacks between batches (report.rs runs with them too).
pub(crate) struct Hooks {
    pub(crate) on_batch: Option<Py<PyAny>>,
    pub(crate) before_write: Option<Py<PyAny>>,
    pub(crate) program: Option<Py<PyAny>>,
    /// A `before_write` or `program` that raised: the run stops at the next batch with it.
    pub(crate) failed: Option<PyErr>,
}

impl ReplayHooks for Hooks {
    type Stop = PyErr;

    fn between_batches(&mut self, records: usize, bytes_read: u64) -> Result<(), PyErr> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        Python::attach(|py| {
            py.check_signals()?;
            if let Some(cb) = &self.on_batch {
                cb.call1(py, (records, bytes_read))?;
            }
            Ok(())
        })
    }

    fn before_write(&mut self) {
        if let (Some(cb), None) = (&self.before_write, &self.failed) {
            self.failed = Python::attach(|py| cb.call0(py).err());
        }
    }

    fn program(&mut self, linktype: u32) -> Option<Program> {
        let cb = self.program.as_ref()?;
        let got = Python::attach(|py| -> PyResult<Option<Vec<u8>>> {
            cb.call1(py, (linktype,))?.extract(py)
        });
        match got {
            Ok(insns) => insns.and_then(|raw| Program::from_bytes(&raw).ok()),
            Err(e) => {
                self.failed.get_or_insert(e);
                None
            }
        }
    }
}

/// Replay capture files into NDJSON on file descriptor `fd`, as ``hoptrace replay --json``
/// prints it: ``inputs`` as ``FileReader`` takes them. Returns ``(observations, paths,
/// error)``: error is ``(file index, problem)`` when a file was damaged or unreadable
/// (the paths read before the damage and the stats line were written), else None.
/// ``on_batch(records, bytes_read)`` is called between batches, ``before_write()`` before
/// each write (a progress line on the same terminal takes itself back); Ctrl-C stops
/// the run after the stats line (KeyboardInterrupt). Writes go through a duplicate of
/// ``fd``, every byte (short and interrupted writes are retried). ``program(linktype)``:
/// a path filter runs; it gives the classic BPF program (``struct bpf_insn`` bytes, as
/// libpcap compiled the expression) for frames of that link type, or None (never a match).
/// ``text=(numeric, detail, color)``: text for people instead, as ``hoptrace replay
/// --no-tui`` prints it (tracer.sinks.output ``TextSink`` with those ``TextOptions``).
#[pyfunction]
#[pyo3(signature = (inputs, fd, *, on_batch=None, before_write=None, program=None, text=None))]
fn replay_ndjson(
    py: Python<'_>,
    inputs: Vec<InputTuple>,
    fd: i32,
    on_batch: Option<Py<PyAny>>,
    before_write: Option<Py<PyAny>>,
    program: Option<Py<PyAny>>,
    text: Option<(bool, i8, bool)>,
) -> PyResult<Replayed> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "not a file descriptor: {fd}"
        )));
    }
    // SAFETY: borrow_raw needs `fd` open for the borrow's lifetime, which ends on this
    // line: the caller passed a descriptor it holds open (sys.stdout's), and the borrow
    // is only duplicated (dup(2), close-on-exec). A closed `fd` makes the dup fail, an
    // OSError. The File owns the duplicate and closes it; the caller's stays open.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let mut out = std::fs::File::from(dup);
    let mut files = FileSet::new(inputs_of(inputs));
    let mut cfg = EngineConfig {
        filter: program.is_some(),
        ..EngineConfig::default()
    };
    if let Some((numeric, detail, color)) = text {
        cfg.finish.format = Format::Text(TextOptions {
            numeric,
            detail: detail.clamp(-1, 2),
            color,
        });
    }
    let mut hooks = Hooks {
        on_batch,
        before_write,
        program,
        failed: None,
    };
    let got = py.detach(|| engine::replay_ndjson(&mut files, cfg, &mut out, &mut hooks));
    match got {
        Ok(s) => Ok((
            s.observations,
            s.paths,
            s.error.map(|e| (e.file, e.error.to_string())),
        )),
        Err(ReplayError::Write(e)) => Err(e.into()),
        Err(ReplayError::Stopped(e)) => Err(e),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(replay_ndjson, m)?)
}
