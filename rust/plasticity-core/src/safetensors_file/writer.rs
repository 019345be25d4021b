//! Writing a safetensors file tensor by tensor, atomically.

use std::collections::HashSet;
use std::fs::{File, Permissions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use tempfile::TempPath;

use super::error::{FileError, UsageError};
use super::json::PyRepr;

/// A tensor the writer will be given: name, dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A write or the commit failed: the temporary file is gone.
    Failed,
    Aborted,
    Committed,
}

/// Writes a safetensors file tensor by tensor; the target changes only on commit.
///
/// [`create`](Self::create) fixes the header from the specs, and writes it to
/// a new temporary file beside the target (`.NAME.XXXXXX.tmp`, created with
/// mode `0666` less the umask, as a plain `open` would give). Each
/// [`write`](Self::write) appends the next tensor, in the declared order.
/// [`commit`](Self::commit) fsyncs the file, renames it over the target and
/// fsyncs the directory. Anything else — an error, [`abort`](Self::abort), or
/// dropping the writer — removes the temporary file and leaves whatever was at
/// the target as it was. The header is byte for byte the one Python's
/// `json.dumps(..., separators=(",", ":"), ensure_ascii=False)` gives, padded
/// with spaces to a multiple of 8 bytes.
#[derive(Debug)]
pub struct SafetensorsWriter {
    path: PathBuf,
    order: Vec<(TensorSpec, u64)>,
    next: usize,
    state: State,
    file: Option<BufWriter<File>>,
    temp: Option<TempPath>,
}

