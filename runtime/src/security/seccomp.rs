//! The default seccomp filter of a container, compiled with seccompiler (pure Rust, no
//! libseccomp).
//!
//! Policy: allow by default, and refuse with EPERM the system calls that let a process leave
//! or reconfigure its confinement or the host (mounts and the new mount API, namespaces,
//! kernel modules and kexec, keyrings, ptrace and cross-process memory, BPF and perf, clock
//! and swap control, io_uring, …). That is the effect of Docker's default profile for a
//! container without CAP_SYS_ADMIN, expressed as a short denylist rather than Docker's long
//! allowlist, so unknown future syscalls are allowed, as with Docker's default action on new
//! kernels. Differences from Docker: `ptrace`, `process_vm_readv/writev` and `kcmp` are
//! refused (Docker allows them on 4.8+ kernels), and `personality` is limited to Docker's
//! values. `clone` is refused when it asks for any new namespace (an argument mask, as
//! Docker does); `clone3` passes its flags in memory a filter cannot read, so it fails with
//! ENOSYS, which makes libc fall back to `clone`.
//!
//! Each seccompiler filter has one match action, so the program is several filters: EPERM
//! rules, the ENOSYS for clone3 and, on x86_64, an ENOSYS for every x32-ABI call (those
//! carry the x86_64 audit arch with bit 30 set in the number, so a per-number denylist would
//! not see them). Calls from another ABI (i386 `int 0x80` on x86_64, arm32 on aarch64) kill the
//! process: seccompiler's arch check, and the safe answer for a denylist written for one ABI.
//!
//! The program is compiled once in the supervisor before fork, so the container init only
//! installs it ([`apply`]), as its last step before execve.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The architecture the filters are compiled for (the one we run on).
#[cfg(target_arch = "x86_64")]
const ARCH: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<TargetArch> = Some(TargetArch::aarch64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: Option<TargetArch> = None;

/// `open_tree_attr` (Linux 6.15; not yet in libc): a detached mount tree with new attributes.
/// New syscalls share one number on every architecture.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// System calls refused with EPERM whatever their arguments.
const DENIED: &[i64] = &[
    // Mounts, old and new API.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_mount_setattr,
    // Namespaces.
    libc::SYS_unshare,
    libc::SYS_setns,
    // Kernel code and reboot.
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    // Kernel keyrings are not namespaced.
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    // Other processes' memory.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    // Kernel tracing and programs.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_lookup_dcookie,
    libc::SYS_userfaultfd,
    // io_uring bypasses syscall filtering for the operations it performs (Docker 25+).
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // File handles bypass the mount namespace (the "shocker" escape).
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    // Host-wide state: swap, accounting, clocks, kernel log, quotas.
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_nfsservctl,
    // x86 port I/O and obsolete calls.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
];

/// Namespace flags `clone` may not carry (Docker's mask 0x7E020000).
const CLONE_NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (query). Others (e.g. ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC) weaken the
/// process's own hardening.
const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Errors of the seccomp module.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Filters exist for x86_64 and aarch64 only.
    #[error("no seccomp filter for architecture {arch}")]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// Building or compiling one filter failed.
    #[error("compile the {filter} seccomp filter")]
    Compile {
        /// Which filter.
        filter: &'static str,
        /// seccompiler error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused to install a filter.
    #[error("install the {filter} seccomp filter")]
    Install {
        /// Which filter.
        filter: &'static str,
        /// seccompiler error (carries errno).
        #[source]
        source: seccompiler::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, SeccompError>;

/// The compiled default filter: one BPF program per action, installed in order.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    /// (name for errors, program).
    filters: Vec<(&'static str, BpfProgram)>,
}

impl SeccompProgram {
    /// Number of BPF programs (the kernel's `Seccomp_filters` count after [`apply`]).
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Never true for [`default_program`].
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// Compiles the default filter for this architecture.
pub fn default_program() -> Result<SeccompProgram> {
    let arch = ARCH.ok_or(SeccompError::UnsupportedArch {
        arch: std::env::consts::ARCH,
    })?;
    let mut filters = vec![
        ("denylist", compile("denylist", denylist(arch))?),
        ("clone3", compile("clone3", clone3(arch))?),
    ];
    if arch == TargetArch::x86_64 {
        filters.push(("x32", x32_abi()));
    }
    Ok(SeccompProgram { filters })
}

/// Installs `p` in the calling thread. Sets no_new_privs (seccompiler does, and the caller
/// should have already). Meant as the last step before execve: from here on the thread
/// cannot mount, unshare, and so on.
pub fn apply(p: &SeccompProgram) -> Result<()> {
    for (filter, program) in &p.filters {
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { filter, source })?;
    }
    Ok(())
}

fn compile(
    filter: &'static str,
    built: std::result::Result<SeccompFilter, seccompiler::BackendError>,
) -> Result<BpfProgram> {
    built
        .and_then(BpfProgram::try_from)
        .map_err(|source| SeccompError::Compile { filter, source })
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// EPERM for [`DENIED`], namespace-creating `clone`, and unusual `personality`.
fn denylist(arch: TargetArch) -> std::result::Result<SeccompFilter, seccompiler::BackendError> {
    let mut rules: Rules = DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    // Rules of one syscall are alternatives: any namespace bit set in flags (argument 0 on
    // x86_64 and aarch64) refuses the call.
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = *flag as u64;
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                // Every namespace flag is in the low 32 bits.
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // Conditions of one rule all hold: a persona other than every allowed one is refused.
    let persona_rule = SeccompRule::new(
        PERSONALITY_ALLOWED
            .iter()
            .map(|v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v))
            .collect::<std::result::Result<Vec<_>, _>>()?,
    )?;
    rules.insert(libc::SYS_personality, vec![persona_rule]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
}

/// ENOSYS for clone3, so that libc retries with clone, whose flags the denylist can see.
fn clone3(arch: TargetArch) -> std::result::Result<SeccompFilter, seccompiler::BackendError> {
    SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
}

/// ENOSYS for any x32-ABI call (number with bit 30 set under the x86_64 audit arch), as a
/// kernel without x32 support answers. seccompiler matches exact numbers only, so this small
/// program is written by hand.
fn x32_abi() -> BpfProgram {
    // Classic BPF opcodes and seccomp_data offsets (linux/filter.h, linux/seccomp.h).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const NR_OFFSET: u32 = 0;
    const ARCH_OFFSET: u32 = 4;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another arch: not ours to judge here (the other filters kill it).
        ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        ins(LD_W_ABS, 0, 0, NR_OFFSET),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use std::process::Command;

    use super::*;
    use crate::security::caps::tests::in_forked_child;

    fn errno_of(ret: libc::c_long) -> Option<i32> {
        (ret == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// Checks a raw syscall fails with `want`.
    fn expect_errno(what: &str, ret: libc::c_long, want: i32) -> std::result::Result<(), String> {
        match errno_of(ret) {
            Some(e) if e == want => Ok(()),
            got => Err(format!(
                "{what}: returned {ret}, errno {got:?}, want {want}"
            )),
        }
    }

    fn status_field(name: &str) -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim().to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn program_compiles_for_this_arch() {
        let p = default_program().unwrap();
        let want = if cfg!(target_arch = "x86_64") { 3 } else { 2 };
        assert_eq!(p.len(), want);
        assert!(p
            .filters
            .iter()
            .all(|(_, f)| !f.is_empty() && f.len() < 4096));
    }

    #[test]
    fn filter_refuses_escapes_and_keeps_ordinary_work() {
        let program = default_program().unwrap();
        in_forked_child(|| {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
            apply(&program).map_err(|e| format!("apply: {e:?}"))?;
            if status_field("Seccomp") != "2" {
                return Err(format!("Seccomp: {}", status_field("Seccomp")));
            }
            let filters = status_field("Seccomp_filters");
            if filters != program.len().to_string() {
                return Err(format!("Seccomp_filters: {filters}"));
            }
            let eperm = libc::EPERM;
            // Arguments the kernel itself would reject with another errno (ENOENT, ENODEV,
            // EINVAL), so an unfiltered call neither succeeds nor passes the check.
            let target = c"/nonexistent/shoal-seccomp-test";
            let fstype = c"shoal-bogus-fs";
            // SAFETY: valid constant C strings or no pointers (also for the calls below).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount,
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    0,
                )
            };
            expect_errno("mount", r, eperm)?;
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) };
            expect_errno("unshare(CLONE_NEWUSER)", r, eperm)?;
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
            expect_errno("keyctl", r, eperm)?;
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
            expect_errno("ptrace", r, eperm)?;
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), 0) };
            expect_errno("fsopen", r, eperm)?;
            // SAFETY: see above (a NULL clone_args: the filter answers first).
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            expect_errno("clone3", r, libc::ENOSYS)?;
            // clone with a namespace flag: refused before any child exists. CLONE_THREAD
            // without CLONE_SIGHAND makes the unfiltered call fail (EINVAL) instead.
            // SAFETY: see above.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWNET | libc::CLONE_THREAD,
                    0,
                    0,
                    0,
                    0,
                )
            };
            expect_errno("clone(CLONE_NEWNET)", r, eperm)?;
            // personality: the query is allowed, disabling ASLR is not.
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu32) };
            if r < 0 {
                return Err(format!("personality query refused: {r}"));
            }
            // SAFETY: see above.
            let r = unsafe { libc::syscall(libc::SYS_personality, 0x0040000) };
            expect_errno("personality(ADDR_NO_RANDOMIZE)", r, eperm)?;
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: see above.
                let r = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
                expect_errno("x32 getpid", r, libc::ENOSYS)?;
            }
            // Ordinary work: fork + exec (libc falls back from clone3 to clone).
            let status = Command::new("/bin/true")
                .status()
                .map_err(|e| format!("spawn /bin/true: {e}"))?;
            if !status.success() {
                return Err(format!("/bin/true: {status}"));
            }
            let out = Command::new("/bin/sh")
                .args(["-c", "echo $(echo nested)"])
                .output()
                .map_err(|e| format!("spawn sh: {e}"))?;
            if out.stdout != b"nested\n" {
                return Err(format!("sh output {:?}", out.stdout));
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn plain_clone_and_threads_still_work() {
        let program = default_program().unwrap();
        in_forked_child(|| {
            apply(&program).map_err(|e| format!("apply: {e:?}"))?;
            let t = std::thread::spawn(|| 42)
                .join()
                .map_err(|_| "thread panicked".to_string())?;
            if t != 42 {
                return Err("thread result".into());
            }
            // SAFETY: a fork-style clone (no CLONE_VM): the child only _exits.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            if pid == 0 {
                // SAFETY: ends the cloned child immediately.
                unsafe { libc::_exit(7) };
            }
            if pid < 0 {
                return Err(format!("clone(SIGCHLD): errno {:?}", errno_of(pid)));
            }
            let mut status = 0;
            // SAFETY: waits for the child we just made, writing into a local.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 7 {
                return Err(format!("clone child status {status:#x}"));
            }
            Ok(())
        })
        .unwrap();
    }
}
