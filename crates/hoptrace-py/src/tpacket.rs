//! `tracer._core.TapReader`: the taps' TPACKET_V3 rings read in a Rust thread that never
//! holds the GIL, and `tracer._core.TapReorder`: the same reorder window fed with block
//! bytes (what the tests compare with the Python oracle, tests/reference/taps.py).
//!
//! Python opens each packet socket inside its namespace, sets the filter, TPACKET_V3 and
//! the ring, and hands the fd and the ring's geometry to `TapReader.add`, which keeps a
//! duplicate of the fd and maps the ring. The consumer calls `take` ~20 times a second:
//! it copies the frames of every block the kernel retired into the reorder window
//! (hoptrace_core::tpacket), hands each block back at once, and gets decoded `OBS_DTYPE`
//! rows in time order. The reader thread polls the fds and drains the rings itself only
//! when the consumer has not for `drain_ms` (busy or stalled), so no ring overflows.
//!
//! The only `unsafe` of the taps lives here: mapping the ring, and viewing its blocks.
//! The ring's ownership protocol (linux/Documentation/networking/packet_mmap.rst): a
//! block belongs to user space while its `block_status` has TP_STATUS_USER. That word is
//! read with Acquire (the kernel's frames are visible after it) and written back with a
//! Release store of TP_STATUS_KERNEL after the block's bytes were copied; the bytes of a
//! block are viewed as a slice only between the two.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hoptrace_core::tpacket::{
    HopInfo, Released, Reorder, TapMeta, BLOCK_STATUS_OFF, TP_STATUS_KERNEL, TP_STATUS_USER,
};
use numpy::PyArray1;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::mm::{MapFlags, ProtFlags};

/// A hop table row from Python: (netns, ifindex, link type).
type PyHop = (u64, i32, u32);
/// Released rows (uint8, view them as obs_dtype()), their frame bytes, the watermark.
type PyReleased<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyBytes>, u64);

fn hop_table(hops: &[PyHop]) -> Vec<HopInfo> {
    hops.iter()
        .map(|&(netns, ifindex, linktype)| HopInfo {
            netns,
            ifindex,
            linktype,
        })
        .collect()
}

fn to_py(py: Python<'_>, r: Released) -> PyReleased<'_> {
    (
        PyArray1::from_vec(py, r.rows),
        PyBytes::new(py, &r.frames),
        r.mark,
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock (a panic elsewhere while held) still holds a whole value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One tap's mapped ring.
struct Ring {
    id: u64,
    base: NonNull<u8>,
    block_size: usize,
    block_nr: usize,
    cur: usize,
    meta: TapMeta,
}

// SAFETY: the mapping is owned by exactly one Ring (never aliased by another Ring or by
// Python), and the reader thread that owns the Ring is the only one to touch it.
unsafe impl Send for Ring {}

impl Ring {
    /// Duplicate `fd` and map its ring of `block_nr` blocks of `block_size` bytes; the
    /// duplicate (for poll) comes back beside the mapping, which does not need it.
    fn map(
        id: u64,
        fd: i32,
        block_size: usize,
        block_nr: usize,
        meta: TapMeta,
    ) -> PyResult<(Ring, OwnedFd)> {
        if block_size < 64 || block_size % 8 != 0 || block_nr == 0 {
            return Err(PyValueError::new_err(format!(
                "bad ring geometry: {block_nr} blocks of {block_size} bytes"
            )));
        }
        let len = block_size
            .checked_mul(block_nr)
            .ok_or_else(|| PyValueError::new_err("ring size overflows"))?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("bad file descriptor {fd}")));
        }
        // SAFETY: the caller (TapSource) holds the socket open during this call; the
        // duplicate made at once is ours, whatever Python does with its fd later.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let fd = rustix::io::fcntl_dupfd_cloexec(borrowed, 3)
            .map_err(|e| PyOSError::new_err(format!("cannot duplicate the tap's fd: {e}")))?;
        // SAFETY: a fresh shared mapping of the socket's ring (no address hint, so no
        // existing mapping is replaced), unmapped only in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(|e| PyOSError::new_err(format!("cannot map the tap's ring: {e}")))?;
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| PyOSError::new_err("cannot map the tap's ring: null mapping"))?;
        let ring = Ring {
            id,
            base,
            block_size,
            block_nr,
            cur: 0,
            meta,
        };
        Ok((ring, fd))
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: i < block_nr, so the word lies inside the mapping (block_size >= 64),
        // 4-aligned (page-aligned mapping, block_size % 8 == 0); the kernel accesses it
        // as a u32 too, and the mapping lives as long as &self.
        unsafe {
            AtomicU32::from_ptr(
                self.base
                    .as_ptr()
                    .add(i * self.block_size + BLOCK_STATUS_OFF)
                    .cast::<u32>(),
            )
        }
    }

    /// Copy the frames of every block the kernel retired, in ring order, into `into`,
    /// handing each back at once; returns how many blocks.
    fn drain(&mut self, into: &mut Reorder) -> usize {
        let mut k = 0;
        while k < self.block_nr {
            let i = self.cur;
            if self.status(i).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            {
                // SAFETY: the block is user space's (TP_STATUS_USER, read with Acquire
                // above): the kernel does not write it until the Release store below,
                // after the slice's last use; it lies inside the mapping.
                let block = unsafe {
                    std::slice::from_raw_parts(
                        self.base.as_ptr().add(i * self.block_size),
                        self.block_size,
                    )
                };
                into.push_block(block, self.meta);
            }
            self.status(i).store(TP_STATUS_KERNEL, Ordering::Release);
            self.cur = if i + 1 < self.block_nr { i + 1 } else { 0 };
            k += 1;
        }
        k
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Ring::map, with its length; no slice or atomic
        // reference into it outlives a &self borrow, so none is left.
        let _ = unsafe {
            rustix::mm::munmap(self.base.as_ptr().cast(), self.block_size * self.block_nr)
        };
    }
}

