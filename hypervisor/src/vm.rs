//! The VM process: spawn QEMU from a [`LaunchPlan`], talk QMP, stop it, reap it.
//!
//! QEMU is started directly (no shell) with stderr captured, so a refusal to start is reported
//! in QEMU's own words. Stopping escalates: ACPI powerdown, then QMP `quit`, then SIGKILL; the
//! process is always waited for, so no zombie is left behind.

use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::config::HypervisorKind;
use crate::plan::{LaunchPlan, VmResources, TAP_FD};
use crate::qmp::Qmp;
use crate::{Error, Result};

/// How long QEMU may take to open its QMP socket. QEMU opens it before the guest starts, so this
/// only bounds a host that is badly overloaded.
pub const QMP_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of QEMU's stderr is kept (the end of it).
const STDERR_KEEP: usize = 16 * 1024;

/// A running VM. Dropping it without [`Vm::stop`] kills QEMU (SIGKILL).
#[derive(Debug)]
pub struct Vm {
    child: Child,
    pid: u32,
    program: PathBuf,
    qmp: Option<Qmp>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_task: Option<JoinHandle<()>>,
    exit: Option<VmExit>,
    /// Whether QMP `system_powerdown` reaches the guest ([`LaunchPlan::power_button`]).
    power_button: bool,
}

/// `query-status`: QEMU's run state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    /// QEMU's run state: `running`, `paused`, `shutdown`, `internal-error`, ...
    pub status: String,
    /// Whether vCPUs are executing.
    pub running: bool,
}

/// Which step of [`Vm::stop`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// The guest powered off after an ACPI power button press (skipped for a guest without
    /// one).
    Powerdown,
    /// QEMU quit on QMP `quit`.
    Quit,
    /// QEMU was killed with SIGKILL.
    Kill,
}

/// How and why a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// The step of [`Vm::stop`] that ended it; `None` when it ended on its own.
    pub stopped_by: Option<StopStep>,
    /// The reason of QEMU's last `SHUTDOWN` event (`guest-shutdown`, `guest-reset`,
    /// `guest-panic`, `host-qmp-quit`, ...), when QMP reported one.
    pub shutdown_reason: Option<String>,
    /// The end of QEMU's stderr.
    pub stderr: String,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match (self.stopped_by, self.shutdown_reason.as_deref()) {
            (Some(StopStep::Powerdown), _) => "the guest powered off on request".to_string(),
            (Some(StopStep::Quit), _) => "stopped with QMP quit".to_string(),
            (Some(StopStep::Kill), _) => {
                "killed after powerdown and quit had no effect".to_string()
            }
            (None, Some("guest-shutdown")) => "the guest powered off".to_string(),
            (None, Some("guest-reset")) => {
                "the guest reset, which ends the VM (a guest without ACPI powers off this way; \
                 a kernel panic resets with panic=-1)"
                    .to_string()
            }
            (None, Some("guest-panic")) => "the guest panicked".to_string(),
            (None, Some(reason)) => format!("QEMU shut down ({reason})"),
            (None, None) => "QEMU ended without reporting a shutdown".to_string(),
        };
        write!(f, "VM ended ({}): {why}", describe_status(self.status))?;
        if !self.status.success() && !self.stderr.is_empty() {
            write!(f, "; stderr: {}", self.stderr)?;
        }
        Ok(())
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

