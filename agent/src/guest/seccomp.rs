//! A process's seccomp profile (the OCI `linux.seccomp` object) compiled to BPF before the
//! clone, so the child only has to hand the programs to the kernel.
//!
//! An OCI profile gives each rule its own action; a BPF program of `seccompiler` has one action
//! for the calls that match and one for the rest. The profile becomes one program per action,
//! and the kernel, which runs every installed program and keeps the most restrictive answer,
//! combines them into the profile's meaning:
//!
//! - the *default* program answers the default action for every call no rule names (with its
//!   argument conditions), and allow otherwise;
//! - one program per other action answers that action for the calls its rules match, and allow
//!   otherwise.
//!
//! A call a rule matches is then allowed by the default program and gets its rule's action from
//! that rule's program; a call no rule matches gets the default action. As in runc, rules whose
//! action is the default action change nothing and are left out, and a syscall name this guest
//! does not know is skipped (libseccomp skips names it cannot resolve for the architecture).
//!
//! Only x86_64 calls are filtered by these programs: a call made through the 32-bit x86 entry
//! kills the process (the programs check the architecture first), and an x32 call gets the
//! default action (its numbers match no rule).

mod x86_64;

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::protocol::{Seccomp, SeccompArg};

/// The errno of `SCMP_ACT_ERRNO` when the profile gives none (libseccomp's default).
const DEFAULT_ERRNO: u32 = 1; // EPERM

/// The architecture names the OCI spec (and libseccomp) know; only x86_64 is filtered here.
const ARCHITECTURES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// Why a seccomp profile is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    /// An action this guest cannot carry out.
    #[error("seccomp action {0:?} is not supported; use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_TRACE or SCMP_ACT_LOG")]
    Action(String),
    /// `SCMP_ACT_NOTIFY`: it needs a seccomp agent outside the container.
    #[error("seccomp action SCMP_ACT_NOTIFY is not supported: the guest runs no seccomp agent to answer notifications")]
    Notify,
    /// An argument comparison this guest does not know.
    #[error("seccomp operator {0:?} is not supported; use SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE or SCMP_CMP_MASKED_EQ")]
    Operator(String),
    /// A filter flag this guest does not know.
    #[error("seccomp flag {0:?} is not supported; use SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_LOG or SECCOMP_FILTER_FLAG_SPEC_ALLOW")]
    Flag(String),
    /// An architecture name that is not one of libseccomp's.
    #[error("seccomp architecture {0:?} is not known; use names such as SCMP_ARCH_X86_64, SCMP_ARCH_X86 or SCMP_ARCH_X32")]
    Architecture(String),
    /// A condition on an argument a syscall does not have.
    #[error("the seccomp rule for {syscall} compares argument {index}; syscall arguments are numbered 0 to 5")]
    ArgIndex {
        /// The syscall of the rule.
        syscall: String,
        /// The index given.
        index: u32,
    },
    /// The programs do not build (too large, ...).
    #[error("the seccomp profile does not compile to BPF: {0}")]
    Compile(String),
}

/// `struct sock_fprog` of `<linux/filter.h>`: a BPF program as `seccomp(2)` takes it.
#[repr(C)]
#[derive(Debug)]
pub(super) struct SockFprog {
    len: u16,
    filter: *const sock_filter,
}

/// A compiled profile: the BPF programs to install, in order, and the flags to install them
/// with. Nothing here allocates once built; the child only reads it.
#[derive(Debug, Default)]
pub(super) struct CompiledSeccomp {
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub(super) flags: libc::c_ulong,
    /// The programs, owned here because `fprogs` points into them.
    _programs: Vec<BpfProgram>,
    /// One `sock_fprog` per program, as `seccomp(SECCOMP_SET_MODE_FILTER)` takes it.
    pub(super) fprogs: Vec<SockFprog>,
}

#[cfg(test)]
impl CompiledSeccomp {
    /// How many programs the profile became (0: the profile allows every call).
    pub(super) fn len(&self) -> usize {
        self.fprogs.len()
    }
}

/// The syscall number of `name` on x86_64, if the kernel has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

/// The action an OCI action name and its `errnoRet` stand for.
fn action(name: &str, errno_ret: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno_ret.unwrap_or(DEFAULT_ERRNO)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno_ret.unwrap_or(DEFAULT_ERRNO)),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => return Err(SeccompError::Notify),
        other => return Err(SeccompError::Action(other.into())),
    })
}

