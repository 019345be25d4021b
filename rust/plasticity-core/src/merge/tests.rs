use super::*;
use crate::rng;

fn normal(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    rng::fill_normal(seed, std, &mut v);
    v
}

/// Weights with edge magnitudes: normal values, tiny and huge ones (within the
/// exactness range of the delta), subnormals, ±0, max finite.
fn edge_weights(seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut base = normal(seed, n, 0.02);
    let mut live = base.clone();
    let upd = normal(seed + 1, n, 1e-4);
    for i in 0..n {
        live[i] = base[i] + upd[i];
    }
    let edges: [(f32, f32); 12] = [
        (0.0, -0.0),
        (-0.0, 0.0),
        (0.0, 1e-40), // subnormal
        (1e-40, -2e-41),
        (f32::MIN_POSITIVE, 0.0),
        (f32::MAX, f32::MAX * 0.5),
        (-f32::MAX, -f32::MAX),
        (1.0, 1.0 + f32::EPSILON),
        (3.0e4, -2.0e-3), // spread of ~24 binades: exact in f64
        (1e-30, 1e-31),
        (65504.0, 6.1e-5),
        (-7.5, 7.5),
    ];
    for (j, &(b, l)) in edges.iter().enumerate() {
        base[j * 7] = b;
        live[j * 7] = l;
    }
    (base, live)
}

#[test]
fn f32_roundtrip_is_bit_exact_through_f64() {
    let n = 200_003; // > PAR_MIN and not a multiple of the chunk
    let (base, live) = edge_weights(11, n);
    let mut d = vec![0f64; n];
    delta_of(&live, &base, &mut d).unwrap();
    let mut back = base.clone();
    add_delta(&mut back, &d, 1.0).unwrap();
    let mut fwd = live.clone();
    add_delta(&mut fwd, &d, -1.0).unwrap();
    let mut signed_zero = 0;
    for i in 0..n {
        if back[i].to_bits() != live[i].to_bits() || fwd[i].to_bits() != base[i].to_bits() {
            // the one documented exception: a +0.0 / -0.0 pair comes back as +0.0
            assert!(
                live[i] == 0.0 && base[i] == 0.0,
                "elem {i}: {} {}",
                live[i],
                base[i]
            );
            assert!(back[i] == 0.0 && fwd[i] == 0.0);
            signed_zero += 1;
        }
    }
    assert_eq!(signed_zero, 2);
    let rt = check_roundtrip(&live, &base).unwrap();
    assert_eq!(
        rt,
        RoundTrip {
            elements: n,
            not_exact: 2,
            signed_zero: 2
        }
    );
}

#[test]
fn bf16_and_f16_roundtrip_is_bit_exact_through_f32() {
    let n = 100_000;
    let (mut b32, mut l32) = edge_weights(5, n);
    // (3e4, -2e-3) is 24 binades apart: exact in f64, not in f32 (needs ≤ 16
    // for bf16, ≤ 13 for f16; huge_exponent_spread_is_reported covers that).
    (b32[56], l32[56]) = (1024.0, -0.25);
    (b32[70], l32[70]) = (65504.0, 8.0); // (65504, 6.1e-5) is 30 apart
    for &half in &[true, false] {
        // Test each 16-bit type on its finite range.
        let m = if half { bf16::MAX.to_f32() } else { 65504.0 };
        let clamp = |x: f32| x.clamp(-m, m);
        if half {
            let base: Vec<bf16> = b32.iter().map(|&x| bf16::from_f32(clamp(x))).collect();
            let live: Vec<bf16> = l32.iter().map(|&x| bf16::from_f32(clamp(x))).collect();
            roundtrip16(&live, &base);
        } else {
            let base: Vec<f16> = b32.iter().map(|&x| f16::from_f32(clamp(x))).collect();
            let live: Vec<f16> = l32.iter().map(|&x| f16::from_f32(clamp(x))).collect();
            roundtrip16(&live, &base);
        }
    }
}