impl Vm {
    /// Starts the VM and waits until QMP answers.
    ///
    /// When QEMU exits first, the error carries its stderr (for example
    /// `vm-type TDX not supported by KVM`). Nothing is left running on error.
    pub async fn spawn(plan: &LaunchPlan, resources: &VmResources) -> Result<Vm> {
        if plan.hypervisor != HypervisorKind::Qemu {
            return Err(Error::CannotRunPlan);
        }
        if let Some(share) = &resources.share_dir {
            std::fs::create_dir_all(share).map_err(|source| Error::Io {
                what: format!("cannot create the share directory {share:?}"),
                source,
            })?;
        }
        if let Some(run_as) = &resources.run_as {
            hand_over(resources, run_as)?;
        }
        // A socket left by an earlier run would accept nothing and only delay the start.
        remove_stale(&resources.qmp_socket)?;
        remove_stale(&resources.agent_socket)?;
        remove_stale(&resources.console_socket)?;

        let mut command = Command::new(&plan.program);
        command
            .args(&plan.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let tap = resources.nic.as_ref().map(|nic| nic.tap_fd);
        let huge_pages = plan.transparent_huge_pages;
        let run_as = resources
            .run_as
            .as_ref()
            .map(|r| (r.uid, r.gid, r.groups.clone()));
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls (setgroups, setgid, setuid, prctl, getppid, dup2,
        // fcntl) on plain integers and a vector allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                // Groups first, the user last: after setuid nothing else can be changed. The
                // parent-death signal is set after, as a change of user clears it.
                if let Some((uid, gid, groups)) = &run_as {
                    if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                        || libc::setgid(*gid) < 0
                        || libc::setuid(*uid) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The VM dies with the process that started it (the shim): no VM outlives its
                // pod's shim, even one killed with SIGKILL. A parent already gone is caught by
                // getppid.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other(
                        "the parent exited before the VM started",
                    ));
                }
                // Kept across exec: QEMU's madvise(MADV_HUGEPAGE) then has no effect.
                if !huge_pages && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(tap) = tap {
                    // dup2 onto itself keeps close-on-exec set: clear it in every case.
                    if (tap != TAP_FD && libc::dup2(tap, TAP_FD) < 0)
                        || libc::fcntl(TAP_FD, libc::F_SETFD, 0) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: plan.program.clone(),
            hint: if source.kind() == std::io::ErrorKind::NotFound {
                " (is QEMU installed? set `path` in the [vm] configuration)"
            } else {
                ""
            },
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, program = ?plan.program, "hypervisor started");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(collect_stderr(pipe, Arc::clone(&stderr))));
        let mut vm = Vm {
            child,
            pid,
            program: plan.program.clone(),
            qmp: None,
            stderr,
            stderr_task,
            exit: None,
            power_button: plan.power_button,
        };
        match vm.start(resources).await {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.kill_and_reap().await;
                Err(e)
            }
        }
    }

    /// QMP, then the console, then the guest runs (QEMU was started with `-S`).
    async fn start(&mut self, resources: &VmResources) -> Result<()> {
        let qmp = self.connect_qmp(&resources.qmp_socket).await?;
        self.qmp = Some(qmp);
        // QEMU made every socket before it answered QMP. A plan without the console socket
        // (made by hand, not by LaunchPlan) runs as it was given.
        let console = match UnixStream::connect(&resources.console_socket).await {
            Ok(console) => console,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Qmp(format!(
                    "cannot connect to the console socket: {e}"
                )))
            }
        };
        tokio::spawn(crate::console::pump(
            console,
            resources.console_log.clone(),
            crate::console::CONSOLE_CAP,
        ));
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| Error::Qmp("the QMP connection is closed".into()))?;
        qmp.execute("cont", None).await.map(drop)
    }

    async fn connect_qmp(&mut self, path: &std::path::Path) -> Result<Qmp> {
        let deadline = Instant::now() + QMP_START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(self.early_exit(status).await);
            }
            if let Ok(mut qmp) = Qmp::connect(path).await {
                let left = deadline.saturating_duration_since(Instant::now());
                return match timeout(left, qmp.handshake()).await {
                    Ok(Ok(())) => Ok(qmp),
                    // QEMU accepted the connection, then exited during start-up.
                    Ok(Err(e)) => match timeout(Duration::from_secs(2), self.child.wait()).await {
                        Ok(Ok(status)) => Err(self.early_exit(status).await),
                        _ => Err(e),
                    },
                    Err(_) => Err(Error::QmpTimeout {
                        path: path.to_path_buf(),
                        waited: QMP_START_TIMEOUT,
                    }),
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::QmpTimeout {
                    path: path.to_path_buf(),
                    waited: QMP_START_TIMEOUT,
                });
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().map_err(|source| Error::Io {
            what: format!("cannot wait for {:?}", self.program),
            source,
        })
    }

    async fn early_exit(&mut self, status: ExitStatus) -> Error {
        let stderr = self.stderr_text().await;
        Error::EarlyExit {
            program: self.program.clone(),
            status: describe_status(status),
            stderr: if stderr.is_empty() {
                "it printed nothing on stderr".into()
            } else {
                stderr
            },
        }
    }

    /// QEMU's stderr so far; after exit, all of it (the end, if it was long).
    async fn stderr_text(&mut self) -> String {
        if let Some(task) = self.stderr_task.take() {
            if self.child.try_wait().ok().flatten().is_some() {
                // The pipe closes when QEMU exits; the collector then ends.
                let _ = timeout(Duration::from_secs(1), task).await;
            } else {
                self.stderr_task = Some(task);
            }
        }
        let bytes = self.stderr.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether QMP `system_powerdown` reaches the guest ([`LaunchPlan::power_button`]).
    pub fn has_power_button(&self) -> bool {
        self.power_button
    }

    /// Asks QEMU for its run state.
    pub async fn status(&mut self) -> Result<VmStatus> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| Error::Qmp("the QMP connection is closed".into()))?;
        let value = qmp.execute("query-status", None).await?;
        serde_json::from_value(value)
            .map_err(|e| Error::Qmp(format!("unexpected query-status answer: {e}")))
    }

    /// Stops the VM: ACPI powerdown (when the guest has a power button), then QMP `quit`, each
    /// given `grace` to take effect, then SIGKILL. Always reaps QEMU.
    pub async fn stop(&mut self, grace: Duration) -> Result<VmExit> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        let steps = [
            (StopStep::Powerdown, "system_powerdown"),
            (StopStep::Quit, "quit"),
        ];
        let first = usize::from(!self.power_button);
        for (step, command) in steps.into_iter().skip(first) {
            if let Some(qmp) = self.qmp.as_mut() {
                // `quit` may close the socket before answering; the wait below tells.
                if let Err(e) = qmp.execute(command, None).await {
                    tracing::debug!(pid = self.pid, "QMP {command}: {e}");
                }
            }
            if let Some(status) = self.wait_exit(Some(grace)).await? {
                return Ok(self.finish(status, Some(step)).await);
            }
        }
        tracing::warn!(
            pid = self.pid,
            "QEMU ignored powerdown and quit; killing it"
        );
        self.kill().await
    }

    /// Kills the VM at once (SIGKILL) and reaps it: for a guest that no longer answers.
    pub async fn kill(&mut self) -> Result<VmExit> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        let status = self.kill_and_reap().await.ok_or_else(|| Error::Io {
            what: format!("cannot reap {:?} (pid {})", self.program, self.pid),
            source: std::io::Error::other("wait failed after SIGKILL"),
        })?;
        Ok(self.finish(status, Some(StopStep::Kill)).await)
    }

    /// Waits at most `limit` for the VM to end on its own: `None` if it still runs.
    pub async fn wait_for(&mut self, limit: Duration) -> Result<Option<VmExit>> {
        if let Some(exit) = &self.exit {
            return Ok(Some(exit.clone()));
        }
        match self.wait_exit(Some(limit)).await? {
            Some(status) => Ok(Some(self.finish(status, None).await)),
            None => Ok(None),
        }
    }

    /// Waits until the VM ends on its own (the guest powers off, reboots or QEMU dies).
    pub async fn wait(&mut self) -> Result<VmExit> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        match self.wait_exit(None).await? {
            Some(status) => Ok(self.finish(status, None).await),
            None => Err(Error::Qmp("QEMU did not exit".into())),
        }
    }

    /// Waits until QEMU's process ends, reading nothing else, so it can race other waits
    /// (child reaping is cancel-safe; QMP reads are not). [`Vm::stop`], [`Vm::kill`] or
    /// [`Vm::wait`] then records how it ended.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Waits up to `limit` (forever when `None`) for QEMU to exit, reading QMP events meanwhile
    /// so the shutdown reason is known.
    async fn wait_exit(&mut self, limit: Option<Duration>) -> Result<Option<ExitStatus>> {
        let Vm {
            child,
            qmp,
            program,
            ..
        } = self;
        let waiting = async {
            if let Some(q) = qmp.as_mut() {
                // QEMU closes QMP when it exits; until then, keep recording events.
                while let Ok(Some(_)) = q.read_message().await {}
            }
            child.wait().await
        };
        let result = match limit {
            Some(limit) => match timeout(limit, waiting).await {
                Ok(r) => r,
                Err(_) => return Ok(None),
            },
            None => waiting.await,
        };
        result.map(Some).map_err(|source| Error::Io {
            what: format!("cannot wait for {program:?}"),
            source,
        })
    }

    async fn finish(&mut self, status: ExitStatus, stopped_by: Option<StopStep>) -> VmExit {
        let exit = VmExit {
            status,
            stopped_by,
            shutdown_reason: self.qmp.take().and_then(|q| q.shutdown_reason),
            stderr: self.stderr_text().await,
        };
        tracing::info!(pid = self.pid, "{exit}");
        self.exit = Some(exit.clone());
        exit
    }

    async fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(pid = self.pid, "kill: {e}");
        }
        self.child.wait().await.ok()
    }
}

