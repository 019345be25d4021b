//! Reading and validating a safetensors header.
//!
//! The format: 8 bytes, little-endian `u64` `n`; `n` bytes of UTF-8 JSON,
//! an object mapping each tensor name to `{"dtype", "shape", "data_offsets"}`
//! (offsets relative to the data section that follows) plus an optional
//! `"__metadata__"` of string to string; then the data section, exactly
//! covered by the tensors' byte ranges.
//!
//! [`parse`] checks everything the safetensors crate checks and what it is
//! silent about (a key given twice, an entry with extra fields, gaps and
//! overlaps named as such), and says which tensor and which rule, in the order
//! plasticity's Python validation did: the first entry in file order that
//! breaks a rule, then the layout of the data section.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use safetensors::Dtype;

use super::error::{FileError, HeaderError};
use super::json::{self, Json, PyRepr};
use super::{dtype_from_name, MAX_HEADER_BYTES};

/// One tensor of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range in the data section: `start..end`.
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn nbytes(&self) -> u64 {
        self.end - self.start
    }
}

/// A validated header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `__metadata__`, in file order (empty when absent or `null`).
    pub metadata: Vec<(String, String)>,
    /// The tensors in data-offset order (file order for equal offsets).
    pub tensors: Vec<TensorEntry>,
    /// `n`: the JSON's length in bytes (the data section starts at `8 + n`).
    pub json_len: u64,
    /// Bytes in the data section.
    pub data_len: u64,
}

impl Header {
    /// Where the data section starts in the file.
    pub fn data_start(&self) -> u64 {
        8 + self.json_len
    }
}

/// Read and validate the header of the file at `path`.
pub fn read_header(path: &Path) -> Result<Header, FileError> {
    let mut file = File::open(path).map_err(|e| cannot_read(path, e))?;
    read_header_from(&mut file, path).map(|(h, _)| h)
}

/// Validate the header of an open file (read from its start); also gives the
/// header's JSON text.
pub(crate) fn read_header_from(
    file: &mut File,
    path: &Path,
) -> Result<(Header, String), FileError> {
    let mut head = [0u8; 8];
    let got = read_full(file, &mut head).map_err(|e| cannot_read(path, e))?;
    let size = file.metadata().map_err(|e| cannot_read(path, e))?.len();
    if got < 8 {
        return Err(FileError::invalid(path, HeaderError::TooShort { size }));
    }
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER_BYTES {
        return Err(FileError::invalid(
            path,
            HeaderError::AbsurdLength {
                len: n,
                limit: MAX_HEADER_BYTES,
            },
        ));
    }
    let after = size.saturating_sub(8);
    if n > after {
        return Err(FileError::invalid(
            path,
            HeaderError::HeaderTruncated { len: n, after },
        ));
    }
    let mut raw = vec![0u8; n as usize];
    let got = read_full(file, &mut raw).map_err(|e| cannot_read(path, e))?;
    if got < raw.len() {
        // The file shrank since its size was taken.
        return Err(FileError::invalid(
            path,
            HeaderError::HeaderTruncated {
                len: n,
                after: got as u64,
            },
        ));
    }
    let text = String::from_utf8(raw)
        .map_err(|e| FileError::invalid(path, not_utf8(e.utf8_error(), e.as_bytes())))?;
    let header = parse(&text, after - n).map_err(|p| FileError::invalid(path, p))?;
    Ok((header, text))
}

/// Validate a header's JSON text, given the length of the data section after it.
pub fn parse(text: &str, data_len: u64) -> Result<Header, HeaderError> {
    let top = match json::parse(text) {
        Ok(v) => v,
        Err(json::ParseError::DuplicateKey(k)) => return Err(HeaderError::DuplicateKey(k)),
        Err(json::ParseError::Syntax(e)) => return Err(HeaderError::NotJson(e.to_string())),
    };
    let Json::Object(pairs) = top else {
        return Err(HeaderError::NotAnObject {
            got: top.py_type_name(),
        });
    };
    let mut metadata = Vec::new();
    if let Some((_, meta)) = pairs.iter().find(|(k, _)| k == "__metadata__") {
        match meta {
            Json::Null => {}
            Json::Object(kv) => {
                for (k, v) in kv {
                    let Json::Str(v) = v else {
                        return Err(HeaderError::BadMetadata);
                    };
                    metadata.push((k.clone(), v.clone()));
                }
            }
            _ => return Err(HeaderError::BadMetadata),
        }
    }
    let mut tensors = Vec::new();
    for (name, entry) in pairs.iter().filter(|(k, _)| k != "__metadata__") {
        tensors.push(entry_of(name, entry, data_len)?);
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut pos = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if t.start < pos {
            return Err(HeaderError::Overlap {
                first: tensors[i - 1].name.clone(),
                second: t.name.clone(),
            });
        }
        if t.start > pos {
            return Err(HeaderError::Gap {
                bytes: t.start - pos,
                name: t.name.clone(),
            });
        }
        pos = t.end;
    }
    if pos != data_len {
        return Err(HeaderError::Trailing {
            bytes: data_len - pos,
        });
    }
    Ok(Header {
        metadata,
        tensors,
        json_len: text.len() as u64,
        data_len,
    })
}

