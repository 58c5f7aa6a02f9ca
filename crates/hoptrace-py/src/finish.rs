//! `tracer._core.PathFinisher`: finished paths in, NDJSON bytes out
//! (hoptrace_core::finish). Paths cross in batches: one numpy array of sightings
//! (OBS_DTYPE rows viewed as bytes), the number of hops and the number of each path.

use std::collections::HashMap;

use hoptrace_core::finish::{FinishConfig, PathFinisher as Core};
use hoptrace_core::obs::{read_rows, ROW_SIZE};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn addr16(family: u8, addr: &[u8]) -> PyResult<[u8; 16]> {
    let want = if family == 4 { 4 } else { 16 };
    if addr.len() < want || addr.len() > 16 {
        return Err(PyValueError::new_err(format!(
            "an address of family {family} takes {want} to 16 bytes, not {}",
            addr.len()
        )));
    }
    let mut a = [0u8; 16];
    a[..addr.len()].copy_from_slice(addr);
    Ok(a)
}

/// Finished paths in, NDJSON out: NAT events, verdicts, flows, and the lines
/// `hoptrace replay --json` prints (see hoptrace_core::finish for the protocol).
#[pyclass(module = "tracer._core", name = "PathFinisher")]
pub struct PathFinisher {
    core: Core,
}

#[pymethods]
impl PathFinisher {
    #[new]
    #[pyo3(signature = (*, window_ns=500_000_000, flow_idle_ns=5_000_000_000, max_flow_paths=1000))]
    fn new(window_ns: u64, flow_idle_ns: u64, max_flow_paths: usize) -> Self {
        PathFinisher {
            core: Core::new(FinishConfig {
                window_ns,
                flow_idle_ns,
                max_flow_paths,
                ..FinishConfig::default()
            }),
        }
    }

    /// One expiry step: the paths that finished, in the order they finished.
    ///
    /// ``rows``: their sightings, path after path, each path's in path order (an
    /// ``obs_dtype()`` array viewed as ``uint8``); ``lens``: hops per path; ``nums``: path
    /// numbers; ``hops``: the (node, iface) label table the rows' ``hop`` indexes;
    /// ``drop_reasons``: code -> name for the rows' drop reasons.
    fn finish(
        &mut self,
        py: Python<'_>,
        rows: PyReadonlyArray1<'_, u8>,
        lens: PyReadonlyArray1<'_, u32>,
        nums: PyReadonlyArray1<'_, u64>,
        hops: Vec<(String, String)>,
        drop_reasons: HashMap<u32, String>,
    ) -> PyResult<()> {
        let raw = rows
            .as_slice()
            .map_err(|_| PyValueError::new_err("rows must be a contiguous uint8 array"))?;
        if raw.len() % ROW_SIZE != 0 {
            return Err(PyValueError::new_err(format!(
                "rows hold {} bytes, not a whole number of {ROW_SIZE}-byte sightings",
                raw.len()
            )));
        }
        let lens = lens.as_array().to_vec();
        let nums = nums.as_array().to_vec();
        if lens.len() != nums.len() {
            return Err(PyValueError::new_err(format!(
                "{} path lengths for {} path numbers",
                lens.len(),
                nums.len()
            )));
        }
        let mut obs = read_rows(raw);
        let total: u64 = lens.iter().map(|&n| u64::from(n)).sum();
        if total != obs.len() as u64 {
            return Err(PyValueError::new_err(format!(
                "path lengths add up to {total} sightings, the rows hold {}",
                obs.len()
            )));
        }
        let labels = self.core.labels_mut();
        let remap: Vec<u32> = hops
            .iter()
            .map(|(node, iface)| labels.intern(node, iface))
            .collect();
        labels.clear_drop_reasons();
        for (code, name) in &drop_reasons {
            labels.set_drop_reason(*code, name);
        }
        for o in &mut obs {
            o.hop = remap.get(o.hop as usize).copied().unwrap_or(u32::MAX);
        }
        let core = &mut self.core;
        // A hop's line is ~400 bytes: room for the batch at once, not by doubling.
        core.reserve_output(obs.len().saturating_mul(512));
        py.detach(|| {
            let mut at = 0usize;
            for (&n, &num) in lens.iter().zip(&nums) {
                let end = at + n as usize;
                if let Some(path) = obs.get(at..end) {
                    core.finish(num, path);
                }
                at = end;
            }
            core.end_step();
        });
        Ok(())
    }

    /// Where and when raw ICMP sockets were open: (netns, from_ns, to_ns) spans.
    fn set_raw_sockets(&mut self, spans: Vec<(u64, u64, u64)>) {
        self.core.set_raw_sockets(&spans);
    }

    /// A packet from ``addr`` (raw bytes) was first seen leaving ``netns`` at ``ts_ns``.
    /// True when the address was new.
    fn claim(&mut self, family: u8, addr: &[u8], netns: u64, ts_ns: u64) -> PyResult<bool> {
        let a = addr16(family, addr)?;
        Ok(self.core.owners().claim(family, &a, netns, ts_ns))
    }

    /// A claim made at ``first_ts`` was wrong (the path's true first sighting came late).
    fn retract(&mut self, family: u8, addr: &[u8], netns: u64, first_ts: u64) -> PyResult<()> {
        let a = addr16(family, addr)?;
        self.core.owners().retract(family, &a, netns, first_ts);
        Ok(())
    }

    /// ``addr`` (text) belongs to ``netns``, e.g. from topology.
    fn learn_address(&mut self, netns: u64, addr: &str) -> PyResult<()> {
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {addr:?}")))?;
        let (family, a) = match ip {
            std::net::IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (4, a)
            }
            std::net::IpAddr::V6(v6) => (6, v6.octets()),
        };
        self.core.owners().learn(family, &a, netns);
        Ok(())
    }

    /// The sightings' clock is at ``clock_ns``: idle flows close and their lines follow.
    fn take_flows(&mut self, clock_ns: u64) {
        self.core.take_flows(clock_ns);
    }

    /// End of input with no path open: every open flow closes.
    fn close_flows(&mut self) {
        self.core.close_flows();
    }

    /// The stats line, the last of a run.
    fn stats(&mut self, observations: u64, lost_events: u64, elapsed_s: f64) {
        self.core.push_stats(observations, lost_events, elapsed_s);
    }

    /// The NDJSON written since the last call, as a uint8 array (no copy).
    fn take<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        PyArray1::from_vec(py, self.core.take_output())
    }

    /// Paths finished so far.
    #[getter]
    fn paths(&self) -> u64 {
        self.core.paths()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PathFinisher>()
}