/// Gives an unprivileged QEMU what it needs of the state directory, and nothing more: a
/// directory of its own for its sockets, passage through the state directory, and read access
/// to the Init-Data image through its group.
fn hand_over(resources: &VmResources, run_as: &crate::RunAs) -> Result<()> {
    use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |what: String| move |source| Error::Io { what, source };
    // Every directory above the state directory must let the user pass; the state directory
    // itself is opened below.
    for dir in resources.state_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let passes = mode & 0o001 != 0
            || (meta.uid() == run_as.uid && mode & 0o100 != 0)
            || (run_as.groups.contains(&meta.gid()) && mode & 0o010 != 0);
        if !passes {
            return Err(Error::InvalidConfig(format!(
                "QEMU runs as {}, who cannot pass through {} (mode {:o}); give it passage (chmod o+x) or use a state_dir it can reach",
                run_as.name,
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    let own = resources.state_dir.join(crate::QEMU_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&own) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("cannot create {own:?}"))(e)),
    }
    // A directory the shim made (never a link the user could have planted: it could not write
    // here before this), given to the user.
    chown(&own, Some(run_as.uid), Some(run_as.gid)).map_err(io(format!(
        "cannot give {own:?} to the user {}",
        run_as.name
    )))?;
    std::fs::set_permissions(&resources.state_dir, std::fs::Permissions::from_mode(0o711))
        .map_err(io(format!(
            "cannot open {:?} for passage",
            resources.state_dir
        )))?;
    if let Some(image) = resources.initdata_image.as_ref().filter(|i| i.exists()) {
        chown(image, None, Some(run_as.gid)).map_err(io(format!(
            "cannot give {image:?} to the group of {}",
            run_as.name
        )))?;
        std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o640))
            .map_err(io(format!("cannot make {image:?} group-readable")))?;
    }
    Ok(())
}

