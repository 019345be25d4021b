//! What can go wrong with a safetensors file, in words a user can act on.
//!
//! The texts are the ones plasticity's Python layer has always given (callers
//! and tests match on them); names are quoted the way Python's `repr` quotes
//! them ([`PyRepr`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::json::PyRepr;

/// Why a header (or the file around it) is not a valid safetensors file.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum HeaderError {
    #[error("truncated: {size} bytes is too short for a safetensors file")]
    TooShort { size: u64 },
    #[error("header length {len} is absurd (limit {limit} bytes)")]
    AbsurdLength { len: u64, limit: u64 },
    #[error("truncated: the header says {len} bytes but the file has {after} after the length")]
    HeaderTruncated { len: u64, after: u64 },
    /// `reason` is Python's wording: "invalid start byte", "invalid continuation byte"
    /// or "unexpected end of data".
    #[error("header is not UTF-8 ({reason} at byte {at})")]
    NotUtf8 { reason: &'static str, at: usize },
    #[error("duplicate key {} in the header", PyRepr(.0.as_str()))]
    DuplicateKey(String),
    /// The JSON parser's own message.
    #[error("header is not valid JSON ({0})")]
    NotJson(String),
    /// `got` is Python's name of the value's type (`list`, `str`, ...).
    #[error("header must be a JSON object, got {got}")]
    NotAnObject { got: &'static str },
    #[error("__metadata__ must map strings to strings")]
    BadMetadata,
    #[error("empty tensor name")]
    EmptyName,
    #[error("tensor {}: entry must have exactly dtype, shape and data_offsets", PyRepr(.name.as_str()))]
    BadEntry { name: String },
    /// `got` is the value as written in the header, in Python's `repr`.
    #[error("tensor {}: unknown dtype {got}", PyRepr(.name.as_str()))]
    UnknownDtype { name: String, got: String },
    #[error("tensor {}: shape must be a list of non-negative integers, got {got}", PyRepr(.name.as_str()))]
    BadShape { name: String, got: String },
    #[error("tensor {}: data_offsets must be [begin, end], got {got}", PyRepr(.name.as_str()))]
    OffsetsNotAPair { name: String, got: String },
    #[error("tensor {}: bad data_offsets [{begin}, {end}]", PyRepr(.name.as_str()))]
    BadOffsets {
        name: String,
        begin: i128,
        end: i128,
    },
    /// `needs` is exact (a decimal string: it may not fit any integer type).
    #[error("tensor {}: data_offsets [{begin}, {end}] hold {} bytes but {dtype}{} needs {needs}",
            PyRepr(.name.as_str()), .end - .begin, PyRepr(.shape.as_slice()))]
    SizeMismatch {
        name: String,
        begin: i128,
        end: i128,
        dtype: String,
        shape: Vec<u64>,
        needs: String,
    },
    /// A sub-byte dtype (F4, F6_*) whose elements do not fill whole bytes.
    #[error("tensor {}: {dtype}{} is {bits} bits, not a whole number of bytes",
            PyRepr(.name.as_str()), PyRepr(.shape.as_slice()))]
    NotWholeBytes {
        name: String,
        dtype: String,
        shape: Vec<u64>,
        bits: String,
    },
    #[error("tensor {}: data_offsets [{begin}, {end}] are out of range: the data section has {data_len} bytes (truncated file?)",
            PyRepr(.name.as_str()))]
    OutOfRange {
        name: String,
        begin: i128,
        end: i128,
        data_len: u64,
    },
    #[error("tensors {} and {} have overlapping data_offsets", PyRepr(.first.as_str()), PyRepr(.second.as_str()))]
    Overlap { first: String, second: String },
    #[error("{bytes} bytes before tensor {} belong to no tensor", PyRepr(.name.as_str()))]
    Gap { bytes: u64, name: String },
    #[error("{bytes} trailing bytes after the last tensor belong to no tensor")]
    Trailing { bytes: u64 },
}

