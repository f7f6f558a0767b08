//! What a container's process is confined with, prepared before the clone: the protocol's names
//! (capabilities, rlimits, paths, the seccomp profile) turned into the numbers, masks, C strings
//! and BPF programs the child hands to the kernel without allocating (see [`super::child`]).
//!
//! The child applies them in runc's order: the rootfs settings once the container's root is in
//! place ([`RootfsSecurity`]), then, just before the exec, the process settings
//! ([`ProcessSecurity`]): rlimits, seccomp when `no_new_privs` is off (it needs
//! `CAP_SYS_ADMIN`), the bounding set, the user with the capabilities kept, the capability
//! sets, the ambient set, `no_new_privs`, and seccomp when `no_new_privs` is on (as late as
//! possible).

use std::ffi::CString;

use super::seccomp::{self, CompiledSeccomp, SeccompError};
use crate::protocol::{Capabilities, CreateContainer, Process, Rlimit};

/// Capability names by number (`<linux/capability.h>`).
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Resource names by number (`<asm-generic/resource.h>`, which x86_64 uses).
const RLIMITS: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// Where the kernel says which capability is its last.
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why a process's or container's security settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// A capability name that is not one of Linux's.
    #[error("capability {name:?} in the {set} set is not a Linux capability; names look like \"CAP_CHOWN\"")]
    UnknownCapability {
        /// The set it is in.
        set: &'static str,
        /// The name.
        name: String,
    },
    /// An ambient capability the process would not have.
    #[error("ambient capability {0} must also be in the permitted and inheritable sets")]
    AmbientNotPermitted(String),
    /// A resource name that is not one of Linux's.
    #[error("rlimit {0:?} is not a Linux resource limit; names look like \"RLIMIT_NOFILE\"")]
    UnknownRlimit(String),
    /// The same limit twice.
    #[error("rlimit {0} is given twice")]
    DuplicateRlimit(String),
    /// A soft limit above its hard limit.
    #[error("rlimit {kind}: the soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard {
        /// The limit.
        kind: String,
        /// Its soft value.
        soft: u64,
        /// Its hard value.
        hard: u64,
    },
    /// A masked or read-only path that is not an absolute path.
    #[error("{what} {path:?} is not an absolute path without NUL bytes")]
    BadPath {
        /// Which list it is in.
        what: &'static str,
        /// The path.
        path: String,
    },
    /// The seccomp profile.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// The number of a capability name.
pub fn capability_number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// The mask of a set of capability names; capabilities past `last_cap` (unknown to this
/// kernel) are left out, as runc does.
pub fn capability_mask(
    set: &'static str,
    names: &[String],
    last_cap: u32,
) -> Result<u64, SecurityError> {
    let mut mask = 0u64;
    for name in names {
        let n = capability_number(name).ok_or_else(|| SecurityError::UnknownCapability {
            set,
            name: name.clone(),
        })?;
        if n <= last_cap {
            mask |= 1 << n;
        }
    }
    Ok(mask)
}

/// The resource number of an rlimit name.
pub fn rlimit_resource(name: &str) -> Option<libc::c_int> {
    RLIMITS
        .iter()
        .position(|r| *r == name)
        .and_then(|i| libc::c_int::try_from(i).ok())
}

/// The kernel's last capability (`cap_last_cap`), or the last this agent knows.
fn last_cap() -> u32 {
    let known = u32::try_from(CAPABILITIES.len() - 1).unwrap_or(0);
    std::fs::read_to_string(CAP_LAST_CAP)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(known, |k| k.min(known))
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability sets as `capset(2)` and `prctl(2)` take them.
#[derive(Debug)]
pub(super) struct CapabilitySets {
    /// Capabilities to drop from the bounding set.
    pub(super) bounding_drop: Vec<libc::c_ulong>,
    /// Capabilities to raise in the ambient set.
    pub(super) ambient: Vec<libc::c_ulong>,
    /// `capset`'s header (this process, version 3).
    pub(super) header: CapHeader,
    /// `capset`'s data: the low and high halves of effective, permitted, inheritable.
    pub(super) data: [CapData; 2],
}

fn halves(mask: u64) -> [u32; 2] {
    // Each half keeps 32 bits by construction.
    [
        u32::try_from(mask & 0xffff_ffff).unwrap_or(u32::MAX),
        u32::try_from(mask >> 32).unwrap_or(u32::MAX),
    ]
}

impl CapabilitySets {
    /// The sets of `caps` on a kernel whose last capability is `last_cap`.
    pub(super) fn new(caps: &Capabilities, last_cap: u32) -> Result<CapabilitySets, SecurityError> {
        let bounding = capability_mask("bounding", &caps.bounding, last_cap)?;
        let effective = capability_mask("effective", &caps.effective, last_cap)?;
        let permitted = capability_mask("permitted", &caps.permitted, last_cap)?;
        let inheritable = capability_mask("inheritable", &caps.inheritable, last_cap)?;
        let ambient_mask = capability_mask("ambient", &caps.ambient, last_cap)?;
        if let Some(n) = (0..=last_cap).find(|n| {
            let bit = 1u64 << n;
            ambient_mask & bit != 0 && (permitted & inheritable & bit) == 0
        }) {
            let name = CAPABILITIES
                .get(usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(&"?");
            return Err(SecurityError::AmbientNotPermitted((*name).into()));
        }
        let bits = |mask: u64| {
            (0..=last_cap)
                .filter(|n| mask & (1u64 << n) != 0)
                .map(libc::c_ulong::from)
                .collect::<Vec<_>>()
        };
        let (e, p, i) = (halves(effective), halves(permitted), halves(inheritable));
        Ok(CapabilitySets {
            bounding_drop: bits(!bounding),
            ambient: bits(ambient_mask),
            header: CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            },
            data: [0, 1].map(|h| CapData {
                effective: e[h],
                permitted: p[h],
                inheritable: i[h],
            }),
        })
    }
}

/// `struct rlimit64` as `prlimit64(2)` takes it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rlimit64 {
    soft: u64,
    hard: u64,
}

