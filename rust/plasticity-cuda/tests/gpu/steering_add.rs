//! steering_add on a real GPU against a CPU reference. Skips without CUDA.

use crate::common;

use half::{bf16, f16};
use plasticity_cuda::{
    available, cudarc, driver_present, nvrtc_present, steering_add_bf16, steering_add_borrowed,
    steering_add_f16, steering_add_f32, stream_on, BorrowedSteering, CudaError, CudaSlice,
    FloatType, Gpu, SlotType,
};

/// Deterministic pseudo-random floats in [-1, 1) (no rand dependency).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A steering table whose row 0 is zero, and slots that use every row incl. 0.
fn case(num_tokens: usize, hidden: usize, num_slots: usize) -> (Vec<f32>, Vec<f32>, Vec<i32>) {
    let residual = noise(num_tokens * hidden, 1);
    let mut table = noise(num_slots * hidden, 2);
    table[..hidden].iter_mut().for_each(|x| *x = 0.0);
    let slot = (0..num_tokens)
        .map(|t| ((t * 7 + t / 3) % num_slots) as i32)
        .collect();
    (residual, table, slot)
}

fn cpu_ref<T: Copy>(
    res: &[T],
    table: &[T],
    slot: &[i32],
    hidden: usize,
    add: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut out = res.to_vec();
    for (t, &s) in slot.iter().enumerate() {
        for i in 0..hidden {
            out[t * hidden + i] = add(out[t * hidden + i], table[s as usize * hidden + i]);
        }
    }
    out
}

fn gpu_or_skip() -> Option<Gpu> {
    common::preload_venv_nvrtc();
    if !available() {
        if !driver_present() {
            println!("skipped: no CUDA driver");
        } else if !nvrtc_present() {
            println!("skipped: CUDA driver but no NVRTC (set PLASTICITY_NVRTC_LIB)");
        } else {
            println!("skipped: CUDA driver but no device");
        }
        return None;
    }
    Some(Gpu::open(0).expect("available() but Gpu::open(0) failed"))
}

#[test]
fn steering_add_f32_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.stream();
    // Second shape exceeds the grid cap (65536 blocks * 256), exercising the grid-stride loop.
    for &(n, h, k) in &[(1, 1, 1), (37, 129, 5), (300, 4096, 17), (4100, 4096, 3)] {
        let (res, table, slot) = case(n, h, k);
        let mut d_res = s.clone_htod(&res).unwrap();
        let d_table = s.clone_htod(&table).unwrap();
        let d_slot = s.clone_htod(&slot).unwrap();
        steering_add_f32(&gpu, &mut d_res, &d_table, &d_slot, n, h).unwrap();
        let got = s.clone_dtoh(&d_res).unwrap();
        let want = cpu_ref(&res, &table, &slot, h, |a, b| a + b);
        // One f32 add per element: bit-exact.
        assert!(got == want, "f32 mismatch at shape ({n}, {h}, {k})");
    }
}

#[test]
fn steering_add_16bit_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.stream();
    let (n, h, k) = (333, 1000, 9);
    let (res, table, slot) = case(n, h, k);
    let d_slot = s.clone_htod(&slot).unwrap();

    let formats = [
        Format16 {
            name: "bf16",
            kernel: steering_add_bf16,
            encode: |x| bf16::from_f32(x).to_bits(),
            decode: |b| bf16::from_bits(b).to_f32(),
        },
        Format16 {
            name: "f16",
            kernel: steering_add_f16,
            encode: |x| f16::from_f32(x).to_bits(),
            decode: |b| f16::from_bits(b).to_f32(),
        },
    ];
    for format in formats {
        let Format16 {
            name,
            kernel,
            encode,
            decode,
        } = format;
        // Inputs rounded to the format; the CPU sum is formed in f32 and rounded once.
        let to_bits = |v: &[f32]| v.iter().map(|&x| encode(x)).collect::<Vec<u16>>();
        let (r, t) = (to_bits(&res), to_bits(&table));
        let mut d_res = s.clone_htod(&r).unwrap();
        kernel(&gpu, &mut d_res, &s.clone_htod(&t).unwrap(), &d_slot, n, h).unwrap();
        let want = cpu_ref(&r, &t, &slot, h, |a, b| encode(decode(a) + decode(b)));
        assert!(s.clone_dtoh(&d_res).unwrap() == want, "{name} mismatch");
    }
}

/// The signature the 16-bit kernels share (buffers hold raw bit patterns).
type Kernel16 = fn(
    &Gpu,
    &mut CudaSlice<u16>,
    &CudaSlice<u16>,
    &CudaSlice<i32>,
    usize,
    usize,
) -> Result<(), CudaError>;

/// A 16-bit float format: its kernel, which takes raw bit patterns, and the
/// conversions of one value to and from those bits.
struct Format16 {
    name: &'static str,
    kernel: Kernel16,
    encode: fn(f32) -> u16,
    decode: fn(u16) -> f32,
}

