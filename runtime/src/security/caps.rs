//! A container's Linux capabilities: Docker's default set, `--cap-add`/`--cap-drop`
//! resolution, and applying the result to the container's process (bounding set first, then
//! effective/permitted/inheritable/ambient after the uid change).
//!
//! What is matched: moby's `oci/caps` (`DefaultCapabilities`, `TweakCapabilities`,
//! `NormalizeLegacyCapabilities`) and `oci.SetCapabilities`, including its fix for
//! CVE-2022-24769: the inheritable set is left empty, so a program with inheritable file
//! capabilities cannot gain them at execve. A non-root user gets no effective or permitted
//! capabilities (as execve would leave them), only the bounding set.
//!
//! Not here: no_new_privs and the seccomp filter (`super::seccomp`), and the uid change
//! itself (the container init).

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Docker's word for every capability in `--cap-add`/`--cap-drop`.
const ALL: &str = "ALL";

/// Highest capability number the kernel ABI has room for (two 32-bit words).
const CAP_INDEX_MAX: u8 = 63;

/// Errors of the capability module.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// Names that are not capabilities this kernel supports.
    #[error("unknown capabilities {names:?}")]
    Unknown {
        /// The offending names, as given.
        names: Vec<String>,
    },
    /// Dropping a capability from the bounding set failed (needs CAP_SETPCAP).
    #[error("drop {cap} from the bounding set")]
    DropBounding {
        /// Capability name, or its number when the caps crate does not know it.
        cap: String,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// capset of one of the process sets failed.
    #[error("set the {set} capability set to {caps:?}")]
    Set {
        /// `effective`, `permitted`, `inheritable` or `ambient`.
        set: &'static str,
        /// The capabilities it was set to.
        caps: Vec<String>,
        /// Underlying error.
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, CapsError>;

/// Docker's default set, as canonical `CAP_X` names, sorted: CHOWN DAC_OVERRIDE FSETID FOWNER
/// MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE.
pub fn default_capabilities() -> Vec<String> {
    sorted_names(DEFAULT.iter().copied())
}

/// Docker's `--cap-add`/`--cap-drop` over the default set. Names are case-insensitive, with or
/// without `CAP_`; `ALL` means every capability the kernel supports. As moby's
/// `TweakCapabilities`: `--cap-add ALL` gives all but the dropped ones; `--cap-drop ALL`
/// gives exactly the added ones; otherwise defaults minus drops plus adds (an add wins over a
/// drop of the same name). Unknown names are an error naming all of them. Returns canonical
/// `CAP_X` names, sorted.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let supported = supported();
    let mut unknown = Vec::new();
    let (add_all, add) = normalize(add, &supported, &mut unknown);
    let (drop_all, drop) = normalize(drop, &supported, &mut unknown);
    if !unknown.is_empty() {
        return Err(CapsError::Unknown { names: unknown });
    }
    let set: CapsHashSet = if add_all {
        supported.difference(&drop).copied().collect()
    } else if drop_all {
        add
    } else {
        DEFAULT
            .iter()
            .copied()
            .filter(|c| !drop.contains(c))
            .chain(add)
            .collect()
    };
    Ok(sorted_names(set.into_iter()))
}

/// In the container init, before the uid change: drops every capability not in `keep` from
/// the bounding set, so no later execve (setuid binary, file capabilities) can regain it.
/// Needs CAP_SETPCAP in the effective set, so it must run while still fully privileged.
/// Capabilities newer than the caps crate knows are dropped too.
pub fn drop_bounding(keep: &[String]) -> Result<()> {
    let keep = parse(keep)?;
    for cap in caps::all() {
        if keep.contains(&cap) || !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            continue;
        }
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| CapsError::DropBounding {
            cap: cap.to_string(),
            source: Box::new(e),
        })?;
    }
    let known_max = caps::all().iter().map(|c| c.index()).max().unwrap_or(0);
    for index in known_max + 1..=CAP_INDEX_MAX {
        // SAFETY: PR_CAPBSET_READ takes a capability number and touches no memory.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(index)) };
        if present != 1 {
            // -1 (EINVAL) past the kernel's last capability: nothing more to drop.
            break;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(index)) } != 0 {
            return Err(CapsError::DropBounding {
                cap: format!("capability {index}"),
                source: Box::new(std::io::Error::last_os_error()),
            });
        }
    }
    Ok(())
}