/// The resource limits, checked and numbered.
fn rlimits(limits: &[Rlimit]) -> Result<Vec<(libc::c_int, Rlimit64)>, SecurityError> {
    let mut out: Vec<(libc::c_int, Rlimit64)> = Vec::new();
    for l in limits {
        let resource =
            rlimit_resource(&l.kind).ok_or_else(|| SecurityError::UnknownRlimit(l.kind.clone()))?;
        if out.iter().any(|(r, _)| *r == resource) {
            return Err(SecurityError::DuplicateRlimit(l.kind.clone()));
        }
        if l.soft > l.hard {
            return Err(SecurityError::SoftAboveHard {
                kind: l.kind.clone(),
                soft: l.soft,
                hard: l.hard,
            });
        }
        out.push((
            resource,
            Rlimit64 {
                soft: l.soft,
                hard: l.hard,
            },
        ));
    }
    Ok(out)
}

/// What confines a process from its exec on, ready for the child.
#[derive(Debug, Default)]
pub(super) struct ProcessSecurity {
    /// `None`: leave the capabilities as they are.
    pub(super) capabilities: Option<CapabilitySets>,
    /// Set `no_new_privs`.
    pub(super) no_new_privs: bool,
    /// `(resource, limits)` for `prlimit64`.
    pub(super) rlimits: Vec<(libc::c_int, Rlimit64)>,
    /// The seccomp programs (none: no profile, or one allowing every call).
    pub(super) seccomp: CompiledSeccomp,
}

