//! Layer unpacking: decompression by magic bytes (tar, gzip, zstd), and a strict tar extractor
//! that turns one layer into an overlayfs lower directory. It owns the safety rules for archive
//! entries; where snapshots live and when to unpack is the store's business.
//!
//! The extractor writes into a fresh directory that only it touches, and keeps an in-memory map
//! of everything it has created. Every parent component of every entry is checked against that
//! map, so it never writes through a symlink (the classic "entry `a` is a symlink to `/etc`,
//! then entry `a/passwd`" attack, CVE-2019-14271 / CVE-2018-15664 style) and never needs to
//! follow one: new files are opened with `O_CREAT|O_EXCL|O_NOFOLLOW`, hard links are made
//! without following, metadata is set with the `l*`/`AT_SYMLINK_NOFOLLOW` calls.
//!
//! Refused outright: absolute names, any `..` component, hard links to anything but an earlier
//! non-directory entry of the same layer, relative symlinks whose target climbs above the layer
//! root, character and block devices (a layer is untrusted input; overlay whiteouts arrive as
//! `.wh.` files and are turned into devices here), and entry types we do not know. Absolute
//! symlink targets are kept: they are resolved inside the container's root at run time and
//! nothing here ever follows them.
//!
//! Whiteouts follow the OCI layer spec and are converted to what overlayfs reads: `.wh.NAME`
//! becomes a 0:0 character device `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
//! directory, other `.wh..wh.*` (aufs bookkeeping) is skipped. Xattrs from PAX
//! `SCHILY.xattr.*` records are restored except `trusted.overlay.*` / `user.overlay.*`, which
//! would let a layer forge overlayfs metadata (redirects, metacopy) that only whiteouts may make.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use super::content::{Digest, HashingReader};
use super::manifest::{MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD};
use super::{ImageError, Result};

/// Read buffer for layer streams: large enough that syscalls are not the cost of unpacking.
const BUF_SIZE: usize = 128 * 1024;

/// The overlayfs xattr that marks a directory opaque.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a layer (or a whole archive) is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Identifies the compression by magic bytes; bzip2 and xz are named and refused rather
    /// than misread as tar.
    pub(super) fn sniff(head: &[u8], what: &str) -> Result<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Self::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Self::Zstd)
        } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
            Err(ImageError::InvalidArchive(format!(
                "{what}: bzip2 and xz compression are not supported (use tar, gzip or zstd)"
            )))
        } else {
            Ok(Self::None)
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub(super) fn layer_media_type(self) -> &'static str {
        match self {
            Self::None => MEDIA_OCI_LAYER,
            Self::Gzip => MEDIA_OCI_LAYER_GZIP,
            Self::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// Peeks at `src` and returns the decompressed stream.
pub(super) fn decompress<'a>(
    mut src: impl Read + 'a,
    what: &str,
) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match src.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e, false, what)),
        }
    }
    let compression = Compression::sniff(&head[..n], what)?;
    let joined = BufReader::with_capacity(BUF_SIZE, io::Cursor::new(head[..n].to_vec()).chain(src));
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(joined),
        // Multi-member: pigz and some registries write several gzip members per layer.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(joined)),
        Compression::Zstd => Box::new(ZstdReader::new(joined)),
    };
    Ok((compression, reader))
}

/// Maps an error from reading an archive: running out of input is truncation, anything else
/// (bad gzip, bad tar header checksum) is a malformed archive.
pub(super) fn read_error(e: io::Error, eof: bool, what: &str) -> ImageError {
    if eof || e.kind() == io::ErrorKind::UnexpectedEof {
        ImageError::Truncated {
            what: what.to_owned(),
        }
    } else {
        ImageError::InvalidArchive(format!("{what}: {e}"))
    }
}

/// A zstd stream of one or more frames (skippable frames skipped), checksums verified.
/// ruzstd's `StreamingDecoder` stops after the first frame; `zstd -T0` and pzstd write many.
struct ZstdReader<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(source: R) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// A decoding error; at end of input it is reported as truncation.
    fn error(&mut self, e: FrameDecoderError) -> io::Error {
        match self.source.fill_buf() {
            Ok([]) => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            _ => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.init(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped =
                            io::copy(&mut (&mut self.source).take(length.into()), &mut io::sink())?;
                        if skipped != u64::from(length) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    Err(e) => return Err(self.error(e)),
                }
                continue;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                if let Err(e) = self
                    .decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(BUF_SIZE))
                {
                    return Err(self.error(e));
                }
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // Frame done and drained.
            if let (Some(want), Some(got)) = (
                self.decoder.get_checksum_from_data(),
                self.decoder.get_calculated_checksum(),
            ) {
                if want != got {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zstd frame checksum mismatch",
                    ));
                }
            }
            self.in_frame = false;
        }
    }
}