fn roundtrip16<W: Weight<Wide = f32> + std::fmt::Debug>(live: &[W], base: &[W]) {
    let n = live.len();
    let mut d = vec![0f32; n];
    delta_of(live, base, &mut d).unwrap();
    let mut back = base.to_vec();
    add_delta(&mut back, &d, 1.0).unwrap();
    let mut fwd = live.to_vec();
    add_delta(&mut fwd, &d, -1.0).unwrap();
    let rt = check_roundtrip(live, base).unwrap();
    let mut bad = 0;
    for i in 0..n {
        let ok = bits_of(back[i]) == bits_of(live[i]) && bits_of(fwd[i]) == bits_of(base[i]);
        if !ok {
            bad += 1;
            // only a -0.0 weight may come back (as +0.0)
            let neg0 = |x: f32| x == 0.0 && x.is_sign_negative();
            assert!(
                neg0(live[i].to_f32()) || neg0(base[i].to_f32()),
                "{i}: {:?} {:?}",
                live[i],
                base[i]
            );
        }
    }
    assert_eq!(bad, rt.not_exact);
    assert_eq!(rt.not_exact, rt.signed_zero, "only signed zeros may differ");
    assert_eq!(rt.signed_zero, 3); // (+0,-0), (-0,+0) and a bf16/f16 underflow to -0
}

#[test]
fn huge_exponent_spread_is_reported() {
    // 1e30 next to 1e-30 (f32): the difference needs ~200 bits; f64 rounds it.
    let base = vec![1e30f32, 1.0, 0.5];
    let live = vec![1e-30f32, 1.0 + f32::EPSILON, 0.25];
    let rt = check_roundtrip(&live, &base).unwrap();
    assert_eq!(rt.not_exact, 1);
    assert_eq!(rt.signed_zero, 0);
    assert!(!rt.exact());
    // bf16: 2^20 next to 2^-20 needs 48 bits, more than f32's 24.
    let b = vec![bf16::from_f32(1048576.0)];
    let l = vec![bf16::from_f32(1.0 / 1048576.0)];
    assert_eq!(check_roundtrip(&l, &b).unwrap().not_exact, 1);
    // Non-finite weights are never exact.
    assert_eq!(
        check_roundtrip(&[f32::INFINITY], &[f32::INFINITY])
            .unwrap()
            .not_exact,
        1
    );
    assert_eq!(
        check_roundtrip(&[f32::NAN], &[1.0f32]).unwrap().not_exact,
        1
    );
}

#[test]
fn delta_of_f32_out_is_the_rounded_f32_difference() {
    let a = normal(1, 1000, 1.0);
    let b = normal(2, 1000, 1e-3);
    let mut d = vec![0f32; 1000];
    delta_of(&a, &b, &mut d).unwrap();
    for i in 0..1000 {
        assert_eq!(d[i].to_bits(), (a[i] - b[i]).to_bits());
    }
    assert!(delta_of(&a, &b[..10], &mut d).is_err());
}