enum Cmd {
    Add(Ring, OwnedFd),
    Remove(u64),
    Retag(u64, u32),
}

#[derive(Default)]
struct Done {
    finished: bool,
    panic: Option<String>,
}

/// The mapped rings and the window their frames wait in, behind one lock: whoever drains
/// (the consumer at each `take`, the reader thread when the consumer is late) copies every
/// retired block into the window at once.
struct State {
    rings: Vec<Ring>,
    window: Reorder,
    /// The window `take` left behind last time, emptied, its buffers kept: the reader
    /// fills it while `take` releases (no fresh buffers per batch).
    spare: Reorder,
    last_drain: Instant,
}

impl State {
    /// Every ring's retired blocks into the window; sheds beyond `max_pending`.
    fn drain(&mut self, max_pending: usize) {
        for r in &mut self.rings {
            r.drain(&mut self.window);
        }
        // A consumer that cannot keep up: shed the oldest, counted.
        self.window.shed(max_pending);
        self.last_drain = Instant::now();
    }
}

struct Shared {
    state: Mutex<State>,
    cmds: Mutex<Vec<Cmd>>,
    errored: Mutex<Vec<u64>>,
    stop: AtomicBool,
    done: Mutex<Done>,
    done_cv: Condvar,
    max_pending: usize,
    /// The frame bytes of the batch `take` releases, reused from batch to batch (copied
    /// into the batch's bytes object).
    frames: Mutex<Vec<u8>>,
}

struct Loop {
    shared: Arc<Shared>,
    poll_ms: u64,
    drain: Duration,
    /// The rings' fds, polled without the lock (the mappings live in `State`).
    fds: Vec<(u64, OwnedFd)>,
}

impl Loop {
    fn apply(&mut self) {
        let cmds = std::mem::take(&mut *lock(&self.shared.cmds));
        if cmds.is_empty() {
            return;
        }
        let mut st = lock(&self.shared.state);
        for cmd in cmds {
            match cmd {
                Cmd::Add(ring, fd) => {
                    self.fds.push((ring.id, fd));
                    st.rings.push(ring);
                }
                Cmd::Remove(id) => {
                    self.fds.retain(|(i, _)| *i != id);
                    st.rings.retain(|r| r.id != id);
                }
                Cmd::Retag(id, hop) => {
                    for r in st.rings.iter_mut().filter(|r| r.id == id) {
                        r.meta.hop = hop;
                    }
                }
            }
        }
    }

