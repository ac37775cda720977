//! [`GgufFile`]: a GGUF file opened from disk (memory-mapped, or read through its descriptor) or
//! from bytes, its parsed header, and tensor data as views into the mapping or read on demand.
//!
//! The daemon opens model files unmapped ([`GgufFile::open_unmapped`]): the header is read with
//! `pread`, tensor data is copied out when asked for ([`GgufFile::read_tensor_data`]), each read
//! checked against the file's identity at open ([`crate::descriptor`]), so a file truncated or
//! rewritten under the daemon gives an error, never a SIGBUS or other bytes. Tools and tests that
//! want views keep the mapping ([`GgufFile::open`]).
//!
//! Only regular files are opened ([`open_regular`]): a path naming a directory, FIFO, device or
//! socket is refused from its `stat` before any `open`, and the opened descriptor is checked
//! again (`fstat`), so a path swapped for a FIFO in between cannot make the daemon block.

use std::fs::{File, FileType};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::descriptor::DescriptorFile;
use super::error::GgufError;
use super::parse::{DataCheck, GgufHeader, Metadata, TensorInfo};

/// Bytes of a file read first to parse its header unmapped; doubled until the header fits (real
/// headers are a few MiB: a 150k-token vocabulary with its merges is about 8 MiB).
const HEADER_READ_START: u64 = 16 << 20;

/// Where the file's bytes live.
enum Storage {
    /// A read-only memory map of the file.
    Mapped(Mmap),
    /// Bytes held in memory (tests, small generated files, empty files that cannot be mapped).
    Owned(Vec<u8>),
    /// Nothing in memory: tensor data is read through the descriptor when asked for.
    Read(DescriptorFile),
}

impl Storage {
    /// The bytes, for the storages that hold them in memory.
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Storage::Mapped(m) => Some(m),
            Storage::Owned(v) => Some(v),
            Storage::Read(_) => None,
        }
    }
}

/// An opened GGUF file: the parsed header plus access to the tensor data.
pub struct GgufFile {
    /// The file's path (empty for [`GgufFile::from_bytes`]).
    path: PathBuf,
    /// The file's bytes.
    storage: Storage,
    /// Everything but the tensor data.
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("metadata_entries", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .field("file_size", &self.header.file_size)
            .finish()
    }
}

/// Opens `path` for reading if it is a regular file (following symlinks); anything else is
/// [`GgufError::NotRegularFile`] naming what it is. The open itself is non-blocking, so even a
/// path replaced by a FIFO between the check and the open returns at once (and is refused by the
/// second check, on the descriptor).
pub fn open_regular(path: &Path) -> Result<File, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_owned(),
        source,
    };
    let not_regular = |kind| GgufError::NotRegularFile {
        path: path.to_owned(),
        kind,
    };
    if let Some(kind) = not_regular_kind(std::fs::metadata(path).map_err(io)?.file_type()) {
        return Err(not_regular(kind));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    if let Some(kind) = not_regular_kind(file.metadata().map_err(io)?.file_type()) {
        return Err(not_regular(kind));
    }
    Ok(file)
}

/// What a file type is when it is not a regular file; `None` for a regular file.
fn not_regular_kind(t: FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("an unknown kind of file")
    }
}