/// What unpacking (or hashing) a layer found.
#[derive(Debug, Clone)]
pub(super) struct LayerDigest {
    /// sha256 of the uncompressed tar: the layer's diff id.
    pub(super) diff_id: Digest,
    /// Length of the uncompressed tar.
    pub(super) size: u64,
}

/// Hashes a layer's uncompressed stream without unpacking it (when its snapshot exists).
pub(super) fn digest_layer(src: impl Read, what: &str) -> Result<LayerDigest> {
    let (_, reader) = decompress(src, what)?;
    let hashing = HashingReader::new(reader);
    let eof = hashing.eof_flag();
    let (diff_id, size) = hashing
        .finish()
        .map_err(|e| read_error(e, eof.get(), what))?;
    Ok(LayerDigest { diff_id, size })
}

/// Whether a tar stream must close with the end-of-archive blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The stream has no digest to be checked against (an import): a stream that stops at an
    /// entry boundary is taken as truncated.
    Required,
    /// The caller checks the stream's diff id against the image config afterwards, which is
    /// the real guard. umoci 0.4 (Debian 12's) writes layers that stop right after the last
    /// entry's data, without padding or end blocks; such a stream is accepted here and judged
    /// by its digest.
    Verified,
}

/// Unpacks a layer (any supported compression) into `dest`, an existing empty directory, and
/// returns its diff id. On error `dest` holds a partial tree: the caller discards it.
pub(super) fn unpack_layer(
    src: impl Read,
    dest: &Path,
    what: &str,
    end: End,
) -> Result<LayerDigest> {
    let (_, reader) = decompress(src, what)?;
    let mut hashing = HashingReader::new(reader);
    let eof = hashing.eof_flag();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut extractor = Extractor {
            root: dest,
            tree: BTreeMap::new(),
            dir_times: Vec::new(),
            what,
            eof: &eof,
            buf: vec![0u8; BUF_SIZE],
        };
        let entries = archive
            .entries()
            .map_err(|e| read_error(e, eof.get(), what))?;
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                // The input ended in the last entry's padding or in a header: see `End`.
                Err(_) if end == End::Verified && eof.get() => break,
                Err(e) => return Err(read_error(e, eof.get(), what)),
            };
            extractor.entry(&mut entry)?;
        }
        extractor.finish()?;
    }
    // The tar reader stops at the first zero block; if the input ran out before it, the
    // layer was cut short exactly at an entry boundary. An empty stream is an empty layer.
    let empty = eof.get() && is_empty_stream(&hashing);
    if end == End::Required && eof.get() && !empty {
        return Err(ImageError::Truncated {
            what: format!("{what} (no end-of-archive marker)"),
        });
    }
    let (diff_id, size) = hashing
        .finish()
        .map_err(|e| read_error(e, eof.get(), what))?;
    Ok(LayerDigest { diff_id, size })
}

fn is_empty_stream<R: Read>(hashing: &HashingReader<R>) -> bool {
    hashing.count() == 0
}

/// What the extractor created at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Whiteout,
}

