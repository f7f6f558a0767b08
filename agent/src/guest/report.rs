//! The report pipe: how a cloned child tells the agent how far it got. The pipe is close-on-exec,
//! so a successful exec closes it and the agent reads end of file; before that the child writes
//!
//! - `R`: a container's root is ready and its process waits for start;
//! - `P` + pid (little-endian `i32`): the process the exec helper cloned;
//! - `E` + step + errno (little-endian `i32`): the [`Step`] that failed; the child then exits.
//!
//! The child builds its messages here without allocating (see [`super::child`]).

use std::fs::File;
use std::io::Read;

use super::error::ContainerError;

/// A step a child can fail at; it travels in the failure report as its `u8`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Pointing 0, 1 and 2 at the process's streams.
    Stdio,
    PrivateMounts,
    /// Also when the child was given no rootfs.
    BindRootfs,
    ChdirRootfs,
    PivotRoot,
    DetachOldRoot,
    MountProc,
    /// The container's /dev and its device nodes.
    MountDev,
    MountDevPts,
    ReadonlyRoot,
    ReadonlyPath,
    MaskPath,
    SetHostname,
    /// Entering a running container's namespaces, and the exec helper's clone after it.
    Setns,
    /// A new session, the pty opened, and made its controlling terminal.
    TakeTerminal,
    CloseFds,
    Rlimit,
    Seccomp,
    BoundingSet,
    KeepCaps,
    SetGroups,
    SetGid,
    SetUid,
    Cwd,
    Capset,
    AmbientCaps,
    NoNewPrivs,
    Execve,
    /// Bind-mounting a file the host gave the container (its `/etc/hosts`, ...).
    BindFile,
    /// Joining the container's cgroup.
    Cgroup,
}

impl Step {
    /// Every step, to decode a report.
    const ALL: [Step; 30] = [
        Step::Stdio,
        Step::PrivateMounts,
        Step::BindRootfs,
        Step::ChdirRootfs,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::MountProc,
        Step::MountDev,
        Step::MountDevPts,
        Step::ReadonlyRoot,
        Step::ReadonlyPath,
        Step::MaskPath,
        Step::SetHostname,
        Step::Setns,
        Step::TakeTerminal,
        Step::CloseFds,
        Step::Rlimit,
        Step::Seccomp,
        Step::BoundingSet,
        Step::KeepCaps,
        Step::SetGroups,
        Step::SetGid,
        Step::SetUid,
        Step::Cwd,
        Step::Capset,
        Step::AmbientCaps,
        Step::NoNewPrivs,
        Step::Execve,
        Step::BindFile,
        Step::Cgroup,
    ];

    /// The step as failure messages name it.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Step::Stdio => "dup2 of the standard streams",
            Step::PrivateMounts => "making the mounts private",
            Step::BindRootfs => "bind-mounting the rootfs",
            Step::ChdirRootfs => "chdir into the rootfs",
            Step::PivotRoot => "pivot_root into the rootfs",
            Step::DetachOldRoot => "detaching the old root (umount2 MNT_DETACH)",
            Step::MountProc => "mounting /proc",
            Step::MountDev => "mounting /dev",
            Step::MountDevPts => "mounting /dev/pts",
            Step::ReadonlyRoot => "remounting the root read-only",
            Step::ReadonlyPath => "making a readonly path read-only",
            Step::MaskPath => "masking a masked path",
            Step::SetHostname => "sethostname",
            Step::Setns => "setns",
            Step::TakeTerminal => "taking the terminal (setsid, TIOCSCTTY)",
            Step::CloseFds => "marking the agent's descriptors close-on-exec (close_range)",
            Step::Rlimit => "setting an rlimit (prlimit64)",
            Step::Seccomp => "installing the seccomp filter",
            Step::BoundingSet => "dropping capabilities from the bounding set (PR_CAPBSET_DROP)",
            Step::KeepCaps => "keeping capabilities across setuid (PR_SET_KEEPCAPS)",
            Step::SetGroups => "setgroups",
            Step::SetGid => "setgid",
            Step::SetUid => "setuid",
            Step::Cwd => "chdir to the process's cwd",
            Step::Capset => "setting the capability sets (capset)",
            Step::AmbientCaps => "raising ambient capabilities (PR_CAP_AMBIENT_RAISE)",
            Step::NoNewPrivs => "setting no_new_privs (PR_SET_NO_NEW_PRIVS)",
            Step::Execve => "execve",
            Step::BindFile => "bind-mounting a file mount (/etc/hosts, /etc/resolv.conf, ...)",
            Step::Cgroup => "joining the container's cgroup",
        }
    }

    fn from_u8(value: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|&s| s as u8 == value)
    }
}

