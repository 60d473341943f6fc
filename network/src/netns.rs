//! Named network namespaces: an nsfs bind mount at a path (as `ip netns` keeps them under
//! `/run/netns`), an open fd on it, and running code on a thread that has joined it.
//!
//! The calling thread never changes namespace: creation and [`NetNs::run`] both happen on a
//! fresh OS thread that is thrown away afterwards, so tokio workers and the daemon's own
//! sockets stay where they are. What lives inside a namespace (links, addresses, routes) is
//! [`crate::link`]'s business, not this module's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{self, MntFlags, MsFlags};
use nix::sched::{self, CloneFlags};
use nix::sys::statfs::{self, NSFS_MAGIC};

/// The calling thread's own network namespace, as seen by the thread itself (not by the
/// thread-group leader, which `/proc/self` would name).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Root of the sysctl tree that [`sysctl`] writes under.
const PROC_SYS: &str = "/proc/sys";

/// Errors from creating, opening, entering and removing network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The parent directory of a namespace file could not be created.
    #[error("create directory {path} for a network namespace")]
    CreateDir {
        /// Directory that was being created.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The empty file a namespace is bind-mounted onto could not be created.
    #[error("create mount point {path} for a network namespace")]
    CreateMountPoint {
        /// File that was being created.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The thread that creates or enters a namespace could not be started.
    #[error("spawn a thread for network namespace {path}")]
    SpawnThread {
        /// Namespace the thread was for.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("unshare a new network namespace for {path}")]
    Unshare {
        /// Namespace that was being created.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Errno,
    },
    /// The new namespace could not be bind-mounted onto its file.
    #[error("bind-mount a new network namespace on {path}")]
    BindMount {
        /// Mount point.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Errno,
    },
    /// A namespace file could not be opened.
    #[error("open network namespace {path}")]
    Open {
        /// Namespace file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// `fstatfs` on an opened namespace file failed.
    #[error("statfs network namespace {path}")]
    Statfs {
        /// Namespace file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Errno,
    },
    /// The path exists but no namespace is mounted on it.
    #[error("{path} is not a namespace file (no nsfs mounted on it)")]
    NotNamespace {
        /// The path that was opened.
        path: PathBuf,
    },
    /// `setns` into the namespace failed.
    #[error("enter network namespace {path}")]
    Setns {
        /// Namespace that was being entered.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Errno,
    },
    /// Unmounting a namespace file failed.
    #[error("unmount network namespace {path}")]
    Unmount {
        /// Namespace file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Errno,
    },
    /// Unlinking a namespace file after unmounting it failed.
    #[error("remove network namespace file {path}")]
    Remove {
        /// Namespace file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A sysctl key that is empty, absolute or climbs out of `/proc/sys`.
    #[error("invalid sysctl key {key:?}: want a relative path such as net/ipv4/ip_forward")]
    SysctlKey {
        /// The key as given.
        key: String,
    },
    /// Writing a sysctl failed.
    #[error("write sysctl {key}={value} (namespace {})", ns_label(.ns))]
    SysctlWrite {
        /// Key under `/proc/sys`.
        key: String,
        /// Value that was being written.
        value: String,
        /// Namespace the write happened in; `None` for the caller's own.
        ns: Option<PathBuf>,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn ns_label(ns: &Option<PathBuf>) -> String {
    match ns {
        Some(path) => path.display().to_string(),
        None => "own".to_string(),
    }
}

/// Result alias for this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// A network namespace that stays alive as long as it is mounted at [`NetNs::path`] (or this
/// value's fd is open).
#[derive(Debug)]
pub struct NetNs {
    /// Where the namespace is bind-mounted; also its name in errors.
    path: PathBuf,
    /// Open nsfs file: what `setns` and `IFLA_NET_NS_FD` take.
    file: File,
}

impl NetNs {
    /// Creates a namespace bind-mounted at `path`, creating parent directories. If `path`
    /// already holds a namespace, that one is opened instead, so a restarted daemon finds the
    /// namespaces (and the links inside them) it made before.
    pub fn create(path: &Path) -> Result<NetNs> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| NetnsError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        match NetNs::open(path) {
            Ok(ns) => return Ok(ns),
            // A missing path, or an empty file left by a create that died before mounting:
            // both become a fresh mount below.
            Err(NetnsError::NotNamespace { .. }) => {}
            Err(NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| NetnsError::CreateMountPoint {
                path: path.to_path_buf(),
                source,
            })?;
        if let Err(err) = mount_new_netns(path) {
            // Leave no empty file behind: it would look like a namespace that vanished.
            let _ = fs::remove_file(path);
            return Err(err);
        }
        NetNs::open(path)
    }

    /// Opens the namespace mounted at `path`; an ordinary file there is an error.
    pub fn open(path: &Path) -> Result<NetNs> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let stat = statfs::fstatfs(&file).map_err(|source| NetnsError::Statfs {
            path: path.to_path_buf(),
            source,
        })?;
        if stat.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotNamespace {
                path: path.to_path_buf(),
            });
        }
        Ok(NetNs {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Where the namespace is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file, for `setns` or moving a link in (`IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a fresh OS thread that has joined this namespace and returns its result.
    /// Sockets created in `f` stay in the namespace after it returns (netlink sockets, the DNS
    /// listener), and `/proc/sys/net` opened there is this namespace's. A panic in `f` is
    /// re-raised on the calling thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("shoal-netns".to_string())
                .spawn_scoped(scope, || {
                    // The thread ends right after `f`, so it never has to switch back.
                    sched::setns(self.fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Setns {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::SpawnThread {
                    path: self.path.clone(),
                    source,
                })?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Unmounts the namespace at `path` (lazily, so open fds and sockets keep it alive until
    /// they close) and unlinks the file. A missing path is Ok, so removal can be retried.
    pub fn remove(path: &Path) -> Result<()> {
        // Bounded: each pass peels one stacked mount; EINVAL means nothing is mounted anymore.
        for _ in 0..8 {
            match mount::umount2(path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) => break,
                Err(Errno::ENOENT) => return Ok(()),
                Err(source) => {
                    return Err(NetnsError::Unmount {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetnsError::Remove {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Unshares a new network namespace on a throwaway thread and bind-mounts it onto `path`
/// (which must exist), so the caller's thread keeps its namespace.
fn mount_new_netns(path: &Path) -> Result<()> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("shoal-netns-new".to_string())
            .spawn_scoped(scope, || {
                sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare {
                    path: path.to_path_buf(),
                    source,
                })?;
                mount::mount(
                    Some(THREAD_NETNS),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| NetnsError::BindMount {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .map_err(|source| NetnsError::SpawnThread {
                path: path.to_path_buf(),
                source,
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes `value` to the sysctl `key` under `/proc/sys` (e.g. `"net/ipv4/ip_forward"`),
/// inside `ns` when given, else in the caller's namespace.
pub fn sysctl(ns: Option<&NetNs>, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let write = || -> Result<()> {
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut file| file.write_all(value.as_bytes()))
            .map_err(|source| NetnsError::SysctlWrite {
                key: key.to_string(),
                value: value.to_string(),
                ns: ns.map(|ns| ns.path().to_path_buf()),
                source,
            })
    };
    match ns {
        Some(ns) => ns.run(write)?,
        None => write(),
    }
}

/// Maps a sysctl key to its file, refusing keys that would leave `/proc/sys`.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let relative = Path::new(key);
    let plain = !key.is_empty()
        && relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if !plain {
        return Err(NetnsError::SysctlKey {
            key: key.to_string(),
        });
    }
    Ok(Path::new(PROC_SYS).join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_stay_under_proc_sys() {
        let good = [
            ("net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward"),
            (
                "net/ipv4/conf/eth0.100/forwarding",
                "/proc/sys/net/ipv4/conf/eth0.100/forwarding",
            ),
        ];
        for (key, want) in good {
            assert_eq!(sysctl_path(key).unwrap(), Path::new(want), "{key}");
        }
        let bad = ["", "/etc/passwd", "net/../../etc/passwd", "./net/ipv4"];
        for key in bad {
            assert!(
                matches!(sysctl_path(key), Err(NetnsError::SysctlKey { .. })),
                "{key:?} must be refused"
            );
        }
    }
}
