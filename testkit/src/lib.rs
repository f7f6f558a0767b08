//! What Coffer's tests share, in one place: the reference Init-Data vectors and the example
//! document (both from `initdata/tests/data`, the only source of test documents), and where the
//! guest image and QEMU are, with the reason a test must skip when they are not.
//!
//! Depends on nothing, so every crate's tests can use it, the spec's own included.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Kata's Init-Data test annotation (the Go runtime's tests; the reference's §6 vector).
pub const KATA_ANNOTATION: &str = include_str!("../../initdata/tests/data/kata-annotation.b64");

/// sha256 of the document [`KATA_ANNOTATION`] carries, as the reference gives it.
pub const KATA_DIGEST_HEX: &str =
    "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Init-Data example every scenario uses (`initdata/tests/data/seed-initdata.toml`).
pub fn seed_initdata_path() -> PathBuf {
    workspace().join("initdata/tests/data/seed-initdata.toml")
}

/// The example's bytes.
pub fn seed_initdata() -> Vec<u8> {
    std::fs::read(seed_initdata_path())
        .unwrap_or_else(|e| panic!("{}: {e}", seed_initdata_path().display()))
}

/// The files of a guest image the tests boot.
pub const GUEST_FILES: [&str; 3] = ["vmlinuz", "vmlinux", "initrd.img"];

/// The guest image directory: `$COFFER_GUEST_DIR`, else `<workspace>/target/guest`. `Err` says
/// what is missing and how to build it, for a test's `SKIP:` line.
pub fn guest_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("COFFER_GUEST_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/guest"));
    for file in GUEST_FILES {
        if !dir.join(file).is_file() {
            return Err(format!(
                "no guest image in {} (missing {file}; packaging/guest/build.sh {} builds it, \
                 or set COFFER_GUEST_DIR)",
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(dir)
}

/// `Err` with the reason when `qemu-system-x86_64` cannot run here.
pub fn qemu() -> Result<(), String> {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("qemu-system-x86_64 is not installed (packaging/dev/deps.sh installs it)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectors_are_the_repositorys_files() {
        assert!(KATA_ANNOTATION.starts_with("H4sI"), "gzip, base64'ed");
        assert!(!KATA_ANNOTATION.ends_with('\n'));
        assert!(seed_initdata().starts_with(b"version = \"0.1.0\""));
    }
}