/// What a child tells the agent on its report pipe.
pub(super) enum Report {
    /// `R`: a container's root is ready; its process waits for start.
    Ready,
    /// End of file: the pipe closed on a successful exec.
    Exec,
    /// `P` + pid: the process the exec helper cloned.
    Pid(i32),
    /// `E` + step + errno; no step when this agent does not know its number.
    Failed { step: Option<Step>, errno: i32 },
    /// A short or unknown report.
    Garbled,
}

impl Report {
    /// The error a report other than the awaited one means, for the host: `what` was being done.
    pub(super) fn into_error(self, what: &str) -> ContainerError {
        match self {
            Report::Failed { step, errno } => ContainerError::Sys {
                step: format!("{what}: {}", step.map_or("an unknown step", Step::describe)),
                source: nix::Error::from_raw(errno),
            },
            Report::Ready | Report::Exec | Report::Pid(_) | Report::Garbled => {
                ContainerError::Invalid(format!("{what}: the child process ended without a report"))
            }
        }
    }
}

/// Reads the next report: `R` (ready), `P` + pid, `E` + step + errno, or end of file (the
/// pipe closed on a successful exec).
pub(super) fn read_report(pipe: &mut File) -> Report {
    let mut tag = [0u8; 1];
    match pipe.read(&mut tag) {
        Ok(0) => return Report::Exec,
        Ok(_) => {}
        Err(_) => return Report::Garbled,
    }
    match tag[0] {
        b'R' => Report::Ready,
        b'P' => {
            let mut pid = [0u8; 4];
            match pipe.read_exact(&mut pid) {
                Ok(()) => Report::Pid(i32::from_le_bytes(pid)),
                Err(_) => Report::Garbled,
            }
        }
        b'E' => {
            let mut rest = [0u8; 5];
            match pipe.read_exact(&mut rest) {
                Ok(()) => Report::Failed {
                    step: Step::from_u8(rest[0]),
                    errno: i32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]),
                },
                Err(_) => Report::Garbled,
            }
        }
        _ => Report::Garbled,
    }
}

/// `R`: a container's root is ready.
pub(super) const READY: [u8; 1] = *b"R";

/// `P` + the pid of the process the exec helper cloned.
pub(super) fn pid_message(pid: i32) -> [u8; 5] {
    let mut msg = [0u8; 5];
    msg[0] = b'P';
    msg[1..].copy_from_slice(&pid.to_le_bytes());
    msg
}

/// `E` + the step that failed + its errno.
pub(super) fn failed_message(step: Step, errno: i32) -> [u8; 6] {
    let mut msg = [0u8; 6];
    msg[0] = b'E';
    msg[1] = step as u8;
    msg[2..].copy_from_slice(&errno.to_le_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::stdio::pipe;
    use super::*;

    #[test]
    fn failure_reports_name_the_step() {
        let err = Report::Failed {
            step: Some(Step::Execve),
            errno: libc::ENOENT,
        }
        .into_error("starting the container process");
        assert_eq!(
            err.to_string(),
            "starting the container process: execve failed: ENOENT: No such file or directory"
        );
        let err = Report::Failed {
            step: None,
            errno: libc::EPERM,
        }
        .into_error("container setup");
        assert_eq!(
            err.to_string(),
            "container setup: an unknown step failed: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn messages_read_back_as_written() {
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(step as usize, i, "{step:?}");
            assert_eq!(Step::from_u8(step as u8), Some(step));
        }
        assert_eq!(Step::from_u8(u8::try_from(Step::ALL.len()).unwrap()), None);

        let (r, w) = pipe().unwrap();
        let mut w = File::from(w);
        w.write_all(&READY).unwrap();
        w.write_all(&pid_message(4242)).unwrap();
        w.write_all(&failed_message(Step::MountDevPts, libc::EACCES))
            .unwrap();
        drop(w);
        let mut r = File::from(r);
        assert!(matches!(read_report(&mut r), Report::Ready));
        assert!(matches!(read_report(&mut r), Report::Pid(4242)));
        assert!(matches!(
            read_report(&mut r),
            Report::Failed {
                step: Some(Step::MountDevPts),
                errno: libc::EACCES
            }
        ));
        assert!(matches!(read_report(&mut r), Report::Exec));
    }
}
