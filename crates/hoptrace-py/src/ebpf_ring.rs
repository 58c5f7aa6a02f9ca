//! `tracer._core.EbpfRing`: the eBPF source's consumer (probes/skb_hops.py). The BPF ring
//! buffer map read straight from its mmap, its hop events held, then decoded into numpy
//! `OBS_DTYPE` rows by hoptrace_core::ebpf (record walking, UTC stamps, hop labels, the
//! frames). Both steps run without the GIL. The only `unsafe` of the eBPF path is here:
//! the mappings and the loads and stores of the ring's positions.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hoptrace_core::ebpf::{self, Decoder, EventLayout, Miss, RingMemory, UtcClock};
use numpy::PyArray1;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::decode::obs_descr;

/// The three parts of a BPF ring buffer map's mmap (kernel/bpf/ringbuf.c): the consumer
/// page (read-write: only the consumer position is written), and read-only the producer
/// page then the data pages, mapped twice in a row so that no record wraps.
struct RingMap {
    cons: NonNull<u8>,
    /// The producer page, then `2 * size` bytes of data.
    prod: NonNull<u8>,
    page: usize,
    size: usize,
}

// SAFETY: the mappings belong to this value alone (unmapped in Drop, never aliased by a
// Rust reference); every access goes through atomics or a copy of a range the producer
// has handed over, so moving or sharing the value between threads changes nothing. The
// pyclass that owns it hands out `&mut` only through pyo3's borrow flag.
unsafe impl Send for RingMap {}
// SAFETY: as for Send: `&RingMap` only loads the positions (atomics) and copies out.
unsafe impl Sync for RingMap {}

impl RingMap {
    fn open(fd: i32, size: usize) -> io::Result<RingMap> {
        if size == 0 || !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {size} is not a power of two"),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        let data_len = page
            .checked_add(2 * size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ring too large"))?;
        // SAFETY: a fresh mapping (addr NULL) of the fd the caller owns; the kernel checks
        // the fd, length, offset and protection (a BPF ring buffer map allows exactly these:
        // the consumer page writable, the rest read-only).
        let cons = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if cons == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above, read-only from the second page on.
        let prod = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                data_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            )
        };
        if prod == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // SAFETY: `cons` was mapped above with this length and is not used again.
            unsafe { libc::munmap(cons, page) };
            return Err(err);
        }
        match (NonNull::new(cons.cast()), NonNull::new(prod.cast())) {
            (Some(cons), Some(prod)) => Ok(RingMap {
                cons,
                prod,
                page,
                size,
            }),
            _ => Err(io::Error::other("mmap returned NULL")),
        }
    }

    fn cons_word(&self) -> &AtomicU64 {
        // SAFETY: the consumer position is the first u64 of the (page-aligned, live for
        // &self) consumer page; the kernel only reads it, we write it atomically.
        unsafe { AtomicU64::from_ptr(self.cons.as_ptr().cast()) }
    }

    /// The producer position, acquire: every record before it is reserved (its header written).
    fn producer(&self) -> u64 {
        // SAFETY: the first u64 of the page-aligned producer page, mapped for &self; an
        // atomic load of a natively sized word is sound on read-only memory.
        unsafe { AtomicU64::from_ptr(self.prod.as_ptr().cast()) }.load(Ordering::Acquire)
    }

    /// Append the events of every finished record to `held` and hand the space back to the
    /// kernel. Only one thread at a time consumes (the reader thread, or `poll` when none runs).
    fn consume_into(&self, header_len: usize, ev_size: usize, held: &mut Vec<u8>) {
        let cons = self.cons_word().load(Ordering::Relaxed); // written only by the consumer
        let got = ebpf::consume(
            self,
            (self.size - 1) as u64,
            cons,
            self.producer(),
            header_len,
            ev_size,
            held,
        );
        // Release: the copies above happen before the kernel may reuse the space.
        self.cons_word().store(got.cons, Ordering::Release);
    }
}

impl RingMemory for RingMap {
    fn span(&self) -> usize {
        2 * self.size
    }

