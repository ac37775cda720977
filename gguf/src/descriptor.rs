//! Reading a file through its open descriptor instead of a memory map: positioned reads
//! (`pread`), which a file truncated under the reader turns into a short read and an error where
//! a map would raise SIGBUS; the file's identity captured at open ([`FileIdentity`]) and checked
//! around every read, so bytes of a file rewritten in place are never returned as the file that
//! was opened; and dropping the page cache of what was read (`posix_fadvise(DONTNEED)`), so bytes
//! read into the caller's memory are resident once, there.
//!
//! Renaming or deleting the file changes nothing here: the descriptor keeps reading the same
//! inode, whose identity is unchanged.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::GgufError;

/// What tells one state of a file from another: the inode (device and number), its size and its
/// modification time (nanoseconds). A write or truncation sets the modification time (and
/// usually changes the size). The status-change time is deliberately not compared: renaming or
/// deleting the file (which must keep working) and `chmod` change it too. What this misses is a
/// writer that rewrites the file in place to the same size and then sets its modification time
/// back to the same nanosecond (`cp -p` of a file with exactly that time): a deliberate act, and
/// the daemon serves its owned copy of the weights either way; only re-reads would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// The device holding the inode.
    pub dev: u64,
    /// The inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds and nanoseconds.
    pub mtime: (i64, i64),
}

impl FileIdentity {
    /// The identity `meta` (an `fstat` of the descriptor) describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// What differs between `self` (at open) and `now`, in words; `None` if nothing does.
    pub fn difference(&self, now: &FileIdentity) -> Option<String> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("it is another file".into())
        } else if self.size != now.size {
            Some(format!(
                "its size went from {} to {} bytes",
                self.size, now.size
            ))
        } else if self.mtime != now.mtime {
            Some("it was written to".into())
        } else {
            None
        }
    }
}

/// A regular file open for positioned reads, with the identity it had when opened.
#[derive(Debug)]
pub struct DescriptorFile {
    /// The path it was opened from (for messages; the file may have been renamed since).
    path: PathBuf,
    /// The open descriptor every read goes through.
    file: File,
    /// The file as it was at open.
    identity: FileIdentity,
}

impl DescriptorFile {
    /// Wraps `file`, opened from `path`, capturing its identity now.
    pub fn new(path: &Path, file: File) -> Result<Self, GgufError> {
        let meta = file.metadata().map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(DescriptorFile {
            path: path.to_owned(),
            file,
            identity: FileIdentity::of(&meta),
        })
    }

    /// The file's size when opened.
    pub fn len(&self) -> u64 {
        self.identity.size
    }

    /// Whether the file was empty when opened.
    pub fn is_empty(&self) -> bool {
        self.identity.size == 0
    }

    /// Its identity when opened.
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// Fails with [`GgufError::Changed`] if the file is no longer as it was when opened.
    pub fn check_unchanged(&self) -> Result<(), GgufError> {
        let meta = self.file.metadata().map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        match self.identity.difference(&FileIdentity::of(&meta)) {
            None => Ok(()),
            Some(what) => Err(GgufError::Changed {
                path: self.path.clone(),
                what,
            }),
        }
    }

    /// Reads exactly `dst.len()` bytes at `offset`, only from the file as it was when opened:
    /// the identity is checked before and after the read, so a change while it ran is an error
    /// ([`GgufError::Changed`]) rather than a mix of old and new bytes.
    pub fn read_exact_at(&self, dst: &mut [u8], offset: u64) -> Result<(), GgufError> {
        self.check_unchanged()?;
        if let Err(source) = self.file.read_exact_at(dst, offset) {
            // A short read is what a truncation looks like: say so when that is why.
            self.check_unchanged()?;
            return Err(GgufError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.check_unchanged()
    }

    /// Tells the kernel that the bytes `offset..offset + len` will not be read again soon, so
    /// their page cache can go (advice: failures are ignored, nothing depends on it).
    pub fn drop_cache(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for as
        // long as `self.file` lives, which outlasts the call.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> DescriptorFile {
        DescriptorFile::new(path, File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn reads_survive_rename_and_delete_but_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = open(&path);
        let mut buf = [0u8; 4];
        f.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"3456");

        let moved = dir.path().join("g");
        std::fs::rename(&path, &moved).unwrap();
        f.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"6789");
        std::fs::remove_file(&moved).unwrap();
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"0123");
    }

    #[test]
    fn truncation_and_rewrites_in_place_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = open(&path);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(2).unwrap();
        let mut buf = [0u8; 4];
        let err = f.read_exact_at(&mut buf, 4).unwrap_err();
        assert!(matches!(err, GgufError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("size went from 10 to 2"), "{err}");

        // Same size, other bytes: seen by the times.
        std::fs::write(&path, b"abcdefghij").unwrap();
        let g = open(&path);
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.write_all_at(b"XY", 0).unwrap();
        let err = g.read_exact_at(&mut buf, 0).unwrap_err();
        assert!(matches!(err, GgufError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("load it again"), "{err}");
    }
}