    /// Poll the fds up to `timeout_ms`; the errored ones are reported. Returns how many
    /// are ready.
    fn poll(&mut self, timeout_ms: u64) -> usize {
        let mut fds: Vec<PollFd<'_>> = self
            .fds
            .iter()
            .map(|(_, fd)| PollFd::new(fd, PollFlags::IN))
            .collect();
        let ts = Timespec {
            tv_sec: (timeout_ms / 1000) as i64,
            tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64,
        };
        let n = rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0);
        let mut errored = Vec::new();
        for ((id, fd), p) in self.fds.iter().zip(&fds) {
            if p.revents().contains(PollFlags::ERR) {
                // Level-triggered: reading SO_ERROR resets it; re-discovery decides.
                let _ = rustix::net::sockopt::socket_error(fd);
                errored.push(*id);
            }
        }
        drop(fds);
        if !errored.is_empty() {
            lock(&self.shared.errored).extend(errored);
        }
        n
    }

    fn run(&mut self) {
        // Every wake-up costs (~100 us of CPU in this VM, measured idle). The consumer
        // drains the rings at each `take` (~20 a second), just before its watermark; this
        // thread drains only when nobody has for `drain` (a consumer busy or stalled), so
        // while traffic flows it wakes about once per `drain`: poll (the kernel wakes it
        // when a block retires), sleep until `drain` after the last drain, check. Idle, it
        // blocks in poll, `poll_ms` at most.
        while !self.shared.stop.load(Ordering::Acquire) {
            self.apply();
            if self.poll(self.poll_ms) == 0 {
                continue;
            }
            let due = lock(&self.shared.state).last_drain + self.drain;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let mut st = lock(&self.shared.state);
            if st.last_drain.elapsed() >= self.drain {
                st.drain(self.shared.max_pending);
            }
        }
        self.apply();
        let mut st = lock(&self.shared.state);
        st.drain(self.shared.max_pending);
        st.rings.clear(); // unmapped
        drop(st);
        self.fds.clear(); // closed
    }
}