/// A mistake in how a reader or writer is used; nothing is written because of it.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum UsageError {
    #[error("bad tensor name {}", PyRepr(.0.as_str()))]
    BadName(String),
    #[error("tensor {} listed twice", PyRepr(.0.as_str()))]
    ListedTwice(String),
    #[error("tensor {}: cannot write dtype {dtype}", PyRepr(.name.as_str()))]
    CannotWriteDtype { name: String, dtype: String },
    #[error("tensor {}: {dtype}{} is too large to address", PyRepr(.name.as_str()), PyRepr(.shape.as_slice()))]
    TooLarge {
        name: String,
        dtype: String,
        shape: Vec<u64>,
    },
    #[error("metadata key {} listed twice", PyRepr(.0.as_str()))]
    MetadataListedTwice(String),
    #[error("directory {} does not exist", .0.display())]
    NoDirectory(PathBuf),
    #[error("writer is closed")]
    WriterClosed,
    #[error("every declared tensor is already written (got {})", PyRepr(.0.as_str()))]
    AllWritten(String),
    #[error("expected tensor {} next, got {}", PyRepr(.want.as_str()), PyRepr(.got.as_str()))]
    ExpectedNext { want: String, got: String },
    /// `got` is how the caller describes what it passed (`torch.float32 [2]` from Python).
    #[error("tensor {} declared {dtype}{}, got {got}", PyRepr(.name.as_str()), PyRepr(.shape.as_slice()))]
    Mismatch {
        name: String,
        dtype: String,
        shape: Vec<u64>,
        got: String,
    },
    #[error("tensor {}: {got} bytes given, {want} needed", PyRepr(.name.as_str()))]
    ByteCount { name: String, got: usize, want: u64 },
    #[error("{count} declared tensors were not written (first {})", PyRepr(.first.as_str()))]
    NotWritten { count: usize, first: String },
    #[error("a write failed earlier; nothing was committed")]
    FailedEarlier,
    #[error("no tensor {}", PyRepr(.0.as_str()))]
    NoTensor(String),
}

/// Any error of this module: every one names the file it is about (but the
/// spec errors of [`super::SafetensorsWriter::create`], which are about its arguments).
#[derive(Debug, Error)]
pub enum FileError {
    /// Not a valid safetensors file: hostile, truncated, or another format.
    #[error("{}: {problem}", .path.display())]
    Invalid { path: PathBuf, problem: HeaderError },
    /// The safetensors crate refused a header this module accepted.
    #[error("{}: safetensors refused the file: {reason}", .path.display())]
    Refused { path: PathBuf, reason: String },
    /// The file could not be opened or its header read.
    #[error("{}: cannot read: {}", .path.display(), Strerror(.source))]
    CannotRead { path: PathBuf, source: io::Error },
    /// The file ended inside a tensor the header promised.
    #[error("{}: file ended inside tensor {} (changed since it was opened?)", .path.display(), PyRepr(.name.as_str()))]
    Changed { path: PathBuf, name: String },
    /// A misuse of a reader or writer (`path` is `None` for a writer's bad spec).
    #[error("{}{problem}", .path.as_deref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Usage {
        path: Option<PathBuf>,
        problem: UsageError,
    },
    /// The operating system refused a read or write of tensor data (disk full, EIO,
    /// permissions, a rename): the kind of error a Python caller gets as `OSError`.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl FileError {
    pub(crate) fn invalid(path: &Path, problem: HeaderError) -> Self {
        FileError::Invalid {
            path: path.to_path_buf(),
            problem,
        }
    }
    pub(crate) fn usage(path: &Path, problem: UsageError) -> Self {
        FileError::Usage {
            path: Some(path.to_path_buf()),
            problem,
        }
    }
    pub(crate) fn spec(problem: UsageError) -> Self {
        FileError::Usage {
            path: None,
            problem,
        }
    }
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The header problem, if this is one (for tests and callers that branch on it).
    pub fn header_problem(&self) -> Option<&HeaderError> {
        match self {
            FileError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// The usage problem, if this is one.
    pub fn usage_problem(&self) -> Option<&UsageError> {
        match self {
            FileError::Usage { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// An OS error as C's `strerror` words it (Python's `OSError.strerror`): std's
/// text without its " (os error N)" suffix; other errors as they display.
pub struct Strerror<'a>(pub &'a io::Error);

impl fmt::Display for Strerror<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = self.0.to_string();
        match self.0.raw_os_error() {
            Some(code) => f.write_str(s.strip_suffix(&format!(" (os error {code})")).unwrap_or(&s)),
            None => f.write_str(&s),
        }
    }
}