#[test]
fn kernel_is_compiled_once_and_bad_args_are_errors() {
    let Some(gpu) = gpu_or_skip() else { return };
    let a = gpu.kernel("steering_add").unwrap();
    let b = Gpu::open(0).unwrap().kernel("steering_add").unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "module must be cached per device"
    );
    assert!(matches!(
        gpu.kernel("nope"),
        Err(CudaError::UnknownKernel(_))
    ));

    let s = gpu.stream();
    let mut res = s.alloc_zeros::<f32>(4 * 8).unwrap();
    let table = s.clone_htod(&[[0f32; 8], [1f32; 8]].concat()).unwrap();
    let slot = s.clone_htod(&[0i32, 1, 1, 0]).unwrap();
    // Wrong shapes.
    for (n, h) in [(3, 8), (4, 7), (4, 0)] {
        let e = steering_add_f32(&gpu, &mut res, &table, &slot, n, h).unwrap_err();
        assert!(matches!(e, CudaError::InvalidArgument(_)), "({n},{h}): {e}");
    }
    steering_add_f32(&gpu, &mut res, &table, &slot, 4, 8).unwrap();
    // Out-of-range slots (past the table, negative) leave their tokens untouched
    // and read nothing outside the table; the in-range token is still added.
    let bad = s.clone_htod(&[0i32, 2, -1, 1]).unwrap();
    steering_add_f32(&gpu, &mut res, &table, &bad, 4, 8).unwrap();
    let got = s.clone_dtoh(&res).unwrap();
    let want: Vec<f32> = [0f32, 1.0, 1.0, 2.0].iter().flat_map(|&v| [v; 8]).collect();
    assert_eq!(got, want);
    gpu.synchronize().unwrap();
}

#[test]
fn row_zero_is_never_read() {
    // As on the CPU: a garbage row 0 does not leak into unsteered tokens.
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.stream();
    let (n, h) = (5, 16);
    let res = noise(n * h, 3);
    let mut table = vec![f32::NAN; h];
    table.extend(noise(h, 4));
    let slot = [0i32, 1, 0, 1, 0];
    let mut d_res = s.clone_htod(&res).unwrap();
    steering_add_f32(
        &gpu,
        &mut d_res,
        &s.clone_htod(&table).unwrap(),
        &s.clone_htod(&slot).unwrap(),
        n,
        h,
    )
    .unwrap();
    let got = s.clone_dtoh(&d_res).unwrap();
    for t in [0, 2, 4] {
        assert_eq!(
            &got[t * h..(t + 1) * h],
            &res[t * h..(t + 1) * h],
            "token {t}"
        );
    }
    assert!(got.iter().all(|x| x.is_finite()));
}

/// The borrowed-pointer path (what the Python binding calls with torch's memory
/// and current stream): every variant (f32/bf16/f16 x i32/i64 x vectorised or
/// not) against the CPU, on a stream this test owns.
#[test]
fn borrowed_launch_matches_cpu_for_every_variant() {
    let Some(gpu) = gpu_or_skip() else { return };
    let own = gpu.context().new_stream().unwrap();
    let stream = own.cu_stream() as usize;
    assert!(stream_on(&gpu, stream).unwrap());
    assert!(
        stream_on(&gpu, 0).unwrap(),
        "the legacy default stream resolves to the bound context"
    );
    let (n, h, k) = (300, 4096, 17);
    let (res, table, slot) = case(n, h, k);
    let slot64: Vec<i64> = slot.iter().map(|&x| x as i64).collect();
    for float in [FloatType::F32, FloatType::BF16, FloatType::F16] {
        let encode = |v: &[f32]| -> Vec<u8> {
            match float {
                FloatType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                FloatType::BF16 => v
                    .iter()
                    .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
                    .collect(),
                FloatType::F16 => v
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
                    .collect(),
            }
        };
        let decode = |b: &[u8]| -> Vec<f32> {
            let e = float.bytes();
            b.chunks_exact(e)
                .map(|c| match float {
                    FloatType::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                    FloatType::BF16 => {
                        bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32()
                    }
                    FloatType::F16 => {
                        f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32()
                    }
                })
                .collect()
        };
        let round = |x: f32| decode(&encode(&[x]))[0];
        let (r_bytes, t_bytes) = (encode(&res), encode(&table));
        let r_in = decode(&r_bytes);
        let t_in = decode(&t_bytes);
        let want = cpu_ref(&r_in, &t_in, &slot, h, |a, b| round(a + b));
        for slot_type in [SlotType::I32, SlotType::I64] {
            // offset 0: 16-byte aligned rows (the _v16 variant); offset one element: scalar.
            for offset in [0usize, 1] {
                let e = float.bytes();
                let mut d_res = own.alloc_zeros::<u8>(r_bytes.len() + 16).unwrap();
                let mut d_tab = own.alloc_zeros::<u8>(t_bytes.len() + 16).unwrap();
                own.memcpy_htod(
                    &r_bytes,
                    &mut d_res.slice_mut(offset * e..offset * e + r_bytes.len()),
                )
                .unwrap();
                own.memcpy_htod(
                    &t_bytes,
                    &mut d_tab.slice_mut(offset * e..offset * e + t_bytes.len()),
                )
                .unwrap();
                let d_slot32 = own.clone_htod(&slot).unwrap();
                let d_slot64 = own.clone_htod(&slot64).unwrap();
                let addr = |p: u64| p + (offset * e) as u64;
                let (r0, t0, s0) = {
                    use cudarc::driver::DevicePtr;
                    let (r, _a) = d_res.device_ptr(&own);
                    let (t, _b) = d_tab.device_ptr(&own);
                    let (s, _c) = match slot_type {
                        SlotType::I32 => d_slot32.device_ptr(&own),
                        SlotType::I64 => d_slot64.device_ptr(&own),
                    };
                    (addr(r), addr(t), s)
                };
                let b = BorrowedSteering {
                    residual: r0,
                    table: t0,
                    slot: s0,
                    num_tokens: n,
                    hidden: h,
                    num_slots: k,
                    float,
                    slot_type,
                };
                // SAFETY: the buffers above hold the stated sizes past `offset` and outlive the sync.
                unsafe { steering_add_borrowed(&gpu, stream, &b) }.unwrap();
                own.synchronize().unwrap();
                let back = own.clone_dtoh(&d_res).unwrap();
                let got = decode(&back[offset * e..offset * e + r_bytes.len()]);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{float:?} {slot_type:?} offset {offset}: mismatch"
                );
            }
        }
    }
}