/// The taps' ring reader: `add` rings, `start`, `take` decoded batches, `stop`, `join`.
/// ``delay_ns``: the reorder window; ``poll_ms``, ``drain_ms``: see TapSource;
/// ``max_pending``: sightings held beyond it are shed (oldest first) and counted.
#[pyclass(module = "tracer._core")]
pub struct TapReader {
    shared: Arc<Shared>,
    poll_ms: u64,
    drain_ms: u64,
    next_id: Mutex<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[pymethods]
impl TapReader {
    #[new]
    #[pyo3(signature = (delay_ns, poll_ms, drain_ms, max_pending))]
    fn new(delay_ns: u64, poll_ms: u64, drain_ms: u64, max_pending: usize) -> TapReader {
        TapReader {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rings: Vec::new(),
                    window: Reorder::new(delay_ns),
                    spare: Reorder::new(delay_ns),
                    last_drain: Instant::now(),
                }),
                cmds: Mutex::new(Vec::new()),
                errored: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                done: Mutex::new(Done::default()),
                done_cv: Condvar::new(),
                max_pending,
                frames: Mutex::new(Vec::new()),
            }),
            poll_ms,
            drain_ms,
            next_id: Mutex::new(0),
            thread: Mutex::new(None),
        }
    }

    /// Map the ring of packet socket ``fd`` (TPACKET_V3, ``block_nr`` blocks of
    /// ``block_size`` bytes) and read it from the next round on; returns the ring's id.
    /// The reader keeps a duplicate of the fd: the caller may close its socket any time.
    fn add(
        &self,
        fd: i32,
        block_size: usize,
        block_nr: usize,
        hop: u32,
        rank_rx: u8,
        rank_tx: u8,
    ) -> PyResult<u64> {
        let id = {
            let mut n = lock(&self.next_id);
            *n += 1;
            *n
        };
        let meta = TapMeta {
            hop,
            rank_rx,
            rank_tx,
        };
        let (ring, fd) = Ring::map(id, fd, block_size, block_nr, meta)?;
        lock(&self.shared.cmds).push(Cmd::Add(ring, fd));
        Ok(id)
    }

    /// Stop reading ring ``id`` (from the next round on) and release it.
    fn remove(&self, id: u64) {
        lock(&self.shared.cmds).push(Cmd::Remove(id));
    }

    /// Later frames of ring ``id`` get hop ``hop``.
    fn retag(&self, id: u64, hop: u32) {
        lock(&self.shared.cmds).push(Cmd::Retag(id, hop));
    }

    /// Start the reader thread (once).
    fn start(&self) -> PyResult<()> {
        let mut thread = lock(&self.thread);
        if thread.is_some() {
            return Ok(());
        }
        let mut lp = Loop {
            shared: Arc::clone(&self.shared),
            poll_ms: self.poll_ms,
            drain: Duration::from_millis(self.drain_ms),
            fds: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("taps-reader".into())
            .spawn(move || {
                let shared = Arc::clone(&lp.shared);
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
                drop(lp);
                let mut done = lock(&shared.done);
                done.finished = true;
                if let Err(p) = res {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the taps' reader thread panicked".into());
                    done.panic = Some(msg);
                }
                shared.done_cv.notify_all();
            })
            .map_err(|e| PyOSError::new_err(format!("cannot start the taps' reader: {e}")))?;
        *thread = Some(handle);
        Ok(())
    }

    /// Ask the reader to drain every ring once more and stop; returns at once (safe from
    /// a signal handler).
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// Wait (without the GIL) until the reader's last drain is in and its rings are
    /// released, ``timeout`` seconds at most (None: no limit); True when it is done. A
    /// reader that never started is done once stopped.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let started = lock(&self.thread).is_some();
        if !started {
            if self.shared.stop.load(Ordering::Acquire) {
                lock(&self.shared.cmds).clear(); // rings added but never read: unmapped
                return Ok(true);
            }
            return Ok(false);
        }
        let shared = Arc::clone(&self.shared);
        let (finished, panic) = py.detach(move || {
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
            let mut done = lock(&shared.done);
            while !done.finished {
                match deadline {
                    None => {
                        done = shared.done_cv.wait(done).unwrap_or_else(|e| e.into_inner());
                    }
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break;
                        }
                        done = shared
                            .done_cv
                            .wait_timeout(done, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            }
            (done.finished, done.panic.clone())
        });
        if let Some(msg) = panic {
            return Err(PanicException::new_err(msg));
        }
        if finished {
            if let Some(h) = lock(&self.thread).take() {
                let _ = py.detach(|| h.join());
            }
        }
        Ok(finished)
    }

    /// The sightings due at ``now_ns`` (CLOCK_REALTIME ns) decoded with the hop table
    /// ``hops`` ((netns, ifindex, linktype) per hop), in time order: with ``final`` all
    /// of them (the reader is done), with ``force`` those older than the window even if
    /// none is due yet; None when nothing is due. Returns (rows as uint8: view them as
    /// obs_dtype(), frame bytes, watermark). Runs without the GIL.
    #[pyo3(signature = (now_ns, hops, *, r#final=false, force=false))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        now_ns: u64,
        hops: Vec<PyHop>,
        r#final: bool,
        force: bool,
    ) -> PyResult<Option<PyReleased<'py>>> {
        if let Some(msg) = lock(&self.shared.done).panic.clone() {
            return Err(PanicException::new_err(msg));
        }
        let shared = Arc::clone(&self.shared);
        let out = py.detach(move || {
            let hops = hop_table(&hops);
            // The window is taken out (the emptied one of the last call takes its place),
            // released and decoded without the lock (the reader only waits for the swap),
            // then what it kept goes back before what the reader added meanwhile: arrival
            // order holds.
            // Everything retired by now comes in first, so the watermark below leaves out
            // only frames in blocks the kernel still fills (retire_ms at most).
            let mut mine = {
                let mut st = lock(&shared.state);
                st.drain(shared.max_pending);
                if !(r#final || force || st.window.due(now_ns)) {
                    return None;
                }
                let spare = std::mem::take(&mut st.spare);
                std::mem::replace(&mut st.window, spare)
            };
            let mut frames = std::mem::take(&mut *lock(&shared.frames));
            let out = mine.release_into((!r#final).then_some(now_ns), now_ns, &hops, &mut frames);
            let mut st = lock(&shared.state);
            mine.append(&mut st.window);
            st.spare = std::mem::replace(&mut st.window, mine);
            drop(st);
            Some((out, frames))
        });
        let Some((out, frames)) = out else {
            return Ok(None);
        };
        let batch = out.map(|(rows, mark)| {
            (
                PyArray1::from_vec(py, rows),
                PyBytes::new(py, &frames),
                mark,
            )
        });
        // The buffer back for the next batch (emptied; its capacity is what is reused).
        *lock(&self.shared.frames) = frames;
        Ok(Some(
            batch.unwrap_or_else(|| to_py(py, Released::default())),
        ))
    }

    /// Ids of the rings whose socket reported an error (ENETDOWN: the device went down
    /// or away) since the last call.
    fn errored(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.shared.errored))
    }

    /// Sightings shed because more than max_pending waited, since the start.
    #[getter]
    fn shed(&self) -> u64 {
        lock(&self.shared.state).window.shed_total()
    }

    /// Ring blocks whose walk stopped at a frame that did not fit (never expected from
    /// the kernel), since the start.
    #[getter]
    fn malformed(&self) -> u64 {
        lock(&self.shared.state).window.malformed_blocks()
    }

    /// Sightings released after a newer one (their block retired later than the reorder
    /// window allowed), since the start: 0 while the window holds.
    #[getter]
    fn late(&self) -> u64 {
        lock(&self.shared.state).window.late_total()
    }

    fn __len__(&self) -> usize {
        lock(&self.shared.state).window.len()
    }
}

