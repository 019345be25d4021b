//! Steering-vector addition: `residual[t] += table[slot[t]]` for the tokens of
//! one forward pass.
//!
//! `table` holds one row per steering configuration active in the batch
//! (already `Σ scale·v` for that layer); `slot[t]` says which row token `t`
//! gets. Row 0 is the all-zero "not steered" row by convention, so tokens with
//! slot 0 are skipped without reading it: an unsteered batch costs one pass
//! over the slot indices and nothing else.
//!
//! Every slot is validated before the first write, so a bad index leaves the
//! residual untouched.

use crate::element::Element;
use crate::error::{CoreError, Result};

/// A token→slot index element (`i32` or `i64`, what torch hands us).
pub trait SlotIndex: Copy + Send + Sync + 'static {
    fn as_i64(self) -> i64;
}
impl SlotIndex for i32 {
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self as i64
    }
}
impl SlotIndex for i64 {
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self
    }
}

/// Check shapes and every slot; returns whether any token is steered.
pub fn validate<S: SlotIndex>(
    residual_len: usize,
    hidden: usize,
    table_len: usize,
    slots: &[S],
) -> Result<bool> {
    if hidden == 0 {
        return Err(CoreError::Shape("hidden size is 0".into()));
    }
    if residual_len % hidden != 0 || table_len % hidden != 0 {
        return Err(CoreError::Shape(format!(
            "residual ({residual_len}) and table ({table_len}) must be multiples of hidden ({hidden})"
        )));
    }
    let tokens = residual_len / hidden;
    let num_slots = table_len / hidden;
    if slots.len() > tokens {
        return Err(CoreError::Shape(format!(
            "{} slot indices for {tokens} tokens",
            slots.len()
        )));
    }
    let mut any = false;
    for (t, &s) in slots.iter().enumerate() {
        let s = s.as_i64();
        if s < 0 || s >= num_slots as i64 {
            return Err(CoreError::Config(format!(
                "slot index {s} at token {t} is outside the table (0..{num_slots})"
            )));
        }
        any |= s != 0;
    }
    Ok(any)
}

/// `residual[t, :] += table[slots[t], :]` for `t < slots.len()`; tokens past
/// `slots.len()` (padding) and tokens with slot 0 are left alone. Adds in f32
/// and rounds once per element.
pub fn add_rows<T: Element, S: SlotIndex>(
    residual: &mut [T],
    hidden: usize,
    table: &[T],
    slots: &[S],
) -> Result<()> {
    if !validate(residual.len(), hidden, table.len(), slots)? {
        return Ok(());
    }
    for (t, &s) in slots.iter().enumerate() {
        let s = s.as_i64() as usize;
        if s == 0 {
            continue;
        }
        let row = &mut residual[t * hidden..(t + 1) * hidden];
        let add = &table[s * hidden..(s + 1) * hidden];
        for (r, a) in row.iter_mut().zip(add) {
            *r = T::from_f32(r.to_f32() + a.to_f32());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn adds_only_steered_tokens() {
        let h = 3;
        let mut res = vec![1.0f32; 4 * h];
        let table = vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0];
        add_rows(&mut res, h, &table, &[0i32, 1, 2]).unwrap();
        assert_eq!(res, vec![1., 1., 1., 2., 3., 4., 0., 0., 0., 1., 1., 1.]);
    }

    #[test]
    fn slot_zero_row_is_never_read() {
        // Even a garbage row 0 does not leak into unsteered tokens.
        let mut res = vec![5.0f32; 2];
        add_rows(&mut res, 1, &[f32::NAN, 1.0], &[0i64, 0]).unwrap();
        assert_eq!(res, vec![5.0, 5.0]);
    }

    #[test]
    fn bad_slot_writes_nothing() {
        let mut res = vec![1.0f32; 6];
        let err = add_rows(&mut res, 3, &[0.0; 6], &[1i32, 2]).unwrap_err();
        assert!(err.to_string().contains("slot index 2"), "{err}");
        assert_eq!(res, vec![1.0; 6]);
        assert!(add_rows(&mut res, 3, &[0.0; 6], &[-1i64]).is_err());
        assert!(
            add_rows(&mut res, 3, &[0.0; 6], &[0i32, 0, 0]).is_err(),
            "more slots than tokens"
        );
        assert!(
            add_rows(&mut res, 4, &[0.0; 6], &[0i32]).is_err(),
            "ragged hidden"
        );
    }

    #[test]
    fn bf16_rounds_once_from_f32() {
        let mut res = vec![bf16::from_f32(1.0); 2];
        let table = vec![
            bf16::ZERO,
            bf16::ZERO,
            bf16::from_f32(0.00390625),
            bf16::from_f32(0.00390625),
        ];
        add_rows(&mut res, 2, &table, &[1i32]).unwrap();
        assert_eq!(res[0].to_f32(), bf16::from_f32(1.0 + 0.00390625).to_f32());
    }
}
