//! Launch shapes, decided on the host from sizes and addresses alone.
//!
//! Kept apart from the launches so the decisions (which kernel variant, how
//! many blocks, when nothing is launched at all) are plain functions with unit
//! tests that run on any machine, GPU or not.

use crate::CudaError;

/// Threads per block for the element-wise kernels.
pub const BLOCK: u32 = 256;
/// The most blocks along x for a grid-stride loop; more only adds launch cost.
pub const MAX_BLOCKS_X: u32 = 1 << 16;
/// CUDA's limit on gridDim.y (and z).
pub const MAX_GRID_Y: u32 = 65_535;
/// Bytes one thread loads in the vectorised variants (a float4 / uint4).
pub const VECTOR_BYTES: usize = 16;

/// A grid and block, as the driver takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Shape {
    pub fn threads_x(&self) -> u64 {
        self.grid.0 as u64 * self.block.0 as u64
    }
}

/// Blocks for a 1-D grid-stride loop over `items` with `block` threads each:
/// enough to give every item its own thread, capped at `max_blocks`, at least 1.
pub fn blocks_1d(items: u64, block: u32, max_blocks: u32) -> u32 {
    items
        .div_ceil(block.max(1) as u64)
        .clamp(1, max_blocks.max(1) as u64) as u32
}

/// How one steering add is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteeringPlan {
    /// Whether the 16-byte (`_v16`) kernel variant is used.
    pub vectorised: bool,
    /// Elements per load: 16 / elem_bytes when vectorised, else 1.
    pub elems_per_load: usize,
    pub shape: Shape,
}

/// The launch for `num_tokens` rows of `hidden` elements of `elem_bytes` each,
/// reading table rows from `table_addr` and writing rows from `residual_addr`.
///
/// `Ok(None)`: nothing to launch (no tokens). The 16-byte variant is taken
/// only when every row of both buffers starts 16-byte aligned, that is when
/// both base addresses are and `hidden * elem_bytes` is a multiple of 16.
/// Errors when a size does not fit the kernel's `int` arguments.
pub fn steering_plan(
    num_tokens: usize,
    hidden: usize,
    num_slots: usize,
    elem_bytes: usize,
    residual_addr: u64,
    table_addr: u64,
) -> Result<Option<SteeringPlan>, CudaError> {
    let invalid = |m: String| CudaError::InvalidArgument(m);
    if hidden == 0 {
        return Err(invalid("hidden must be > 0".into()));
    }
    if num_slots == 0 {
        return Err(invalid(
            "the table needs at least the zero row (slot 0)".into(),
        ));
    }
    if !matches!(elem_bytes, 2 | 4) {
        return Err(invalid(format!(
            "element size {elem_bytes} is not 2 or 4 bytes"
        )));
    }
    for (what, v) in [
        ("num_tokens", num_tokens),
        ("hidden", hidden),
        ("num_slots", num_slots),
    ] {
        if i32::try_from(v).is_err() {
            return Err(invalid(format!("{what} {v} > i32::MAX")));
        }
    }
    // Every byte offset the kernel forms must fit: rows * hidden elements per buffer.
    for (what, rows) in [("residual", num_tokens), ("table", num_slots)] {
        rows.checked_mul(hidden)
            .and_then(|n| n.checked_mul(elem_bytes))
            .filter(|&b| i64::try_from(b).is_ok())
            .ok_or_else(|| invalid(format!("{what} of {rows} x {hidden} overflows")))?;
    }
    if num_tokens == 0 {
        return Ok(None);
    }
    let row_bytes = hidden * elem_bytes;
    let aligned = |a: u64| a % VECTOR_BYTES as u64 == 0;
    let vectorised = row_bytes % VECTOR_BYTES == 0 && aligned(residual_addr) && aligned(table_addr);
    let elems_per_load = if vectorised {
        VECTOR_BYTES / elem_bytes
    } else {
        1
    };
    let loads = (hidden / elems_per_load) as u64;
    // A row of a small model fits one block; warps stay whole.
    let block = (loads.div_ceil(32) * 32).clamp(32, BLOCK as u64) as u32;
    let shape = Shape {
        grid: (
            blocks_1d(loads, block, MAX_BLOCKS_X),
            (num_tokens as u64).min(MAX_GRID_Y as u64) as u32,
            1,
        ),
        block: (block, 1, 1),
    };
    Ok(Some(SteeringPlan {
        vectorised,
        elems_per_load,
        shape,
    }))
}