impl Drop for TapReader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

/// The reorder window fed with ring block bytes: tests compare it with the Python oracle
/// (tests/reference/taps.py); the live path is `TapReader`.
#[pyclass(module = "tracer._core")]
pub struct TapReorder {
    inner: Mutex<Reorder>,
}

#[pymethods]
impl TapReorder {
    #[new]
    fn new(delay_ns: u64) -> TapReorder {
        TapReorder {
            inner: Mutex::new(Reorder::new(delay_ns)),
        }
    }

    /// Ring blocks one after the other in ``blocks``, ``used[i]`` bytes each, the ``i``-th
    /// from tap ``meta[i]`` = (hop, rx rank, tx rank); returns the frames read.
    fn add_blocks(
        &self,
        py: Python<'_>,
        blocks: &[u8],
        used: Vec<usize>,
        meta: Vec<(u32, u8, u8)>,
    ) -> PyResult<u64> {
        if used.len() != meta.len() {
            return Err(PyValueError::new_err(format!(
                "{} block sizes but {} block metas",
                used.len(),
                meta.len()
            )));
        }
        let total = used.iter().try_fold(0usize, |a, &u| a.checked_add(u));
        if total.is_none_or(|t| t > blocks.len()) {
            return Err(PyValueError::new_err("the blocks' sizes exceed the buffer"));
        }
        let inner = &self.inner;
        Ok(py.detach(|| {
            let mut r = lock(inner);
            let (mut pos, mut n) = (0usize, 0u64);
            for (&u, &(hop, rank_rx, rank_tx)) in used.iter().zip(&meta) {
                let block = blocks.get(pos..pos + u).unwrap_or(&[]);
                let meta = TapMeta {
                    hop,
                    rank_rx,
                    rank_tx,
                };
                n += u64::from(r.push_block(block, meta).frames);
                pos += u;
            }
            n
        }))
    }

    fn due(&self, now_ns: u64) -> bool {
        lock(&self.inner).due(now_ns)
    }

    /// See `TapReader.late`.
    #[getter]
    fn late(&self) -> u64 {
        lock(&self.inner).late_total()
    }

    fn shed(&self, max_rows: usize) -> u64 {
        lock(&self.inner).shed(max_rows)
    }

    /// As `TapReader.take` with ``final`` when ``now_ns`` is None (``final_now`` is then
    /// the watermark if nothing is held).
    #[pyo3(signature = (now_ns, hops, final_now=0))]
    fn release<'py>(
        &self,
        py: Python<'py>,
        now_ns: Option<u64>,
        hops: Vec<PyHop>,
        final_now: u64,
    ) -> PyReleased<'py> {
        let inner = &self.inner;
        let out = py.detach(|| lock(inner).release(now_ns, final_now, &hop_table(&hops)));
        to_py(py, out)
    }

    fn __len__(&self) -> usize {
        lock(&self.inner).len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TapReader>()?;
    m.add_class::<TapReorder>()
}
