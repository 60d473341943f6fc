//! The standard device nodes of a container's /dev (Docker's default set, created with
//! mknod on the fresh tmpfs — never bind-mounted from the host's /dev).

use std::os::unix::fs::symlink;
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::{err, Result};

/// (name, major, minor): Docker's `DefaultSimpleDevices`. The devices cgroup (v1) allows
/// exactly these.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Docker's `/dev` symlinks.
const LINKS: [(&str, &str); 6] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
];

/// Creates the nodes and links in `dev` (the container's /dev, already a tmpfs).
pub fn create(dev: &Path) -> Result<()> {
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(err("mknod", &path))?;
        // mknod's mode is filtered by the umask; the nodes must be world-usable.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(err("chmod", &path))?;
    }
    for (target, name) in LINKS {
        let path = dev.join(name);
        symlink(target, &path).map_err(|e| super::RootfsError {
            op: "symlink",
            path,
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    Ok(())
}
