//! `tracer._core.EbpfRing`: the eBPF source's consumer (probes/skb_hops.py). The BPF ring
//! buffer map read straight from its mmap, its hop events held, then decoded into numpy
//! `OBS_DTYPE` rows by hoptrace_core::ebpf (record walking, UTC stamps, hop labels, the
//! frames). Both steps run without the GIL. The only `unsafe` of the eBPF path is here:
//! the mappings and the loads and stores of the ring's positions.

use std::collections::HashMap;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hoptrace_core::ebpf::{self, Decoder, EventLayout, Miss, RingMemory, UtcClock};
use numpy::PyArray1;
use pyo3::exceptions::{PyOSError, PyValueError};
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

/// The hop events of a BPF ring buffer map (``open``, ``poll``) or of bytes (``push``),
/// decoded into ``OBS_DTYPE`` rows (``take``). ``layout``: ``struct hop_event``'s field
/// offsets by name and its ``size``; ``header_len``: bytes of ``struct hop_batch`` before
/// its events (a u32 count first); ``hops``: labels the source already has (the first new
/// key gets this index).
#[pyclass(name = "EbpfRing", module = "tracer._core")]
pub struct EbpfRing {
    dec: Decoder,
    header_len: usize,
    map: Option<RingMap>,
    held: Vec<u8>,
}

fn field(layout: &HashMap<String, usize>, name: &str) -> PyResult<usize> {
    layout
        .get(name)
        .copied()
        .ok_or_else(|| PyValueError::new_err(format!("hop_event layout without field {name}")))
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
        Ok(EbpfRing {
            dec,
            header_len,
            map: None,
            held: Vec::new(),
        })
    }

    /// Map the ring of BPF ring buffer map ``map_fd`` (``data_size`` bytes of data, a
    /// power of two); the fd may be closed afterwards (the mapping keeps the map).
    fn open(&mut self, map_fd: i32, data_size: usize) -> PyResult<()> {
        let map = RingMap::open(map_fd, data_size)
            .map_err(|e| PyOSError::new_err(format!("cannot map the BPF ring buffer: {e}")))?;
        self.map = Some(map);
        Ok(())
    }

    /// Copy the events of every record the kernel has finished since the last call to the
    /// held events, then hand the space back to the kernel. Returns the events held.
    fn poll(&mut self, py: Python<'_>) -> usize {
        let (Some(map), held) = (self.map.as_ref(), &mut self.held) else {
            return self.held.len() / self.dec.layout.size;
        };
        let (header_len, size) = (self.header_len, self.dec.layout.size);
        py.detach(|| {
            let cons = map.cons_word().load(Ordering::Relaxed); // written only by us
            let prod = map.producer();
            let got = ebpf::consume(
                map,
                (map.size - 1) as u64,
                cons,
                prod,
                header_len,
                size,
                held,
            );
            // Release: the copies above happen before the kernel may reuse the space.
            map.cons_word().store(got.cons, Ordering::Release);
        });
        self.held.len() / size
    }

    /// Append hop events back to back (tests, benchmarks: a ring's contents without a ring).
    fn push(&mut self, events: &[u8]) {
        self.held.extend_from_slice(events);
    }

    /// Events held, not yet taken.
    #[getter]
    fn held(&self) -> usize {
        self.held.len() / self.dec.layout.size
    }

    /// Labels indexed so far (the next new key's index).
    #[getter]
    fn hops(&self) -> u32 {
        self.dec.keys.len()
    }

    /// The monotonic -> UTC function (probes/utc_clock.py ``MonoToUtc.knots()``): UTC =
    /// mono + base + the offset interpolated between knots ``km`` (monotonic ns,
    /// increasing) and ``ko``. Applies to the events taken from now on.
    fn set_clock(&mut self, base: i64, km: Vec<i64>, ko: Vec<i64>) -> PyResult<()> {
        self.dec.clock = UtcClock::new(base, km, ko).ok_or_else(|| {
            PyValueError::new_err("clock knots must be increasing, one offset each")
        })?;
        Ok(())
    }

    /// The held events as ``(rows, frames, misses)``: a numpy ``OBS_DTYPE`` array, the events'
    /// bytes its ``frame_off``/``frame_len`` point into, and the hop keys first seen in them
    /// as ``(index, netns, ifindex, ifname bytes, linktype)`` in index order (the caller's
    /// label table grows by exactly these). Decodes without the GIL.
    fn take<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyBytes>, Bound<'py, PyList>)> {
        let mut rows = Vec::new();
        let mut misses: Vec<Miss> = Vec::new();
        let (dec, held) = (&mut self.dec, &self.held);
        let n = py.detach(|| dec.decode(held, &mut rows, &mut misses));
        let frames = PyBytes::new(py, held.get(..n * dec.layout.size).unwrap_or_default());
        self.held.clear();
        let arr = PyArray1::from_vec(py, rows).call_method1("view", (obs_descr(py)?,))?;
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
        Ok((arr, frames, list))
    }

    /// Unmap the ring (after the programs are detached); held events stay for ``take``.
    fn close(&mut self) {
        self.map = None;
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EbpfRing>()
}
