//! The engine from sightings to NDJSON: the join ([`Joiner`]) drives the finisher
//! ([`PathFinisher`]) batch by batch, as tests/reference/engine.py's `Engine.events()` and `run()`
//! drive tests/reference/correlate.py's `Correlator` into an `NdjsonSink`; and [`replay_ndjson`],
//! capture files ([`FileSet`]) through it into a writer, which is `hoptrace replay --json`.
//!
//! The contract, which tests/unit/test_core_engine.py holds byte for byte against the
//! Python engine:
//!
//! * per batch: the join runs over it (in chunks; each chunk's expiry step finishes
//!   paths, which the finisher judges right away, with what the join taught it so far:
//!   see finish.rs); then flows idle by the join's clock close. The batch's output is
//!   its steps' path lines (each step's in path-number order), then those flows;
//! * at the end of input (or at a capture error: what was read is shown): the open
//!   paths finish in slices of [`FLUSH_SLICE`] (the longest idle first; tracer/engine.py
//!   `_FLUSH_SLICE`, `Correlator.flush(max_paths)`), so a big end streams; once none is
//!   open every flow closes, and the flows follow the last slice;
//! * last, the stats line: sightings, paths, `lost_events` 0 (files lose nothing), and
//!   the time since the run started.
//!
//! With a path filter (`--filter`, tracer/filter.py's `PathFilter`), a path is shown when
//! the frame of any of its sightings matches the program compiled (by libpcap, in Python)
//! for its hop's link type, the captured length standing for the wire length; the join
//! carries each sighting's answer to its path (`feed_with`'s marks). A hidden path keeps
//! its number and its flow, and teaches what any path does, but writes no line and is not
//! counted; a flow lists only shown paths, and writes no line without one. A sighting
//! without frame bytes (a synthetic source's) is matched by a header rebuilt from its
//! fields (synth.rs) with the program for `LINKTYPE_RAW`, when the caller set one (a
//! replay never asks for it: a capture file's sightings have bytes).
//! The link type of a hop is the last one told for its (node, iface) names, as
//! `PathFilter.learn_linktype` keeps them.
//!
//! Output is written once per batch (one large write), every byte even when a write is
//! cut short or interrupted by a signal ([`Patient`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::bpf::Program;
use crate::correlate::{Finished, JoinConfig, JoinEvents, Joiner};
use crate::files::{FileError, FileSet};
use crate::finish::{FinishConfig, PathFinisher, PathSink};
use crate::labels::Labels;
use crate::obs::Obs;
use crate::synth::{synth_frame, LINKTYPE_RAW};

/// Paths finished per step at the end of input (tracer/engine.py `_FLUSH_SLICE`).
pub const FLUSH_SLICE: usize = 4096;

/// The correlator's settings (tests/reference/correlate.py's defaults unless a test changes them).
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub join: JoinConfig,
    /// Finishing's settings; `finish.format` says what is written: NDJSON, or the text
    /// for people (`Format::Text`, tracer/sinks/output.py's `TextSink`).
    pub finish: FinishConfig,
    pub flush_slice: usize,
    /// A path filter runs: each link type's program comes from [`Engine::set_program`]
    /// ([`ReplayHooks::program`] in a replay).
    pub filter: bool,
    /// Show at most this many paths (`--count`; see [`PathFinisher::set_limit`]).
    pub count: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let join = JoinConfig::default();
        EngineConfig {
            join,
            finish: FinishConfig {
                window_ns: join.window_ns,
                ..FinishConfig::default()
            },
            flush_slice: FLUSH_SLICE,
            filter: false,
            count: None,
        }
    }
}

/// The path filter's programs, and the link type of each hop by its names.
#[derive(Default)]
struct Filter {
    /// Link type -> its program (None: the expression means nothing there, never a match).
    programs: HashMap<u32, Option<Program>>,
    by_name: HashMap<(Vec<u8>, Vec<u8>), u32>,
    /// Each source hop's names, and (kept up to date) the link type they were last told.
    names: Vec<(Vec<u8>, Vec<u8>)>,
    hop_linktype: Vec<u32>,
    marks: Vec<bool>,
    /// A frameless sighting's header, rebuilt (see synth.rs).
    synth: Vec<u8>,
}

impl Filter {
    fn add_hop(&mut self, node: &[u8], iface: &[u8], linktype: u32) {
        let key = (node.to_vec(), iface.to_vec());
        self.by_name.insert(key.clone(), linktype);
        self.names.push(key);
        let by_name = &self.by_name;
        self.hop_linktype = self
            .names
            .iter()
            .map(|k| by_name.get(k).copied().unwrap_or(u32::MAX))
            .collect();
    }