/// The `SECCOMP_FILTER_FLAG_*` bit of an OCI flag name.
fn flag(name: &str) -> Result<libc::c_ulong, SeccompError> {
    match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => Ok(libc::SECCOMP_FILTER_FLAG_TSYNC),
        "SECCOMP_FILTER_FLAG_LOG" => Ok(libc::SECCOMP_FILTER_FLAG_LOG),
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => Ok(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW),
        other => Err(SeccompError::Flag(other.into())),
    }
}

/// One argument condition; arguments are compared as 64-bit values, as libseccomp does on
/// x86_64.
fn condition(syscall: &str, arg: &SeccompArg) -> Result<SeccompCondition, SeccompError> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_EQ" => SeccompCmpOp::Eq,
        "SCMP_CMP_NE" => SeccompCmpOp::Ne,
        "SCMP_CMP_LT" => SeccompCmpOp::Lt,
        "SCMP_CMP_LE" => SeccompCmpOp::Le,
        "SCMP_CMP_GT" => SeccompCmpOp::Gt,
        "SCMP_CMP_GE" => SeccompCmpOp::Ge,
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        "SCMP_CMP_MASKED_EQ" => SeccompCmpOp::MaskedEq(arg.value),
        other => return Err(SeccompError::Operator(other.into())),
    };
    let value = if matches!(op, SeccompCmpOp::MaskedEq(_)) {
        arg.value_two
    } else {
        arg.value
    };
    let bad_index = || SeccompError::ArgIndex {
        syscall: syscall.into(),
        index: arg.index,
    };
    let index = u8::try_from(arg.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(bad_index)?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|_| bad_index())
}

/// What a group of rules says about one syscall: always, or when one of these rules holds.
#[derive(Debug, Clone)]
enum Matches {
    Always,
    When(Vec<SeccompRule>),
}

impl Matches {
    fn add(&mut self, rules: Option<Vec<SeccompRule>>) {
        match (self, rules) {
            (Matches::Always, _) => {}
            (this, None) => *this = Matches::Always,
            (Matches::When(have), Some(more)) => have.extend(more),
        }
    }

    fn into_rules(self) -> Vec<SeccompRule> {
        match self {
            Matches::Always => Vec::new(),
            Matches::When(rules) => rules,
        }
    }
}

type Group = BTreeMap<i64, Matches>;

fn add(group: &mut Group, nr: i64, rules: Option<Vec<SeccompRule>>) {
    group
        .entry(nr)
        .or_insert_with(|| Matches::When(Vec::new()))
        .add(rules);
}

