//! `tracer._core.EbpfRing`: the eBPF source's consumer (probes/skb_hops.py). The BPF ring
//! buffer map read straight from its mmap, its hop events held, then decoded into
//! `OBS_DTYPE` rows by hoptrace_core::ebpf (record walking, UTC stamps, hop labels, the
//! frames). Both steps run without the GIL, in a reader thread of the core's, which also
//! flushes quiet CPUs' stages; the batches go to numpy (``next_batch``) or straight into a
//! `Stream` (``Stream.feed_ring``, stream.rs). The only `unsafe` of the eBPF path is here:
//! the mappings, the loads and stores of the ring's positions, and the bpf(2) call.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hoptrace_core::ebpf::{self, Decoder, EventLayout, Miss, RingMemory, UtcClock};
use hoptrace_core::obs::{write_rows, Obs};
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

/// A decoded batch on its way to a `Stream` (stream.rs `feed_ring`) or to Python (as
/// `OBS_DTYPE` rows): the sightings, the events' bytes their frames point into, the hop keys
/// first seen in them.
pub(crate) struct Batch {
    pub(crate) obs: Vec<Obs>,
    pub(crate) frames: Vec<u8>,
    pub(crate) misses: Vec<Miss>,
}

/// What the reader thread and Python share under the queue's lock: the batches decoded and
/// not yet taken.
struct State {
    queue: VecDeque<Batch>,
    queued: usize,
    /// The reader thread's limit on `queued` (it waits for room past it).
    max_queued: usize,
    /// The thread was started; it ended (its panic message when it panicked).
    started: bool,
    ended: bool,
    panic: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// The decoder (the clock, the hop keys): a lock of its own, held while a batch decodes,
    /// so that taking batches never waits for a decode.
    dec: Mutex<Decoder>,
    /// A batch was queued or the thread ended.
    ready: Condvar,
    /// Python made room in a full queue or asked the thread to stop.
    wake: Condvar,
    stop: AtomicBool,
    panic_for_tests: AtomicBool,
    /// Buffers of batches fed and done with (`EbpfRing::recycle`), for the reader's next
    /// batches: no fresh pages (page faults) per batch.
    spare: Mutex<Vec<(Vec<Obs>, Vec<u8>)>>,
}

