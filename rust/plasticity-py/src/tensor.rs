//! Zero-copy views of torch tensors through DLPack, with every property checked.
//!
//! A tensor is borrowed, never copied: we ask torch for a DLPack capsule of a
//! detached alias (same storage, no autograd), read its descriptor, and keep
//! the capsule alive for as long as the view is used. Anything that is not
//! exactly what the kernel expects (dtype, device, shape, strides, overlap)
//! becomes a Python exception before a single byte is touched.

use std::ffi::{c_void, CStr};

use plasticity_core::DType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;
const KDL_INT: u8 = 0;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;
const DLTENSOR: &CStr = c"dltensor";

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
    Other(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Other(d) => write!(f, "DLPack device type {d}"),
        }
    }
}

/// A checked, borrowed view of a torch tensor's memory.
pub struct TensorView<'py> {
    /// Keeps the exporting tensor (and so the memory) alive.
    _capsule: Bound<'py, PyCapsule>,
    pub name: &'static str,
    pub ptr: *mut u8,
    pub dtype: DType,
    pub device: Device,
    pub shape: Vec<usize>,
}

/// What a DLPack descriptor says, before any dtype policy is applied.
struct Borrowed<'py> {
    capsule: Bound<'py, PyCapsule>,
    ptr: *mut u8,
    code: u8,
    bits: u8,
    lanes: u16,
    device: Device,
    shape: Vec<usize>,
}

/// Borrow `obj` through DLPack and check row-major contiguity; dtype is the
/// caller's business (float views and index views accept different ones).
fn borrow<'py>(obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Borrowed<'py>> {
    let type_name = obj.get_type().name()?.to_string();
    if !obj.hasattr("__dlpack__")? || !obj.hasattr("detach")? {
        return Err(PyTypeError::new_err(format!(
            "{name}: expected a torch.Tensor, got {type_name}"
        )));
    }
    // detach(): same storage, no autograd (DLPack refuses tensors requiring grad).
    // stream=-1: export without any cross-stream synchronisation. Torch's default for
    // a CUDA tensor differs between versions (None meant "sync with the legacy default
    // stream" in some), and an event on the legacy stream fails inside a CUDA-graph
    // capture; the CUDA paths order their work on the stream they are given instead.
    let kwargs = pyo3::types::PyDict::new(obj.py());
    kwargs.set_item("stream", -1)?;
    let capsule = obj
        .call_method0("detach")
        .and_then(|t| t.call_method("__dlpack__", (), Some(&kwargs)))
        .map_err(|e| {
            PyValueError::new_err(format!("{name}: cannot be borrowed zero-copy ({e})"))
        })?;
    let capsule = capsule.cast_into::<PyCapsule>().map_err(|_| {
        PyTypeError::new_err(format!("{name}: __dlpack__ did not return a capsule"))
    })?;
    let raw = capsule.pointer_checked(Some(DLTENSOR)).map_err(|_| {
        PyTypeError::new_err(format!(
            "{name}: not an unconsumed DLPack 'dltensor' capsule"
        ))
    })?;
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor valid while the capsule lives.
    let t = unsafe { &(*(raw.as_ptr() as *const DLManagedTensor)).dl_tensor };
    let device = match t.device.device_type {
        KDL_CPU => Device::Cpu,
        KDL_CUDA => Device::Cuda(t.device.device_id),
        other => Device::Other(other),
    };
    let ndim = usize::try_from(t.ndim)
        .map_err(|_| PyValueError::new_err(format!("{name}: negative ndim")))?;
    let shape: Vec<usize> = (0..ndim)
        .map(|i| unsafe { *t.shape.add(i) } as usize)
        .collect();
    // Row-major contiguity: strides (in elements) must be the suffix products.
    // Size-1 dimensions may carry any stride (torch normalises inconsistently).
    if !t.strides.is_null() {
        let mut expect: i64 = 1;
        for i in (0..ndim).rev() {
            let s = unsafe { *t.strides.add(i) };
            if shape[i] != 1 && s != expect {
                return Err(PyValueError::new_err(format!(
                    "{name}: tensor is not contiguous (shape {shape:?}); call .contiguous() — plasticity never copies silently"
                )));
            }
            expect *= shape[i] as i64;
        }
    }
    let ptr = unsafe { (t.data as *mut u8).add(t.byte_offset as usize) };
    let (code, bits, lanes) = (t.dtype.code, t.dtype.bits, t.dtype.lanes);
    Ok(Borrowed {
        capsule,
        ptr,
        code,
        bits,
        lanes,
        device,
        shape,
    })
}

