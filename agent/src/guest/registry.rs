//! Where and how the guest pulls images: read only from the measured Init-Data, in the shape
//! Confidential Containers' data hub reads it (`cdh.toml`, section `[image]`), never from the host.
//!
//! ```toml
//! # cdh.toml, an Init-Data entry
//! [image]
//! registry_configuration_uri = "file:///run/confidential-containers/initdata/registries.conf"
//! extra_root_certificates = ["-----BEGIN CERTIFICATE-----\n..."]
//! ```
//!
//! The registry configuration is a containers-registries.conf (v2) file, itself an Init-Data
//! entry: `[[registry]]` tables with `location` (or `prefix`), `insecure = true` for a plain HTTP
//! registry and `blocked = true` for one never to pull from. Other keys of both files are
//! accepted and ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::INITDATA_DIR;

/// The Init-Data entry holding the data hub's configuration.
pub const CDH_CONFIG: &str = "cdh.toml";

/// Largest configuration file read, in bytes (Init-Data entries are small).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why the pull configuration is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file is not valid TOML of the expected shape.
    #[error("{path} is not valid: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A URI names something other than an Init-Data entry.
    #[error("registry_configuration_uri {0:?} is not supported: name an Init-Data entry, file://{INITDATA_DIR}/<name>")]
    Uri(String),
}

#[derive(Debug, Default, Deserialize)]
struct CdhConfig {
    #[serde(default)]
    image: ImageSection,
}

#[derive(Debug, Default, Deserialize)]
struct ImageSection {
    registry_configuration_uri: Option<String>,
    #[serde(default)]
    extra_root_certificates: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RegistriesConf {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RegistryEntry {
    /// Where the registry is (`host[:port]`, optionally with a namespace path).
    pub location: String,
    /// What references it applies to; `location` when absent.
    pub prefix: Option<String>,
    /// Plain HTTP (or TLS without verification in containers' meaning; here: HTTP).
    pub insecure: bool,
    /// Never pull from it.
    pub blocked: bool,
}

/// How the guest pulls, from the Init-Data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullConfig {
    /// The `[[registry]]` entries.
    pub registries: Vec<RegistryEntry>,
    /// Extra trusted roots, PEM.
    pub extra_root_certificates: Vec<String>,
}

impl PullConfig {
    /// Reads `cdh.toml` and the registry configuration it names from `dir` (the Init-Data
    /// directory). No `cdh.toml`: defaults (HTTPS, the webpki roots).
    pub fn load(dir: &Path) -> Result<PullConfig, RegistryConfigError> {
        let cdh_path = dir.join(CDH_CONFIG);
        let Some(text) = read_bounded(&cdh_path)? else {
            return Ok(PullConfig::default());
        };
        let cdh: CdhConfig = toml::from_str(&text).map_err(|e| RegistryConfigError::Parse {
            path: cdh_path.display().to_string(),
            reason: one_line(&e.to_string()),
        })?;
        let mut config = PullConfig {
            registries: Vec::new(),
            extra_root_certificates: cdh.image.extra_root_certificates,
        };
        if let Some(uri) = cdh.image.registry_configuration_uri {
            let path = initdata_file(&uri, dir)?;
            let text = read_bounded(&path)?.ok_or_else(|| RegistryConfigError::Read {
                path: path.display().to_string(),
                reason: "no such Init-Data entry".into(),
            })?;
            let conf: RegistriesConf =
                toml::from_str(&text).map_err(|e| RegistryConfigError::Parse {
                    path: path.display().to_string(),
                    reason: one_line(&e.to_string()),
                })?;
            config.registries = conf.registry;
        }
        Ok(config)
    }

    /// The entry for an image on `registry` (`host[:port]`) in `repository`: the longest
    /// matching prefix, as containers-registries.conf resolves it.
    pub fn entry_for(&self, registry: &str, repository: &str) -> Option<&RegistryEntry> {
        let full = format!("{registry}/{repository}");
        self.registries
            .iter()
            .filter(|r| {
                let p = r.prefix.as_deref().unwrap_or(&r.location);
                !p.is_empty() && (p == registry || full == p || full.starts_with(&format!("{p}/")))
            })
            .max_by_key(|r| r.prefix.as_deref().unwrap_or(&r.location).len())
    }
}

/// `file:///run/confidential-containers/initdata/<name>` -> the entry's path under `dir`.
fn initdata_file(uri: &str, dir: &Path) -> Result<PathBuf, RegistryConfigError> {
    let prefix = format!("file://{INITDATA_DIR}/");
    let name = uri
        .strip_prefix(&prefix)
        .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
        .ok_or_else(|| RegistryConfigError::Uri(uri.to_string()))?;
    Ok(dir.join(name))
}

/// The file's text, `None` when it does not exist; refuses files over [`MAX_CONFIG_BYTES`].
fn read_bounded(path: &Path) -> Result<Option<String>, RegistryConfigError> {
    use std::io::Read;
    let err = |reason: String| RegistryConfigError::Read {
        path: path.display().to_string(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_CONFIG_BYTES {
        return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    Ok(Some(text))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_image_section_and_the_registries_it_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PullConfig::load(dir.path()).unwrap(), PullConfig::default());
        std::fs::write(
            dir.path().join("cdh.toml"),
            r#"socket = "x"
[kbc]
name = "offline_fs_kbc"
[image]
registry_configuration_uri = "file:///run/confidential-containers/initdata/registries.conf"
extra_root_certificates = ["PEM"]
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("registries.conf"),
            r#"unqualified-search-registries = ["docker.io"]
[[registry]]
location = "10.88.0.250:5000"
insecure = true
[[registry]]
prefix = "10.88.0.250:5000/blocked"
location = "10.88.0.250:5000/blocked"
blocked = true
"#,
        )
        .unwrap();
        let c = PullConfig::load(dir.path()).unwrap();
        assert_eq!(c.extra_root_certificates, ["PEM"]);
        let e = c.entry_for("10.88.0.250:5000", "busybox").unwrap();
        assert!(e.insecure && !e.blocked);
        assert!(
            c.entry_for("10.88.0.250:5000", "blocked/x")
                .unwrap()
                .blocked
        );
        assert!(c.entry_for("10.88.0.25:5000", "busybox").is_none());
    }

    #[test]
    fn only_initdata_entries_configure_registries() {
        let dir = Path::new("/x");
        for bad in [
            "kbs:///default/registry-configuration/test",
            "file:///etc/containers/registries.conf",
            "file:///run/confidential-containers/initdata/../x",
            "file:///run/confidential-containers/initdata/",
        ] {
            assert!(
                matches!(initdata_file(bad, dir), Err(RegistryConfigError::Uri(_))),
                "{bad}"
            );
        }
        assert_eq!(
            initdata_file(
                "file:///run/confidential-containers/initdata/registries.conf",
                dir
            )
            .unwrap(),
            Path::new("/x/registries.conf")
        );
    }
}
