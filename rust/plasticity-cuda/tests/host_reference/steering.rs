//! The steering kernel run on the host: `kernels/steering_add.cu` compiled by
//! `c++` into a shared library and driven by the crate's own launch decisions
//! (`launch::steering_plan` picks the 16-byte or the scalar variant and the
//! 2-D grid, `steering_entry` the entry point), one GPU thread after another,
//! against plasticity-core's `steering::add_rows` bit for bit: every dtype ×
//! slot type × variant, padding tokens, a garbage row 0 that must not be read,
//! out-of-range slots that must leave their token alone, misaligned buffers,
//! and more tokens than gridDim.y allows.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use half::{bf16, f16};
use plasticity_core::steering::add_rows;
use plasticity_core::Element;
use plasticity_cuda::launch::steering_plan;
use plasticity_cuda::{steering_entry, FloatType, SlotType};

type Steer = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    c_int,
) -> c_int;

struct Host {
    _lib: libloading::Library,
    steer: Steer,
}

fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Option<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let found = Command::new(&cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("PLASTICITY_REQUIRE_CXX").is_none(),
                "PLASTICITY_REQUIRE_CXX is set but no C++ compiler runs (CXX or c++)"
            );
            println!("skipped: no C++ compiler (set CXX) to run the kernels on the host");
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let kernel = root
            .join("../../kernels/steering_add.cu")
            .canonicalize()
            .unwrap();
        let lib: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libsteering_on_host.so");
        let out = Command::new(&cxx)
            .args([
                "-std=c++17",
                "-O2",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-shared",
                "-fPIC",
                "-o",
            ])
            .arg(&lib)
            .arg(format!("-DPLASTICITY_KERNEL=\"{}\"", kernel.display()))
            .arg(root.join("tests/host/steering_on_host.cpp"))
            .output()
            .expect("run the C++ compiler");
        assert!(
            out.status.success(),
            "{cxx} failed on steering_add.cu:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: our own library, built just now; the symbol's type is declared above.
        unsafe {
            let l = libloading::Library::new(&lib).unwrap();
            let steer = *l.get::<Steer>(b"host_steer").unwrap();
            Some(Host { _lib: l, steer })
        }
    })
    .as_ref()
}

/// A 16-byte aligned byte buffer, and a view of it starting `offset` bytes in.
struct Buf {
    words: Vec<u128>,
    offset: usize,
    len: usize,
}

impl Buf {
    fn from_bytes(bytes: &[u8], offset: usize) -> Buf {
        let mut words = vec![0u128; (bytes.len() + offset).div_ceil(16) + 1];
        // SAFETY: the u128 buffer holds at least offset + len bytes.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 16)
        };
        dst[offset..offset + bytes.len()].copy_from_slice(bytes);
        Buf {
            words,
            offset,
            len: bytes.len(),
        }
    }
    fn ptr(&mut self) -> *mut u8 {
        unsafe { (self.words.as_mut_ptr() as *mut u8).add(self.offset) }
    }
    fn bytes(&self) -> Vec<u8> {
        let all = unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.words.len() * 16)
        };
        all[self.offset..self.offset + self.len].to_vec()
    }
}

fn to_bytes<T: Element>(v: &[T]) -> Vec<u8> {
    bytemuck_bytes(v).to_vec()
}

fn bytemuck_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: Element types are plain old data.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn from_bytes<T: Element>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut out = vec![T::from_f32(0.0); n];
    // SAFETY: plain old data of the same total size.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out.as_mut_ptr() as *mut u8, b.len()) };
    out
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    plasticity_core::rng::fill_normal(seed, 1.0, &mut v);
    v
}

struct Case {
    tokens: usize,
    used: usize,
    hidden: usize,
    num_slots: usize,
    residual_offset: usize, // elements
    bad_slots: bool,
}