/// The rules of one OCI syscall entry for one syscall: `None` when it has no conditions.
/// Conditions on distinct arguments must all hold (one rule); when an argument has several,
/// each condition is a rule of its own, as runc does (libseccomp cannot AND them).
fn entry_rules(
    syscall: &str,
    args: &[SeccompArg],
) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let conditions = args
        .iter()
        .map(|a| condition(syscall, a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = [0u8; 6];
    for a in args {
        // The index was checked by `condition`.
        if let Some(n) = usize::try_from(a.index).ok().and_then(|i| seen.get_mut(i)) {
            *n = n.saturating_add(1);
        }
    }
    let compile = |e: seccompiler::BackendError| SeccompError::Compile(e.to_string());
    let rules = if seen.iter().any(|n| *n > 1) {
        conditions
            .into_iter()
            .map(|c| SeccompRule::new(vec![c]).map_err(compile))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![SeccompRule::new(conditions).map_err(compile)?]
    };
    Ok(Some(rules))
}

/// Compiles a profile; refuses what this guest cannot carry out.
pub(super) fn compile(profile: &Seccomp) -> Result<CompiledSeccomp, SeccompError> {
    for arch in &profile.architectures {
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(SeccompError::Architecture(arch.clone()));
        }
    }
    let mut flags = 0;
    for f in &profile.flags {
        flags |= flag(f)?;
    }
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    // Rules by action (keyed by the action's BPF return value, which tells apart errnos).
    let mut groups: BTreeMap<u32, (SeccompAction, Group)> = BTreeMap::new();
    for entry in &profile.syscalls {
        let act = action(&entry.action, entry.errno_ret)?;
        // Checked even when the entry names no syscall this guest knows.
        let first = entry.names.first().map_or("", String::as_str);
        let rules = entry_rules(first, &entry.args)?;
        if act == default {
            continue;
        }
        let group = &mut groups
            .entry(u32::from(act.clone()))
            .or_insert_with(|| (act, Group::new()))
            .1;
        for name in &entry.names {
            if let Some(nr) = syscall_number(name) {
                add(group, nr, rules.clone());
            }
        }
    }
    let build = |rules: Group, mismatch: SeccompAction, matched: SeccompAction| {
        let rules = rules
            .into_iter()
            .map(|(nr, m)| (nr, m.into_rules()))
            .collect();
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| SeccompError::Compile(e.to_string()))
    };
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        let mut named = Group::new();
        for (_, group) in groups.values() {
            for (nr, m) in group {
                add(
                    &mut named,
                    *nr,
                    match m {
                        Matches::Always => None,
                        Matches::When(r) => Some(r.clone()),
                    },
                );
            }
        }
        programs.push(build(named, default.clone(), SeccompAction::Allow)?);
    }
    for (_, (act, group)) in groups {
        if act != SeccompAction::Allow && !group.is_empty() {
            programs.push(build(group, SeccompAction::Allow, act)?);
        }
    }
    let fprogs = programs
        .iter()
        .map(|p| {
            Ok(SockFprog {
                len: u16::try_from(p.len()).map_err(|_| {
                    SeccompError::Compile(format!("a program of {} instructions", p.len()))
                })?,
                filter: p.as_ptr(),
            })
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    Ok(CompiledSeccomp {
        flags,
        _programs: programs,
        fprogs,
    })
}

/// Installs the programs, in order.
///
/// # Safety
/// Child-only: raw system calls on data `compiled` owns. Without `no_new_privs` the caller
/// needs `CAP_SYS_ADMIN`.
pub(super) unsafe fn install(compiled: &CompiledSeccomp) -> Result<(), ()> {
    for fprog in &compiled.fprogs {
        // SAFETY: `fprog` points at a live program of `len` instructions `compiled` owns; the
        // kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                compiled.flags,
                std::ptr::from_ref(fprog),
            )
        };
        if rc != 0 {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::SeccompSyscall;

    fn rule(
        names: &[&str],
        action: &str,
        errno: Option<u32>,
        args: Vec<SeccompArg>,
    ) -> SeccompSyscall {
        SeccompSyscall {
            names: names.iter().map(|n| n.to_string()).collect(),
            action: action.into(),
            errno_ret: errno,
            args,
        }
    }

    fn arg(index: u32, value: u64, value_two: u64, op: &str) -> SeccompArg {
        SeccompArg {
            index,
            value,
            value_two,
            op: op.into(),
        }
    }

    /// A profile shaped like containerd's RuntimeDefault: errno by default, an allow list,
    /// calls allowed only with some arguments, and clone3 answered with ENOSYS.
    pub(crate) fn runtime_default() -> Seccomp {
        let allowed = [
            "accept4",
            "access",
            "arch_prctl",
            "bind",
            "brk",
            "capget",
            "capset",
            "chdir",
            "close",
            "close_range",
            "connect",
            "dup",
            "dup2",
            "dup3",
            "execve",
            "exit",
            "exit_group",
            "fcntl",
            "fstat",
            "futex",
            "getcwd",
            "getdents64",
            "getegid",
            "geteuid",
            "getgid",
            "getgroups",
            "getpgrp",
            "getpid",
            "getppid",
            "getrandom",
            "getuid",
            "ioctl",
            "lseek",
            "madvise",
            "mmap",
            "mprotect",
            "munmap",
            "nanosleep",
            "newfstatat",
            "open",
            "openat",
            "pipe2",
            "poll",
            "prctl",
            "pread64",
            "prlimit64",
            "read",
            "readlink",
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "set_robust_list",
            "set_tid_address",
            "setgid",
            "setgroups",
            "setuid",
            "stat",
            "statfs",
            "uname",
            "wait4",
            "write",
            "writev",
            "vfork",
            "fork",
            // Names other architectures have: skipped here.
            "_llseek",
            "socketcall",
            "ugetrlimit",
            "arm_fadvise64_64",
        ];
        Seccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            default_errno_ret: None,
            architectures: vec![
                "SCMP_ARCH_X86_64".into(),
                "SCMP_ARCH_X86".into(),
                "SCMP_ARCH_X32".into(),
            ],
            flags: Vec::new(),
            syscalls: vec![
                rule(&allowed, "SCMP_ACT_ALLOW", None, Vec::new()),
                // personality(0), personality(8), personality(0xffffffff) only.
                rule(
                    &["personality"],
                    "SCMP_ACT_ALLOW",
                    None,
                    vec![arg(0, 0, 0, "SCMP_CMP_EQ")],
                ),
                rule(
                    &["personality"],
                    "SCMP_ACT_ALLOW",
                    None,
                    vec![arg(0, 8, 0, "SCMP_CMP_EQ")],
                ),
                // clone without any CLONE_NEW* flag.
                rule(
                    &["clone"],
                    "SCMP_ACT_ALLOW",
                    None,
                    vec![arg(0, 2_114_060_288, 0, "SCMP_CMP_MASKED_EQ")],
                ),
                rule(&["clone3"], "SCMP_ACT_ERRNO", Some(38), Vec::new()),
            ],
        }
    }

    #[test]
    fn syscall_names_resolve_on_x86_64() {
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("close_range"), Some(libc::SYS_close_range));
        assert_eq!(syscall_number("socketcall"), None);
        assert!(x86_64::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_runtime_default_profile_compiles_to_a_program_per_action() {
        let c = compile(&runtime_default()).unwrap();
        // The default program (errno unless named) and the ENOSYS program for clone3.
        assert_eq!(c.len(), 2);
        assert_eq!(c.flags, 0);
        for (f, p) in c.fprogs.iter().zip(&c._programs) {
            assert_eq!(usize::from(f.len), p.len());
        }
    }

    #[test]
    fn an_allow_by_default_profile_has_only_its_deny_programs() {
        let p = Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            syscalls: vec![
                rule(&["mount", "umount2"], "SCMP_ACT_ERRNO", None, Vec::new()),
                rule(&["reboot"], "SCMP_ACT_KILL_PROCESS", None, Vec::new()),
                // Same as the default: changes nothing.
                rule(&["read"], "SCMP_ACT_ALLOW", None, Vec::new()),
            ],
            ..Default::default()
        };
        assert_eq!(compile(&p).unwrap().len(), 2);
        let everything = Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            ..Default::default()
        };
        assert_eq!(compile(&everything).unwrap().len(), 0);
    }

    #[test]
    fn unsupported_parts_are_refused_by_name() {
        let with = |f: &dyn Fn(&mut Seccomp)| {
            let mut p = runtime_default();
            f(&mut p);
            compile(&p).unwrap_err()
        };
        assert_eq!(
            with(&|p| p.default_action = "SCMP_ACT_BOGUS".into()),
            SeccompError::Action("SCMP_ACT_BOGUS".into())
        );
        assert_eq!(
            with(&|p| p.syscalls[0].action = "SCMP_ACT_NOTIFY".into()),
            SeccompError::Notify
        );
        assert_eq!(
            with(&|p| p.syscalls[1].args[0].op = "SCMP_CMP_SOMETIMES".into()),
            SeccompError::Operator("SCMP_CMP_SOMETIMES".into())
        );
        assert_eq!(
            with(&|p| p.syscalls[1].args[0].index = 6),
            SeccompError::ArgIndex {
                syscall: "personality".into(),
                index: 6
            }
        );
        assert_eq!(
            with(&|p| p.flags = vec!["SECCOMP_FILTER_FLAG_NEW_LISTENER".into()]),
            SeccompError::Flag("SECCOMP_FILTER_FLAG_NEW_LISTENER".into())
        );
        assert_eq!(
            with(&|p| p.architectures.push("SCMP_ARCH_VAX".into())),
            SeccompError::Architecture("SCMP_ARCH_VAX".into())
        );
        // An action is checked even on a rule naming only calls this architecture lacks.
        assert_eq!(
            with(&|p| p
                .syscalls
                .push(rule(&["socketcall"], "SCMP_ACT_MAYBE", None, Vec::new()))),
            SeccompError::Action("SCMP_ACT_MAYBE".into())
        );
        let msg = SeccompError::Notify.to_string();
        assert!(msg.contains("SCMP_ACT_NOTIFY"), "{msg}");
    }

    #[test]
    fn flags_are_carried() {
        let mut p = runtime_default();
        p.flags = vec![
            "SECCOMP_FILTER_FLAG_LOG".into(),
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW".into(),
        ];
        assert_eq!(
            compile(&p).unwrap().flags,
            libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
    }
}
