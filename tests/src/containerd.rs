//! A private containerd for one test: `packaging/dev/up.sh` in a fresh temporary directory,
//! `packaging/dev/down.sh` on drop. Its socket, root, state, CNI config and Coffer configs all
//! live in that directory, so tests never touch the machine's own containerd.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{tools, Cri, CriError};

/// Why the private containerd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No temporary directory.
    #[error("cannot create a directory for the private containerd: {0}")]
    TempDir(#[source] std::io::Error),
    /// up.sh could not be run.
    #[error("cannot run {}: {source}", script.display())]
    Spawn {
        /// The script.
        script: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// up.sh failed.
    #[error("packaging/dev/up.sh failed ({status}): {stderr}")]
    Up {
        /// How it exited.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// up.sh printed no socket path.
    #[error("packaging/dev/up.sh printed no socket path (stdout: {stdout:?})")]
    NoSocket {
        /// What it printed.
        stdout: String,
    },
}

/// What the host holds that a pod could leave behind, counted for one private containerd: its
/// pods' QEMU processes and shims, mounts under its directory, Coffer sandbox state, and the
/// CNI network namespaces (each holds a pod's TAP). Compare one taken before with one after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// QEMU processes.
    pub vms: usize,
    /// Coffer shims.
    pub shims: usize,
    /// Mount points under the containerd's directory.
    pub mounts: usize,
    /// Sandbox state directories.
    pub state: usize,
    /// CNI network namespaces on the host (`/run/netns/cni-*`): not only this containerd's,
    /// so compare only within one test that runs alone.
    pub netns: usize,
}

/// A running private containerd; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateContainerd {
    dir: PathBuf,
    socket: PathBuf,
    up_stderr: String,
    options: Options,
}

/// Options for [`PrivateContainerd::start_with`].
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Directory of the shim and CLI (env COFFER_BIN_DIR for up.sh).
    pub bin_dir: Option<PathBuf>,
    /// Guest image directory (env COFFER_GUEST_DIR for up.sh).
    pub guest_dir: Option<PathBuf>,
    /// Accelerator for the coffer-qemu handler (env COFFER_ACCEL for up.sh).
    pub accel: Option<String>,
    /// Register only the runc handler (env COFFER_HANDLERS=none for up.sh), as a node looks
    /// before `packaging/install.sh` adds Coffer's.
    pub runc_only: bool,
    /// The coffer-qemu handler's `rootfs` (env COFFER_ROOTFS for up.sh): `guest` or `host`.
    /// None: as packaged (`guest`).
    pub rootfs: Option<String>,
    /// The containerd binary to run (env COFFER_CONTAINERD for up.sh), e.g. one of
    /// [`tools::other_containerd`]; up.sh writes its config in that version's native format.
    /// None: containerd on PATH.
    pub containerd: Option<PathBuf>,
}

impl Options {
    /// The binaries and guest image found by [`tools`], if any, and the accelerator COFFER_ACCEL
    /// names; everything else as up.sh defaults it.
    pub fn found() -> Options {
        Options {
            bin_dir: tools::bin_dir().ok(),
            guest_dir: tools::guest_dir().ok(),
            accel: std::env::var("COFFER_ACCEL").ok().filter(|a| !a.is_empty()),
            ..Options::default()
        }
    }
}

/// A value up.sh recorded in `dir`/up.env.
pub fn up_env(dir: &Path, key: &str) -> Result<String, String> {
    let env = std::fs::read_to_string(dir.join("up.env"))
        .map_err(|e| format!("reading {}/up.env: {e}", dir.display()))?;
    env.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .ok_or_else(|| format!("{}/up.env has no {key}", dir.display()))
}

impl PrivateContainerd {
    /// Starts one with the binaries and guest image found by [`tools`], if any, and the
    /// coffer-qemu handler sharing containerd's snapshots with the guest (`rootfs = "host"`):
    /// the tests of everything but image handling run without a registry. Guest pull, the
    /// packaged default, is [`PrivateContainerd::start_guest_pull`].
    pub fn start() -> Result<PrivateContainerd, StartError> {
        PrivateContainerd::start_with(&Options {
            rootfs: Some("host".into()),
            ..Options::found()
        })
    }

    /// Starts one as [`PrivateContainerd::start`] does, with the coffer-qemu handler as
    /// packaged: the guest pulls each image itself (`rootfs = "guest"`).
    pub fn start_guest_pull() -> Result<PrivateContainerd, StartError> {
        PrivateContainerd::start_with(&Options {
            rootfs: Some("guest".into()),
            ..Options::found()
        })
    }

    /// Starts one with explicit options.
    pub fn start_with(options: &Options) -> Result<PrivateContainerd, StartError> {
        // Short paths under /tmp: every socket path (containerd's, and each sandbox's under
        // DIR/vm) must fit a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("cf-")
            .tempdir_in("/tmp")
            .map_err(StartError::TempDir)?
            .keep();
        // From here on, dropping `fixture` runs down.sh whatever happened.
        let mut fixture = PrivateContainerd {
            dir,
            socket: PathBuf::new(),
            up_stderr: String::new(),
            options: options.clone(),
        };
        fixture.up()?;
        Ok(fixture)
    }