fn run<T: Element>(h: &Host, float: FloatType, slot_type: SlotType, c: &Case) -> bool {
    let Case {
        tokens,
        used,
        hidden,
        num_slots,
        residual_offset,
        bad_slots,
    } = *c;
    let residual: Vec<T> = noise(tokens * hidden, 1)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let mut table: Vec<T> = noise(num_slots * hidden, 2)
        .into_iter()
        .map(T::from_f32)
        .collect();
    table[..hidden]
        .iter_mut()
        .for_each(|x| *x = T::from_f32(f32::NAN)); // row 0 must never be read
    let mut slots: Vec<i64> = (0..used)
        .map(|t| ((t * 7 + t / 3) % num_slots) as i64)
        .collect();
    if bad_slots && used >= 3 {
        slots[1] = num_slots as i64;
        slots[used / 2] = -1;
        slots[used - 1] = 1 << 40;
    }
    // What the kernel must do: add_rows on the in-range slots; out-of-range tokens untouched.
    let mut want = residual.clone();
    let clean: Vec<i64> = slots
        .iter()
        .map(|&s| if s > 0 && s < num_slots as i64 { s } else { 0 })
        .collect();
    add_rows(&mut want, hidden, &table, &clean).unwrap();

    let esz = std::mem::size_of::<T>();
    let mut r = Buf::from_bytes(&to_bytes(&residual), residual_offset * esz);
    let mut t = Buf::from_bytes(&to_bytes(&table), 0);
    let slot_bytes: Vec<u8> = match slot_type {
        SlotType::I32 => slots
            .iter()
            .flat_map(|&s| (s as i32).to_le_bytes())
            .collect(),
        SlotType::I64 => slots.iter().flat_map(|&s| s.to_le_bytes()).collect(),
    };
    let mut s = Buf::from_bytes(&slot_bytes, 0);
    let plan = steering_plan(used, hidden, num_slots, esz, r.ptr() as u64, t.ptr() as u64)
        .unwrap()
        .unwrap();
    let entry = steering_entry(float, slot_type, &plan);
    let name = CString::new(entry.clone()).unwrap();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the buffers hold the sizes the plan and the entry point use.
    let rc = unsafe {
        (h.steer)(
            name.as_ptr(),
            plan.shape.grid.0,
            plan.shape.grid.1,
            plan.shape.block.0,
            r.ptr() as *mut c_void,
            t.ptr() as *const c_void,
            s.ptr() as *const c_void,
            used as c_int,
            hidden as c_int,
            num_slots as c_int,
        )
    };
    assert_eq!(rc, 0, "{entry} is not in the host library");
    let got: Vec<T> = from_bytes(&r.bytes());
    let what =
        format!("{entry} tokens {tokens} (used {used}) hidden {hidden} offset {residual_offset}");
    assert_eq!(
        bytemuck_bytes(&got),
        bytemuck_bytes(&want),
        "{what}: differs from add_rows"
    );
    plan.vectorised
}

#[test]
fn host_build_of_the_steering_kernel_is_add_rows_bit_for_bit() {
    let Some(h) = host() else { return };
    let mut variants = std::collections::BTreeSet::new();
    let cases = [
        Case {
            tokens: 37,
            used: 30,
            hidden: 4096,
            num_slots: 9,
            residual_offset: 0,
            bad_slots: true,
        },
        Case {
            tokens: 37,
            used: 37,
            hidden: 1000,
            num_slots: 5,
            residual_offset: 0,
            bad_slots: false,
        },
        Case {
            tokens: 20,
            used: 17,
            hidden: 7,
            num_slots: 3,
            residual_offset: 0,
            bad_slots: true,
        },
        Case {
            tokens: 20,
            used: 20,
            hidden: 64,
            num_slots: 4,
            residual_offset: 1,
            bad_slots: true,
        }, // misaligned
        Case {
            tokens: 1,
            used: 1,
            hidden: 8,
            num_slots: 2,
            residual_offset: 0,
            bad_slots: false,
        },
    ];
    for c in &cases {
        for st in [SlotType::I32, SlotType::I64] {
            variants.insert(("f32", run::<f32>(h, FloatType::F32, st, c)));
            variants.insert(("bf16", run::<bf16>(h, FloatType::BF16, st, c)));
            variants.insert(("f16", run::<f16>(h, FloatType::F16, st, c)));
        }
    }
    // Both variants of every dtype were exercised.
    assert_eq!(variants.len(), 6, "{variants:?}");
    // More tokens than gridDim.y (65535): the token loop strides.
    let big = Case {
        tokens: 70_000,
        used: 70_000,
        hidden: 4,
        num_slots: 3,
        residual_offset: 0,
        bad_slots: false,
    };
    run::<f32>(h, FloatType::F32, SlotType::I32, &big);
}
