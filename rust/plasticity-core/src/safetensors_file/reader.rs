//! A validated safetensors file, read one tensor at a time with `pread`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{FileError, UsageError};
use super::header::{read_header_from, Header, TensorEntry};

/// An open, validated safetensors file.
///
/// [`open`](Self::open) reads the header from the same file descriptor that
/// later reads the tensors, validates it (see [`super::header`]) and then has
/// the safetensors crate check it too ([`crate_check`]); [`read_into`](Self::read_into)
/// copies one tensor's bytes into the caller's buffer with positioned reads,
/// so memory holds exactly the tensors the caller keeps (a memory map would
/// keep every page it touched resident until it is unmapped). Reads may run
/// from several threads at once.
#[derive(Debug)]
pub struct SafetensorsReader {
    path: PathBuf,
    file: File,
    header: Header,
    index: HashMap<String, usize>,
}

impl SafetensorsReader {
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let mut file = File::open(path).map_err(|source| FileError::CannotRead {
            path: path.into(),
            source,
        })?;
        let (header, text) = read_header_from(&mut file, path)?;
        crate_check(&text, header.data_len).map_err(|reason| FileError::Refused {
            path: path.into(),
            reason,
        })?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.into(),
            file,
            header,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, FileError> {
        self.tensor(name)
            .ok_or_else(|| FileError::usage(&self.path, UsageError::NoTensor(name.into())))
    }

    /// Copy the bytes of tensor `name` into `out`, which must be exactly its size.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<(), FileError> {
        let t = self.entry(name)?;
        if out.len() as u64 != t.nbytes() {
            return Err(FileError::usage(
                &self.path,
                UsageError::ByteCount {
                    name: name.into(),
                    got: out.len(),
                    want: t.nbytes(),
                },
            ));
        }
        let base = self.header.data_start() + t.start;
        let mut got = 0usize;
        while got < out.len() {
            match self.file.read_at(&mut out[got..], base + got as u64) {
                Ok(0) => {
                    return Err(FileError::Changed {
                        path: self.path.clone(),
                        name: name.into(),
                    })
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FileError::io(&self.path, e)),
            }
        }
        Ok(())
    }

    /// The bytes of tensor `name`, in a new buffer.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, FileError> {
        let mut out = vec![0u8; self.entry(name)?.nbytes() as usize];
        self.read_into(name, &mut out)?;
        Ok(out)
    }
}

/// The safetensors crate's own check of a header: the same parse and rules as
/// its `SafeTensors::read_metadata` over a whole file (contiguous offsets from
/// zero, byte counts that match dtype and shape), with the data section's
/// length compared here rather than through a memory map of the file.
pub fn crate_check(text: &str, data_len: u64) -> Result<(), String> {
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    if meta.data_len() as u64 != data_len {
        return Err(safetensors::SafeTensorError::MetadataIncompleteBuffer.to_string());
    }
    Ok(())
}
