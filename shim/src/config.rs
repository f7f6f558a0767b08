//! The shim's configuration: one TOML file per runtime handler.
//!
//! containerd names the file in the handler's options (`ConfigPath = "..."`, see
//! [`crate::options`]); without one the shim reads [`DEFAULT_CONFIG_PATH`]. Every field has a
//! safe default, so an empty file (or none at all at the default path) gives a working
//! development setup: no TEE, QEMU with the guest image under `/usr/local/share/coffer/guest/`.
//!
//! ```toml
//! tee = "none"                  # none | tdx | snp
//! required = false              # refuse pods that bring no Init-Data (and there is no default)
//! default = "/etc/coffer/initdata/default.toml"  # Init-Data for pods that bring none
//! agent_timeout_secs = 120      # how long to wait for the guest agent's hello
//! state_dir = "/run/coffer"     # per-sandbox state lives in <state_dir>/<sandbox-id>
//! rootfs = "guest"              # guest | host: where container root filesystems come from
//!
//! [vm]                          # the hypervisor crate's VmConfig
//! path = "qemu-system-x86_64"
//! accel = "auto"                # auto | kvm | tcg
//! kernel = "/usr/local/share/coffer/guest/vmlinuz"
//! initrd = "/usr/local/share/coffer/guest/initrd.img"
//! vcpus = 1
//! memory_mib = 512
//!
//! [initdata]                    # bounds on what a pod may send
//! max_encoded = 262144          # bytes of annotation text
//! max_inflated = 4194304        # bytes of document after gunzip
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_hypervisor::{Tee, VmConfig};
use coffer_initdata::Limits;
use serde::Deserialize;

/// Where the configuration is read from when the handler names none.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coffer/config.toml";

/// Default root of the per-sandbox state directories.
pub const DEFAULT_STATE_DIR: &str = "/run/coffer";

/// Default wait for the guest agent's hello. Generous, because without KVM (TCG) a guest
/// takes several seconds to reach userspace, and more on a loaded host.
pub const DEFAULT_AGENT_TIMEOUT_SECS: u64 = 120;

/// The whole configuration of one runtime handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which TEE the sandboxes of this handler run in.
    pub tee: Tee,
    /// Refuse a pod that brings no Init-Data when there is no `default` either.
    pub required: bool,
    /// An Init-Data document (plain TOML) used for pods that bring none.
    pub default: Option<PathBuf>,
    /// How to launch the VM.
    pub vm: VmConfig,
    /// Bounds on the Init-Data a pod may send.
    pub initdata: Limits,
    /// Seconds to wait for the guest agent's hello before giving up on the sandbox.
    pub agent_timeout_secs: u64,
    /// Root of the per-sandbox state directories.
    pub state_dir: PathBuf,
    /// Where container root filesystems come from. Absent: `guest`.
    pub rootfs: Option<RootfsSource>,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// The guest pulls the image named by the container's `io.kubernetes.cri.image-name`
    /// annotation from its registry, verifies it and unpacks it into guest memory; the VM gets
    /// no share from the host at all. The only mode the TDX and SNP handlers accept.
    Guest,
    /// containerd's snapshot on the host, shared into the guest over 9p (read-write). Not
    /// confidential: the host sees and can change everything the container reads and writes.
    /// Only for the plain `tee = "none"` handler.
    Host,
}

impl Default for Config {
    fn default() -> Self {
        // VmConfig's defaults already point at the installed guest image.
        let vm = VmConfig::default();
        Config {
            tee: Tee::None,
            required: false,
            default: None,
            vm,
            initdata: Limits::default(),
            agent_timeout_secs: DEFAULT_AGENT_TIMEOUT_SECS,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            rootfs: None,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read coffer config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has a wrong value.
    #[error("bad coffer config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where in the file and what is wrong, on one line.
        detail: String,
    },
    /// A value parsed but cannot work.
    #[error("bad coffer config {path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending field, as a TOML key path.
        field: &'static str,
        /// Why it cannot work.
        reason: String,
    },
}

impl Config {
    /// The agent timeout as a duration.
    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }

    /// Where container root filesystems come from: as configured, else `guest`.
    pub fn rootfs_source(&self) -> RootfsSource {
        self.rootfs.unwrap_or(RootfsSource::Guest)
    }

    /// Reads the configuration at `path`.
    ///
    /// A missing file at the default path means "all defaults"; a missing file the operator
    /// named explicitly is an error, because silently ignoring a typo in `ConfigPath` would run
    /// pods with the wrong TEE.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses a configuration; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: describe_toml_error(&e, text),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason: reason.to_string(),
        };
        if self.agent_timeout_secs == 0 {
            return Err(invalid("agent_timeout_secs", "must be at least 1 second"));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        if self.initdata.max_encoded == 0 {
            return Err(invalid("initdata.max_encoded", "must be greater than zero"));
        }
        if self.initdata.max_inflated == 0 {
            return Err(invalid(
                "initdata.max_inflated",
                "must be greater than zero",
            ));
        }
        if self.tee != Tee::None && self.rootfs == Some(RootfsSource::Host) {
            return Err(invalid(
                "rootfs",
                &format!(
                    "\"host\" shares the host's copy of every container's files with the guest, which a {} pod must not trust; use \"guest\"",
                    self.tee.display_name()
                ),
            ));
        }
        if self.vm.user.is_some() && self.rootfs == Some(RootfsSource::Host) {
            return Err(invalid(
                "vm.user",
                "QEMU serves the host-mode share (rootfs = \"host\") with the host's file permissions, which needs root; unset user or use rootfs = \"guest\"",
            ));
        }
        if let Some(default) = &self.default {
            if !default.is_absolute() {
                return Err(invalid("default", "must be an absolute path"));
            }
        }
        Ok(())
    }
}