impl ProcessSecurity {
    /// Checks and converts a process's settings.
    pub(super) fn new(p: &Process) -> Result<ProcessSecurity, SecurityError> {
        Ok(ProcessSecurity {
            capabilities: p
                .capabilities
                .as_ref()
                .map(|c| CapabilitySets::new(c, last_cap()))
                .transpose()?,
            no_new_privs: p.no_new_privileges,
            rlimits: rlimits(&p.rlimits)?,
            seccomp: p
                .seccomp
                .as_ref()
                .map(seccomp::compile)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// What a container's filesystem view gets once its root is in place.
#[derive(Debug, Default)]
pub(super) struct RootfsSecurity {
    /// Remount the root read-only.
    pub(super) readonly_root: bool,
    /// Paths bound read-only over themselves.
    pub(super) readonly_paths: Vec<CString>,
    /// Paths hidden under `/dev/null` (files) or an empty read-only tmpfs (directories).
    pub(super) masked_paths: Vec<CString>,
}

fn absolute(what: &'static str, paths: &[String]) -> Result<Vec<CString>, SecurityError> {
    paths
        .iter()
        .map(|p| {
            let bad = || SecurityError::BadPath {
                what,
                path: p.clone(),
            };
            if !p.starts_with('/') {
                return Err(bad());
            }
            CString::new(p.as_str()).map_err(|_| bad())
        })
        .collect()
}

impl RootfsSecurity {
    /// Checks and converts a container's settings.
    pub(super) fn new(c: &CreateContainer) -> Result<RootfsSecurity, SecurityError> {
        Ok(RootfsSecurity {
            readonly_root: c.readonly_root,
            readonly_paths: absolute("readonly path", &c.readonly_paths)?,
            masked_paths: absolute("masked path", &c.masked_paths)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capability_names_become_bits() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("chown"), None);
        assert_eq!(
            capability_mask(
                "effective",
                &names(&["CAP_CHOWN", "CAP_KILL", "CAP_BPF"]),
                40
            ),
            Ok(1 | 1 << 5 | 1 << 39)
        );
        // A capability this kernel lacks is left out.
        assert_eq!(
            capability_mask("effective", &names(&["CAP_KILL", "CAP_BPF"]), 38),
            Ok(1 << 5)
        );
        assert_eq!(
            capability_mask("bounding", &names(&["CAP_CHOWN", "CAP_FLY"]), 40),
            Err(SecurityError::UnknownCapability {
                set: "bounding",
                name: "CAP_FLY".into()
            })
        );
    }

    #[test]
    fn capability_sets_for_capset_and_prctl() {
        let caps = Capabilities {
            bounding: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_BPF"]),
            effective: names(&["CAP_CHOWN", "CAP_BPF"]),
            permitted: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_BPF"]),
            inheritable: names(&["CAP_NET_BIND_SERVICE"]),
            ambient: names(&["CAP_NET_BIND_SERVICE"]),
        };
        let s = CapabilitySets::new(&caps, 40).unwrap();
        assert_eq!(s.header.version, CAPABILITY_VERSION_3);
        assert_eq!(s.data[0].effective, 1);
        assert_eq!(s.data[1].effective, 1 << (39 - 32));
        assert_eq!(s.data[0].permitted, 1 | 1 << 10);
        assert_eq!(s.data[0].inheritable, 1 << 10);
        assert_eq!(s.ambient, [10]);
        // Every capability up to the last but the three kept is dropped from the bounding set.
        assert_eq!(s.bounding_drop.len(), 41 - 3);
        assert!(!s.bounding_drop.contains(&0) && s.bounding_drop.contains(&21));
        assert_eq!(s.bounding_drop.last(), Some(&40));

        let bad = Capabilities {
            ambient: names(&["CAP_KILL"]),
            permitted: names(&["CAP_KILL"]),
            ..Default::default()
        };
        assert_eq!(
            CapabilitySets::new(&bad, 40).unwrap_err(),
            SecurityError::AmbientNotPermitted("CAP_KILL".into())
        );
    }

    #[test]
    fn rlimit_names_become_resources() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(7));
        assert_eq!(rlimit_resource("RLIMIT_RTTIME"), Some(15));
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
        // The numbers are the C library's.
        for (name, c) in [
            ("RLIMIT_CPU", libc::RLIMIT_CPU),
            ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
            ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
            ("RLIMIT_AS", libc::RLIMIT_AS),
            ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
        ] {
            assert_eq!(
                rlimit_resource(name).map(i64::from),
                Some(i64::from(c)),
                "{name}"
            );
        }
        let limit = |kind: &str, soft, hard| Rlimit {
            kind: kind.into(),
            soft,
            hard,
        };
        assert_eq!(
            rlimits(&[limit("RLIMIT_NOFILE", 1024, 4096)]).unwrap(),
            [(
                7,
                Rlimit64 {
                    soft: 1024,
                    hard: 4096
                }
            )]
        );
        assert_eq!(
            rlimits(&[limit("RLIMIT_FILES", 1, 1)]).unwrap_err(),
            SecurityError::UnknownRlimit("RLIMIT_FILES".into())
        );
        assert_eq!(
            rlimits(&[limit("RLIMIT_CORE", 0, 0), limit("RLIMIT_CORE", 1, 1)]).unwrap_err(),
            SecurityError::DuplicateRlimit("RLIMIT_CORE".into())
        );
        assert!(matches!(
            rlimits(&[limit("RLIMIT_CORE", 2, 1)]),
            Err(SecurityError::SoftAboveHard { .. })
        ));
    }

    #[test]
    fn rootfs_paths_must_be_absolute() {
        let mut c = CreateContainer {
            id: "c".into(),
            rootfs: Some("c/rootfs".into()),
            image: None,
            hostname: None,
            process: Process::default(),
            masked_paths: names(&["/proc/kcore", "/sys/firmware"]),
            readonly_paths: names(&["/proc/sys"]),
            readonly_root: true,
            oci: Default::default(),
            files: vec![],
            resources: None,
        };
        let r = RootfsSecurity::new(&c).unwrap();
        assert!(r.readonly_root);
        assert_eq!(r.masked_paths.len(), 2);
        c.readonly_paths = names(&["proc/sys"]);
        assert_eq!(
            RootfsSecurity::new(&c).unwrap_err().to_string(),
            "readonly path \"proc/sys\" is not an absolute path without NUL bytes"
        );
    }

    #[test]
    fn unknown_names_are_refused_when_the_process_is_prepared() {
        let p = Process {
            capabilities: Some(Capabilities {
                effective: names(&["CAP_NOPE"]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            ProcessSecurity::new(&p),
            Err(SecurityError::UnknownCapability {
                set: "effective",
                ..
            })
        ));
        let p = Process {
            seccomp: Some(crate::protocol::Seccomp {
                default_action: "SCMP_ACT_NOTIFY".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            ProcessSecurity::new(&p).unwrap_err(),
            SecurityError::Seccomp(SeccompError::Notify)
        );
    }
}