/// Pairs of the normal stream that elements `start..start + len` touch: each
/// thread of `apollo_fill_normal` makes one pair (two elements).
pub fn normal_pairs(start: u64, len: u64) -> Result<u64, CudaError> {
    let end = start
        .checked_add(len)
        .filter(|e| e.checked_add(1).is_some())
        .ok_or_else(|| {
            CudaError::InvalidArgument(format!("stream range {start}+{len} overflows"))
        })?;
    Ok(end.div_ceil(2) - start / 2)
}

/// The launch of `apollo_fill_normal` for elements `start..start + len`;
/// `Ok(None)` for an empty range.
pub fn fill_normal_shape(start: u64, len: u64) -> Result<Option<Shape>, CudaError> {
    let pairs = normal_pairs(start, len)?;
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(Shape {
        grid: (blocks_1d(pairs, BLOCK, MAX_BLOCKS_X), 1, 1),
        block: (BLOCK, 1, 1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_pairs_cover_odd_and_even_ends() {
        assert_eq!(normal_pairs(0, 0).unwrap(), 0);
        assert_eq!(normal_pairs(0, 1).unwrap(), 1);
        assert_eq!(normal_pairs(0, 2).unwrap(), 1);
        assert_eq!(normal_pairs(1, 1).unwrap(), 1); // element 1 = second of pair 0
        assert_eq!(normal_pairs(1, 2).unwrap(), 2); // pair 0's second, pair 1's first
        assert_eq!(normal_pairs(37, 64).unwrap(), 33);
        assert!(normal_pairs(u64::MAX, 1).is_err());
        assert!(
            normal_pairs(u64::MAX - 1, 1).is_err(),
            "end + 1 must not wrap"
        );
        // Every element's pair is in the launched range: brute force over small ranges.
        for start in 0..9u64 {
            for len in 0..9u64 {
                let pairs = normal_pairs(start, len).unwrap();
                for k in start..start + len {
                    let p = k / 2 - start / 2;
                    assert!(p < pairs, "element {k} of {start}+{len}");
                }
            }
        }
    }

    #[test]
    fn fill_normal_shape_is_capped_and_empty_is_no_launch() {
        assert_eq!(fill_normal_shape(5, 0).unwrap(), None);
        let s = fill_normal_shape(0, 256 * 2 * 3).unwrap().unwrap();
        assert_eq!(
            s,
            Shape {
                grid: (3, 1, 1),
                block: (BLOCK, 1, 1)
            }
        );
        // r256 x 17408 (a 5120x17408 matrix's P): 2.2M pairs, one thread each, under the cap.
        let s = fill_normal_shape(0, 256 * 17408).unwrap().unwrap();
        assert!(s.threads_x() >= 256 * 17408 / 2);
        let s = fill_normal_shape(0, 1 << 40).unwrap().unwrap();
        assert_eq!(s.grid.0, MAX_BLOCKS_X);
    }

    const A: u64 = 0x7f00_0000_0000; // a 16-byte aligned address

    fn plan(tokens: usize, hidden: usize, elem: usize, r: u64, t: u64) -> SteeringPlan {
        steering_plan(tokens, hidden, 4, elem, r, t)
            .unwrap()
            .unwrap()
    }

    /// Every load of every row is owned by some thread: the grid-stride loops cover all.
    fn covers(p: &SteeringPlan, tokens: usize, hidden: usize) {
        assert_eq!(hidden % p.elems_per_load, 0);
        assert!(p.shape.grid.0 >= 1 && p.shape.grid.1 >= 1 && p.shape.grid.2 == 1);
        assert!(p.shape.grid.0 <= MAX_BLOCKS_X && p.shape.grid.1 <= MAX_GRID_Y);
        assert!(p.shape.block.0 % 32 == 0 && p.shape.block.0 <= BLOCK);
        // x: either one thread per load, or the cap (the loop strides the rest).
        let loads = (hidden / p.elems_per_load) as u64;
        assert!(p.shape.threads_x() >= loads || p.shape.grid.0 == MAX_BLOCKS_X);
        // y: either one block row per token, or the cap.
        assert!(p.shape.grid.1 as usize == tokens || p.shape.grid.1 == MAX_GRID_Y);
    }

    #[test]
    fn blocks_1d_is_at_least_one_and_capped() {
        assert_eq!(blocks_1d(0, 256, 10), 1);
        assert_eq!(blocks_1d(1, 256, 10), 1);
        assert_eq!(blocks_1d(256, 256, 10), 1);
        assert_eq!(blocks_1d(257, 256, 10), 2);
        assert_eq!(blocks_1d(u64::MAX, 256, 10), 10);
        assert_eq!(
            blocks_1d(5, 0, 0),
            1,
            "degenerate arguments still launch one block"
        );
    }

    #[test]
    fn vectorised_only_when_every_row_is_16_byte_aligned() {
        // bf16, hidden 4096: 8 halves per load, 512 loads per row.
        let p = plan(4096, 4096, 2, A, A + 64);
        assert!(p.vectorised);
        assert_eq!(p.elems_per_load, 8);
        assert_eq!(p.shape.block, (256, 1, 1));
        assert_eq!(p.shape.grid, (2, 4096, 1));
        covers(&p, 4096, 4096);
        // A residual that starts 2 bytes in (a sliced tensor): scalar.
        assert!(!plan(4, 4096, 2, A + 2, A).vectorised);
        // A table that starts 8 bytes in: scalar.
        assert!(!plan(4, 4096, 4, A, A + 8).vectorised);
        // Rows of 4 f32 = 16 bytes: vectorised; rows of 6 halves = 12 bytes: not.
        assert!(plan(3, 4, 4, A, A).vectorised);
        let p = plan(3, 6, 2, A, A);
        assert!(!p.vectorised);
        assert_eq!(p.elems_per_load, 1);
        covers(&p, 3, 6);
    }

    #[test]
    fn small_rows_get_one_warp_and_large_ones_are_strided() {
        let p = plan(1, 1, 4, A, A);
        assert_eq!(
            p.shape,
            Shape {
                grid: (1, 1, 1),
                block: (32, 1, 1)
            }
        );
        let p = plan(7, 129, 4, A, A); // 129 f32 = 516 bytes: scalar, 160 threads
        assert_eq!(p.shape.block, (160, 1, 1));
        covers(&p, 7, 129);
        // More tokens than gridDim.y allows: capped, the kernel's token loop strides.
        let p = plan(200_000, 64, 2, A, A);
        assert_eq!(p.shape.grid.1, MAX_GRID_Y);
        covers(&p, 200_000, 64);
        // A very long row: x capped, the element loop strides.
        let hidden = (MAX_BLOCKS_X as usize + 5) * BLOCK as usize;
        let p = plan(1, hidden, 4, A, A + 1);
        assert_eq!(p.shape.grid.0, MAX_BLOCKS_X);
        covers(&p, 1, hidden);
    }

    #[test]
    fn no_tokens_is_no_launch_and_bad_sizes_are_errors() {
        assert_eq!(steering_plan(0, 8, 2, 4, A, A).unwrap(), None);
        for (tokens, hidden, slots, elem) in [
            (1, 0, 2, 4),             // no hidden size
            (1, 8, 0, 4),             // no zero row
            (1, 8, 2, 8),             // not a 16/32-bit float
            (1, 1 << 31, 2, 4),       // hidden past i32
            ((1 << 31) + 1, 1, 2, 4), // tokens past i32
            (1, 1, (1 << 31) + 1, 2), // slots past i32
        ] {
            let e = steering_plan(tokens, hidden, slots, elem, A, A).unwrap_err();
            assert!(
                matches!(e, CudaError::InvalidArgument(_)),
                "{tokens} {hidden} {slots} {elem}: {e}"
            );
        }
        // Sizes past 32 bits of elements still plan (the kernel's offsets are 64-bit)...
        let max = i32::MAX as usize;
        let p = steering_plan(max, 1 << 20, 2, 4, A, A).unwrap().unwrap();
        assert_eq!(p.shape.grid.1, MAX_GRID_Y);
        // ...but not a buffer whose byte size does not fit an i64.
        let e = steering_plan(max, max, 2, 4, A, A).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }
}