fn remove_stale(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            what: format!("cannot remove the stale socket {path:?}"),
            source,
        }),
    }
}

async fn collect_stderr(mut pipe: ChildStderr, keep: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut kept) = keep.lock() {
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(STDERR_KEEP);
                    kept.drain(..excess);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn nobody() -> crate::RunAs {
        crate::RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        }
    }

    /// The user gets its own sockets' directory and the Init-Data image through its group;
    /// a directory it cannot pass through is named before QEMU would fail on it.
    #[test]
    fn an_unprivileged_qemu_is_handed_only_what_it_needs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: changing owners needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let state = root.path().join("sb");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(state.join("initdata.img"), b"image").unwrap();
        let mut resources = VmResources::in_dir(&state);
        resources.run_as(nobody());
        hand_over(&resources, &nobody()).unwrap();
        let own = std::fs::metadata(state.join(crate::QEMU_DIR)).unwrap();
        assert_eq!((own.uid(), own.mode() & 0o777), (65534, 0o700));
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o711);
        let image = std::fs::metadata(state.join("initdata.img")).unwrap();
        assert_eq!(
            (image.uid(), image.gid(), image.mode() & 0o777),
            (0, 65534, 0o640)
        );

        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = hand_over(&resources, &nobody()).unwrap_err().to_string();
        assert!(
            e.contains("QEMU runs as nobody, who cannot pass through") && e.contains("mode 700"),
            "{e}"
        );
    }
}