impl SafetensorsWriter {
    /// Check the specs and metadata, then start the temporary file.
    ///
    /// Names must be non-empty, not `__metadata__` and distinct; every dtype
    /// must have whole-byte elements (not F4 or F6_*).
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &[(String, String)],
    ) -> Result<Self, FileError> {
        let mut seen = HashSet::new();
        let mut order = Vec::with_capacity(specs.len());
        let mut off = 0u64;
        for spec in specs {
            let name = spec.name.clone();
            if name.is_empty() || name == "__metadata__" {
                return Err(FileError::spec(UsageError::BadName(name)));
            }
            if !seen.insert(name.clone()) {
                return Err(FileError::spec(UsageError::ListedTwice(name)));
            }
            if spec.dtype.bitsize() % 8 != 0 {
                return Err(FileError::spec(UsageError::CannotWriteDtype {
                    name,
                    dtype: spec.dtype.to_string(),
                }));
            }
            let nbytes = spec
                .shape
                .iter()
                .try_fold(spec.dtype.bitsize() as u64 / 8, |n, &d| n.checked_mul(d))
                .filter(|n| off.checked_add(*n).is_some())
                .ok_or_else(|| {
                    let (dtype, shape) = (spec.dtype.to_string(), spec.shape.clone());
                    FileError::spec(UsageError::TooLarge { name, dtype, shape })
                })?;
            off += nbytes;
            order.push((spec, nbytes));
        }
        let mut keys = HashSet::new();
        if let Some((k, _)) = metadata.iter().find(|(k, _)| !keys.insert(k.as_str())) {
            return Err(FileError::spec(UsageError::MetadataListedTwice(k.clone())));
        }
        let json = header_json(&order, metadata);

        let parent = match path.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => Path::new("/"),
        };
        if !parent.is_dir() {
            return Err(FileError::usage(
                path,
                UsageError::NoDirectory(parent.into()),
            ));
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let named = tempfile::Builder::new()
            .prefix(&format!(".{file_name}."))
            .suffix(".tmp")
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(parent)
            .map_err(|e| FileError::io(parent, e))?;
        let (file, temp) = named.into_parts();
        let mut w = Self {
            path: path.into(),
            order,
            next: 0,
            state: State::Open,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temp: Some(temp),
        };
        let mut head = Vec::with_capacity(8 + json.len());
        head.extend_from_slice(&(json.len() as u64).to_le_bytes());
        head.extend_from_slice(json.as_bytes());
        w.append(&head)?;
        Ok(w)
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file being written, while there is one.
    pub fn temp_path(&self) -> Option<&Path> {
        self.temp.as_deref()
    }

    /// The spec of the tensor [`write`](Self::write) expects next.
    pub fn next_spec(&self) -> Option<&TensorSpec> {
        self.order.get(self.next).map(|(s, _)| s)
    }

    /// Append the next tensor: `name`, `dtype` and `shape` must be the next
    /// spec's, `bytes` its data (little-endian, row-major).
    pub fn write(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: &[u8],
    ) -> Result<(), FileError> {
        let got = format!("{dtype} {}", PyRepr(shape));
        self.write_described(name, Some(dtype), shape, bytes, &got)
    }

    /// [`write`](Self::write) for a caller whose tensor may have no safetensors
    /// dtype (`dtype: None`, always a mismatch), and that describes what it
    /// passed in its own words for the mismatch message (`got`).
    pub fn write_described(
        &mut self,
        name: &str,
        dtype: Option<Dtype>,
        shape: &[u64],
        bytes: &[u8],
        got: &str,
    ) -> Result<(), FileError> {
        if self.state != State::Open {
            return Err(FileError::usage(&self.path, UsageError::WriterClosed));
        }
        let Some((spec, nbytes)) = self.order.get(self.next) else {
            return Err(FileError::usage(
                &self.path,
                UsageError::AllWritten(name.into()),
            ));
        };
        if name != spec.name {
            let want = spec.name.clone();
            return Err(FileError::usage(
                &self.path,
                UsageError::ExpectedNext {
                    want,
                    got: name.into(),
                },
            ));
        }
        if dtype != Some(spec.dtype) || shape != spec.shape {
            let problem = UsageError::Mismatch {
                name: name.into(),
                dtype: spec.dtype.to_string(),
                shape: spec.shape.clone(),
                got: got.into(),
            };
            return Err(FileError::usage(&self.path, problem));
        }
        if bytes.len() as u64 != *nbytes {
            let problem = UsageError::ByteCount {
                name: name.into(),
                got: bytes.len(),
                want: *nbytes,
            };
            return Err(FileError::usage(&self.path, problem));
        }
        self.append(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Make the file the target: every declared tensor must have been
    /// written. Committing twice is a no-op, and so is committing after
    /// [`abort`](Self::abort); after a failed write it is an error.
    pub fn commit(&mut self) -> Result<(), FileError> {
        match self.state {
            State::Committed | State::Aborted => return Ok(()),
            State::Failed => return Err(FileError::usage(&self.path, UsageError::FailedEarlier)),
            State::Open => {}
        }
        if self.next != self.order.len() {
            let count = self.order.len() - self.next;
            let first = self.order[self.next].0.name.clone();
            self.abort();
            return Err(FileError::usage(
                &self.path,
                UsageError::NotWritten { count, first },
            ));
        }
        let file = self.file.take().expect("an open writer has its file");
        let temp = self
            .temp
            .take()
            .expect("an open writer has its temporary file");
        let synced = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(e) = synced {
            self.state = State::Failed;
            drop(temp); // removes the temporary file
            return Err(FileError::io(&self.path, e));
        }
        if let Err(e) = temp.persist(&self.path) {
            self.state = State::Failed;
            drop(e.path);
            return Err(FileError::io(&self.path, e.error));
        }
        self.state = State::Committed;
        fsync_dir(
            self.path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        );
        Ok(())
    }

    /// Remove the temporary file; the target is left as it was. A no-op once
    /// committed or aborted.
    pub fn abort(&mut self) {
        if self.state == State::Open {
            self.state = State::Aborted;
        }
        self.file = None;
        self.temp = None; // TempPath's drop removes the file
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        let file = self.file.as_mut().expect("an open writer has its file");
        if let Err(e) = file.write_all(bytes) {
            self.abort();
            self.state = State::Failed;
            return Err(FileError::io(&self.path, e));
        }
        Ok(())
    }
}

#[cfg(test)]
impl SafetensorsWriter {
    /// Send the following writes to `file` (`/dev/full` simulates a full disk).
    pub(super) fn redirect_for_test(&mut self, file: File) {
        if let Some(old) = self.file.replace(BufWriter::with_capacity(0, file)) {
            drop(old.into_inner()); // flush what is buffered to the temporary file
        }
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The header JSON, padded with spaces to a multiple of 8 bytes (as the
/// safetensors crate pads its own).
fn header_json(order: &[(TensorSpec, u64)], metadata: &[(String, String)]) -> String {
    let s = |x: &str| serde_json::to_string(x).expect("a str always serializes");
    let mut out = String::from("{");
    if !metadata.is_empty() {
        out.push_str("\"__metadata__\":{");
        let kv: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", s(k), s(v)))
            .collect();
        out.push_str(&kv.join(","));
        out.push('}');
    }
    let mut off = 0u64;
    for (spec, nbytes) in order {
        if out.len() > 1 {
            out.push(',');
        }
        let dims: Vec<String> = spec.shape.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            s(&spec.name),
            spec.dtype,
            dims.join(","),
            off,
            off + nbytes
        ));
        off += nbytes;
    }
    out.push('}');
    let pad = (8 - out.len() % 8) % 8;
    out.extend(std::iter::repeat_n(' ', pad));
    out
}

/// Make a rename in `dir` durable; best effort (some filesystems refuse it).
fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
