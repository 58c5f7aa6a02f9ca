//! `tracer._core.BpfProgram`: a compiled pcap-filter expression (libpcap's
//! `struct bpf_insn` array, as bytes) that the core runs over batches of frames.

use hoptrace_core::bpf::Program;
use numpy::{PyArray1, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A validated classic BPF program (`BpfProgram(insns: bytes)`, 8 bytes per
/// `struct bpf_insn` in native order); ValueError names what libpcap's validator would refuse.
#[pyclass(frozen, name = "BpfProgram", module = "tracer._core")]
pub struct BpfProgram {
    prog: Program,
}

#[pymethods]
impl BpfProgram {
    #[new]
    fn new(insns: &[u8]) -> PyResult<Self> {
        let prog = Program::from_bytes(insns).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(BpfProgram { prog })
    }

    fn __len__(&self) -> usize {
        self.prog.len()
    }

    /// One verdict per frame (numpy bool array): frame `i` is
    /// `frames[offsets[i]:offsets[i] + lengths[i]]` (its captured bytes) and was
    /// `wirelens[i]` bytes long on the wire (what `len` reads). `frames` is bytes or a
    /// uint8 array (zero-copy from a bytearray or memoryview: `np.frombuffer`);
    /// offsets uint64, lengths and wirelens uint32. Runs without the GIL.
    fn match_frames<'py>(
        &self,
        py: Python<'py>,
        frames: &Bound<'py, PyAny>,
        offsets: PyReadonlyArray1<'py, u64>,
        lengths: PyReadonlyArray1<'py, u32>,
        wirelens: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let array: PyReadonlyArray1<'py, u8>;
        let buf: &[u8] = if let Ok(b) = frames.cast::<PyBytes>() {
            b.as_bytes()
        } else if let Ok(a) = frames.extract::<PyReadonlyArray1<'py, u8>>() {
            array = a;
            array.as_slice()?
        } else {
            return Err(PyTypeError::new_err(format!(
                "frames must be bytes or a 1-D uint8 numpy array, not {}",
                frames.get_type().name()?
            )));
        };
        let (o, l, w) = (
            offsets.as_slice()?,
            lengths.as_slice()?,
            wirelens.as_slice()?,
        );
        let prog = &self.prog;
        let mut out = Vec::with_capacity(offsets.len());
        py.detach(|| prog.match_frames(buf, o, l, w, &mut out))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArray1::from_vec(py, out))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BpfProgram>()
}
