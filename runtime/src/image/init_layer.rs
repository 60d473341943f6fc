//! The init layer of an image: the mount points a container's init needs but the image lacks
//! (`/etc/hosts` and `/etc/resolv.conf` in most images, sometimes `/proc`, `/dev`, `/sys`),
//! made once per image as an extra read-only lower layer on top of its layers.
//!
//! Without it every container made them again in its own upper directory, and a file made in
//! an overlay's lower directory first copies that directory up: on this machine's ext4 that
//! was a copy-up of `/etc` and two new files for each container. Docker makes the same files
//! in an "init layer" per container; one per image is enough, since an image never changes.
//!
//! Each entry is made only where the image's merged view lacks it and its parent is a real
//! directory; anything stranger (a symlinked `/etc`, a file where a directory should be) is
//! left to the init, which handles every case at start.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::staging::Staging;
use super::{ImageError, Result};

/// What the init mounts over, relative to the root: (path, is a directory).
const MOUNT_POINTS: [(&str, bool); 6] = [
    ("proc", true),
    ("dev", true),
    ("sys", true),
    ("etc/hosts", false),
    ("etc/hostname", false),
    ("etc/resolv.conf", false),
];

/// The overlayfs xattr of an opaque directory (set by our unpacker for `.wh..wh..opq`).
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// A path in the merged view of an image's layers.
#[derive(Debug)]
enum Merged {
    Missing,
    /// A directory, with the metadata of its topmost copy (which overlayfs shows).
    Dir(fs::Metadata),
    /// A file, a symlink or anything else that is not a directory.
    Other,
}

/// Looks `rel` up as overlayfs would in `layers` (top layer first): whiteouts hide, a
/// non-directory ends the merge below it, an opaque directory hides the layers below it.
fn merged(layers: &[PathBuf], rel: &Path) -> Merged {
    let mut candidates: Vec<&PathBuf> = layers.iter().collect();
    let mut prefix = PathBuf::new();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        prefix.push(c);
        let mut found: Option<Merged> = None;
        let mut below = Vec::new();
        for layer in &candidates {
            let Ok(meta) = fs::symlink_metadata(layer.join(&prefix)) else {
                continue;
            };
            let ft = meta.file_type();
            let is_whiteout = ft.is_char_device() && meta.rdev() == 0;
            match (&found, ft.is_dir()) {
                (None, _) if is_whiteout => return Merged::Missing,
                (None, true) => {
                    below.push(*layer);
                    let opaque = is_opaque(&layer.join(&prefix));
                    found = Some(Merged::Dir(meta));
                    if opaque {
                        break;
                    }
                }
                (None, false) => {
                    found = Some(Merged::Other);
                    break;
                }
                (Some(_), true) => {
                    below.push(*layer);
                    if is_opaque(&layer.join(&prefix)) {
                        break;
                    }
                }
                (Some(_), false) => break,
            }
        }
        match found {
            None => return Merged::Missing,
            Some(m) if components.peek().is_none() => return m,
            Some(Merged::Dir(_)) => candidates = below,
            Some(_) => return Merged::Other,
        }
    }
    // An empty path: the root, whose topmost copy overlayfs shows.
    match layers.first().and_then(|l| fs::symlink_metadata(l).ok()) {
        Some(meta) => Merged::Dir(meta),
        None => Merged::Missing,
    }
}

fn is_opaque(dir: &Path) -> bool {
    matches!(xattr_get(dir, OPAQUE_XATTR), Some(v) if v == b"y")
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes
    // at most buf.len() bytes into buf.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// Makes `dir` a directory with the mode and owner of `like`, since the merged directory
/// shows the attributes of its topmost copy: this one. Its times are set by [`times_like`]
/// once everything inside is made (making an entry changes them).
fn dir_like(dir: &Path, like: &fs::Metadata) -> std::io::Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(like.mode() & 0o7777))?;
    std::os::unix::fs::lchown(dir, Some(like.uid()), Some(like.gid()))
}