    /// Runs up.sh on this fixture's directory: starts containerd, or does nothing when it runs.
    fn up(&mut self) -> Result<(), StartError> {
        let options = &self.options;
        let script = tools::workspace().join("packaging/dev/up.sh");
        let mut cmd = Command::new(&script);
        cmd.arg(&self.dir);
        if let Some(d) = &options.bin_dir {
            cmd.env("COFFER_BIN_DIR", d);
        }
        if let Some(d) = &options.guest_dir {
            cmd.env("COFFER_GUEST_DIR", d);
        }
        if let Some(a) = &options.accel {
            cmd.env("COFFER_ACCEL", a);
        }
        if options.runc_only {
            cmd.env("COFFER_HANDLERS", "none");
        }
        if let Some(c) = &options.containerd {
            cmd.env("COFFER_CONTAINERD", c);
        }
        if let Some(r) = &options.rootfs {
            cmd.env("COFFER_ROOTFS", r);
        }
        let out = cmd.output().map_err(|source| StartError::Spawn {
            script: script.clone(),
            source,
        })?;
        let fixture = self;
        fixture.up_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(StartError::Up {
                status: out.status.to_string(),
                stderr: fixture.up_stderr.trim().to_owned(),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(socket) = stdout.lines().last().filter(|l| l.ends_with(".sock")) else {
            return Err(StartError::NoSocket { stdout });
        };
        fixture.socket = PathBuf::from(socket);
        Ok(())
    }

    /// Stops containerd (SIGTERM, then waits for it), keeping its directory and config, so a
    /// test can edit the config and [`restart`](Self::restart) it.
    pub fn stop_containerd(&self) -> Result<(), String> {
        self.signal_containerd("TERM")
    }

    /// Kills containerd with SIGKILL, as a crash would, leaving its shims and pods behind.
    pub fn kill_containerd(&self) -> Result<(), String> {
        self.signal_containerd("KILL")
    }

    fn signal_containerd(&self, signal: &str) -> Result<(), String> {
        let pid_file = self.dir.join("containerd.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
        let pid = pid.trim().to_owned();
        let alive = || Path::new("/proc").join(&pid).exists();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {pid} failed: {status}"));
        }
        // containerd is the child of nobody here (setsid), so /proc tells when it is gone.
        for _ in 0..300 {
            if !alive() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(format!(
            "containerd {pid} did not stop within 30 s of SIGTERM"
        ))
    }

    /// Starts containerd again with the config already in its directory.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.up()
    }

    /// containerd's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The directory holding everything this containerd made.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A value up.sh recorded in DIR/up.env (SOCK, BRIDGE, SUBNET, CONTAINERD, CTR).
    pub fn up_env(&self, key: &str) -> Result<String, String> {
        up_env(&self.dir, key)
    }

    /// containerd's gRPC (and CRI) socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The Coffer state directory the coffer-* handlers use (`state_dir` of their configs).
    pub fn coffer_state_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// The VMs (QEMU processes) of this containerd's pods.
    pub fn vms(&self) -> Vec<u32> {
        tools::processes("qemu-system", &self.dir.to_string_lossy())
    }

    /// What the Coffer state directory holds besides the host's KVM speed verdict: the
    /// sandboxes' state.
    pub fn sandbox_state(&self) -> Vec<String> {
        std::fs::read_dir(self.coffer_state_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != coffer_shim::sandbox::KVM_SPEED_RECORD)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the host holds for this containerd's pods now.
    pub fn footprint(&self) -> Footprint {
        let netns = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("cni-"))
                    .count()
            })
            .unwrap_or(0);
        Footprint {
            vms: self.vms().len(),
            shims: tools::processes("containerd-shim-coffer", &self.socket.to_string_lossy()).len(),
            mounts: tools::mounts_under(&self.dir).len(),
            state: self.sandbox_state().len(),
            netns,
        }
    }

    /// The footprint once it equals `want`, or as it is after `limit`: containerd cleans up
    /// after a dead shim in the background, and shims exit after their last task is deleted.
    pub fn settled_footprint(&self, want: &Footprint, limit: std::time::Duration) -> Footprint {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let now = self.footprint();
            if now == *want || std::time::Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// containerd's open descriptors (0 when it is not running).
    pub fn containerd_fds(&self) -> usize {
        let pid = std::fs::read_to_string(self.dir.join("containerd.pid")).unwrap_or_default();
        std::fs::read_dir(Path::new("/proc").join(pid.trim()).join("fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Where pods of the tests keep their container logs.
    pub fn log_root(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// A scratch directory for the test's own files.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// containerd's own log, for failure messages.
    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log.
    pub fn containerd_log_tail(&self, n: usize) -> String {
        let log = self.containerd_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ctr` (the one up.sh chose for this containerd) in the CRI's namespace: its stdout, or
    /// its stderr as the error.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let ctr = self.up_env("CTR").unwrap_or_else(|_| "ctr".to_owned());
        let out = std::process::Command::new(&ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| format!("running {ctr}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What up.sh warned about (a missing shim or guest image).
    pub fn up_warnings(&self) -> &str {
        &self.up_stderr
    }

    /// A CRI client connected to this containerd.
    pub fn cri(&self) -> Result<Cri, CriError> {
        Cri::connect(&self.socket)
    }

    /// Stops containerd and removes everything (what drop does), reporting down.sh's failure.
    pub fn down(&self) -> Result<(), String> {
        let script = tools::workspace().join("packaging/dev/down.sh");
        let out = Command::new(&script)
            .arg(&self.dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "down.sh {} failed ({}): {}",
                self.dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
    }
}
