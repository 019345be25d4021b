//! The f32 projection GEMM of Apollo's first pass. It names nothing from this
//! crate so that `examples/step_speed.rs` can include the file and time exactly
//! the call the step makes.

/// R = G·Pᵀ when `right` (G m×n, P rank×n, R m×rank), else R = P·G (P rank×m,
/// R rank×n); all row-major, R overwritten.
///
/// # Panics
/// If a buffer is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_f32(
    right: bool,
    m: usize,
    n: usize,
    rank: usize,
    g: &[f32],
    p: &[f32],
    r: &mut [f32],
    threads: usize,
) {
    let (p_len, r_len) = if right {
        (rank * n, m * rank)
    } else {
        (rank * m, rank * n)
    };
    // These bounds are what make the raw-pointer call below memory-safe.
    assert!(
        g.len() >= m * n && p.len() >= p_len && r.len() >= r_len,
        "projection GEMM buffers too short for {m}×{n} at rank {rank}"
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // (rows × cols) = lhs (rows × depth) · rhs (depth × cols); strides are (col, row).
    let (rows, cols, depth, lhs, lhs_strides, rhs, rhs_strides) = if right {
        // Pᵀ: element (k, j) = P[j·n + k]
        (m, rank, n, g, (1, n as isize), p, (n as isize, 1))
    } else {
        (rank, n, m, p, (1, m as isize), g, (1, n as isize))
    };
    // gemm computes dst := alpha·dst + beta·lhs·rhs.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            r.as_mut_ptr(),
            1,
            cols as isize,
            false,
            lhs.as_ptr(),
            lhs_strides.0,
            lhs_strides.1,
            rhs.as_ptr(),
            rhs_strides.0,
            rhs_strides.1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