/// Turns toml's multi-line error (with a source excerpt) into one line that still says where:
/// crictl and kubelet print the message on one line.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let column = text[line_start..start].chars().count() + 1;
    format!("line {line_no}, column {column} (`{line}`): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/coffer/test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.tee, Tee::None);
        assert_eq!(
            c.vm.kernel,
            PathBuf::from("/usr/local/share/coffer/guest/vmlinuz")
        );
        assert_eq!(
            c.vm.initrd,
            PathBuf::from("/usr/local/share/coffer/guest/initrd.img")
        );
        assert_eq!(c.state_dir, PathBuf::from("/run/coffer"));
        assert_eq!(c.agent_timeout_secs, 120);
        assert_eq!(c.initdata, Limits::default());
        assert!(!c.required);
        assert_eq!(c.default, None);
        assert_eq!(c.rootfs_source(), RootfsSource::Guest);
        assert_eq!(
            parse("rootfs = \"host\"").unwrap().rootfs_source(),
            RootfsSource::Host
        );
    }

    #[test]
    fn tee_handlers_pull_in_the_guest_and_refuse_host_sharing() {
        assert_eq!(
            parse("tee = \"tdx\"").unwrap().rootfs_source(),
            RootfsSource::Guest
        );
        assert_eq!(
            parse("rootfs = \"guest\"").unwrap().rootfs_source(),
            RootfsSource::Guest
        );
        for tee in ["tdx", "snp"] {
            let e = parse(&format!("tee = \"{tee}\"\nrootfs = \"host\"")).unwrap_err();
            assert!(
                e.to_string()
                    .contains("rootfs: \"host\" shares the host's copy"),
                "{e}"
            );
        }
        assert!(parse("rootfs = \"disk\"").is_err());
    }

    #[test]
    fn full_file_is_read() {
        let c = parse(
            r#"
tee = "snp"
required = true
default = "/etc/coffer/default.toml"
agent_timeout_secs = 30
state_dir = "/tmp/coffer-state"
[vm]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/g/vmlinuz"
initrd = "/g/initrd.img"
vcpus = 2
memory_mib = 1024
[initdata]
max_encoded = 1000
max_inflated = 2000
"#,
        )
        .unwrap();
        assert_eq!(c.tee, Tee::Snp);
        assert_eq!(c.agent_timeout(), Duration::from_secs(30));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/coffer-state"));
        assert_eq!(c.vm.vcpus, 2);
        assert_eq!(c.vm.memory_mib, 1024);
        assert_eq!(c.vm.kernel, PathBuf::from("/g/vmlinuz"));
        assert!(c.required);
        assert_eq!(c.default, Some(PathBuf::from("/etc/coffer/default.toml")));
        assert_eq!(
            c.initdata,
            Limits {
                max_encoded: 1000,
                max_inflated: 2000
            }
        );
    }

    #[test]
    fn bad_tee_names_file_line_and_value() {
        let e = parse("agent_timeout_secs = 5\ntee = \"sgx\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bad coffer config /etc/coffer/test.toml: line 2"),
            "{e}"
        );
        assert!(e.contains("`tee = \"sgx\"`"), "{e}");
        assert!(e.contains("sgx"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse("tee = \"none\"\nrequire = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/coffer/test.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `require`"), "{e}");
        let e = parse("[initdata]\nmax_size = 1\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `max_size`"), "{e}");
    }

    #[test]
    fn shipped_handler_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("SKIP: no {}", dir.display());
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("[vm]\nmemory_mib = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn an_unprivileged_qemu_needs_guest_pull() {
        let e = parse("rootfs = \"host\"\n[vm]\nuser = \"nobody\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "bad coffer config /etc/coffer/test.toml: vm.user: QEMU serves the host-mode share"
            ),
            "{e}"
        );
        let c = parse("[vm]\nuser = \"nobody\"\n").unwrap();
        assert_eq!(c.vm.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn zero_timeout_is_refused() {
        let e = parse("agent_timeout_secs = 0").unwrap_err().to_string();
        assert_eq!(
            e,
            "bad coffer config /etc/coffer/test.toml: agent_timeout_secs: must be at least 1 second"
        );
    }

    #[test]
    fn relative_state_dir_is_refused() {
        let e = parse("state_dir = \"run\"").unwrap_err().to_string();
        assert_eq!(
            e,
            "bad coffer config /etc/coffer/test.toml: state_dir: must be an absolute path"
        );
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("absent.toml");
        let e = Config::load(&named).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read coffer config {}", named.display())),
            "{e}"
        );
    }
}