/// One layer's extraction state.
struct Extractor<'a> {
    /// The layer root (a fresh staging directory).
    root: &'a Path,
    /// Everything created so far, by path relative to `root`. The root itself is implicit.
    tree: BTreeMap<PathBuf, Kind>,
    /// Directory mtimes, applied at the end (creating children changes them).
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// The layer's name for errors.
    what: &'a str,
    /// The stream's end-of-file flag, to classify read errors.
    eof: &'a Cell<bool>,
    /// Copy buffer, reused for every file.
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let ty = entry.header().entry_type();
        let Some((name, rel)) = entry_path(entry)? else {
            return Ok(());
        };

        if let Some(base) = rel.file_name().map(OsStr::as_bytes) {
            if base == b".wh..wh..opq" {
                let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                self.ensure_dir(&dir, &name)?;
                return set_xattr(&self.root.join(&dir), OPAQUE_XATTR, b"y");
            }
            let first = rel.components().next().map(|c| c.as_os_str().as_bytes());
            if first.is_some_and(|c| c.starts_with(b".wh..wh.")) {
                return Ok(());
            }
            if let Some(hidden) = base.strip_prefix(b".wh.") {
                return self.whiteout(&rel, hidden, &name);
            }
        }

        match ty {
            tar::EntryType::Directory => self.directory(&rel, entry, &name),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&rel, entry, &name)
            }
            tar::EntryType::Symlink => self.symlink(&rel, entry, &name),
            tar::EntryType::Link => self.hardlink(&rel, entry, &name),
            tar::EntryType::Fifo => {
                self.prepare(&rel, &name, Kind::Fifo)?;
                let path = self.root.join(&rel);
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_error("create fifo", &path, e.into()))?;
                self.tree.insert(rel.clone(), Kind::Fifo);
                self.metadata(&rel, entry, Kind::Fifo)
            }
            tar::EntryType::Char | tar::EntryType::Block => Err(hostile(
                &name,
                "device nodes are not allowed in image layers",
            )),
            other => Err(hostile(
                &name,
                &format!("unsupported tar entry type {:?}", other.as_byte() as char),
            )),
        }
    }

    fn directory<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<()> {
        if !rel.as_os_str().is_empty() {
            self.prepare(rel, name, Kind::Dir)?;
            if self.tree.get(rel) != Some(&Kind::Dir) {
                let path = self.root.join(rel);
                fs::create_dir(&path).map_err(|e| io_error("create directory", &path, e))?;
                self.tree.insert(rel.to_path_buf(), Kind::Dir);
            }
        }
        self.metadata(rel, entry, Kind::Dir)
    }

    fn file<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(hostile(name, "a file cannot replace the layer root"));
        }
        self.prepare(rel, name, Kind::File)?;
        let path = self.root.join(rel);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("create file", &path, e))?;
        self.tree.insert(rel.to_path_buf(), Kind::File);
        // Unbuffered writes from one reused buffer: most layer files are small, and a fresh
        // 128 KiB buffer per file would cost an mmap and page faults each time.
        let mut out = file;
        let buf = &mut self.buf;
        let mut copied = 0u64;
        loop {
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, self.eof.get(), self.what)),
            };
            out.write_all(&buf[..n])
                .map_err(|e| io_error("write file", &path, e))?;
            copied += n as u64;
        }
        let sparse = entry.header().entry_type() == tar::EntryType::GNUSparse;
        if !sparse && copied != entry.size() {
            return Err(ImageError::Truncated {
                what: format!("{} entry {name:?}", self.what),
            });
        }
        self.metadata(rel, entry, Kind::File)
    }

    fn symlink<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        if rel.as_os_str().is_empty() || target.is_empty() || target.contains(&0) {
            return Err(hostile(name, "malformed symlink"));
        }
        if symlink_escapes(rel, &target) {
            return Err(hostile(
                name,
                &format!(
                    "symlink target {:?} escapes the layer root",
                    String::from_utf8_lossy(&target)
                ),
            ));
        }
        self.prepare(rel, name, Kind::Symlink)?;
        let path = self.root.join(rel);
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
            .map_err(|e| io_error("create symlink", &path, e))?;
        self.tree.insert(rel.to_path_buf(), Kind::Symlink);
        self.metadata(rel, entry, Kind::Symlink)
    }

    fn hardlink<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<()> {
        let raw_target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let shown = String::from_utf8_lossy(&raw_target).into_owned();
        let outside = || {
            hostile(
                name,
                &format!("hard link target {shown:?} is outside the layer"),
            )
        };
        if raw_target.starts_with(b"/") {
            return Err(outside());
        }
        let target = clean_path(&raw_target).map_err(|_| outside())?;
        if target == rel {
            return Ok(());
        }
        let kind = match self.tree.get(&target) {
            Some(k @ (Kind::File | Kind::Symlink | Kind::Fifo)) => *k,
            _ => {
                return Err(hostile(
                    name,
                    &format!("hard link target {shown:?} is not an earlier file of this layer"),
                ))
            }
        };
        if rel.as_os_str().is_empty() {
            return Err(hostile(name, "a hard link cannot replace the layer root"));
        }
        self.prepare(rel, name, kind)?;
        let path = self.root.join(rel);
        // link(2) does not follow a symlink in its source, and both parents are directories
        // we created, so this cannot reach outside the layer.
        fs::hard_link(self.root.join(&target), &path)
            .map_err(|e| io_error("create hard link", &path, e))?;
        self.tree.insert(rel.to_path_buf(), kind);
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path, hidden: &[u8], name: &str) -> Result<()> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(hostile(name, "malformed whiteout"));
        }
        let target = rel
            .parent()
            .unwrap_or(Path::new(""))
            .join(OsStr::from_bytes(hidden));
        self.prepare(&target, name, Kind::Whiteout)?;
        let path = self.root.join(&target);
        // overlayfs's whiteout: a character device with device number 0:0.
        nix::sys::stat::mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| io_error("create whiteout", &path, e.into()))?;
        self.tree.insert(target, Kind::Whiteout);
        Ok(())
    }

    /// Makes `rel` ready to be created as `kind`: its parents exist as real directories (not
    /// symlinks, not files) and whatever an earlier entry put at `rel` is gone, except a
    /// directory that a directory entry only updates (tar semantics: later entries win).
    fn prepare(&mut self, rel: &Path, name: &str, kind: Kind) -> Result<()> {
        if let Some(parent) = rel.parent() {
            self.ensure_dir(parent, name)?;
        }
        match self.tree.get(rel) {
            None => Ok(()),
            Some(Kind::Dir) if kind == Kind::Dir => Ok(()),
            Some(existing) => {
                let path = self.root.join(rel);
                let removed = if *existing == Kind::Dir {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| io_error("replace", &path, e))?;
                self.tree.retain(|k, _| !k.starts_with(rel));
                self.dir_times.retain(|(k, _)| !k.starts_with(rel));
                Ok(())
            }
        }
    }

    /// Checks that every component of `dir` is a directory we made, creating missing ones
    /// (tar files need not list parents). A symlink or file on the way is refused: writing
    /// through it could land outside the layer.
    fn ensure_dir(&mut self, dir: &Path, name: &str) -> Result<()> {
        let mut prefix = PathBuf::new();
        for comp in dir.components() {
            prefix.push(comp);
            match self.tree.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(hostile(
                        name,
                        &format!(
                            "parent {} is a symlink; refusing to write through it",
                            prefix.display()
                        ),
                    ))
                }
                Some(_) => {
                    return Err(hostile(
                        name,
                        &format!("parent {} is not a directory", prefix.display()),
                    ))
                }
                None => {
                    let path = self.root.join(&prefix);
                    fs::create_dir(&path).map_err(|e| io_error("create directory", &path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_error("chmod", &path, e))?;
                    self.tree.insert(prefix.clone(), Kind::Dir);
                }
            }
        }
        Ok(())
    }

    /// Owner, mode (setuid/setgid/sticky kept; after chown, which clears them), xattrs, then
    /// mtime (deferred for directories).
    fn metadata<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        kind: Kind,
    ) -> Result<()> {
        let path = self.root.join(rel);
        let header = entry.header();
        let bad_header = |e: io::Error| {
            ImageError::InvalidArchive(format!("{}: entry {}: {e}", self.what, rel.display()))
        };
        let uid = header.uid().map_err(bad_header)?;
        let gid = header.gid().map_err(bad_header)?;
        let mode = header.mode().map_err(bad_header)? & 0o7777;
        let mut mtime = TimeSpec::new(header.mtime().map_err(bad_header)? as i64, 0);
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(ImageError::InvalidArchive(format!(
                "{}: entry {}: uid/gid out of range",
                self.what,
                rel.display()
            )));
        };
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| io_error("chown", &path, e))?;
        if kind != Kind::Symlink {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| io_error("chmod", &path, e))?;
        }
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(bad_header)? {
            for ext in exts {
                let ext = ext.map_err(bad_header)?;
                let Ok(key) = ext.key() else { continue };
                if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((xattr.to_owned(), ext.value_bytes().to_vec()));
                } else if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                }
            }
        }
        for (key, value) in xattrs {
            if key.starts_with("trusted.overlay.") || key.starts_with("user.overlay.") {
                tracing::warn!(layer = self.what, entry = %rel.display(), key, "ignoring overlayfs xattr in layer");
                continue;
            }
            match set_xattr(&path, &key, &value) {
                Ok(()) => {}
                // As Docker does: not every file system takes every namespace (user.* on a
                // symlink, security.* under some LSMs); losing one is not worth failing a load.
                Err(ImageError::Io { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::ENOTSUP | libc::EPERM | libc::EINVAL)
                    ) =>
                {
                    tracing::warn!(layer = self.what, entry = %rel.display(), key, %source, "xattr not restored");
                }
                Err(e) => return Err(e),
            }
        }
        if kind == Kind::Dir {
            self.dir_times.retain(|(k, _)| k != rel);
            self.dir_times.push((rel.to_path_buf(), mtime));
            Ok(())
        } else {
            set_times(&path, mtime)
        }
    }

    fn finish(self) -> Result<()> {
        for (rel, mtime) in &self.dir_times {
            set_times(&self.root.join(rel), *mtime)?;
        }
        Ok(())
    }
}