impl<'py> TensorView<'py> {
    /// Borrow `obj` (a float torch tensor). `name` is used in error messages.
    pub fn new(obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Self> {
        let b = borrow(obj, name)?;
        let dtype = match (b.code, b.bits, b.lanes) {
            (KDL_FLOAT, 32, 1) => DType::F32,
            (KDL_FLOAT, 16, 1) => DType::F16,
            (KDL_BFLOAT, 16, 1) => DType::BF16,
            (c, bits, l) => {
                return Err(PyTypeError::new_err(format!(
                    "{name}: unsupported dtype (DLPack code {c}, {bits} bits, {l} lanes); expected float32, bfloat16 or float16"
                )))
            }
        };
        Ok(Self {
            _capsule: b.capsule,
            name,
            ptr: b.ptr,
            dtype,
            device: b.device,
            shape: b.shape,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    pub fn require_cpu(&self) -> PyResult<()> {
        match self.device {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => Err(PyValueError::new_err(format!(
                "{}: tensor is on cuda:{i}; this operation runs on CPU tensors (the CUDA path is separate)",
                self.name
            ))),
            Device::Other(d) => Err(PyValueError::new_err(format!("{}: unsupported device type {d}", self.name))),
        }
    }

    pub fn require_dtype(&self, dtype: DType) -> PyResult<()> {
        if self.dtype != dtype {
            return Err(PyTypeError::new_err(format!(
                "{}: expected dtype {}, got {}",
                self.name,
                dtype.name(),
                self.dtype.name()
            )));
        }
        Ok(())
    }

    pub fn require_shape(&self, shape: &[usize]) -> PyResult<()> {
        if self.shape != shape {
            return Err(PyValueError::new_err(format!(
                "{}: expected shape {:?}, got {:?}",
                self.name, shape, self.shape
            )));
        }
        Ok(())
    }

    pub fn require_nonempty(&self) -> PyResult<()> {
        if self.numel() == 0 {
            return Err(PyValueError::new_err(format!(
                "{}: tensor is empty",
                self.name
            )));
        }
        Ok(())
    }

    pub fn range(&self) -> (usize, usize) {
        let s = self.ptr as usize;
        (s, s + self.nbytes())
    }

    /// # Safety
    /// The caller must have checked dtype, and no other live view may overlap this one.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<T>(&self) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.ptr as *mut T, self.numel())
    }
}

/// Refuse any two views whose memory overlaps: one of them is written, and an
/// aliased weight/gradient/moment would corrupt the step silently.
pub fn require_disjoint(views: &[&TensorView]) -> PyResult<()> {
    for (i, a) in views.iter().enumerate() {
        for b in &views[i + 1..] {
            let (a0, a1) = a.range();
            let (b0, b1) = b.range();
            if a0 < b1 && b0 < a1 {
                return Err(PyValueError::new_err(format!(
                    "{} and {} share memory; they must be distinct tensors",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

/// Raw pointers that cross into a GIL-free section. The views they come from
/// are kept alive by the caller for the whole call.
pub struct SendPtr(pub *mut u8);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub fn get(&self) -> *mut u8 {
        self.0
    }
}

/// Integer dtypes an index tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexDType {
    I32,
    I64,
}

/// A checked, borrowed view of an integer (index) tensor. Kept apart from
/// [`TensorView`] so float-only entry points keep refusing integer tensors.
pub struct IndexView<'py> {
    _capsule: Bound<'py, PyCapsule>,
    pub name: &'static str,
    pub ptr: *mut u8,
    pub dtype: IndexDType,
    pub device: Device,
    pub shape: Vec<usize>,
}

impl<'py> IndexView<'py> {
    pub fn new(obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Self> {
        let b = borrow(obj, name)?;
        let dtype = match (b.code, b.bits, b.lanes) {
            (KDL_INT, 32, 1) => IndexDType::I32,
            (KDL_INT, 64, 1) => IndexDType::I64,
            (c, bits, l) => {
                return Err(PyTypeError::new_err(format!(
                    "{name}: unsupported dtype (DLPack code {c}, {bits} bits, {l} lanes); expected int32 or int64"
                )))
            }
        };
        Ok(Self {
            _capsule: b.capsule,
            name,
            ptr: b.ptr,
            dtype,
            device: b.device,
            shape: b.shape,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.numel() * if self.dtype == IndexDType::I32 { 4 } else { 8 }
    }

    pub fn require_cpu(&self) -> PyResult<()> {
        if self.device != Device::Cpu {
            return Err(PyValueError::new_err(format!(
                "{}: tensor is on {:?}; this operation runs on CPU tensors (the CUDA path is separate)",
                self.name, self.device
            )));
        }
        Ok(())
    }

    /// Byte range, for overlap checks against float views.
    pub fn byte_range(&self) -> (usize, usize) {
        let s = self.ptr as usize;
        (s, s + self.nbytes())
    }
}
