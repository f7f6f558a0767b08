//! The per-sandbox state directory and the `state.json` record in it.
//!
//! `<state_dir>/<sandbox-id>/` (mode 0700) holds everything a sandbox owns on the host: the
//! Init-Data image, the agent and QMP sockets, the console log, the 9p share and `state.json`.
//! `coffer inspect` reads `state.json`; the shim's `delete` subcommand reads it to find a VM
//! left behind by a shim that died. Removing the directory is the last step of every teardown.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Name of the record inside a sandbox's state directory.
pub const STATE_FILE: &str = "state.json";

/// What Coffer records about a running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    /// containerd's id of the sandbox (the pod).
    pub sandbox_id: String,
    /// `none`, `tdx` or `snp`.
    pub tee: String,
    /// Whether the Init-Data is bound into a hardware launch measurement (false for TEE none).
    pub measured: bool,
    /// The Init-Data digest, if the pod has Init-Data.
    pub initdata: Option<InitDataRecord>,
    /// What the guest agent reported about the Init-Data it read (one line).
    #[serde(default)]
    pub guest_report: String,
    /// Process id of the hypervisor.
    pub vm_pid: u32,
    /// The hypervisor command line as it was started.
    pub launch: LaunchCommand,
    /// The sandbox's bundle directory (containerd's).
    pub bundle: PathBuf,
    /// The configuration file the sandbox was started with.
    pub config_path: PathBuf,
    /// When the sandbox became ready, seconds since the Unix epoch (UTC).
    pub created_unix: u64,
    /// The pod's network as the VM got it; absent for a pod without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRecord>,
}

/// The pod's network, connected to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The pod's network namespace (CNI's).
    pub netns: PathBuf,
    /// The interface connected to the VM, e.g. `eth0`.
    pub interface: String,
    /// Its MAC address, which the guest NIC has too.
    pub mac: String,
    /// Its addresses, `10.88.0.5/16`.
    pub addresses: Vec<String>,
    /// `configured`, or why the guest has no network.
    pub status: String,
}

/// The Init-Data facts worth showing (never the document itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitDataRecord {
    /// `sha256`, `sha384` or `sha512`.
    pub algorithm: String,
    /// The digest in lower-case hex, as `coffer initdata digest` prints it.
    pub digest: String,
    /// Where the document came from: `annotation` or the default file's path.
    pub source: String,
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments, without argv\[0\].
    pub args: Vec<String>,
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id cannot be a directory name.
    #[error("invalid id {0:?}: ids are 1-128 characters of A-Z a-z 0-9 _ . - and do not start with . or -")]
    BadId(String),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `state.json` exists but is not a record this version understands.
    #[error("{path} is not a Coffer sandbox record: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that a containerd id is safe to use as a path component.
///
/// containerd itself allows `[A-Za-z0-9_.-]`, so this refuses nothing containerd produces; it
/// stops `..` or `/` from turning an id into a path outside the state root.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// One sandbox's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The directory of `sandbox_id` under `root`; does not touch the filesystem.
    pub fn new(root: &Path, sandbox_id: &str) -> Result<StateDir, StateError> {
        check_id(sandbox_id)?;
        Ok(StateDir {
            path: root.join(sandbox_id),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Creates the directory with mode 0700 (and the root, 0711, if needed).
    ///
    /// Fails if it already exists: a leftover from a sandbox with the same id must be cleaned
    /// up by `delete`, not silently reused.
    pub fn create(&self) -> Result<(), StateError> {
        if let Some(root) = self.path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(root)
                .map_err(io("cannot create state root", root))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&self.path)
            .map_err(io("cannot create sandbox state directory", &self.path))
    }

    /// Writes a file inside the directory with mode 0600, replacing it atomically.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, StateError> {
        let target = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        file.write_all(bytes).map_err(io("cannot write", &tmp))?;
        file.sync_all().map_err(io("cannot write", &tmp))?;
        fs::rename(&tmp, &target).map_err(io("cannot rename into place", &target))?;
        Ok(target)
    }

    /// Records the sandbox.
    pub fn write_state(&self, state: &SandboxState) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: self.state_file(),
            source,
        })?;
        json.push(b'\n');
        self.write_private(STATE_FILE, &json).map(drop)
    }

    /// Reads the record; `None` when the directory or the record does not exist.
    pub fn read_state(&self) -> Result<Option<SandboxState>, StateError> {
        let file = self.state_file();
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    action: "cannot read",
                    path: file,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path: file, source })
    }

    /// Removes the directory and everything in it; a directory already gone is fine.
    ///
    /// Mount points inside it must have been unmounted first: `remove_dir_all` does not cross
    /// into a mounted filesystem's content but fails on the busy mount point.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                action: "cannot remove",
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2026-11-28T18:49:27Z`).
pub fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm: avoids a date crate for one line of output.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample(id: &str) -> SandboxState {
        SandboxState {
            sandbox_id: id.into(),
            tee: "none".into(),
            measured: false,
            initdata: Some(InitDataRecord {
                algorithm: "sha256".into(),
                digest: coffer_testkit::KATA_DIGEST_HEX.into(),
                source: "annotation".into(),
            }),
            guest_report: "unmeasured (no TEE); the guest's digest matches the kernel command line"
                .into(),
            vm_pid: 4242,
            launch: LaunchCommand {
                program: "qemu-system-x86_64".into(),
                args: vec!["-m".into(), "512".into()],
            },
            bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc".into(),
            config_path: "/etc/coffer/config.toml".into(),
            network: None,
            created_unix: 1_795_000_000,
        }
    }

    #[test]
    fn ids_that_escape_the_root_are_refused() {
        for bad in ["", "..", ".", "a/b", "../x", "-x", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "0f3e", "a.b-c_d", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            StateDir::new(Path::new("/run/coffer"), "../etc").unwrap_err().to_string(),
            "invalid id \"../etc\": ids are 1-128 characters of A-Z a-z 0-9 _ . - and do not start with . or -"
        );
    }

    #[test]
    fn state_round_trips_with_private_modes() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(&root.path().join("coffer"), "pod1").unwrap();
        assert_eq!(dir.read_state().unwrap(), None);
        dir.create().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        let state = sample("pod1");
        dir.write_state(&state).unwrap();
        assert_eq!(mode(&dir.state_file()), 0o600);
        assert_eq!(dir.read_state().unwrap(), Some(state));
        // Creating again refuses to reuse a leftover.
        assert!(dir.create().is_err());
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }

    #[test]
    fn state_json_field_names_are_stable() {
        let json: serde_json::Value = serde_json::to_value(sample("p")).unwrap();
        assert_eq!(json["tee"], "none");
        assert_eq!(json["measured"], false);
        assert_eq!(json["vm_pid"], 4242);
        assert_eq!(json["initdata"]["digest"], coffer_testkit::KATA_DIGEST_HEX);
        assert_eq!(json["launch"]["program"], "qemu-system-x86_64");
        assert_eq!(json["launch"]["args"][1], "512");
    }

    #[test]
    fn corrupt_record_is_reported_with_its_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path(), "p").unwrap();
        dir.create().unwrap();
        fs::write(dir.state_file(), b"{").unwrap();
        let e = dir.read_state().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{} is not a Coffer sandbox record",
                dir.state_file().display()
            )),
            "{e}"
        );
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