/// Buffers kept for reuse at most (a batch's are ~4 MB at 8192 events).
const SPARE: usize = 4;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held (caught: the thread's) leaves whole values behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decoder(&self) -> MutexGuard<'_, Decoder> {
        self.dec.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every queued batch (waiting up to `wait` for one), or the thread's panic. Wakes the
    /// thread when it waited for room.
    fn take_all(&self, wait: Duration) -> Result<Vec<Batch>, String> {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        loop {
            if !st.queue.is_empty() {
                let full = st.queued >= st.max_queued;
                st.queued = 0;
                let out = st.queue.drain(..).collect();
                if full {
                    self.wake.notify_all();
                }
                return Ok(out);
            }
            if let Some(msg) = st.panic.take() {
                return Err(msg);
            }
            let now = Instant::now();
            if !st.started || st.ended || now >= deadline {
                return Ok(Vec::new());
            }
            st = self
                .ready
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h), to the field this
/// needs, padded by hand: no byte of it is left uninitialised (the kernel wants zeros).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_RUN_ON_CPU: u32 = 1;

/// `union bpf_attr` for BPF_MAP_LOOKUP_ELEM: map fd, key, value, flags.
#[repr(C)]
#[derive(Default)]
struct LookupAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// skb_hops.c's per-CPU `stage` map (`struct hop_batch`: u32 count, u32 busy, u64 first_ts,
/// then the events), read to see which CPUs hold staged events.
struct Stage {
    map: OwnedFd,
    /// bytes of one CPU's value in a lookup's answer (the value size rounded up to 8)
    stride: usize,
    /// the answer: one value per possible CPU
    buf: Vec<u8>,
}

/// skb_hops.c's `flush_stage` program run every `every` on each CPU whose stage holds events
/// (BPF_PROG_TEST_RUN on that CPU): events staged on a quiet CPU would otherwise wait for its
/// next packet. A CPU with nothing staged is left alone: each run on another CPU is an IPI (a
/// VM exit here), ~200 a second per CPU when every CPU was flushed every 5 ms, idle or not.
/// A stage that holds events is flushed however young they are, as every stage was before:
/// one packet's hops staged on two CPUs reach the ring at most `every` apart (the correlator
/// joins in arrival order across batches, so a later flush could split a path). Without
/// `stage` (or when its lookup fails) every CPU is flushed.
struct Flush {
    prog: OwnedFd,
    cpus: Vec<u32>,
    every: Duration,
    stage: Option<Stage>,
}

impl Stage {
    /// For each of `cpus`, whether its stage holds events; None when unknown (the lookup
    /// failed). A CPU beyond the answer counts as holding some.
    fn holding(&mut self, cpus: &[u32]) -> Option<Vec<bool>> {
        let key = 0u32;
        let attr = LookupAttr {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: self.buf.as_mut_ptr() as u64,
            ..LookupAttr::default()
        };
        // SAFETY: bpf(2) reads the attr (initialised, live for the call) and the 4-byte key,
        // and writes one value per possible CPU into `buf`, which `stage_of` sized for that
        // (the map's value size rounded up to 8, times the possible CPUs).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const LookupAttr,
                std::mem::size_of::<LookupAttr>(),
            )
        };
        if rc != 0 {
            return None;
        }
        Some(
            cpus.iter()
                .map(|&cpu| {
                    let at = (cpu as usize).saturating_mul(self.stride);
                    // read while the CPU may be writing it: at worst one flush too many or a
                    // poll's wait
                    self.buf
                        .get(at..at.saturating_add(4))
                        .and_then(|v| <[u8; 4]>::try_from(v).ok())
                        .is_none_or(|c| u32::from_ne_bytes(c) > 0)
                })
                .collect(),
        )
    }
}

impl Flush {
    fn run(&mut self) {
        let holding = match self.stage.as_mut() {
            Some(stage) => stage.holding(&self.cpus),
            None => None,
        };
        let ctx = [0u64; 4]; // the raw tracepoint's arguments: unused
        for (k, &cpu) in self.cpus.iter().enumerate() {
            if holding
                .as_ref()
                .is_some_and(|h| !h.get(k).copied().unwrap_or(true))
            {
                continue;
            }
            let attr = TestRunAttr {
                prog_fd: self.prog.as_raw_fd() as u32,
                ctx_size_in: std::mem::size_of_val(&ctx) as u32,
                ctx_in: ctx.as_ptr() as u64,
                flags: BPF_F_TEST_RUN_ON_CPU,
                cpu,
                ..TestRunAttr::default()
            };
            // SAFETY: bpf(2) reads `size_of::<TestRunAttr>()` bytes of `attr` (initialised,
            // live for the call) and `ctx_size_in` bytes at `ctx_in` (the array above); it
            // writes nothing back for this command (no data_out, no ctx_out). A failure (the
            // program gone, a CPU offline) changes nothing: the stage waits for a packet.
            unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_TEST_RUN,
                    &attr as *const TestRunAttr,
                    std::mem::size_of::<TestRunAttr>(),
                );
            }
        }
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

fn reader(
    shared: &Shared,
    map: &RingMap,
    header_len: usize,
    size: usize,
    pace: Pace,
    mut flush: Option<Flush>,
) {
    let mut held: Vec<u8> = Vec::new();
    let mut held_since: Option<Instant> = None;
    let mut next_flush = Instant::now();
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if shared.panic_for_tests.load(Ordering::Relaxed) {
            panic!("the eBPF reader panicked (as the test asked)");
        }
        if let Some(f) = flush.as_mut().filter(|_| !stopping) {
            let now = Instant::now();
            if now >= next_flush {
                f.run(); // what it submits is read just below
                next_flush = now + f.every;
            }
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
        if n > 0 && due {
            let (mut obs, mut next) = lock(&shared.spare).pop().unwrap_or_default();
            let mut misses = Vec::new();
            // decoded under the decoder's lock only: a consumer takes batches meanwhile
            let n = shared.decoder().decode_obs(&held, &mut obs, &mut misses);
            next.clear();
            next.reserve(pace.hold_events * size);
            let frames = std::mem::replace(&mut held, next);
            let mut st = shared.lock();
            st.queue.push_back(Batch {
                obs,
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
        let st = shared.lock();
        if shared.stop.load(Ordering::Acquire) {
            continue; // asked meanwhile: no wait
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
    let arr = PyArray1::from_vec(py, write_rows(&b.obs)).call_method1("view", (obs_descr(py)?,))?;
    Ok((arr, frames, misses_list(py, b.misses.iter())?))
}

/// Hop keys first seen, as Python names them: ``(index, netns, ifindex, ifname bytes,
/// linktype)`` each, in index order.
pub(crate) fn misses_list<'py, 'a>(
    py: Python<'py>,
    misses: impl Iterator<Item = &'a Miss>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for m in misses {
        list.append((
            m.index,
            m.netns,
            m.ifindex,
            PyBytes::new(py, &m.ifname),
            m.linktype,
        ))?;
    }
    Ok(list)
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
            queue: VecDeque::new(),
            queued: 0,
            max_queued: usize::MAX,
            started: false,
            ended: false,
            panic: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            dec: Mutex::new(dec),
            ready: Condvar::new(),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panic_for_tests: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
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
        self.shared.decoder().keys.len()
    }

    /// The monotonic -> UTC function (probes/utc_clock.py ``MonoToUtc.knots()``): UTC =
    /// mono + base + the offset interpolated between knots ``km`` (monotonic ns,
    /// increasing) and ``ko``. Applies to the events decoded from now on.
    fn set_clock(&self, base: i64, km: Vec<i64>, ko: Vec<i64>) -> PyResult<()> {
        let clock = UtcClock::new(base, km, ko).ok_or_else(|| {
            PyValueError::new_err("clock knots must be increasing, one offset each")
        })?;
        self.shared.decoder().clock = clock;
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
        let mut dec = loop {
            match shared.dec.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| drop(shared.decoder())),
            }
        };
        clock.call_method1("maybe_resample", (monotonic_ns(),))?;
        let (base, km, ko): (i64, Vec<i64>, Vec<i64>) = clock.call_method0("knots")?.extract()?;
        if let Some(c) = UtcClock::new(base, km, ko) {
            dec.clock = c;
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
            let mut obs = Vec::new();
            let mut misses = Vec::new();
            let n = shared.decoder().decode_obs(&held, &mut obs, &mut misses);
            let mut frames = held;
            frames.truncate(n * self.layout.size);
            Batch {
                obs,
                frames,
                misses,
            }
        });
        to_python(py, b)
    }

    /// Start the reader thread (after ``open``): it polls the ring every ``poll_s``, and
    /// decodes what it read into a batch once ``hold_events`` are held or the oldest was
    /// read ``hold_s`` ago; ``next_batch`` (or ``Stream.feed_ring``) hands them over in order.
    /// It stops reading while ``max_queued`` events wait (the kernel's ring holds the rest,
    /// its overflow counted). With ``flush_fd`` (skb_hops.c's ``flush_stage`` program, a
    /// duplicate kept while the thread runs) it also runs that program on each of ``cpus``
    /// every ``flush_s``, before reading: quiet CPUs' staged events come out.
    /// With ``stage_fd`` (skb_hops.c's per-CPU ``stage`` map, ``stage_size`` bytes a value,
    /// ``possible_cpus`` values an answer) only CPUs whose stage holds events are flushed.
    #[pyo3(signature = (poll_s, hold_events, hold_s, max_queued=1 << 17, flush_fd=None, cpus=Vec::new(), flush_s=0.005, stage_fd=None, stage_size=0, possible_cpus=0))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        poll_s: f64,
        hold_events: usize,
        hold_s: f64,
        max_queued: usize,
        flush_fd: Option<i32>,
        cpus: Vec<u32>,
        flush_s: f64,
        stage_fd: Option<i32>,
        stage_size: usize,
        possible_cpus: usize,
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
        let flush = match flush_fd {
            Some(fd) if fd >= 0 => {
                // SAFETY: the caller's descriptor is open for the duration of this call (bcc
                // holds it); it is only duplicated here, the duplicate owned by the thread.
                let prog = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
                let stage = match stage_fd {
                    Some(fd) if fd >= 0 && stage_size >= 16 && possible_cpus > 0 => {
                        // SAFETY: as above, the map's descriptor (bcc's) is open for this call.
                        let map = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
                        let stride = stage_size.div_ceil(8) * 8;
                        Some(Stage {
                            map,
                            stride,
                            buf: vec![0; stride * possible_cpus],
                        })
                    }
                    Some(fd) if fd >= 0 => {
                        return Err(PyValueError::new_err(
                            "start: stage_fd needs stage_size >= 16 and possible_cpus > 0",
                        ))
                    }
                    _ => None,
                };
                Some(Flush {
                    prog,
                    cpus,
                    every: secs(flush_s).max(Duration::from_micros(100)),
                    stage,
                })
            }
            Some(_) => return Err(PyValueError::new_err("start: flush_fd is not a descriptor")),
            None => None,
        };
        let pace = Pace {
            poll: secs(poll_s).max(Duration::from_micros(100)),
            hold: secs(hold_s),
            hold_events: hold_events.max(1),
            max_queued: max_queued.max(1),
        };
        {
            let mut st = self.shared.lock();
            st.started = true;
            st.max_queued = pace.max_queued;
        }
        let shared = Arc::clone(&self.shared);
        let (header_len, size) = (self.header_len, self.layout.size);
        let handle = std::thread::Builder::new()
            .name("hoptrace-ebpf".into())
            .spawn(move || {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    reader(&shared, &map, header_len, size, pace, flush)
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
            .map_err(|e| {
                self.shared.lock().ended = true;
                PyOSError::new_err(format!("cannot start the eBPF reader thread: {e}"))
            })?;
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
                    let full = st.queued >= st.max_queued;
                    st.queued = st.queued.saturating_sub(b.obs.len());
                    if full {
                        shared.wake.notify_all(); // it waits for room: no need to wait its poll
                    }
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

impl EbpfRing {
    /// For `Stream.feed_ring`: every batch the reader thread queued, waiting up to `wait` for
    /// one without the GIL; when no reader thread runs (never started, or ended and drained),
    /// the events ``poll``/``push`` held, decoded. A panic in the thread is raised here.
    /// For `Stream.feed_ring`: batches fed, their buffers back for the reader thread's next.
    pub(crate) fn recycle(&self, batches: Vec<Batch>) {
        let mut spare = lock(&self.shared.spare);
        for b in batches {
            if spare.len() >= SPARE {
                break;
            }
            spare.push((b.obs, b.frames));
        }
    }

    pub(crate) fn take_ready(&self, py: Python<'_>, wait: Duration) -> PyResult<Vec<Batch>> {
        let shared = &*self.shared;
        let size = self.layout.size;
        let got = py.detach(|| {
            let out = shared.take_all(wait)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let idle = {
                let st = shared.lock();
                (!st.started || st.ended) && st.queue.is_empty()
            };
            let held = if idle {
                std::mem::take(&mut *lock(&self.held))
            } else {
                Vec::new()
            };
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let mut obs = Vec::new();
            let mut misses = Vec::new();
            let n = shared.decoder().decode_obs(&held, &mut obs, &mut misses);
            let mut frames = held;
            frames.truncate(n * size);
            Ok(vec![Batch {
                obs,
                frames,
                misses,
            }])
        });
        got.map_err(|msg: String| PanicException::new_err(msg))
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
