//! safetensors files for task vectors and merged models, one tensor at a time.
//!
//! - [`read_header`] / [`header::parse`]: full validation of a header — size,
//!   the 100 MB limit on its length, UTF-8, JSON, a key given twice, known
//!   dtypes, shapes, byte counts, offsets in range, a data section covered
//!   exactly (no gap, no overlap, no trailing bytes), `__metadata__` string to
//!   string — with an error ([`HeaderError`]) that names the file, the tensor
//!   and the rule, so a hostile or truncated file is refused in words.
//! - [`SafetensorsReader`]: a validated open file (the safetensors crate checks
//!   the header too, see [`reader::crate_check`]); one tensor at a time is read
//!   with `pread` into the caller's buffer.
//! - [`SafetensorsWriter`]: streams a file tensor by tensor into a temporary
//!   file beside the target, then fsync, rename over the target, fsync of the
//!   directory; an error or an abort leaves any previous file untouched and no
//!   temporary file behind.
//!
//! The format's own facts come from the `safetensors` crate, its reference
//! implementation: the dtypes ([`Dtype`], with their names and bit sizes), the
//! header-length limit, and an independent check of every file opened for
//! reading. What the crate is silent about is checked here: a JSON key given
//! twice (serde's maps keep the last and drop the first without a word), an
//! entry with fields beyond the three, and which rule a bad layout breaks.

// The errors carry what their messages name (the tensor, offsets up to 2^64, exact byte
// counts); they are returned once per file, never in a loop, so their size costs nothing.
#![allow(clippy::result_large_err)]

mod error;
pub mod header;
mod json;
pub mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{FileError, HeaderError, Strerror, UsageError};
pub use header::{read_header, Header, TensorEntry};
pub use json::PyRepr;
pub use reader::SafetensorsReader;
pub use safetensors::Dtype;
pub use writer::{SafetensorsWriter, TensorSpec};

/// The longest header JSON accepted, in bytes: the safetensors crate's own
/// limit (`MAX_HEADER_SIZE`, private there; a unit test checks they agree).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Every dtype of the safetensors crate this module was written against, in
/// the crate's order. [`dtype_from_name`] knows any the crate knows, listed
/// here or not.
pub const DTYPES: [Dtype; 22] = [
    Dtype::BOOL,
    Dtype::F4,
    Dtype::F6_E2M3,
    Dtype::F6_E3M2,
    Dtype::U8,
    Dtype::I8,
    Dtype::F8_E5M2,
    Dtype::F8_E4M3,
    Dtype::F8_E8M0,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2FNUZ,
    Dtype::I16,
    Dtype::U16,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I32,
    Dtype::U32,
    Dtype::F32,
    Dtype::C64,
    Dtype::F64,
    Dtype::I64,
    Dtype::U64,
];

/// The dtype a header names `name` (`"F32"`, `"BF16"`, ...), as the crate reads it.
pub fn dtype_from_name(name: &str) -> Option<Dtype> {
    use serde::de::{value::StrDeserializer, Deserialize};
    Dtype::deserialize(StrDeserializer::<serde::de::value::Error>::new(name)).ok()
}