/// Normalises an archive entry name: drops `.` and empty components; refuses absolute names,
/// `..` anywhere and NUL bytes. The empty path is the archive root.
pub(super) fn clean_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    // umoci names the root directory `/`; that one absolute name cannot point anywhere else.
    if !raw.is_empty() && raw.iter().all(|&b| b == b'/') {
        return Ok(PathBuf::new());
    }
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c if c.contains(&0) => return Err("NUL byte in path"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Whether a symlink at `rel` pointing to the relative `target` climbs above the root, judged
/// lexically from the link's directory. Absolute targets never escape: they are resolved in the
/// container's root.
pub(super) fn symlink_escapes(rel: &Path, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = rel.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    }) as i64;
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// PAX times are decimal seconds with an optional fraction.
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    let nanos = if secs < 0 && nanos > 0 { -nanos } else { nanos };
    Some(TimeSpec::new(secs, nanos))
}

fn set_times(path: &Path, mtime: TimeSpec) -> Result<()> {
    utimensat(
        AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_error("set times", path, e.into()))
}

/// `lsetxattr(2)`: on the path itself, never through a symlink.
pub(super) fn set_xattr(path: &Path, key: &str, value: &[u8]) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        io_error(
            "set xattr",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    let c_key = CString::new(key).map_err(|e| {
        io_error(
            "set xattr",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid slice
    // whose pointer and length are passed together.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io_error("set xattr", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// An entry's name (for messages) and its path made safe with [`clean_path`]; `None` for a
/// pax global header, which names no file. Shared by layer unpacking and archive spooling.
pub(super) fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<(String, PathBuf)>> {
    if entry.header().entry_type().is_pax_global_extensions() {
        return Ok(None);
    }
    let raw = entry.path_bytes();
    let name = String::from_utf8_lossy(&raw).into_owned();
    let rel = clean_path(&raw).map_err(|reason| hostile(&name, reason))?;
    Ok(Some((name, rel)))
}

pub(super) fn hostile(entry: &str, reason: &str) -> ImageError {
    ImageError::HostileEntry {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    }
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn clean_path_rules() {
        assert_eq!(clean_path(b"./a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(clean_path(b"./").unwrap(), PathBuf::new());
        assert!(clean_path(b"/etc/passwd").is_err());
        assert_eq!(clean_path(b"/").unwrap(), PathBuf::new());
        assert!(clean_path(b"a/../b").is_err());
        assert!(clean_path(b"..").is_err());
    }

    #[test]
    fn symlink_escape_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("a", "b", false),
            ("a", "/etc/passwd", false),
            ("a", "..", true),
            ("a/b", "..", false),
            ("a/b", "../..", true),
            ("a/b/c", "../../x/../y", false),
            ("a/b", "x/../../..", true),
            ("usr/lib/x", "../../lib/x", false),
        ];
        for (rel, target, escapes) in cases {
            assert_eq!(
                symlink_escapes(Path::new(rel), target.as_bytes()),
                *escapes,
                "{rel} -> {target}"
            );
        }
    }

    #[test]
    fn pax_time() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn sniff_refuses_xz() {
        assert!(Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0], "l").is_err());
        assert_eq!(
            Compression::sniff(b"\x1f\x8b", "l").unwrap(),
            Compression::Gzip
        );
        assert_eq!(Compression::sniff(b"", "l").unwrap(), Compression::None);
    }
}
