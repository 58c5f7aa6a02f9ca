//! `tracer._core.replay_stages`: `hoptrace replay --json`'s pipeline cut after a stage,
//! timed inside the core (bench/replay_bench.py prints it; no Python runs while it is
//! timed). Each call is one whole pass over the files, every stage including the ones
//! before it, so a stage's own cost is its time minus the previous stage's:
//!
//! * `read`: the capture files' records (pcap/pcapng blocks, options, comments found),
//!   file by file, nothing decoded;
//! * `decode`: the files as the engine gets them (`FileSet`: frames decoded, hop labels,
//!   comment metadata, several files merged by time);
//! * `correlate`: + the engine's join and finishing (links, verdicts, flows), every path
//!   hidden as a path filter that matches nothing hides it, so no line is rendered;
//! * `render`: the whole `replay --json` (`engine::replay_ndjson`: + NAT diffs, path,
//!   flow and stats lines) into a writer that discards them.
//!
//! The stages read the files in this thread, one after the other; `replay` is `render`
//! as `replay --json` runs it, the files read and decoded ahead by a thread of their own
//! (`FileSet`'s read-ahead), which overlaps reading with the rest.

use std::io;
use std::time::Instant;

use hoptrace_core::engine::{self, EngineConfig, NoHooks};
use hoptrace_core::files::FileSet;
use hoptrace_core::reader::FileReader;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::reader::{inputs_of, InputTuple};

/// The stages, in pipeline order.
const STAGES: [&str; 4] = ["read", "decode", "correlate", "render"];

/// One pass up to and including `stage`: (records, wall seconds) or the file's problem.
fn run(stage: &str, inputs: Vec<InputTuple>) -> Result<(u64, f64), String> {
    let inputs = inputs_of(inputs);
    let files = |inputs| {
        let mut f = FileSet::new(inputs);
        f.set_read_ahead(stage == "replay");
        f
    };
    let t0 = Instant::now();
    let records = match stage {
        "read" => {
            let mut n = 0u64;
            for input in inputs {
                let mut r = FileReader::new(input.origin);
                while let Some(c) = r.next_chunk().map_err(|e| e.to_string())? {
                    n += c.recs.len() as u64;
                }
            }
            n
        }
        "decode" => {
            let mut files = files(inputs);
            let mut n = 0u64;
            while let Some(b) = files.next_batch().map_err(|e| e.error.to_string())? {
                n += b.rows.len() as u64;
            }
            n
        }
        "correlate" => {
            let mut files = files(inputs);
            // A path filter with no program for any link type: every path is joined and
            // judged, none is shown, so nothing is rendered but the stats line.
            let mut eng = engine::Engine::new(EngineConfig {
                filter: true,
                ..EngineConfig::default()
            });
            while let Some(b) = files.next_batch().map_err(|e| e.error.to_string())? {
                for h in files.new_hops() {
                    eng.add_hop(&h.node, &h.iface, h.linktype);
                }
                eng.feed(&b.rows, b.frames.bytes(), None);
                eng.take_output();
            }
            while eng.flush_slice() {
                eng.take_output();
            }
            eng.observations()
        }
        "render" | "replay" => {
            let mut files = files(inputs);
            let cfg = EngineConfig::default();
            let s = engine::replay_ndjson(&mut files, cfg, &mut io::sink(), &mut NoHooks)
                .map_err(|e| format!("{e:?}"))?;
            if let Some(e) = s.error {
                return Err(e.error.to_string());
            }
            s.observations
        }
        _ => {
            return Err(format!(
                "unknown stage {stage:?}: one of {}, replay",
                STAGES.join(", ")
            ))
        }
    };
    Ok((records, t0.elapsed().as_secs_f64()))
}

/// One pass of `hoptrace replay --json` over ``inputs`` (as ``FileReader`` takes them) up
/// to ``stage``: "read", "decode", "correlate" (join and finish, nothing rendered) or
/// "render" (the whole replay into a sink), or "replay" (render as ``replay --json`` runs
/// it: the files read ahead by a thread of their own). Returns ``(records, wall seconds)`` measured
/// in the core, with the GIL released; a damaged file or an unknown stage is a ValueError.
#[pyfunction]
fn replay_stages(py: Python<'_>, inputs: Vec<InputTuple>, stage: String) -> PyResult<(u64, f64)> {
    py.detach(|| run(&stage, inputs))
        .map_err(PyValueError::new_err)
}

/// The stage names in pipeline order.
#[pyfunction]
fn replay_stage_names() -> Vec<&'static str> {
    STAGES.to_vec()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(replay_stages, m)?)?;
    m.add_function(wrap_pyfunction!(replay_stage_names, m)?)
}