    /// Whether each row's frame matches its hop's program. A sighting without frame bytes
    /// is matched by its header rebuilt from its fields, with the program for
    /// [`LINKTYPE_RAW`] when one was set (tracer/filter.py `keep_hops`).
    fn mark(&mut self, rows: &[Obs], frames: &[u8]) {
        let (programs, hop_linktype, synth) = (&self.programs, &self.hop_linktype, &mut self.synth);
        let raw = programs.get(&LINKTYPE_RAW).and_then(Option::as_ref);
        self.marks.clear();
        if programs.values().all(Option::is_none) {
            self.marks.resize(rows.len(), false); // no program: nothing matches
            return;
        }
        self.marks.extend(rows.iter().map(|o| {
            if o.frame_len == 0 {
                return match raw {
                    Some(p) => {
                        synth_frame(o, synth);
                        !synth.is_empty() && p.matches(synth, synth.len() as u32)
                    }
                    None => false,
                };
            }
            let program = hop_linktype
                .get(o.hop as usize)
                .and_then(|lt| programs.get(lt))
                .and_then(Option::as_ref);
            let start = usize::try_from(o.frame_off).unwrap_or(usize::MAX);
            let frame = frames
                .get(start..start.saturating_add(o.frame_len as usize))
                .unwrap_or_default();
            match program {
                Some(p) if !frame.is_empty() => p.matches(frame, o.frame_len),
                _ => false,
            }
        }));
    }
}

/// What the join teaches goes to the finisher; each step's paths are judged when it ends.
struct Learner {
    finisher: PathFinisher,
    /// A path filter runs: a path is shown when it is marked.
    filtered: bool,
}

impl JoinEvents for Learner {
    #[inline]
    fn claim(&mut self, family: u8, src: &[u8; 16], netns: u64, ts_ns: u64) -> bool {
        self.finisher.owners().claim(family, src, netns, ts_ns)
    }

    fn retract(&mut self, family: u8, src: &[u8; 16], netns: u64, first_ts: u64) {
        self.finisher.owners().retract(family, src, netns, first_ts);
    }

    fn step_ended(&mut self, out: &mut Finished) {
        if out.paths.is_empty() {
            return;
        }
        // The join handed the sightings out with the finisher's labels in `hop` (source
        // hop index -> the label interned by (node, iface): `Engine::add_hop`).
        self.finisher
            .finish_step_labelled(&out.paths, &out.obs, !self.filtered, out.unnamed);
        out.clear();
    }
}