/// Gives `dir` the access and modification times of `like`.
fn times_like(dir: &Path, like: &fs::Metadata) -> std::io::Result<()> {
    let atime = nix::sys::time::TimeSpec::new(like.atime(), like.atime_nsec());
    let mtime = nix::sys::time::TimeSpec::new(like.mtime(), like.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// Builds the init layer of an image whose layers are `layers` (top first) in `staging`;
/// returns its directory there, or `None` when the image has every mount point already.
pub(super) fn build(staging: &Staging, layers: &[PathBuf]) -> Result<Option<PathBuf>> {
    let root = staging.path().join("init");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            op: "make init layer entry",
            path,
            source,
        }
    };
    let Merged::Dir(root_meta) = merged(layers, Path::new("")) else {
        return Err(ImageError::Io {
            op: "read the top layer of",
            path: layers.first().cloned().unwrap_or_default(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    };
    let mut made = false;
    // Directories made, with the attributes to give them: their times go last.
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    for (rel, is_dir) in MOUNT_POINTS {
        let rel = Path::new(rel);
        if !matches!(merged(layers, rel), Merged::Missing) {
            continue;
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        // Every directory on the way, with the attributes the image gives it.
        dir_like(&root, &root_meta).map_err(io(&root))?;
        dirs.push((root.clone(), root_meta.clone()));
        let mut at = PathBuf::new();
        for c in parent.components() {
            at.push(c);
            let Merged::Dir(meta) = merged(layers, &at) else {
                // No /etc, or not a directory: nothing to mount over.
                break;
            };
            dir_like(&root.join(&at), &meta).map_err(io(&root.join(&at)))?;
            dirs.push((root.join(&at), meta));
        }
        if !matches!(merged(layers, parent), Merged::Dir(_)) {
            continue;
        }
        let path = root.join(rel);
        if is_dir {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .map_err(io(&path))?;
        } else {
            fs::write(&path, b"").map_err(io(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io(&path))?;
        }
        made = true;
    }
    // Deepest first, so that setting a parent's times is the last change to it.
    dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
    for (dir, meta) in &dirs {
        times_like(dir, meta).map_err(io(dir))?;
    }
    Ok(made.then_some(root))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    fn opaque(dir: &Path) {
        let p = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(OPAQUE_XATTR).unwrap();
        // SAFETY: NUL-terminated strings and a 1-byte value, all alive across the call.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    #[test]
    fn merged_view_follows_overlayfs() {
        if !nix::unistd::geteuid().is_root() {
            return; // whiteouts and trusted xattrs need root
        }
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("l1"), tmp.path().join("l2"));
        fs::create_dir_all(lower.join("etc/ssl")).unwrap();
        fs::write(lower.join("etc/passwd"), "root").unwrap();
        fs::write(lower.join("etc/hosts"), "").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        whiteout(&upper.join("etc/passwd"));
        let layers = [upper.clone(), lower.clone()];
        let kind = |p: &str| match merged(&layers, Path::new(p)) {
            Merged::Missing => "missing",
            Merged::Dir(_) => "dir",
            Merged::Other => "other",
        };
        assert_eq!(kind("etc"), "dir");
        assert_eq!(kind("etc/hosts"), "other");
        assert_eq!(kind("etc/passwd"), "missing", "whited out");
        assert_eq!(kind("etc/ssl"), "dir");
        assert_eq!(kind("proc"), "missing");
        opaque(&upper.join("etc"));
        assert_eq!(kind("etc/hosts"), "missing", "below an opaque directory");
        assert_eq!(kind("etc/ssl"), "missing", "below an opaque directory");
        // A file above a directory ends the merge: nothing below it shows.
        fs::remove_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc"), "").unwrap();
        assert_eq!(kind("etc"), "other");
        assert_eq!(kind("etc/hosts"), "other");
    }

    #[test]
    fn builds_only_the_missing_mount_points_with_the_images_attributes() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::create_dir_all(layer.join("proc")).unwrap();
        fs::write(layer.join("etc/hostname"), "").unwrap();
        fs::set_permissions(layer.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(layer.join("etc"), Some(7), Some(8)).unwrap();
        let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &layer.join("etc"),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let staging = Staging::new(tmp.path(), "t").unwrap();
        let built = build(&staging, std::slice::from_ref(&layer))
            .unwrap()
            .expect("an init layer");
        let mut entries: Vec<String> = walk(&built);
        entries.sort();
        assert_eq!(
            entries,
            ["dev", "etc", "etc/hosts", "etc/resolv.conf", "sys"],
            "only what the image lacks"
        );
        let etc = fs::metadata(built.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 7, 8));
        let image_etc = fs::metadata(layer.join("etc")).unwrap();
        assert_eq!(
            etc.mtime(),
            image_etc.mtime(),
            "the image's time, not the build's"
        );

        // An image with every mount point needs none; one without /etc gets no /etc files.
        for f in ["hosts", "resolv.conf"] {
            fs::write(layer.join("etc").join(f), "").unwrap();
        }
        for d in ["dev", "sys"] {
            fs::create_dir(layer.join(d)).unwrap();
        }
        let staging = Staging::new(tmp.path(), "t").unwrap();
        assert!(build(&staging, std::slice::from_ref(&layer))
            .unwrap()
            .is_none());
        fs::remove_dir_all(layer.join("etc")).unwrap();
        fs::remove_dir(layer.join("sys")).unwrap();
        let staging = Staging::new(tmp.path(), "t").unwrap();
        let built = build(&staging, &[layer]).unwrap().expect("an init layer");
        assert_eq!(walk(&built), ["sys"]);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in fs::read_dir(root.join(&rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                if e.file_type().unwrap().is_dir() {
                    stack.push(r.clone());
                }
                out.push(r.display().to_string());
            }
        }
        out.sort();
        out
    }
}
