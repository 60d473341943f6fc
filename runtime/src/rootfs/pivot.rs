//! Switching the root to the container's filesystem, and hiding the host paths Docker hides.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use super::{err, Result};

/// Docker's masked paths (moby `oci/defaults.go`): files get /dev/null bound over them,
/// directories an empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Makes `rootfs` the root: `pivot_root(".", ".")` then a lazy unmount of the old root
/// stacked underneath (runc's trick: no temporary directory inside the image is needed, so a
/// read-only or hostile image cannot interfere).
pub fn pivot(rootfs: &Path) -> Result<()> {
    chdir(rootfs).map_err(err("chdir", rootfs))?;
    pivot_root(".", ".").map_err(err("pivot_root", rootfs))?;
    // The old root must not propagate our lazy unmount anywhere.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("make old root slave", "."))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("unmount old root", "."))?;
    chdir("/").map_err(err("chdir", "/"))
}

/// Masks and write-protects Docker's paths; run after [`pivot`], paths are absolute.
pub fn protect_paths() -> Result<()> {
    for p in MASKED_PATHS {
        let path = Path::new(p);
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(err("mask", path))?;
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err("mask", path))?;
        }
    }
    for p in READONLY_PATHS {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("bind", path))?;
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(err("remount read-only", path))?;
    }
    Ok(())
}