/// Batches of sightings in, NDJSON out (see the module doc for the order of things).
pub struct Engine {
    joiner: Joiner,
    learner: Learner,
    out: Finished,
    observations: u64,
    flush_slice: usize,
    filter: Option<Filter>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut finisher = PathFinisher::new(cfg.finish);
        finisher.set_limit(cfg.count);
        Engine {
            // The finisher reads each path's sightings, so the join keeps them.
            joiner: Joiner::new(JoinConfig {
                keep_obs: true,
                ..cfg.join
            }),
            learner: Learner {
                finisher,
                filtered: cfg.filter,
            },
            out: Finished::default(),
            observations: 0,
            flush_slice: cfg.flush_slice.max(1),
            filter: cfg.filter.then(Filter::default),
        }
    }

    /// The source's next hop label (rows' `hop` index the labels in the order they are
    /// added), names as "surrogatepass" UTF-8, and the link type of its frames.
    pub fn add_hop(&mut self, node: &[u8], iface: &[u8], linktype: u32) {
        let label = self.learner.finisher.labels_mut().intern_wtf8(node, iface);
        let l = self.learner.finisher.labels().get(label);
        self.joiner.add_hop_label(l.node_id, label, l.unnamed);
        if let Some(f) = &mut self.filter {
            f.add_hop(node, iface, linktype);
        }
    }

    /// Where a header may change between two sightings of one packet: any namespace
    /// (`None`, replay), or only these (live: NAT rules or conntrack; see [`Joiner::set_nat_namespaces`]).
    pub fn set_nat_namespaces(&mut self, netns: Option<&[u64]>) {
        self.joiner.set_nat_namespaces(netns);
    }

    /// Annotate shown paths from `notes` (crate::annotate).
    pub fn set_notes(&mut self, notes: crate::annotate::Notes) {
        self.learner.finisher.set_notes(notes);
    }

    /// The annotation tables, when set.
    pub fn notes_mut(&mut self) -> Option<&mut crate::annotate::Notes> {
        self.learner.finisher.notes_mut()
    }

    /// Say who took the packets of paths that ended locally (crate::local).
    pub fn enable_locals(&mut self) {
        self.learner.finisher.enable_locals();
    }

    /// A recorded answer (a replay; crate::local).
    pub fn preset_local(&mut self, note: &crate::local::LocalNote) {
        self.learner.finisher.preset_local(note);
    }

    /// The table of who took what (crate::local), when enabled.
    pub fn locals_mut(&mut self) -> Option<&mut crate::local::Locals> {
        self.learner.finisher.locals_mut()
    }

    /// Say which connections a userland proxy relayed (crate::relay).
    pub fn enable_relays(&mut self) {
        self.learner.finisher.enable_relays();
    }

    /// A recorded relayed connection (a replay; crate::relay).
    pub fn preset_relay(&mut self, note: &crate::relay::RelayNote) {
        self.learner.finisher.enable_relays();
        if let Some(r) = self.learner.finisher.relays_mut() {
            r.preset(note);
        }
    }

    /// The table of relayed connections (crate::relay), when enabled.
    pub fn relays_mut(&mut self) -> Option<&mut crate::relay::Relays> {
        self.learner.finisher.relays_mut()
    }

    /// Hand each shown path and closed flow to `sink` too (`lines`: keep writing NDJSON;
    /// see [`PathFinisher::set_sink`]).
    pub fn set_sink(&mut self, sink: Box<dyn PathSink>, lines: bool) {
        self.learner.finisher.set_sink(sink, lines);
    }

    /// The sink, taken back.
    pub fn take_sink(&mut self) -> Option<Box<dyn PathSink>> {
        self.learner.finisher.take_sink()
    }

    /// The names the finished paths' `hop` fields index.
    pub fn labels(&self) -> &Labels {
        self.learner.finisher.labels()
    }

    /// Link types of the hops so far that the path filter has no program for yet.
    pub fn linktypes_without_program(&self) -> Vec<u32> {
        let Some(f) = &self.filter else {
            return Vec::new();
        };
        let mut lts: Vec<u32> = f
            .by_name
            .values()
            .copied()
            .filter(|lt| !f.programs.contains_key(lt))
            .collect();
        lts.sort_unstable();
        lts.dedup();
        lts
    }

    /// The path filter's program for frames of `linktype` (None: they never match).
    pub fn set_program(&mut self, linktype: u32, program: Option<Program>) {
        if let Some(f) = &mut self.filter {
            f.programs.insert(linktype, program);
        }
    }

    /// The name of drop reason `code` in the rows.
    pub fn set_drop_reason(&mut self, code: u32, name: &[u8]) {
        self.learner
            .finisher
            .labels_mut()
            .set_drop_reason_wtf8(code, name);
    }

    /// Where and when raw ICMP sockets were open: (netns, from_ns, to_ns), replacing the
    /// table (drops.rs: the original of a raw socket's copy is no loss).
    pub fn set_raw_sockets(&mut self, spans: &[(u64, u64, u64)]) {
        self.learner.finisher.set_raw_sockets(spans);
    }

    /// One batch (`now_ns`: a live source's clock): the paths that finish and the flows
    /// that close are written to the output. `frames`: the bytes rows' `frame_off` and
    /// `frame_len` point into (what a path filter matches).
    pub fn feed(&mut self, rows: &[Obs], frames: &[u8], now_ns: Option<u64>) {
        self.observations += rows.len() as u64;
        // A hop's line is ~400 bytes: room for the batch at once, not by doubling.
        self.learner
            .finisher
            .reserve_output(rows.len().saturating_mul(512));
        let marks = match &mut self.filter {
            Some(f) => {
                f.mark(rows, frames);
                f.marks.as_slice()
            }
            None => &[],
        };
        let (joiner, out, learner) = (&mut self.joiner, &mut self.out, &mut self.learner);
        joiner.feed_with(rows, marks, now_ns, out, learner);
        learner.finisher.take_flows(joiner.clock());
    }

    /// A live source's clock says `now_ns` and nothing was seen: paths idle since before
    /// `now_ns` less the window finish, flows idle long enough close.
    pub fn advance(&mut self, now_ns: u64) {
        self.feed(&[], &[], Some(now_ns));
    }

    /// The count limit is reached: nothing more will be shown (the caller stops feeding
    /// and flushes; flows still list the paths shown).
    pub fn done(&self) -> bool {
        self.learner.finisher.limit_reached()
    }

    /// End of input, one slice at a time: the next `flush_slice` open paths (the longest
    /// idle first) finish. False once nothing was left, after which every flow has closed
    /// and been written.
    pub fn flush_slice(&mut self) -> bool {
        let before = self.learner.finisher.paths();
        let (joiner, out, learner) = (&mut self.joiner, &mut self.out, &mut self.learner);
        joiner.flush_with(Some(self.flush_slice), out, learner);
        let finished = learner.finisher.paths() != before;
        // Who took the last paths' packets (crate::local) is asked after this slice: their
        // flows close at the next one, so that their lines can say it.
        let wait_locals = finished && learner.finisher.locals_mut().is_some();
        if joiner.open_paths() == 0 && !wait_locals {
            learner.finisher.close_flows();
        }
        let more = finished;
        if !more {
            learner.finisher.take_flows(joiner.clock());
        }
        more
    }

    /// Every open path finishes, then every flow closes.
    pub fn flush(&mut self) {
        while self.flush_slice() {}
    }

    /// The last line of a run.
    pub fn push_stats(&mut self, lost_events: u64, elapsed_s: f64) {
        self.learner
            .finisher
            .push_stats(self.observations, lost_events, elapsed_s);
    }

    /// Sightings fed so far.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// Paths finished (and written) so far.
    pub fn paths(&self) -> u64 {
        self.learner.finisher.paths()
    }

    /// Paths still open.
    pub fn open_paths(&self) -> usize {
        self.joiner.open_paths()
    }

    /// Output not written yet.
    pub fn pending_output(&self) -> &[u8] {
        self.learner.finisher.output()
    }

    /// Write what is ready to `w` (every byte: see [`Patient`]) and forget it.
    pub fn write_output<W: Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.learner.finisher.write_output(&mut Patient(w))
    }

    /// What is ready, lent to `f` then forgotten (the buffer is kept).
    pub fn with_output<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        self.learner.finisher.with_output(f)
    }

    /// What is ready, handed over.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.learner.finisher.take_output()
    }
}