/// One `name: {dtype, shape, data_offsets}` entry, checked in Python's order.
fn entry_of(name: &str, entry: &Json, data_len: u64) -> Result<TensorEntry, HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    let bad_entry = || HeaderError::BadEntry { name: name.into() };
    let Json::Object(fields) = entry else {
        return Err(bad_entry());
    };
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    let (Some(dt), Some(shape), Some(offs)) =
        (field("dtype"), field("shape"), field("data_offsets"))
    else {
        return Err(bad_entry());
    };
    if fields.len() != 3 {
        return Err(bad_entry());
    }
    let dtype = match dt {
        Json::Str(s) => dtype_from_name(s),
        _ => None,
    }
    .ok_or_else(|| HeaderError::UnknownDtype {
        name: name.into(),
        got: PyRepr(dt).to_string(),
    })?;
    let bad_shape = || HeaderError::BadShape {
        name: name.into(),
        got: PyRepr(shape).to_string(),
    };
    let Json::Array(dims) = shape else {
        return Err(bad_shape());
    };
    let shape = dims
        .iter()
        .map(|d| match d {
            Json::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(bad_shape)?;
    let (begin, end) = match offs {
        Json::Array(v) => match v.as_slice() {
            [Json::Int(b), Json::Int(e)] => (*b, *e),
            _ => {
                return Err(HeaderError::OffsetsNotAPair {
                    name: name.into(),
                    got: PyRepr(offs).to_string(),
                })
            }
        },
        _ => {
            return Err(HeaderError::OffsetsNotAPair {
                name: name.into(),
                got: PyRepr(offs).to_string(),
            })
        }
    };
    if begin < 0 || end < begin {
        return Err(HeaderError::BadOffsets {
            name: name.into(),
            begin,
            end,
        });
    }
    let mut bits = Decimal::one();
    for &d in &shape {
        bits.mul(d);
    }
    bits.mul(dtype.bitsize() as u64);
    if bits.rem8() != 0 {
        let (dtype, bits) = (dtype.to_string(), bits.to_string());
        return Err(HeaderError::NotWholeBytes {
            name: name.into(),
            dtype,
            shape,
            bits,
        });
    }
    let mut needs = bits;
    needs.div8();
    if needs.to_u128() != Some((end - begin) as u128) {
        let (dtype, needs) = (dtype.to_string(), needs.to_string());
        return Err(HeaderError::SizeMismatch {
            name: name.into(),
            begin,
            end,
            dtype,
            shape,
            needs,
        });
    }
    if end > data_len as i128 {
        return Err(HeaderError::OutOfRange {
            name: name.into(),
            begin,
            end,
            data_len,
        });
    }
    Ok(TensorEntry {
        name: name.into(),
        dtype,
        shape,
        start: begin as u64,
        end: end as u64,
    })
}

/// Python's `UnicodeDecodeError.reason` for the first bad byte.
fn not_utf8(e: std::str::Utf8Error, bytes: &[u8]) -> HeaderError {
    let at = e.valid_up_to();
    let reason = match e.error_len() {
        None => "unexpected end of data",
        Some(_) if matches!(bytes[at], 0x80..=0xc1 | 0xf5..=0xff) => "invalid start byte",
        Some(_) => "invalid continuation byte",
    };
    HeaderError::NotUtf8 { reason, at }
}

fn cannot_read(path: &Path, source: io::Error) -> FileError {
    FileError::CannotRead {
        path: path.to_path_buf(),
        source,
    }
}

/// Read until `buf` is full or the file ends; the count read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A non-negative integer of any size, in base 10⁹ (least significant first):
/// a shape's byte count exactly, for the message when it overflows every integer type.
struct Decimal(Vec<u32>);

const BASE: u64 = 1_000_000_000;

impl Decimal {
    fn one() -> Self {
        Decimal(vec![1])
    }

    fn mul(&mut self, m: u64) {
        let mut carry: u128 = 0;
        for limb in &mut self.0 {
            let x = *limb as u128 * m as u128 + carry;
            *limb = (x % BASE as u128) as u32;
            carry = x / BASE as u128;
        }
        while carry > 0 {
            self.0.push((carry % BASE as u128) as u32);
            carry /= BASE as u128;
        }
        self.trim();
    }

    fn rem8(&self) -> u64 {
        // 10⁹ ≡ 0 (mod 8), so only the lowest limb counts.
        self.0[0] as u64 % 8
    }

    fn div8(&mut self) {
        let mut rem: u64 = 0;
        for limb in self.0.iter_mut().rev() {
            let x = rem * BASE + *limb as u64;
            *limb = (x / 8) as u32;
            rem = x % 8;
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.0.len() > 1 && self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn to_u128(&self) -> Option<u128> {
        self.0.iter().rev().try_fold(0u128, |acc, &l| {
            acc.checked_mul(BASE as u128)?.checked_add(l as u128)
        })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let mut limbs = self.0.iter().rev();
        write!(f, "{}", limbs.next().expect("never empty"))?;
        limbs.try_for_each(|l| write!(f, "{l:09}"))
    }
}
