//! Resolving a path inside a container's root filesystem *before* pivot_root, the way the
//! container itself will see it (after runc's use of `filepath-securejoin`).
//!
//! Mount targets such as `/dev` or `/etc/hosts` come from the image, which may make them
//! symlinks — to `/`, to `../../host/path`, to `/etc/shadow`. Resolved naively in the
//! supervisor's (host) view, a mount or a created file would land outside the container's
//! root. Here every symlink is followed with the container's root as `/`, and `..` never
//! climbs above it, so the result always lies inside `root`.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

/// Why a path could not be resolved inside the root.
#[derive(Debug, thiserror::Error)]
pub enum SecureJoinError {
    /// More than [`MAX_SYMLINKS`] symlinks: a loop.
    #[error("too many levels of symbolic links resolving {0} in the container root")]
    Loop(PathBuf),
    /// A symlink could not be read.
    #[error("read link {path}")]
    ReadLink {
        /// The link.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `root` joined with `unsafe_path` (absolute or relative, interpreted inside `root`), with
/// every existing symlink resolved inside `root`. Components that do not exist are kept as
/// they are (the caller creates them as directories or files, never as links).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf, SecureJoinError> {
    // The components still to walk, in order; symlink targets are spliced in front.
    let mut pending: Vec<OsString> = components(unsafe_path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(SecureJoinError::Loop(unsafe_path.to_path_buf()));
                }
                let target =
                    std::fs::read_link(&candidate).map_err(|source| SecureJoinError::ReadLink {
                        path: candidate.clone(),
                        source,
                    })?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut parts = components(&target);
                parts.reverse();
                pending.extend(parts);
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// The normal and `..` components of a path (root and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("run/real")).expect("run");
        symlink("/", root.join("dev")).expect("link");
        symlink("../../../../../etc/shadow", root.join("etc/hosts")).expect("link");
        symlink("/run/real", root.join("etc/resolv")).expect("link");
        symlink("loop2", root.join("loop1")).expect("link");
        symlink("loop1", root.join("loop2")).expect("link");
        let cases = [
            ("/dev", root.to_path_buf()),
            ("/dev/pts", root.join("pts")),
            ("/etc/hosts", root.join("etc/shadow")),
            ("/etc/resolv/conf", root.join("run/real/conf")),
            ("../../x", root.join("x")),
            ("proc", root.join("proc")),
        ];
        for (input, want) in cases {
            assert_eq!(
                secure_join(root, Path::new(input)).expect(input),
                want,
                "{input}"
            );
        }
        assert!(matches!(
            secure_join(root, Path::new("/loop1")),
            Err(SecureJoinError::Loop(_))
        ));
    }
}
