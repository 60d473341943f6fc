//! The mount table of a new container: overlay root, then the pseudo-filesystems Docker
//! mounts (same options as moby's `oci/defaults.go`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::{err, Result};
use crate::spec::RunSpec;

/// Makes every mount in our (new) namespace private, so nothing we mount propagates back to
/// the host — the host's mounts are often shared (systemd makes / shared).
pub fn make_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make private", "/"))
}

/// Mounts the overlay of the image layers and the container's upper directory on
/// `spec.rootfs`; `volatile` for a disposable container (see [`RunSpec::volatile`]).
pub fn mount_overlay(spec: &RunSpec) -> Result<()> {
    let lower: Vec<String> = spec
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper_dir.display(),
        spec.work_dir.display()
    );
    let mount_with = |data: &str| {
        mount(
            Some("overlay"),
            &spec.rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data),
        )
    };
    if spec.volatile {
        // Every volatile mount leaves this marker, and overlayfs refuses the next mount while
        // it is there, since it cannot tell a clean unmount from a crash. A disposable
        // container started again is given its upper layer as it is.
        match fs::remove_dir_all(spec.work_dir.join(VOLATILE_MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(super::RootfsError {
                    op: "remove the volatile marker in",
                    path: spec.work_dir.clone(),
                    source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })
            }
        }
        match mount_with(&format!("{data},volatile")) {
            // Kernels before 5.10 do not know the option: mount as usual.
            Err(nix::Error::EINVAL) => {}
            r => return r.map_err(err("mount overlay on", &spec.rootfs)),
        }
    }
    mount_with(&data).map_err(err("mount overlay on", &spec.rootfs))
}

/// Where overlayfs records a volatile mount, relative to the work directory. Only this one
/// incompat marker is ours to clear: another would come from a feature shoal does not use.
const VOLATILE_MARKER: &str = "work/incompat/volatile";

struct Pseudo {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

/// Docker's default mounts, in order (a later one may sit inside an earlier one).
fn pseudo_mounts() -> [Pseudo; 6] {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    [
        Pseudo {
            target: "proc",
            fstype: "proc",
            flags: nosuid_noexec_nodev,
            data: "",
        },
        Pseudo {
            target: "dev",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: "mode=755,size=65536k",
        },
        Pseudo {
            target: "dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        },
        Pseudo {
            target: "dev/shm",
            fstype: "tmpfs",
            flags: nosuid_noexec_nodev,
            data: "mode=1777,size=65536k",
        },
        Pseudo {
            target: "dev/mqueue",
            fstype: "mqueue",
            flags: nosuid_noexec_nodev,
            data: "",
        },
        Pseudo {
            target: "sys",
            fstype: "sysfs",
            flags: nosuid_noexec_nodev | MsFlags::MS_RDONLY,
            data: "",
        },
    ]
}

/// Mounts /proc, /dev (+pts, shm, mqueue) and a read-only /sys under `rootfs`. The image's
/// init layer normally has the mount points it lacks; any still missing (an image whose
/// `/proc` is a symlink, say) are made in the container's upper layer.
pub fn mount_pseudo(rootfs: &Path) -> Result<()> {
    for m in pseudo_mounts() {
        let target = inside(rootfs, m.target)?;
        if target == rootfs {
            // An image whose /dev or /proc is a link to `/` would have us mount over the
            // whole root.
            return Err(super::RootfsError {
                op: "refusing to mount over the container root: image link at",
                path: PathBuf::from("/").join(m.target),
                source: nix::Error::ELOOP,
            });
        }
        ensure_dir(&target)?;
        let data = (!m.data.is_empty()).then_some(m.data);
        mount(Some(m.fstype), &target, Some(m.fstype), m.flags, data)
            .map_err(err("mount", &target))?;
    }
    Ok(())
}

/// Bind-mounts a file the runtime generated (hosts, hostname, resolv.conf) over `target`
/// inside the rootfs, when the image has an /etc to put it in.
pub fn bind_file(source: &Path, rootfs: &Path, target: &str) -> Result<()> {
    let dest = inside(rootfs, target)?;
    let Some(parent) = dest.parent() else {
        return Ok(());
    };
    if !parent.is_dir() {
        return Ok(());
    }
    if fs::symlink_metadata(&dest).is_err() {
        fs::write(&dest, b"").map_err(|e| super::RootfsError {
            op: "create mount point",
            path: dest.clone(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    mount(
        Some(source),
        &dest,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err("bind mount", &dest))
}

/// Remounts the root read-only (`--read-only`), after everything else is mounted.
pub fn remount_root_readonly() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(err("remount read-only", "/"))
}

/// `rel` resolved inside `rootfs` as the container will see it: image symlinks never lead
/// the host-side setup outside the root (see [`super::path`]).
pub fn inside(rootfs: &Path, rel: &str) -> Result<PathBuf> {
    super::path::secure_join(rootfs, Path::new(rel)).map_err(|e| super::RootfsError {
        op: "resolve in container root",
        path: PathBuf::from("/").join(rel),
        source: match e {
            super::path::SecureJoinError::Loop(_) => nix::Error::ELOOP,
            super::path::SecureJoinError::ReadLink { .. } => nix::Error::EIO,
        },
    })
}

pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| super::RootfsError {
            op: "create directory",
            path: path.to_path_buf(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
}
