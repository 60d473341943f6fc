//! The content store: immutable sha256-addressed blobs under `blobs/sha256/<hex>`, after
//! containerd's `content.Store`. It owns blob files and digest checking; it does not know what a
//! blob means (manifest, config or layer) nor which image uses it (that is the index's job).
//!
//! Writing is two-phase, as in containerd: a [`ContentWriter`] streams bytes into a staging
//! directory while hashing them, `commit(size, expected)` checks size and digest and yields a
//! [`StagedBlob`]; only [`ContentStore::publish`], called under the store lock once a whole
//! load has been verified, moves it into `blobs/`. A refused archive therefore never leaves a
//! blob behind.

use std::cell::Cell;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::{ImageError, Result};

/// Counter making staged file names unique within one process; staging directories are
/// already unique per operation, this only separates files inside one of them.
static NEXT_STAGED: AtomicU64 = AtomicU64::new(0);

/// A validated `sha256:<64 lowercase hex>` digest. Validation matters: the hex part becomes a
/// file name, so a digest read from an archive must never carry `/` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; any other algorithm or malformed hex is refused.
    pub(super) fn parse(s: &str) -> Result<Self> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::InvalidArchive(format!("unsupported digest {s:?}")))?;
        Self::from_hex(hex)
            .ok_or_else(|| ImageError::InvalidArchive(format!("malformed digest {s:?}")))
    }

    /// Accepts exactly 64 lowercase hex characters.
    pub(super) fn from_hex(hex: &str) -> Option<Self> {
        is_full_hex(hex).then(|| Self {
            hex: hex.to_owned(),
        })
    }

    /// The 64 hex characters, used as file names.
    pub(super) fn hex(&self) -> &str {
        &self.hex
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// True for exactly 64 lowercase hex characters (a full sha256).
pub(super) fn is_full_hex(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

/// True for a non-empty run of lowercase hex characters.
pub(super) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The blob directory `blobs/sha256/`.
#[derive(Debug, Clone)]
pub(super) struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    /// Creates `<root>/blobs/sha256` if needed.
    pub(super) fn open(root: &Path) -> Result<Self> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
            op: "create blob directory",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Where the blob lives (whether or not it exists).
    pub(super) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether the blob is present.
    pub(super) fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens a committed blob for reading.
    pub(super) fn reader(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| ImageError::Io {
            op: "open blob",
            path,
            source,
        })
    }

    /// Starts writing a new blob into `staging` (a directory of the caller's operation).
    pub(super) fn writer(&self, staging: &Path) -> Result<ContentWriter> {
        let n = NEXT_STAGED.fetch_add(1, Ordering::Relaxed);
        let path = staging.join(format!("blob-{n}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|source| ImageError::Io {
                op: "create staged blob",
                path: path.clone(),
                source,
            })?;
        Ok(ContentWriter {
            file: BufWriter::with_capacity(128 * 1024, file),
            path,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Moves a verified staged blob into the store. Returns whether it was new (false when an
    /// identical blob, by digest, was already there; the staged copy is then left for the
    /// staging directory's cleanup). Call under the store lock so garbage collection cannot
    /// interleave.
    pub(super) fn publish(&self, staged: &StagedBlob) -> Result<bool> {
        if self.exists(&staged.digest) {
            return Ok(false);
        }
        let dest = self.path(&staged.digest);
        fs::rename(&staged.path, &dest).map_err(|source| ImageError::Io {
            op: "publish blob",
            path: dest,
            source,
        })?;
        Ok(true)
    }

    /// Deletes a blob; a missing blob is not an error (GC is idempotent).
    pub(super) fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::Io {
                op: "delete blob",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every blob in the store. Files whose names are not digests (none should exist) are
    /// skipped rather than deleted: the store only removes what it can name.
    pub(super) fn digests(&self) -> Result<Vec<Digest>> {
        let entries = fs::read_dir(&self.dir).map_err(|source| ImageError::Io {
            op: "list blobs",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::Io {
                op: "list blobs",
                path: self.dir.clone(),
                source,
            })?;
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// A blob being written: hashes and counts as it goes.
pub(super) struct ContentWriter {
    file: BufWriter<File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Write for ContentWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ContentWriter {
    /// Finishes the blob. With `expected_size` / `expected`, a mismatch is refused as
    /// [`ImageError::DigestMismatch`] naming `what`. No fsync: a crash loses staging only, and
    /// the issue asks for speed over durability here.
    pub(super) fn commit(
        mut self,
        expected_size: Option<u64>,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<StagedBlob> {
        self.file.flush().map_err(|source| ImageError::Io {
            op: "write staged blob",
            path: self.path.clone(),
            source,
        })?;
        let digest = Digest::from_hasher(self.hasher);
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        if let Some(size) = expected_size {
            if size != self.size {
                return Err(ImageError::InvalidArchive(format!(
                    "{what}: {} bytes, descriptor says {size}",
                    self.size
                )));
            }
        }
        Ok(StagedBlob {
            digest,
            size: self.size,
            path: self.path,
        })
    }

    /// The staged file's path (for error messages).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// A blob verified and waiting in a staging directory.
#[derive(Debug, Clone)]
pub(super) struct StagedBlob {
    /// Its sha256.
    pub(super) digest: Digest,
    /// Its length in bytes.
    pub(super) size: u64,
    /// The staged file.
    pub(super) path: PathBuf,
}

impl StagedBlob {
    /// Opens the staged file for reading.
    pub(super) fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|source| ImageError::Io {
            op: "open staged blob",
            path: self.path.clone(),
            source,
        })
    }

    /// Reads a small staged document (manifest, config, index), refusing anything larger than
    /// `limit` so a hostile archive cannot make us buffer gigabytes as "JSON".
    pub(super) fn read_small(&self, limit: u64, what: &str) -> Result<Vec<u8>> {
        if self.size > limit {
            return Err(ImageError::InvalidArchive(format!(
                "{what} is {} bytes, more than the {limit} allowed",
                self.size
            )));
        }
        fs::read(&self.path).map_err(|source| ImageError::Io {
            op: "read staged blob",
            path: self.path.clone(),
            source,
        })
    }
}

/// A reader that hashes and counts what passes through it and remembers whether its source
/// reached end of file. The EOF flag is shared (`Rc`) so that callers can still look at it
/// while a `tar::Archive` owns the reader, to tell a truncated stream from a malformed one.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    eof: Rc<Cell<bool>>,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            eof: Rc::new(Cell::new(false)),
        }
    }

    /// A handle on the end-of-file flag.
    pub(super) fn eof_flag(&self) -> Rc<Cell<bool>> {
        Rc::clone(&self.eof)
    }

    /// Bytes read so far.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// Reads the rest of the stream (so the digest covers it all) and returns digest and size.
    pub(super) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn digest_parse_refuses_non_sha256_and_path_tricks() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&good).is_ok());
        for bad in [
            "sha512:abcd".to_owned(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:../{}", "a".repeat(61)),
            "a".repeat(64),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn writer_commit_checks_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let staging = dir.path().join("stage");
        fs::create_dir(&staging).unwrap();

        let mut w = store.writer(&staging).unwrap();
        w.write_all(b"hello").unwrap();
        let staged = w.commit(Some(5), None, "test").unwrap();
        assert_eq!(
            staged.digest.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.publish(&staged).unwrap());
        assert!(store.exists(&staged.digest));
        assert_eq!(store.digests().unwrap(), vec![staged.digest.clone()]);

        let mut w = store.writer(&staging).unwrap();
        w.write_all(b"hello!").unwrap();
        let err = w.commit(None, Some(&staged.digest), "layer 0").unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

        store.delete(&staged.digest).unwrap();
        store.delete(&staged.digest).unwrap();
        assert!(!store.exists(&staged.digest));
    }
}