/// A writer whose writes wait when the descriptor is non-blocking and full, so that
/// `write_all` (which retries a short write and an interrupted one) puts every byte out.
/// tracer/sinks/output.py `write_all` says why it matters: a slow reader and a signal while a
/// write is blocked once cost whole pages of NDJSON.
pub struct Patient<W>(pub W);

impl<W: Write> Write for Patient<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.0.write(buf) {
                // std has no poll(2): a short sleep instead, on the rare non-blocking stdout.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                got => return got,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// What the caller does between batches: a binding checks for Ctrl-C and draws progress.
pub trait ReplayHooks {
    type Stop;
    /// `records` more sightings were read (`bytes_read` bytes of the files so far) and
    /// their output written. An error stops the run: the stats line is written, then the
    /// error returned.
    fn between_batches(&mut self, records: usize, bytes_read: u64) -> Result<(), Self::Stop>;
    /// Output is about to be written (a progress line on the same terminal takes itself back).
    fn before_write(&mut self) {}
    /// The path filter's program for frames of `linktype`, asked once per link type when
    /// [`EngineConfig::filter`] is set (None: the expression means nothing there).
    fn program(&mut self, _linktype: u32) -> Option<Program> {
        None
    }
}

/// No hooks: run to the end.
pub struct NoHooks;

impl ReplayHooks for NoHooks {
    type Stop = std::convert::Infallible;
    fn between_batches(&mut self, _: usize, _: u64) -> Result<(), Self::Stop> {
        Ok(())
    }
}

/// How a replay ended well enough to have written its stats line.
#[derive(Debug)]
pub struct ReplaySummary {
    pub observations: u64,
    pub paths: u64,
    /// A file was damaged or unreadable: what it held before the damage was shown.
    pub error: Option<FileError>,
}

/// How a replay ended early.
#[derive(Debug)]
pub enum ReplayError<S> {
    /// The output could not be written (the reader left: `EPIPE`).
    Write(io::Error),
    /// A hook said stop; the stats line was written.
    Stopped(S),
}

fn put<W: Write, H: ReplayHooks>(engine: &mut Engine, w: &mut W, hooks: &mut H) -> io::Result<()> {
    if engine.pending_output().is_empty() {
        return Ok(());
    }
    hooks.before_write();
    engine.write_output(w)
}

/// `hoptrace replay --json` (or its text, as `cfg.finish.format` says): `files` through
/// the engine into `w`, batch by batch (see the module doc). Returns once the stats line
/// is written.
pub fn replay_ndjson<W: Write, H: ReplayHooks>(
    files: &mut FileSet,
    cfg: EngineConfig,
    w: &mut W,
    hooks: &mut H,
) -> Result<ReplaySummary, ReplayError<H::Stop>> {
    let t0 = Instant::now();
    let mut engine = Engine::new(cfg);
    let mut error = None;
    let mut stopped = None;
    let mut raws = crate::raw_block::RawSpans::new();
    loop {
        let batch = match files.next_batch() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        for h in files.new_hops() {
            engine.add_hop(&h.node, &h.iface, h.linktype);
        }
        for lt in engine.linktypes_without_program() {
            let program = hooks.program(lt);
            engine.set_program(lt, program);
        }
        for (code, name) in files.new_drop_reasons() {
            engine.set_drop_reason(*code, name);
        }
        for note in files.new_locals() {
            engine.preset_local(note);
        }
        for note in files.new_relays() {
            engine.preset_relay(note);
        }
        // A recording's raw socket spans: a NO_SOCKET free of ICMP is judged as live did.
        if raws.take_in(files.new_raw_sockets()) {
            engine.set_raw_sockets(&raws.spans());
        }
        engine.feed(&batch.rows, batch.frames.bytes(), None);
        let records = batch.rows.len();
        drop(batch);
        put(&mut engine, w, hooks).map_err(ReplayError::Write)?;
        if let Err(s) = hooks.between_batches(records, files.bytes_read()) {
            stopped = Some(s);
            break;
        }
    }
    if stopped.is_none() {
        while engine.flush_slice() {
            put(&mut engine, w, hooks).map_err(ReplayError::Write)?;
        }
    }
    engine.push_stats(0, t0.elapsed().as_secs_f64());
    put(&mut engine, w, hooks).map_err(ReplayError::Write)?;
    w.flush().map_err(ReplayError::Write)?;
    match stopped {
        Some(s) => Err(ReplayError::Stopped(s)),
        None => Ok(ReplaySummary {
            observations: engine.observations(),
            paths: engine.paths(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::{dir, has};

    const MS: u64 = 1_000_000;
    const WEB: u64 = 4026532466;
    const HOST: u64 = 4026531840;
    const INET: u64 = 4026532300;
    /// (node, iface, netns) of the source's hops, in the order the rows' `hop` indexes them.
    const HOPS: [(&str, &str, u64); 4] = [
        ("web", "eth0", WEB),
        ("host", "eth0", HOST),
        ("inet", "eth0", INET),
        ("host", "veth1", HOST),
    ];

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    const WEB_IP: [u8; 4] = [172, 17, 0, 2];
    const PUBLIC: [u8; 4] = [203, 0, 113, 2];
    const SERVER: [u8; 4] = [198, 51, 100, 8];

    /// A sighting of ICMP packet `ip_id` at hop `h`.
    fn at(h: u32, ts: u64, d: u8, src: [u8; 4], dst: [u8; 4], ip_id: u32) -> Obs {
        Obs {
            ts_ns: ts,
            hop: h,
            netns: HOPS[h as usize].2,
            dir: d,
            family: 4,
            proto: 1,
            has: has::ICMP | has::IP_ID,
            src: v4(src),
            dst: v4(dst),
            ip_id,
            icmp_type: 8,
            icmp_id: 7,
            ttl: 64,
            length: 84,
            ..Obs::default()
        }
    }

    /// web pings the server through MASQUERADE at `t` (4 sightings; the rewrite between
    /// the host's rx and tx).
    fn ping(t: u64, ip_id: u32) -> [Obs; 4] {
        [
            at(0, t, dir::TX, WEB_IP, SERVER, ip_id),
            at(3, t + 5_000, dir::RX, WEB_IP, SERVER, ip_id),
            at(1, t + 10_000, dir::TX, PUBLIC, SERVER, ip_id),
            at(2, t + 20_000, dir::RX, PUBLIC, SERVER, ip_id),
        ]
    }

    /// The server answers to the public address: seen leaving inet, arriving at the host.
    fn pong(t: u64, ip_id: u32) -> [Obs; 2] {
        let mut p = [
            at(2, t, dir::TX, SERVER, PUBLIC, ip_id),
            at(1, t + 10_000, dir::RX, SERVER, PUBLIC, ip_id),
        ];
        for o in &mut p {
            o.icmp_type = 0;
        }
        p
    }

    fn engine(cfg: EngineConfig) -> Engine {
        let mut e = Engine::new(cfg);
        for (node, iface, _) in HOPS {
            e.add_hop(node.as_bytes(), iface.as_bytes(), 1);
        }
        e
    }

    fn lines(e: &mut Engine) -> Vec<String> {
        String::from_utf8(e.take_output())
            .expect("ascii")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// (type, id, verdict or paths) of each line.
    fn summary(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let field = |k: &str| {
                    l.split(&format!("\"{k}\": "))
                        .nth(1)
                        .map(|v| v.split([',', '}']).next().unwrap_or("").to_owned())
                        .unwrap_or_default()
                };
                match field("type").as_str() {
                    "\"path\"" => format!("path {} {}", field("id"), field("verdict")),
                    "\"flow\"" => format!(
                        "flow {} {}",
                        field("id"),
                        l.split("\"paths\": ").nth(1).unwrap_or("")
                    ),
                    t => format!("{t} {} {}", field("observations"), field("paths")),
                }
                .replace('"', "")
            })
            .collect()
    }

    #[test]
    fn a_batch_writes_the_paths_it_finished_then_the_flows_it_closed() {
        let mut e = engine(EngineConfig::default());
        // Two pings far apart; the second's batch finishes the first (idle past the window)
        // and, 6 s later, closes its flow (idle past flow_idle_ns).
        e.feed(&ping(1_000 * MS, 1), &[], None);
        assert_eq!(
            lines(&mut e),
            Vec::<String>::new(),
            "nothing has finished yet"
        );
        e.feed(&ping(7_000 * MS, 2), &[], None);
        // Nothing taught that the server lives at inet: the ping arriving there is incomplete.
        assert_eq!(
            summary(&lines(&mut e)),
            ["path p1 incomplete", "flow f1 [p1]}"]
        );
        e.flush();
        e.push_stats(0, 0.5);
        let end = lines(&mut e);
        assert_eq!(
            summary(&end),
            ["path p2 incomplete", "flow f2 [p2]}", "stats 8 2"]
        );
        assert!(
            end[2].ends_with(r#""lost_events": 0, "elapsed_s": 0.5}"#),
            "{}",
            end[2]
        );
        assert_eq!((e.observations(), e.paths(), e.open_paths()), (8, 2, 0));
    }

    #[test]
    fn what_a_first_sighting_teaches_is_known_when_the_step_judges() {
        // The ping's first sighting leaves web from 172.17.0.2: a packet to it arriving at
        // web (p3) is delivered. The pong's leaves inet from the server: the ping, which
        // finishes in the same step, is delivered. The pong arrives at the host to
        // 203.0.113.2, which the ping's copy never taught (not a first sighting): incomplete.
        // The flow lists its paths in the order they finished (idle order: p1, p3, p2).
        let mut e = engine(EngineConfig::default());
        let mut back = at(0, 1_000 * MS + 30_000, dir::RX, SERVER, WEB_IP, 9);
        back.icmp_type = 0;
        let mut rows = ping(1_000 * MS, 1).to_vec();
        rows.extend(pong(1_000 * MS + 25_000, 2));
        rows.push(back);
        e.feed(&rows, &[], None);
        e.flush();
        assert_eq!(
            summary(&lines(&mut e)),
            [
                "path p1 delivered",
                "path p2 incomplete",
                "path p3 delivered",
                "flow f1 [p1, p3, p2]}"
            ]
        );
    }

    #[test]
    fn a_first_sighting_that_comes_late_takes_back_what_the_copy_taught() {
        // Chunks of one row: each sighting is its own step, as across reader batches.
        let cfg = EngineConfig {
            join: JoinConfig {
                chunk_rows: 1,
                ..JoinConfig::default()
            },
            ..EngineConfig::default()
        };
        let [first, inner, copy, arrival] = ping(1_000 * MS, 1);
        let answer = pong(1_000 * MS + 40 * MS, 2);
        let run = |rows: &[Obs]| {
            let mut e = engine(cfg);
            e.feed(rows, &[], None);
            e.flush();
            summary(&lines(&mut e))
        };
        // In order, the copy teaches nothing (it is not a first sighting): incomplete.
        let in_order = run(&[first, inner, copy, arrival, answer[0], answer[1]]);
        assert_eq!(in_order[1], "path p2 incomplete");
        // The copy first: it teaches the host sends from 203.0.113.2, then an earlier
        // sighting takes that back, and the pong is judged as above.
        assert_eq!(
            run(&[copy, inner, first, arrival, answer[0], answer[1]]),
            in_order
        );
        // Without the true first sighting the claim stands: the pong is delivered.
        assert_eq!(
            run(&[copy, arrival, answer[0], answer[1]])[1],
            "path p2 delivered"
        );
    }

    #[test]
    fn the_end_finishes_in_slices_longest_idle_first_each_by_number_then_the_flows() {
        let cfg = EngineConfig {
            flush_slice: 2,
            ..EngineConfig::default()
        };
        let mut e = engine(cfg);
        // Numbered in order of their first sighting, idle in the reverse order.
        let t = 1_000 * MS;
        let rows = [
            at(3, t, dir::RX, WEB_IP, SERVER, 1),
            at(3, t + 1, dir::RX, WEB_IP, SERVER, 2),
            at(3, t + 2, dir::RX, WEB_IP, SERVER, 3),
            at(1, t + 3, dir::TX, PUBLIC, SERVER, 3),
            at(1, t + 4, dir::TX, PUBLIC, SERVER, 2),
            at(1, t + 5, dir::TX, PUBLIC, SERVER, 1),
        ];
        e.feed(&rows, &[], None);
        assert!(e.flush_slice());
        assert_eq!(summary(&lines(&mut e)), ["path p2 left", "path p3 left"]);
        assert!(e.flush_slice());
        assert_eq!(summary(&lines(&mut e)), ["path p1 left"]);
        assert!(!e.flush_slice());
        assert_eq!(summary(&lines(&mut e)), ["flow f1 [p3, p2, p1]}"]);
        assert!(!e.flush_slice(), "nothing more");
        assert_eq!(lines(&mut e), Vec::<String>::new());
    }

    #[test]
    fn a_count_shows_the_first_paths_in_output_order_and_flows_list_only_them() {
        let cfg = EngineConfig {
            count: Some(2),
            ..EngineConfig::default()
        };
        let mut e = engine(cfg);
        // Three pings of one flow in one step, finishing in the reverse of their numbers.
        let t = 1_000 * MS;
        let rows = [
            at(3, t, dir::RX, WEB_IP, SERVER, 1),
            at(3, t + 1, dir::RX, WEB_IP, SERVER, 2),
            at(3, t + 2, dir::RX, WEB_IP, SERVER, 3),
            at(1, t + 3, dir::TX, PUBLIC, SERVER, 3),
            at(1, t + 4, dir::TX, PUBLIC, SERVER, 2),
            at(1, t + 5, dir::TX, PUBLIC, SERVER, 1),
        ];
        e.feed(&rows, &[], None);
        assert!(!e.done());
        e.advance(t + 1_000 * MS);
        assert_eq!(summary(&lines(&mut e)), ["path p1 left", "path p2 left"]);
        assert!(e.done());
        // More traffic: judged (its flow), never shown.
        e.feed(&ping(2_000 * MS, 4), &[], None);
        e.flush();
        assert_eq!(summary(&lines(&mut e)), ["flow f1 [p2, p1]}"]);
        assert_eq!(e.paths(), 2);
    }

    #[test]
    fn an_idle_clock_finishes_paths_and_closes_flows() {
        let mut e = engine(EngineConfig::default());
        e.feed(&ping(1_000 * MS, 1), &[], None);
        e.advance(1_400 * MS);
        assert_eq!(lines(&mut e), Vec::<String>::new(), "within the window");
        e.advance(1_600 * MS);
        assert_eq!(summary(&lines(&mut e)), ["path p1 incomplete"]);
        e.advance(7_000 * MS);
        assert_eq!(summary(&lines(&mut e)), ["flow f1 [p1]}"]);
    }

    #[test]
    fn names_come_out_as_python_writes_them() {
        let mut e = Engine::new(EngineConfig::default());
        e.add_hop(b"w\xed\xb3\xbfb", b"eth\"0", 1);
        e.feed(&[at(0, MS, dir::TX, WEB_IP, SERVER, 1)], &[], None);
        e.flush();
        let out = lines(&mut e);
        assert!(
            out[0].contains(r#""node": "w\udcffb", "netns": 4026532466, "iface": "eth\"0""#),
            "{}",
            out[0]
        );
    }

    #[test]
    fn a_filter_shows_a_path_when_any_of_its_frames_matches() {
        use crate::bpf::{Insn, Program};
        // ldh [18] (the IPv4 ID behind Ethernet); jeq #99; ret #65535; ret #0
        let ip_id_99 = Program::new(&[
            Insn::new(0x28, 0, 0, 18),
            Insn::new(0x15, 0, 1, 99),
            Insn::new(0x06, 0, 0, 65535),
            Insn::new(0x06, 0, 0, 0),
        ])
        .expect("valid");
        let cfg = EngineConfig {
            filter: true,
            ..EngineConfig::default()
        };
        let mut e = engine(cfg);
        assert_eq!(e.linktypes_without_program(), [1]);
        e.set_program(1, Some(ip_id_99));
        assert_eq!(e.linktypes_without_program(), Vec::<u32>::new());
        let mut rows = ping(1_000 * MS, 1).to_vec();
        rows.extend(pong(1_000 * MS + 25_000, 2));
        // Each row's frame: Ethernet + IPv4 with ID 99 for the ping's last sighting only.
        let mut frames = Vec::new();
        for (k, o) in rows.iter_mut().enumerate() {
            let mut f = vec![0u8; 34];
            f[12] = 0x08;
            f[14] = 0x45;
            f[18..20].copy_from_slice(&(if k == 3 { 99u16 } else { 1 }).to_be_bytes());
            o.frame_off = frames.len() as u64;
            o.frame_len = f.len() as u32;
            frames.extend_from_slice(&f);
        }
        e.feed(&rows, &frames, None);
        e.flush();
        e.push_stats(0, 0.0);
        // The pong (p2) is hidden: no line, not counted, not in its flow.
        assert_eq!(
            summary(&lines(&mut e)),
            ["path p1 delivered", "flow f1 [p1]}", "stats 6 1"]
        );
    }

    /// Writes at most 3 bytes a call, and every other call fails as a signal or a full
    /// non-blocking pipe would.
    struct Grudging {
        got: Vec<u8>,
        calls: usize,
    }

    impl Write for Grudging {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            match self.calls % 4 {
                1 => Err(io::ErrorKind::Interrupted.into()),
                3 => Err(io::ErrorKind::WouldBlock.into()),
                _ => {
                    let n = buf.len().min(3);
                    self.got.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_byte_goes_out_through_short_interrupted_and_blocked_writes() {
        let mut e = engine(EngineConfig::default());
        e.feed(&ping(1_000 * MS, 1), &[], None);
        e.flush();
        let want = e.pending_output().to_vec();
        assert!(want.len() > 100);
        let mut w = Grudging {
            got: Vec::new(),
            calls: 0,
        };
        e.write_output(&mut w).expect("all of it");
        assert_eq!(w.got, want);
        assert!(e.pending_output().is_empty());
    }

    /// A pcap (microseconds, Ethernet) of ICMP echo requests from web, one per ms.
    fn pcap(path: &std::path::Path, n: u32, cut: usize) {
        let mut f = Vec::new();
        for v in [0xA1B2_C3D4u32, 0x0004_0002, 0, 0, 65535, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for k in 0..n {
            let mut fr = vec![0u8; 12];
            fr.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28]);
            fr.extend_from_slice(&(k as u16).to_be_bytes());
            fr.extend_from_slice(&[0x40, 0, 64, 1, 0, 0]);
            fr.extend_from_slice(&WEB_IP);
            fr.extend_from_slice(&SERVER);
            fr.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
            for v in [1_700_000_000, k * 1000, fr.len() as u32, fr.len() as u32] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&fr);
        }
        f.truncate(f.len() - cut);
        std::fs::write(path, f).expect("temp file");
    }

    fn files(path: &std::path::Path) -> FileSet {
        FileSet::with_sizes(
            vec![crate::files::Input {
                origin: crate::reader::Origin::Path(path.to_owned()),
                stem: b"web".to_vec(),
                label: None,
            }],
            1 << 20,
            100,
        )
    }

    struct Count {
        batches: usize,
        records: usize,
        stop_after: usize,
    }

    impl ReplayHooks for Count {
        type Stop = &'static str;
        fn between_batches(
            &mut self,
            records: usize,
            _bytes_read: u64,
        ) -> Result<(), &'static str> {
            self.batches += 1;
            self.records += records;
            if self.batches == self.stop_after {
                return Err("stop");
            }
            Ok(())
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hoptrace-engine-{}-{name}", std::process::id()))
    }

    #[test]
    fn replay_shows_what_a_damaged_file_held_then_its_stats_then_the_error() {
        let p = tmp("cut.pcap");
        pcap(&p, 250, 5);
        let mut w = Vec::new();
        let mut hooks = Count {
            batches: 0,
            records: 0,
            stop_after: 0,
        };
        let got = replay_ndjson(&mut files(&p), EngineConfig::default(), &mut w, &mut hooks);
        let _ = std::fs::remove_file(&p);
        let s = got.expect("a capture error is no run error");
        assert_eq!((s.observations, s.paths, hooks.records), (249, 249, 249));
        assert_eq!(hooks.batches, 3, "batches of 100 rows");
        assert!(s.error.is_some_and(|e| e.file == 0));
        let text = String::from_utf8(w).expect("ascii");
        let last = text.lines().last().unwrap_or("");
        assert!(last.starts_with(r#"{"type": "stats", "observations": 249, "paths": 249, "lost_events": 0, "elapsed_s": "#), "{last}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(r#""type": "path""#))
                .count(),
            249
        );
    }

    #[test]
    fn a_hook_that_says_stop_gets_the_stats_line_and_no_flush() {
        let p = tmp("stop.pcap");
        pcap(&p, 250, 0);
        let mut w = Vec::new();
        let mut hooks = Count {
            batches: 0,
            records: 0,
            stop_after: 1,
        };
        let got = replay_ndjson(&mut files(&p), EngineConfig::default(), &mut w, &mut hooks);
        let _ = std::fs::remove_file(&p);
        assert!(matches!(got, Err(ReplayError::Stopped("stop"))));
        let text = String::from_utf8(w).expect("ascii");
        let lines: Vec<&str> = text.lines().collect();
        // 100 pings 1 ms apart: those idle past the 500 ms window finished, the rest were open.
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].starts_with(r#"{"type": "stats", "observations": 100, "paths": 0,"#));
    }

    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_left_ends_the_run() {
        let p = tmp("gone.pcap");
        pcap(&p, 20, 0);
        let got = replay_ndjson(
            &mut files(&p),
            EngineConfig::default(),
            &mut Gone,
            &mut NoHooks,
        );
        let _ = std::fs::remove_file(&p);
        assert!(matches!(got, Err(ReplayError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe));
    }
}