#[test]
fn add_delta_scales_and_refuses_bad_input_untouched() {
    let mut w = vec![1.0f32, 2.0, 3.0];
    add_delta(&mut w, &[1.0f64, 1.0, 1.0], 0.5).unwrap();
    assert_eq!(w, vec![1.5, 2.5, 3.5]);
    add_delta(&mut w, &[2.0f32, 2.0, 2.0], -0.25).unwrap();
    assert_eq!(w, vec![1.0, 2.0, 3.0]);
    let before = w.clone();
    assert!(add_delta(&mut w, &[1.0f32, f32::NAN, 1.0], 1.0)
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
    assert!(add_delta(&mut w, &[1.0f32; 3], f64::INFINITY).is_err());
    assert!(add_delta(&mut w, &[1.0f32; 2], 1.0)
        .unwrap_err()
        .to_string()
        .contains("elements"));
    let mut big = vec![f32::MAX, 1.0];
    let err = add_delta(&mut big, &[f32::MAX as f64, 1.0], 1.0).unwrap_err();
    assert!(
        err.to_string()
            .contains("overflows the weight at element 0"),
        "{err}"
    );
    assert_eq!(big, vec![f32::MAX, 1.0]);
    assert_eq!(w, before);
    // bf16: f32 math, one rounding.
    let mut h = vec![bf16::from_f32(1.0)];
    add_delta(&mut h, &[0.0078125f32], 1.0).unwrap();
    assert_eq!(h[0].to_f32(), 1.0078125);
    // half an ulp: f32 sum 1.00390625 rounds once, to even (1.0)
    add_delta(&mut h, &[-0.00390625f32], 1.0).unwrap();
    assert_eq!(h[0].to_f32(), 1.0);
}

// ---------------------------------------------------------------- task arithmetic

#[test]
fn task_arithmetic_matches_reference() {
    let n = 70_001;
    let a = normal(3, n, 0.01);
    let b = normal(4, n, 0.02);
    let c = normal(5, n, 0.03);
    let ws = [0.7, -0.3, 1.25];
    for &(lam, norm) in &[(1.0, false), (0.4, false), (2.0, true)] {
        let mut out = vec![0f32; n];
        task_arithmetic(&[&a, &b, &c], &ws, lam, norm, &mut out).unwrap();
        let w: Vec<f32> = ws.iter().map(|&x| x as f32).collect();
        let div = w[0] + w[1] + w[2];
        for i in 0..n {
            let mut r = w[0] * a[i] + w[1] * b[i] + w[2] * c[i];
            if norm {
                r /= div;
            }
            if lam != 1.0 {
                r *= lam as f32;
            }
            assert_eq!(out[i].to_bits(), r.to_bits(), "{i}");
        }
    }
    // f64 deltas: f64 math.
    let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let mut out = vec![0f64; n];
    task_arithmetic(&[&a64], &[-1.0], 1.0, false, &mut out).unwrap();
    assert!(out.iter().zip(&a64).all(|(o, x)| *o == -*x));
}

#[test]
fn task_arithmetic_normalize_zero_weight_sum_divides_by_one() {
    let mut out = vec![0f32; 2];
    task_arithmetic(
        &[&[1.0f32, 2.0], &[3.0, 4.0]],
        &[1.0, -1.0],
        1.0,
        true,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, vec![-2.0, -2.0]);
}

#[test]
fn task_arithmetic_bad_input_writes_nothing() {
    let mut out = vec![7f32; 3];
    let a = [1f32, 2.0, 3.0];
    assert!(task_arithmetic::<f32>(&[], &[], 1.0, false, &mut out).is_err());
    assert!(task_arithmetic(&[&a], &[1.0, 2.0], 1.0, false, &mut out)
        .unwrap_err()
        .to_string()
        .contains("2 weights for 1"));
    assert!(task_arithmetic(&[&a[..2]], &[1.0], 1.0, false, &mut out)
        .unwrap_err()
        .to_string()
        .contains("elements"));
    assert!(task_arithmetic(&[&a], &[f64::NAN], 1.0, false, &mut out).is_err());
    assert!(
        task_arithmetic(&[&a], &[1.0], f64::INFINITY, false, &mut out)
            .unwrap_err()
            .to_string()
            .contains("lambda")
    );
    assert!(
        task_arithmetic(&[&[1.0f32, f32::NAN, 0.0]], &[1.0], 1.0, false, &mut out)
            .unwrap_err()
            .to_string()
            .contains("element 1")
    );
    assert_eq!(out, vec![7.0; 3]);
}

// ---------------------------------------------------------------- TIES

/// Straightforward TIES (mergekit 0.1.5 order of operations) with a stable
/// sort for the trim: ties at the threshold go to the lowest index.
fn ties_reference<D: Real>(ds: &[&[D]], ws: &[f64], dens: &[f64], lam: f64, norm: bool) -> Vec<D> {
    let n = ds[0].len();
    let w: Vec<D> = ws.iter().map(|&x| D::from_f64(x)).collect();
    let trimmed: Vec<Vec<D>> = ds
        .iter()
        .zip(dens)
        .map(|(d, &p)| {
            if p >= 1.0 {
                return d.to_vec();
            }
            let k = ((p * n as f64) as usize).max(1);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&i, &j| d[j].abs().partial_cmp(&d[i].abs()).unwrap().then(i.cmp(&j)));
            let mut t = vec![D::ZERO; n];
            for &i in &idx[..k] {
                t[i] = d[i];
            }
            t
        })
        .collect();
    (0..n)
        .map(|i| {
            let v: Vec<D> = (0..ds.len()).map(|t| w[t] * trimmed[t][i]).collect();
            let mut s = D::ZERO;
            for &x in &v {
                s = s + x;
            }
            let g = if s >= D::ZERO { 1 } else { -1 };
            let (mut m, mut dv) = (D::ZERO, D::ZERO);
            for t in 0..v.len() {
                if sign(v[t]) == g {
                    m = m + v[t];
                    dv = dv + w[t];
                }
            }
            if norm {
                if dv == D::ZERO {
                    dv = D::ONE;
                }
                m = m / dv;
            }
            if lam != 1.0 {
                m = m * D::from_f64(lam);
            }
            m
        })
        .collect()
}