/// After setgid/setuid: for uid 0 sets effective and permitted to `keep` and clears the
/// inheritable set; for any other uid clears all three (Docker gives a non-root user no
/// effective capabilities). The ambient set is cleared in both cases.
pub fn set_process(keep: &[String], uid: u32) -> Result<()> {
    let keep = parse(keep)?;
    let set_err = |set: &'static str, caps: &CapsHashSet| {
        let caps = sorted_names(caps.iter().copied());
        move |source| CapsError::Set { set, caps, source }
    };
    let none = CapsHashSet::new();
    caps::clear(None, CapSet::Ambient).map_err(set_err("ambient", &none))?;
    // Order matters: capset refuses an effective set larger than the permitted one, so the
    // effective set shrinks before the permitted one does.
    let keep = if uid == 0 { keep } else { none.clone() };
    caps::set(None, CapSet::Effective, &keep).map_err(set_err("effective", &keep))?;
    caps::set(None, CapSet::Inheritable, &none).map_err(set_err("inheritable", &none))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(set_err("permitted", &keep))?;
    Ok(())
}

/// Capabilities the running kernel supports (all the caps crate knows when /proc cannot say).
fn supported() -> CapsHashSet {
    caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all())
}

/// Upper-cases, adds `CAP_`, and sorts names into `ALL` (first value) and capabilities;
/// unknown ones go to `unknown` as given.
fn normalize(
    names: &[String],
    supported: &CapsHashSet,
    unknown: &mut Vec<String>,
) -> (bool, CapsHashSet) {
    let mut all = false;
    let mut set = CapsHashSet::new();
    for name in names {
        if name.eq_ignore_ascii_case(ALL) {
            all = true;
            continue;
        }
        match Capability::from_str(&caps::to_canonical(name)) {
            Ok(cap) if supported.contains(&cap) => {
                set.insert(cap);
            }
            _ => unknown.push(name.clone()),
        }
    }
    (all, set)
}

/// Canonical names to capabilities; any unknown name is an error.
fn parse(names: &[String]) -> Result<CapsHashSet> {
    let mut set = CapsHashSet::new();
    let mut unknown = Vec::new();
    for name in names {
        match Capability::from_str(&caps::to_canonical(name)) {
            Ok(cap) => {
                set.insert(cap);
            }
            Err(_) => unknown.push(name.clone()),
        }
    }
    if unknown.is_empty() {
        Ok(set)
    } else {
        Err(CapsError::Unknown { names: unknown })
    }
}