impl GgufFile {
    /// Opens a complete GGUF file: every tensor's data must be present.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path.as_ref(), DataCheck::Complete)
    }

    /// Opens a possibly partial GGUF file (e.g. a download in progress): the header must be
    /// complete, tensors whose data is cut off are listed by [`GgufFile::missing_tensors`] and
    /// [`GgufFile::tensor_data`] fails for them.
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        Self::open_with(path.as_ref(), DataCheck::HeaderOnly)
    }

    /// Opens `path` checking tensor data as `check` says.
    pub fn open_with(path: &Path, check: DataCheck) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = open_regular(path)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. Another process
            // truncating or rewriting the file while it is mapped is outside what llmd can
            // guard against (as for every mmap-based model loader); model files are treated as
            // immutable while open.
            Storage::Mapped(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let header = GgufHeader::parse_with(storage.bytes().unwrap_or_default(), check)?;
        Ok(GgufFile {
            path: path.to_owned(),
            storage,
            header,
        })
    }

    /// Opens `path` without mapping it, checking tensor data as `check` says: the header is read
    /// with `pread` (the first 16 MiB, more if the header is longer), tensor data only by
    /// [`GgufFile::read_tensor_data`], which fails cleanly once the file has changed
    /// ([`GgufError::Changed`]). [`GgufFile::tensor_data`] is [`GgufError::NotMapped`].
    pub fn open_unmapped(path: &Path, check: DataCheck) -> Result<Self, GgufError> {
        let file = DescriptorFile::new(path, open_regular(path)?)?;
        let size = file.len();
        let mut want = size.min(HEADER_READ_START);
        let header = loop {
            let mut prefix = vec![0u8; want as usize];
            file.read_exact_at(&mut prefix, 0)?;
            match GgufHeader::parse_prefix(&prefix, size, check) {
                Err(GgufError::Truncated { .. } | GgufError::CountTooLarge { .. })
                    if want < size =>
                {
                    want = want.saturating_mul(2).min(size);
                }
                other => break other?,
            }
        };
        file.drop_cache(0, want);
        Ok(GgufFile {
            path: path.to_owned(),
            storage: Storage::Read(file),
            header,
        })
    }

    /// Parses a GGUF file held in memory, checking tensor data as `check` says.
    pub fn from_bytes(bytes: Vec<u8>, check: DataCheck) -> Result<Self, GgufError> {
        let header = GgufHeader::parse_with(&bytes, check)?;
        Ok(GgufFile {
            path: PathBuf::new(),
            storage: Storage::Owned(bytes),
            header,
        })
    }

    /// The path the file was opened from (empty when built from bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// Size of the file on disk.
    pub fn file_size(&self) -> u64 {
        self.header.file_size
    }

    /// Whether every tensor's data is present.
    pub fn is_complete(&self) -> bool {
        self.header.missing.is_empty()
    }

    /// The tensors whose data is not (fully) present in a partial file.
    pub fn missing_tensors(&self) -> impl Iterator<Item = &TensorInfo> + '_ {
        self.header.missing.iter().map(|&i| &self.header.tensors[i])
    }

    /// The raw bytes of `tensor`'s data, a view into the map ([`GgufError::NotMapped`] for a
    /// file opened with [`GgufFile::open_unmapped`]).
    pub fn tensor_data(&self, tensor: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.storage.bytes().ok_or_else(|| GgufError::NotMapped {
            name: tensor.name.clone(),
        })?;
        let missing = || GgufError::TensorDataMissing {
            name: tensor.name.clone(),
            start: tensor.data_start,
            end: tensor.data_end(),
            file_size: bytes.len() as u64,
        };
        let start = usize::try_from(tensor.data_start).map_err(|_| missing())?;
        let end = usize::try_from(tensor.data_end()).map_err(|_| missing())?;
        bytes.get(start..end).ok_or_else(missing)
    }

    /// Copies `tensor`'s data into `dst` (exactly its size), from memory or, for a file opened
    /// unmapped, from the file as it was opened (a changed file is [`GgufError::Changed`]).
    pub fn read_tensor_data(&self, tensor: &TensorInfo, dst: &mut [u8]) -> Result<(), GgufError> {
        let missing = |file_size| GgufError::TensorDataMissing {
            name: tensor.name.clone(),
            start: tensor.data_start,
            end: tensor.data_end(),
            file_size,
        };
        if dst.len() as u64 != tensor.n_bytes {
            return Err(missing(self.header.file_size));
        }
        match &self.storage {
            Storage::Read(file) => {
                if tensor.data_end() > file.len() {
                    return Err(missing(file.len()));
                }
                file.read_exact_at(dst, tensor.data_start)
            }
            _ => {
                dst.copy_from_slice(self.tensor_data(tensor)?);
                Ok(())
            }
        }
    }

    /// Fails with [`GgufError::Changed`] if the file opened unmapped has changed since (always
    /// `Ok` for mapped files and bytes).
    pub fn check_unchanged(&self) -> Result<(), GgufError> {
        match &self.storage {
            Storage::Read(file) => file.check_unchanged(),
            _ => Ok(()),
        }
    }

    /// Lets the page cache of `tensor`'s data go (after it was read into memory of the caller's
    /// own); nothing for mapped files and bytes.
    pub fn drop_cached(&self, tensor: &TensorInfo) {
        if let Storage::Read(file) = &self.storage {
            file.drop_cache(tensor.data_start, tensor.n_bytes);
        }
    }

    /// Whether tensor data lives in a memory map of the file (else in owned bytes or not in
    /// memory at all).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }

    /// The raw bytes of the tensor named `name`.
    pub fn tensor_data_by_name(&self, name: &str) -> Result<&[u8], GgufError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| GgufError::NoSuchTensor(name.to_owned()))?;
        self.tensor_data(t)
    }

    /// Fails with "unsupported tensor type X in tensor Y" for the first tensor llmd cannot
    /// compute with.
    pub fn check_supported(&self) -> Result<(), GgufError> {
        self.header.check_supported()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn directories_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let err = GgufFile::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::NotRegularFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is a directory"), "{err}");

        let fifo = dir.path().join("pipe.gguf");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        let started = Instant::now();
        for open in [GgufFile::open, GgufFile::open_header] {
            let err = open(&fifo).unwrap_err();
            assert!(err.to_string().contains("FIFO"), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(1));

        let err = GgufFile::open_header("/dev/null").unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
    }

    #[test]
    fn bad_magic_never_echoes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, b"root:$6$secret:19000:0:99999:7:::\n").unwrap();
        let err = GgufFile::open_header(&secret).unwrap_err().to_string();
        assert_eq!(
            err,
            "not a GGUF file (it does not begin with the GGUF magic)"
        );
        for needle in ["72", "6f", "root", "[", "secret"] {
            assert!(!err.contains(needle), "{err}");
        }
    }
}
