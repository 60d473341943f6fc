//! The device allowlist a container gets on cgroup v1: Docker's default rules.
//!
//! Docker's effective list is moby's `oci/defaults.go` (deny all; allow null, zero, urandom,
//! random, tty, console) followed by runc's built-in `AllowedDevices` (mknod of any device,
//! full, /dev/pts/*, ptmx and tun). runc 1.2.0 dropped tun and 1.2.4 put it back because
//! Swarm services cannot ask for extra devices (runc #4555), so shoal keeps it too. moby's
//! `deny c 10:229 rwm` (fuse) is omitted: after the deny-all it only narrows `m`, which runc's
//! later `c *:* m` grants again.
//!
//! On cgroup v2 the same control needs an eBPF program attached to the cgroup; shoal does not
//! load one (see [`super::device_control_available`]).

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType};

/// Wildcard for a major or minor number, as cgroups-rs spells it.
const ANY: i64 = -1;

/// One `devices.allow` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DeviceRule {
    pub kind: DeviceType,
    pub major: i64,
    pub minor: i64,
    /// Subset of "rwm".
    pub access: &'static str,
}

impl DeviceRule {
    const fn char(major: i64, minor: i64, access: &'static str) -> Self {
        Self {
            kind: DeviceType::Char,
            major,
            minor,
            access,
        }
    }

    /// The rule as the kernel's `devices.allow` syntax, e.g. `c 1:3 rwm`.
    pub fn to_line(self) -> String {
        let num = |n: i64| {
            if n == ANY {
                "*".to_string()
            } else {
                n.to_string()
            }
        };
        format!(
            "{} {}:{} {}",
            self.kind.to_char(),
            num(self.major),
            num(self.minor),
            self.access
        )
    }

    pub fn permissions(self) -> Vec<DevicePermissions> {
        self.access
            .chars()
            .filter_map(DevicePermissions::from_char)
            .collect()
    }
}

/// Docker's default allowlist, applied after denying everything.
pub(super) const DEFAULT_ALLOWED: [DeviceRule; 12] = [
    // mknod of any device; using one still needs r/w below.
    DeviceRule::char(ANY, ANY, "m"),
    DeviceRule {
        kind: DeviceType::Block,
        major: ANY,
        minor: ANY,
        access: "m",
    },
    DeviceRule::char(1, 3, "rwm"),     // null
    DeviceRule::char(1, 5, "rwm"),     // zero
    DeviceRule::char(1, 7, "rwm"),     // full
    DeviceRule::char(1, 8, "rwm"),     // random
    DeviceRule::char(1, 9, "rwm"),     // urandom
    DeviceRule::char(5, 0, "rwm"),     // tty
    DeviceRule::char(5, 1, "rwm"),     // console
    DeviceRule::char(5, 2, "rwm"),     // ptmx
    DeviceRule::char(136, ANY, "rwm"), // /dev/pts/*
    DeviceRule::char(10, 200, "rwm"),  // /dev/net/tun
];

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_the_kernel_syntax() {
        let lines: Vec<String> = DEFAULT_ALLOWED.iter().map(|r| r.to_line()).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert!(lines.contains(&"c 1:3 rwm".to_string()));
        assert!(lines.contains(&"c 136:* rwm".to_string()));
        assert!(lines.contains(&"c 10:200 rwm".to_string()));
        assert_eq!(DEFAULT_ALLOWED[2].permissions().len(), 3);
    }
}