fn sorted_names(caps: impl Iterator<Item = Capability>) -> Vec<String> {
    let mut names: Vec<String> = caps.map(|c| c.to_string()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
pub(crate) mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::*;

    /// Runs `f` in a forked child (so capability and seccomp changes stay there) and returns
    /// its verdict: `Ok` when it returned `Ok`, else its message and how it ended. The child
    /// reports through a pipe and leaves with `_exit`, never returning into the test harness.
    pub(crate) fn in_forked_child(
        f: impl FnOnce() -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child only runs `f` (which allocates; glibc's fork resets the malloc
        // locks in the child) and then `_exit`s without returning into the harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(read_end);
                let verdict = match catch_unwind(AssertUnwindSafe(f)) {
                    Ok(Ok(())) => None,
                    Ok(Err(msg)) => Some(msg),
                    Err(_) => Some("panicked".to_string()),
                };
                let code = match &verdict {
                    None => 0,
                    Some(msg) => {
                        // SAFETY: writes our own buffer to our own pipe end.
                        unsafe {
                            libc::write(write_end.as_raw_fd(), msg.as_ptr().cast(), msg.len())
                        };
                        1
                    }
                };
                // SAFETY: ends the forked child without running the harness's exit path.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(write_end);
                let mut msg = String::new();
                let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
                match waitpid(child, None).expect("waitpid") {
                    WaitStatus::Exited(_, 0) => Ok(()),
                    status => Err(format!("{msg} (child {status:?})")),
                }
            }
        }
    }

    /// A `CapXxx:` mask of /proc/self/status.
    pub(crate) fn status_mask(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read status");
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{field} not in /proc/self/status"));
        u64::from_str_radix(line.trim(), 16).expect("hex mask")
    }

    fn mask(names: &[String]) -> u64 {
        parse(names).unwrap().iter().map(|c| c.bitmask()).sum()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root");
        eprintln!("SKIPPED: needs root");
        false
    }

    #[test]
    fn default_set_is_dockers() {
        let d = default_capabilities();
        assert_eq!(d.len(), 14);
        assert!(d.windows(2).all(|w| w[0] < w[1]), "sorted");
        for c in ["CAP_CHOWN", "CAP_SETPCAP", "CAP_AUDIT_WRITE", "CAP_NET_RAW"] {
            assert!(d.contains(&c.to_string()), "{c}");
        }
        assert!(!d.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(resolve(&[], &[]).unwrap(), d);
    }

    #[test]
    fn resolve_table() {
        let all_count = supported().len();
        type Check = Box<dyn Fn(&[String]) -> bool>;
        let good: Vec<(Vec<String>, Vec<String>, Check)> = vec![
            (
                names(&["net_admin"]),
                vec![],
                Box::new(|r| r.len() == 15 && r.contains(&"CAP_NET_ADMIN".to_string())),
            ),
            (
                names(&["CAP_SYS_PTRACE", "Sys_Time"]),
                names(&["chown", "CAP_KILL"]),
                Box::new(|r| {
                    r.len() == 14
                        && r.contains(&"CAP_SYS_TIME".to_string())
                        && !r.contains(&"CAP_CHOWN".to_string())
                        && !r.contains(&"CAP_KILL".to_string())
                }),
            ),
            (
                vec![],
                names(&["all"]),
                Box::new(|r: &[String]| r.is_empty()),
            ),
            (
                names(&["NET_BIND_SERVICE"]),
                names(&["ALL"]),
                Box::new(|r| r == ["CAP_NET_BIND_SERVICE"]),
            ),
            (
                names(&["ALL"]),
                names(&["sys_admin", "mknod"]),
                Box::new(move |r| {
                    r.len() == all_count - 2 && !r.contains(&"CAP_SYS_ADMIN".to_string())
                }),
            ),
            (
                names(&["ALL"]),
                names(&["ALL"]),
                Box::new(move |r| r.len() == all_count),
            ),
            // An add wins over a drop of the same capability, as in moby.
            (
                names(&["kill"]),
                names(&["kill"]),
                Box::new(|r| r.contains(&"CAP_KILL".to_string()) && r.len() == 14),
            ),
        ];
        for (add, drop, check) in good {
            let r = resolve(&add, &drop).unwrap();
            assert!(check(&r), "add {add:?} drop {drop:?} gave {r:?}");
            assert!(r.windows(2).all(|w| w[0] < w[1]), "not sorted: {r:?}");
        }

        let bad = [
            (names(&["NOT_A_CAP"]), vec![], vec!["NOT_A_CAP"]),
            (vec![], names(&["cap_all"]), vec!["cap_all"]),
            (
                names(&["chown", "bogus"]),
                names(&["CAP_"]),
                vec!["bogus", "CAP_"],
            ),
            (names(&[""]), vec![], vec![""]),
        ];
        for (add, drop, want) in bad {
            match resolve(&add, &drop) {
                Err(CapsError::Unknown { names }) => assert_eq!(names, want),
                other => panic!("add {add:?} drop {drop:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_names_are_refused_before_anything_changes() {
        assert!(matches!(
            drop_bounding(&names(&["CAP_NOPE"])),
            Err(CapsError::Unknown { .. })
        ));
        assert!(matches!(
            set_process(&names(&["CAP_NOPE"]), 0),
            Err(CapsError::Unknown { .. })
        ));
    }

    #[test]
    fn root_keeps_exactly_the_set() {
        if !is_root() {
            return;
        }
        let keep = default_capabilities();
        let want = mask(&keep);
        in_forked_child(|| {
            drop_bounding(&keep).map_err(|e| format!("drop_bounding: {e:?}"))?;
            set_process(&keep, 0).map_err(|e| format!("set_process: {e:?}"))?;
            let got = [
                ("CapBnd", status_mask("CapBnd"), want),
                ("CapEff", status_mask("CapEff"), want),
                ("CapPrm", status_mask("CapPrm"), want),
                ("CapInh", status_mask("CapInh"), 0),
                ("CapAmb", status_mask("CapAmb"), 0),
            ];
            for (field, got, want) in got {
                if got != want {
                    return Err(format!("{field} {got:#x}, want {want:#x}"));
                }
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn non_root_user_gets_only_the_bounding_set() {
        if !is_root() {
            return;
        }
        let keep = resolve(&names(&["NET_ADMIN"]), &[]).unwrap();
        let want = mask(&keep);
        in_forked_child(|| {
            drop_bounding(&keep).map_err(|e| format!("drop_bounding: {e:?}"))?;
            let id = nix::unistd::Gid::from_raw(1000);
            nix::unistd::setresgid(id, id, id).map_err(|e| format!("setgid: {e}"))?;
            let id = nix::unistd::Uid::from_raw(1000);
            nix::unistd::setresuid(id, id, id).map_err(|e| format!("setuid: {e}"))?;
            set_process(&keep, 1000).map_err(|e| format!("set_process: {e:?}"))?;
            for (field, want) in [
                ("CapBnd", want),
                ("CapEff", 0),
                ("CapPrm", 0),
                ("CapInh", 0),
                ("CapAmb", 0),
            ] {
                let got = status_mask(field);
                if got != want {
                    return Err(format!("{field} {got:#x}, want {want:#x}"));
                }
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn dropping_everything_leaves_an_empty_bounding_set() {
        if !is_root() {
            return;
        }
        in_forked_child(|| {
            drop_bounding(&[]).map_err(|e| format!("drop_bounding: {e:?}"))?;
            set_process(&[], 0).map_err(|e| format!("set_process: {e:?}"))?;
            for field in ["CapBnd", "CapEff", "CapPrm"] {
                let got = status_mask(field);
                if got != 0 {
                    return Err(format!("{field} {got:#x}, want 0"));
                }
            }
            Ok(())
        })
        .unwrap();
    }
}