    /// The header's length word, acquire (libbpf: smp_load_acquire): the kernel clears
    /// BUSY with a release store after writing the record, so its data is visible after this.
    fn load_len(&self, off: usize) -> Option<u32> {
        if off % 4 != 0 || off.checked_add(4)? > self.span() {
            return None;
        }
        // SAFETY: `off + 4 <= 2 * size` lies in the data mapping (after its first page),
        // 4-aligned; an atomic load on read-only memory, as for the producer position.
        let word = unsafe { AtomicU32::from_ptr(self.prod.as_ptr().add(self.page + off).cast()) };
        Some(word.load(Ordering::Acquire))
    }

    fn copy_out(&self, off: usize, dst: &mut [u8]) -> bool {
        if off
            .checked_add(dst.len())
            .is_none_or(|end| end > self.span())
        {
            return false;
        }
        // SAFETY: the range lies in the data mapping (checked above) and belongs to a
        // submitted record before the consumer position we have not yet published, so the
        // kernel does not write it; `dst` is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.prod.as_ptr().add(self.page + off),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        true
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: both were mapped in open() with these lengths; nothing refers to them after.
        unsafe {
            libc::munmap(self.cons.as_ptr().cast(), self.page);
            libc::munmap(self.prod.as_ptr().cast(), self.page + 2 * self.size);
        }
    }
}

/// A decoded batch on its way to Python.
struct Batch {
    rows: Vec<u8>,
    frames: Vec<u8>,
    misses: Vec<Miss>,
}

/// What the reader thread and Python share (one lock: the decoder's clock and labels, the
/// batches decoded and not yet taken).
struct State {
    dec: Decoder,
    queue: VecDeque<Batch>,
    queued: usize,
    /// The thread ended; its panic message when it panicked.
    ended: bool,
    panic: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// A batch was queued or the thread ended.
    ready: Condvar,
    /// Python took a batch or asked the thread to stop.
    wake: Condvar,
    stop: AtomicBool,
    panic_for_tests: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held (caught: the thread's) leaves whole values behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reader thread's pace: poll every `poll`, hand over a batch when `hold_events`
/// are held or the oldest was read `hold` ago; stop reading while `max_queued` events wait
/// for Python (the kernel's ring takes the rest, and counts what it cannot).
#[derive(Clone, Copy)]
struct Pace {
    poll: Duration,
    hold: Duration,
    hold_events: usize,
    max_queued: usize,
}

fn reader(shared: &Shared, map: &RingMap, header_len: usize, size: usize, pace: Pace) {
    let mut held: Vec<u8> = Vec::new();
    let mut held_since: Option<Instant> = None;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if shared.panic_for_tests.load(Ordering::Relaxed) {
            panic!("the eBPF reader panicked (as the test asked)");
        }
        let room = shared.lock().queued < pace.max_queued;
        if room || stopping {
            map.consume_into(header_len, size, &mut held);
        }
        let n = held.len() / size;
        if n > 0 && held_since.is_none() {
            held_since = Some(Instant::now());
        }
        let due = stopping
            || n >= pace.hold_events
            || held_since.is_some_and(|t| t.elapsed() >= pace.hold);
        let mut st = shared.lock();
        if n > 0 && due {
            let mut rows = Vec::new();
            let mut misses = Vec::new();
            let n = st.dec.decode(&held, &mut rows, &mut misses);
            let frames = std::mem::replace(&mut held, Vec::with_capacity(pace.hold_events * size));
            st.queue.push_back(Batch {
                rows,
                frames,
                misses,
            });
            st.queued += n;
            held_since = None;
            shared.ready.notify_all();
        }
        if stopping {
            return;
        }
        let _unused = shared.wake.wait_timeout(st, pace.poll);
    }
}

/// The hop events of a BPF ring buffer map (``open``, then ``poll`` + ``take`` from the
/// caller's thread, or ``start`` + ``next_batch``: a reader thread of the core's), or of bytes
/// (``push``), decoded into ``OBS_DTYPE`` rows. ``layout``: ``struct hop_event``'s field
/// offsets by name and its ``size``; ``header_len``: bytes of ``struct hop_batch`` before its
/// events (a u32 count first); ``hops``: labels the source already has (the first new key
/// gets this index).
#[pyclass(name = "EbpfRing", module = "tracer._core")]
pub struct EbpfRing {
    shared: Arc<Shared>,
    layout: EventLayout,
    header_len: usize,
    /// Behind locks so that ``stop``/``close`` may come from another Python thread while
    /// one waits in ``next_batch`` (the TUI stops its engine's thread so).
    map: Mutex<Option<Arc<RingMap>>>,
    held: Mutex<Vec<u8>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn field(layout: &HashMap<String, usize>, name: &str) -> PyResult<usize> {
    layout
        .get(name)
        .copied()
        .ok_or_else(|| PyValueError::new_err(format!("hop_event layout without field {name}")))
}

type PyBatch<'py> = (Bound<'py, PyAny>, Bound<'py, PyBytes>, Bound<'py, PyList>);

fn to_python<'py>(py: Python<'py>, b: Batch) -> PyResult<PyBatch<'py>> {
    let frames = PyBytes::new(py, &b.frames);
    let arr = PyArray1::from_vec(py, b.rows).call_method1("view", (obs_descr(py)?,))?;
    let list = PyList::empty(py);
    for m in b.misses {
        list.append((
            m.index,
            m.netns,
            m.ifindex,
            PyBytes::new(py, &m.ifname),
            m.linktype,
        ))?;
    }
    Ok((arr, frames, list))
}

fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

#[pymethods]
impl EbpfRing {
    #[new]
    #[pyo3(signature = (layout, header_len, hops=0))]
    fn new(layout: HashMap<String, usize>, header_len: usize, hops: u32) -> PyResult<Self> {
        let l = EventLayout {
            size: field(&layout, "size")?,
            ts_ns: field(&layout, "ts_ns")?,
            skb: field(&layout, "skb")?,
            netns: field(&layout, "netns")?,
            ifindex: field(&layout, "ifindex")?,
            drop_reason: field(&layout, "drop_reason")?,
            wire_len: field(&layout, "wire_len")?,
            cap_len: field(&layout, "cap_len")?,
            mac_len: field(&layout, "mac_len")?,
            kind: field(&layout, "kind")?,
            ifname: field(&layout, "ifname")?,
            frame: field(&layout, "frame")?,
        }
        .checked()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if l.size == 0 || header_len < 4 {
            return Err(PyValueError::new_err(
                "an empty hop_event or a batch header under 4 bytes",
            ));
        }
        let mut dec = Decoder::new(l);
        dec.keys = ebpf::HopKeys::starting_at(hops);
        let state = State {
            dec,
            queue: VecDeque::new(),
            queued: 0,
            ended: false,
            panic: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            ready: Condvar::new(),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panic_for_tests: AtomicBool::new(false),
        });
        Ok(EbpfRing {
            shared,
            layout: l,
            header_len,
            map: Mutex::new(None),
            held: Mutex::new(Vec::new()),
            thread: Mutex::new(None),
        })
    }

    /// Map the ring of BPF ring buffer map ``map_fd`` (``data_size`` bytes of data, a
    /// power of two); the fd may be closed afterwards (the mapping keeps the map).
    fn open(&self, map_fd: i32, data_size: usize) -> PyResult<()> {
        let map = RingMap::open(map_fd, data_size)
            .map_err(|e| PyOSError::new_err(format!("cannot map the BPF ring buffer: {e}")))?;
        *lock(&self.map) = Some(Arc::new(map));
        Ok(())
    }

    /// Copy the events of every record the kernel has finished since the last call to the
    /// held events, then hand the space back to the kernel. Returns the events held.
    /// Not while the reader thread runs (it is the ring's only consumer).
    fn poll(&self, py: Python<'_>) -> PyResult<usize> {
        if lock(&self.thread).is_some() {
            return Err(PyRuntimeError::new_err(
                "the reader thread consumes this ring",
            ));
        }
        let (header_len, size) = (self.header_len, self.layout.size);
        let map = lock(&self.map).clone();
        let mut held = std::mem::take(&mut *lock(&self.held));
        if let Some(map) = map.as_deref() {
            let held = &mut held;
            py.detach(|| {
                map.consume_into(header_len, size, held);
            });
        }
        let mut slot = lock(&self.held);
        held.extend_from_slice(&slot); // pushed meanwhile (never, in the product)
        *slot = held;
        Ok(slot.len() / size)
    }

    /// Append hop events back to back (tests, benchmarks: a ring's contents without a ring).
    fn push(&self, events: &[u8]) {
        lock(&self.held).extend_from_slice(events);
    }

    /// Events held by ``poll``/``push``, not yet taken.
    #[getter]
    fn held(&self) -> usize {
        lock(&self.held).len() / self.layout.size
    }

    /// Labels indexed so far (the next new key's index).
    #[getter]
    fn hops(&self) -> u32 {
        self.shared.lock().dec.keys.len()
    }

    /// The monotonic -> UTC function (probes/utc_clock.py ``MonoToUtc.knots()``): UTC =
    /// mono + base + the offset interpolated between knots ``km`` (monotonic ns,
    /// increasing) and ``ko``. Applies to the events decoded from now on.
    fn set_clock(&self, base: i64, km: Vec<i64>, ko: Vec<i64>) -> PyResult<()> {
        let clock = UtcClock::new(base, km, ko).ok_or_else(|| {
            PyValueError::new_err("clock knots must be increasing, one offset each")
        })?;
        self.shared.lock().dec.clock = clock;
        Ok(())
    }

    /// ``clock.maybe_resample(now)`` (a probes/utc_clock.py ``MonoToUtc``) with no event
    /// decoded meanwhile, ``now`` read once decoding is held, and its knots applied: the
    /// function changes only after ``now``, where nothing was converted yet, so no NTP step
    /// reorders one path's hops while the reader thread converts.
    fn resample_clock(&self, py: Python<'_>, clock: &Bound<'_, PyAny>) -> PyResult<()> {
        let shared = &*self.shared;
        // The guard cannot leave a detached closure (not Send): wait for the lock to be free
        // without the GIL, then take it with the GIL (the thread never takes the GIL).
        let mut st = loop {
            match shared.state.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| drop(shared.lock())),
            }
        };
        clock.call_method1("maybe_resample", (monotonic_ns(),))?;
        let (base, km, ko): (i64, Vec<i64>, Vec<i64>) = clock.call_method0("knots")?.extract()?;
        if let Some(c) = UtcClock::new(base, km, ko) {
            st.dec.clock = c;
        }
        Ok(())
    }

    /// The events held by ``poll``/``push`` as ``(rows, frames, misses)``: a numpy
    /// ``OBS_DTYPE`` array, the events' bytes its ``frame_off``/``frame_len`` point into, and
    /// the hop keys first seen in them as ``(index, netns, ifindex, ifname bytes, linktype)``
    /// in index order (the caller's label table grows by exactly these). Decodes without
    /// the GIL.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<PyBatch<'py>> {
        let held = std::mem::take(&mut *lock(&self.held));
        let shared = Arc::clone(&self.shared);
        let b = py.detach(|| {
            let mut rows = Vec::new();
            let mut misses = Vec::new();
            let n = shared.lock().dec.decode(&held, &mut rows, &mut misses);
            let mut frames = held;
            frames.truncate(n * self.layout.size);
            Batch {
                rows,
                frames,
                misses,
            }
        });
        to_python(py, b)
    }

    /// Start the reader thread (after ``open``): it polls the ring every ``poll_s``, and
    /// decodes what it read into a batch once ``hold_events`` are held or the oldest was
    /// read ``hold_s`` ago; ``next_batch`` hands them over in order. It stops reading while
    /// ``max_queued`` events wait (the kernel's ring holds the rest, its overflow counted).
    #[pyo3(signature = (poll_s, hold_events, hold_s, max_queued=1 << 17))]
    fn start(
        &self,
        poll_s: f64,
        hold_events: usize,
        hold_s: f64,
        max_queued: usize,
    ) -> PyResult<()> {
        let Some(map) = lock(&self.map).clone() else {
            return Err(PyRuntimeError::new_err("start: the ring is not open"));
        };
        let mut slot = lock(&self.thread);
        if slot.is_some() {
            return Ok(());
        }
        let secs =
            |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_millis(5));
        let pace = Pace {
            poll: secs(poll_s).max(Duration::from_micros(100)),
            hold: secs(hold_s),
            hold_events: hold_events.max(1),
            max_queued: max_queued.max(1),
        };
        let shared = Arc::clone(&self.shared);
        let (header_len, size) = (self.header_len, self.layout.size);
        let handle = std::thread::Builder::new()
            .name("hoptrace-ebpf".into())
            .spawn(move || {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    reader(&shared, &map, header_len, size, pace)
                }));
                let mut st = shared.lock();
                st.ended = true;
                if let Err(e) = run {
                    let msg = e
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the eBPF reader thread panicked".to_owned());
                    st.panic = Some(msg);
                }
                shared.ready.notify_all();
            })
            .map_err(|e| PyOSError::new_err(format!("cannot start the eBPF reader thread: {e}")))?;
        *slot = Some(handle);
        Ok(())
    }

    /// The next batch the reader thread decoded, waiting up to ``timeout_s`` without the GIL;
    /// None when none came (or the thread has ended and everything was taken: see
    /// ``finished``). A panic in the thread is raised here (pyo3's PanicException).
    fn next_batch<'py>(&self, py: Python<'py>, timeout_s: f64) -> PyResult<Option<PyBatch<'py>>> {
        let shared = Arc::clone(&self.shared);
        let wait = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or_default();
        let got = py.detach(|| {
            let deadline = Instant::now() + wait;
            let mut st = shared.lock();
            loop {
                if let Some(b) = st.queue.pop_front() {
                    st.queued = st
                        .queued
                        .saturating_sub(b.rows.len() / hoptrace_core::obs::ROW_SIZE);
                    shared.wake.notify_all();
                    return Ok(Some(b));
                }
                if let Some(msg) = st.panic.take() {
                    return Err(msg);
                }
                let now = Instant::now();
                if st.ended || now >= deadline {
                    return Ok(None);
                }
                st = shared
                    .ready
                    .wait_timeout(st, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        });
        match got {
            Ok(Some(b)) => Ok(Some(to_python(py, b)?)),
            Ok(None) => Ok(None),
            Err(msg) => Err(PanicException::new_err(msg)),
        }
    }

    /// The reader thread has ended and every batch was taken.
    #[getter]
    fn finished(&self) -> bool {
        let running = lock(&self.thread).is_some();
        let st = self.shared.lock();
        st.queue.is_empty() && (st.ended || !running)
    }

    /// Stop the reader thread: it reads the ring once more, hands over what it holds and
    /// ends (waited for without the GIL). Its batches stay for ``next_batch``.
    fn stop(&self, py: Python<'_>) {
        let Some(handle) = lock(&self.thread).take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        let _ended = py.detach(|| handle.join()); // a panic was caught and kept for next_batch
    }

    /// Make the reader thread panic at its next turn (how tests see a panic reach the user).
    fn _panic_for_tests(&self) {
        self.shared.panic_for_tests.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }

    /// Unmap the ring (after the programs are detached, and the thread stopped); events
    /// held or queued stay for ``take``/``next_batch``.
    fn close(&self, py: Python<'_>) {
        self.stop(py);
        *lock(&self.map) = None;
    }
}

impl Drop for EbpfRing {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.thread).take() {
            self.shared.stop.store(true, Ordering::Release);
            self.shared.wake.notify_all();
            let _ended = handle.join();
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EbpfRing>()
}