#[test]
fn ties_matches_reference_on_random_tensors() {
    for &n in &[1usize, 2, 17, 1000, 150_001] {
        let a = normal(20, n, 0.01);
        let b = normal(21, n, 0.02);
        let c = normal(22, n, 0.015);
        for &(dens, ws, lam, norm) in &[
            ([0.2, 0.2, 0.2], [1.0, 1.0, 1.0], 1.0, true),
            ([0.5, 0.3, 1.0], [0.7, 0.2, 1.3], 0.6, true),
            ([1.0, 1.0, 1.0], [1.0, -0.5, 2.0], 1.5, false),
            ([0.01, 0.99, 0.5], [0.3, 0.3, 0.3], 2.0, true),
        ] {
            let mut out = vec![0f32; n];
            let trims = ties(&[&a, &b, &c], &ws, &dens, lam, norm, &mut out).unwrap();
            let r = ties_reference(&[&a[..], &b[..], &c[..]], &ws, &dens, lam, norm);
            for i in 0..n {
                assert_eq!(
                    out[i].to_bits(),
                    r[i].to_bits(),
                    "n {n} dens {dens:?} elem {i}: {} vs {}",
                    out[i],
                    r[i]
                );
            }
            for (t, p) in trims.iter().zip(dens) {
                let k = if p >= 1.0 {
                    n
                } else {
                    ((p * n as f64) as usize).max(1)
                };
                assert_eq!(t.kept, k);
            }
        }
    }
    // f64 deltas.
    let n = 80_000;
    let a: Vec<f64> = normal(30, n, 0.01)
        .iter()
        .map(|&x| x as f64 * 1.000001)
        .collect();
    let b: Vec<f64> = normal(31, n, 0.01).iter().map(|&x| x as f64).collect();
    let mut out = vec![0f64; n];
    ties(&[&a, &b], &[0.5, 1.0], &[0.3, 0.6], 1.2, true, &mut out).unwrap();
    let r = ties_reference(&[&a[..], &b[..]], &[0.5, 1.0], &[0.3, 0.6], 1.2, true);
    assert!(out.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn ties_hand_example() {
    // 4 elements, density 0.5 keeps 2 per input.
    let a = [0.5f32, -0.1, 0.3, 0.0];
    let b = [-0.2f32, -0.4, 0.1, 0.05];
    let mut out = [0f32; 4];
    let trims = ties(&[&a, &b], &[1.0, 1.0], &[0.5, 0.5], 1.0, true, &mut out).unwrap();
    // a keeps 0.5, 0.3; b keeps -0.2, -0.4.
    // e0: 0.5 + -0.2 ≥ 0 → + → 0.5/1; e1: -0.4 → -0.4; e2: 0.3; e3: nothing → 0
    assert_eq!(out, [0.5, -0.4, 0.3, 0.0]);
    assert_eq!(trims[0].kept, 2);
    assert_eq!(trims[0].threshold, 0.3f32 as f64);
    // λ and no normalize
    ties(&[&a, &b], &[2.0, 1.0], &[1.0, 1.0], 0.5, false, &mut out).unwrap();
    // v_a = [1, -.2, .6, 0], v_b = [-.2, -.4, .1, .05]
    // e0: s=.8 → + → 1·.5; e1: - → (-.2 + -.4)·.5; e2: (.6+.1)·.5; e3: .05·.5
    let expect = [
        0.5f32,
        (-0.2f32 + -0.4) * 0.5,
        (0.6f32 + 0.1) * 0.5,
        0.05 * 0.5,
    ];
    assert_eq!(out, expect);
}

#[test]
fn ties_weights_vote_before_the_election() {
    // mergekit issue #474: a heavy weight flips the elected sign.
    let a = [1.0f32];
    let b = [-0.6f32];
    let mut out = [0f32];
    ties(&[&a, &b], &[1.0, 1.0], &[1.0, 1.0], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [1.0]);
    ties(&[&a, &b], &[1.0, 2.0], &[1.0, 1.0], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [-0.6], "v_b = -1.2 wins; normalized by its weight 2");
}

#[test]
fn ties_zero_sum_elects_plus_and_zeros_never_count() {
    let a = [0.5f32, 0.0];
    let b = [-0.5f32, 0.0];
    let mut out = [9f32; 2];
    ties(&[&a, &b], &[1.0, 1.0], &[1.0, 1.0], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [0.5, 0.0]);
    // zero in one input does not dilute the mean of the other
    let c = [0.0f32, 0.4];
    let d = [0.2f32, 0.0];
    ties(&[&c, &d], &[1.0, 1.0], &[1.0, 1.0], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [0.2, 0.4]);
}

#[test]
fn ties_threshold_ties_keep_lowest_indices() {
    let a = [0.1f32, -0.3, 0.3, 0.2, -0.3, 0.3, 0.05, 0.0];
    let mut out = [0f32; 8];
    // density 0.25 → k = 2 of the four |0.3|: indices 1 and 2
    let t = ties(&[&a], &[1.0], &[0.25], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [0.0, -0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!((t[0].kept, t[0].tied, t[0].tied_kept), (2, 4, 2));
    assert!(t[0].straddles());
    // k = 5: all four 0.3 and the 0.2
    let t = ties(&[&a], &[1.0], &[0.625], 1.0, true, &mut out).unwrap();
    assert_eq!(out, [0.0, -0.3, 0.3, 0.2, -0.3, 0.3, 0.0, 0.0]);
    assert!(!t[0].straddles());
    // more kept than non-zeros: zeros are "kept" but contribute nothing
    let z = [0.0f32, 1.0, 0.0, 0.0];
    let t = ties(&[&z], &[1.0], &[0.5], 1.0, true, &mut out[..4]).unwrap();
    assert_eq!(&out[..4], &[0.0, 1.0, 0.0, 0.0]);
    assert_eq!(t[0].threshold, 0.0);
    assert!(!t[0].straddles());
    // ties across chunk boundaries (large tensor of equal magnitudes)
    let n = 300_000;
    let big: Vec<f32> = (0..n)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    let mut o = vec![0f32; n];
    let t = ties(&[&big], &[1.0], &[0.5], 1.0, true, &mut o).unwrap();
    assert_eq!(t[0].kept, n / 2);
    assert!(o[..n / 2].iter().zip(&big).all(|(x, y)| x == y));
    assert!(o[n / 2..].iter().all(|&x| x == 0.0));
}

#[test]
fn radix_select_matches_sort() {
    let mut v = normal(40, 100_000, 1.0);
    for i in 0..5000 {
        v[i * 13] = v[i * 7]; // duplicates
    }
    v[3] = 0.0;
    v[5] = -0.0;
    v[9] = 1e-42;
    let mut sorted: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    for &k in &[1usize, 2, 100, 50_000, 99_999, 100_000] {
        let (thr, greater) = kth_largest(&v, k);
        assert_eq!(thr, sorted[k - 1], "k {k}");
        assert_eq!(greater, sorted.iter().filter(|&&x| x > thr).count());
    }
    let v64: Vec<f64> = v.iter().map(|&x| x as f64 * std::f64::consts::PI).collect();
    let mut s64: Vec<f64> = v64.iter().map(|x| x.abs()).collect();
    s64.sort_by(|a, b| b.partial_cmp(a).unwrap());
    for &k in &[1usize, 777, 100_000] {
        assert_eq!(kth_largest(&v64, k).0, s64[k - 1]);
    }
}

#[test]
fn ties_bad_input_writes_nothing() {
    let a = [1f32, 2.0, 3.0, 4.0];
    let mut out = [7f32; 4];
    for (dens, what) in [
        (0.0, "density 0 must be in (0, 1]"),
        (1.5, "got 1.5"),
        (f64::NAN, "got NaN"),
        (-0.1, "(0, 1]"),
    ] {
        let e = ties(&[&a], &[1.0], &[dens], 1.0, true, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
    assert!(ties(&[&a], &[1.0], &[0.5, 0.5], 1.0, true, &mut out)
        .unwrap_err()
        .to_string()
        .contains("2 densities"));
    assert!(ties(
        &[&a, &a[..3]],
        &[1.0, 1.0],
        &[0.5, 0.5],
        1.0,
        true,
        &mut out
    )
    .is_err());
    assert!(ties(&[&a], &[1.0], &[0.5], f64::NAN, true, &mut out).is_err());
    assert!(ties(
        &[&[1f32, f32::INFINITY, 0.0, 0.0]],
        &[1.0],
        &[0.5],
        1.0,
        true,
        &mut out
    )
    .unwrap_err()
    .to_string()
    .contains("non-finite"));
    assert_eq!(out, [7.0; 4]);
}

#[test]
fn empty_tensors_are_fine() {
    let e: [f32; 0] = [];
    let mut out: [f32; 0] = [];
    assert!(ties(&[&e, &e], &[1.0, 1.0], &[0.2, 0.2], 1.0, true, &mut out).is_ok());
    assert!(task_arithmetic(&[&e], &[1.0], 1.0, false, &mut out).is_ok());
}

// ---------------------------------------------------------------- stats

#[test]
fn pair_stats_match_naive_f64() {
    let n = 123_457;
    let a = normal(50, n, 1.0);
    let b: Vec<bf16> = normal(51, n, 2.0)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let s = pair_stats(&a, &b).unwrap();
    let (mut sa, mut sb, mut d) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let (x, y) = (a[i] as f64, b[i].to_f64());
        sa += x * x;
        sb += y * y;
        d += x * y;
    }
    assert!((s.sq_a - sa).abs() <= 1e-9 * sa);
    assert!((s.sq_b - sb).abs() <= 1e-9 * sb);
    assert!((s.dot - d).abs() <= 1e-9 * sa.sqrt() * sb.sqrt());
    let same = pair_stats(&a, &a).unwrap();
    assert!((same.cosine().unwrap() - 1.0).abs() < 1e-12);
    assert!(same.norm_diff() < 1e-6);
    assert_eq!(pair_stats(&[0f32; 3], &[1f32; 3]).unwrap().cosine(), None);
    assert!(pair_stats(&a, &a[..3]).is_err());
}

#[test]
fn merged_overflow_is_an_error() {
    let a = [3e38f32, 1.0];
    let mut out = [0f32; 2];
    let e = task_arithmetic(&[&a, &a], &[1.0, 1.0], 1.0, false, &mut out).unwrap_err();
    assert!(
        e.to_string().contains("overflows float32 at element 0"),
        "{e}"
    );
    let e = ties(&[&a, &a], &[1.0, 1.0], &[1.0, 1.0], 1.0, false, &mut out).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    // normalized: the mean of two huge values is fine in f32? no: the sum overflows first, as in mergekit
    assert!(ties(&[&a, &a], &[1.0, 1.0], &[1.0, 1.0], 1.0, true, &mut out).is_err());
}

// ---------------------------------------------------------------- TIES paper variant

/// The TIES repo's merge_utils on whole flattened task vectors, in f32.
fn paper_reference(tvs: &[Vec<f32>], density: f64, lam: f32) -> Vec<f32> {
    let n = tvs[0].len();
    let trimmed: Vec<Vec<f32>> = tvs
        .iter()
        .map(|tv| {
            let mut a: Vec<f32> = tv.iter().map(|x| x.abs()).collect();
            a.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let k = n - (n as f64 * density) as usize; // kthvalue(k), 1-based smallest
            let thr = if k == 0 { 0.0 } else { a[k - 1] };
            tv.iter()
                .map(|&x| if x.abs() >= thr { x } else { 0.0 })
                .collect()
        })
        .collect();
    let mut gamma: Vec<f32> = (0..n)
        .map(|i| {
            let s: f32 = trimmed.iter().fold(0.0, |acc, t| acc + t[i]);
            if s > 0.0 {
                1.0
            } else if s < 0.0 {
                -1.0
            } else {
                0.0
            }
        })
        .collect();
    let total: f32 = gamma.iter().sum();
    let maj = if total > 0.0 {
        1.0
    } else if total < 0.0 {
        -1.0
    } else {
        0.0
    };
    for g in gamma.iter_mut() {
        if *g == 0.0 {
            *g = maj;
        }
    }
    (0..n)
        .map(|i| {
            let (mut s, mut c) = (0f32, 0f32);
            for t in &trimmed {
                let keep = if gamma[i] > 0.0 {
                    t[i] > 0.0
                } else {
                    t[i] < 0.0
                };
                if keep {
                    s += t[i];
                    c += 1.0;
                }
            }
            s / c.max(1.0) * lam
        })
        .collect()
}

#[test]
fn global_select_matches_sort_across_tensors() {
    let parts = [
        normal(60, 70_000, 1.0),
        normal(61, 5, 3.0),
        normal(62, 1_200_000, 0.1),
    ];
    let mut all: Vec<f32> = parts.iter().flatten().map(|x| x.abs()).collect();
    all.sort_by(|a, b| b.partial_cmp(a).unwrap());
    for &k in &[1usize, 3, 1000, all.len() / 5, all.len()] {
        let mut g = GlobalSelect::<f32>::new(k).unwrap();
        while !g.done() {
            for p in &parts {
                g.observe(p).unwrap();
            }
            g.end_pass().unwrap();
        }
        assert_eq!(g.threshold().unwrap(), all[k - 1], "k {k}");
    }
    let mut g = GlobalSelect::<f64>::new(2).unwrap();
    let mut passes = 0;
    while !g.done() {
        g.observe(&[1.0f64, -3.0, 2.5, 0.0]).unwrap();
        g.end_pass().unwrap();
        passes += 1;
    }
    assert_eq!((passes, g.threshold().unwrap()), (4, 2.5));
    let mut g = GlobalSelect::<f32>::new(10).unwrap();
    g.observe(&[1.0f32; 3]).unwrap();
    assert!(g.end_pass().unwrap_err().to_string().contains("only 3"));
    assert!(GlobalSelect::<f32>::new(0).is_err());
    let mut g = GlobalSelect::<f32>::new(1).unwrap();
    assert!(g.observe(&[f32::NAN]).is_err());
}

#[test]
fn ties_paper_matches_the_paper_code_streamed_over_tensors() {
    // three task vectors of a "model" with two tensors; one element where the
    // trimmed sum is exactly 0 (majority sign) and many threshold ties
    let sizes = [50_000usize, 30_001];
    let n: usize = sizes.iter().sum();
    let mut tvs: Vec<Vec<f32>> = (0..3).map(|t| normal(70 + t, n, 0.01)).collect();
    for i in 0..2000 {
        tvs[0][i * 37] = 0.03; // tie class above the cut
        tvs[1][i * 39 + 1] = -0.004;
    }
    tvs[0][5] = 0.5;
    tvs[1][5] = -0.5;
    tvs[2][5] = 0.0;
    for &(density, lam) in &[(0.2, 1.0f32), (0.05, 1.7), (1.0, 1.0)] {
        let want = paper_reference(&tvs, density, lam);
        let k = paper_keep_count(n, density);
        let thr: Vec<f32> = tvs
            .iter()
            .map(|tv| {
                let mut g = GlobalSelect::<f32>::new(k).unwrap();
                while !g.done() {
                    let mut off = 0;
                    for &s in &sizes {
                        g.observe(&tv[off..off + s]).unwrap();
                        off += s;
                    }
                    g.end_pass().unwrap();
                }
                g.threshold().unwrap()
            })
            .collect();
        let w = [1.0; 3];
        let mut total = 0i64;
        let mut off = 0;
        for &s in &sizes {
            let d: Vec<&[f32]> = tvs.iter().map(|t| &t[off..off + s]).collect();
            total += paper_sign_sum(&d, &w, &thr).unwrap();
            off += s;
        }
        let maj = total.signum() as i8;
        let mut got = vec![0f32; n];
        let mut off = 0;
        for &s in &sizes {
            let d: Vec<&[f32]> = tvs.iter().map(|t| &t[off..off + s]).collect();
            ties_paper(&d, &w, &thr, maj, lam as f64, &mut got[off..off + s]).unwrap();
            off += s;
        }
        for i in 0..n {
            assert_eq!(
                got[i].to_bits(),
                want[i].to_bits(),
                "density {density} elem {i}"
            );
        }
        assert_eq!(got[5], if maj > 0 { 0.5 * lam } else { -0.5 * lam });
    }
}
