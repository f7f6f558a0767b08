//! The Init-Data disk: find it, read it with bounds, check its digest against the launch, deliver
//! it where the Confidential Containers stack expects it, and start that stack.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_initdata::{image, InitData, Limits};

use super::{components, tee};
use crate::protocol::{InitDataReport, Tee, Verification, INITDATA_DIR};
use coffer_contract::KernelParams;

/// The disk's serial, set by the host (`-device virtio-blk-pci,...,serial=initdata`).
pub const SERIAL: &str = "initdata";

/// The entries of `[data]` the Confidential Containers stack reads, delivered as files
/// (`registries.conf`: where the guest pulls images from, see `registry.rs`).
const DELIVERED_KEYS: [&str; 4] = ["aa.toml", "cdh.toml", "policy.rego", "registries.conf"];

/// Finds the Init-Data disk, waiting up to `wait` for the driver to probe it: the `vdX` whose
/// `/sys/block/vdX/serial` is `initdata` (how Coffer attaches it), else the first `vdX` whose
/// first bytes are the image's magic (how Kata's runtime attaches it, without a serial; a
/// kata-agent scans for the magic the same way). Either way the digest check decides whether
/// its document is used.
pub fn find_disk(sys_block: &Path, dev: &Path, wait: Duration) -> Option<PathBuf> {
    let end = Instant::now() + wait;
    loop {
        if let Ok(entries) = fs::read_dir(sys_block) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vd"))
                .collect();
            names.sort();
            let by_serial = names.iter().find(|name| {
                fs::read_to_string(sys_block.join(name).join("serial"))
                    .is_ok_and(|s| s.trim() == SERIAL)
            });
            let found = by_serial.or_else(|| names.iter().find(|name| has_magic(&dev.join(name))));
            if let Some(name) = found {
                return Some(dev.join(name));
            }
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the device starts with the Init-Data image's magic.
fn has_magic(device: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 8];
    fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == image::MAGIC)
}

/// What reading the disk gave.
#[derive(Debug)]
pub enum Found {
    /// A valid document.
    Document(InitData),
    /// No disk.
    NoDisk,
    /// A disk that could not be read or holds no valid document.
    Bad(String),
}

/// Reads and validates the document on `disk`.
pub fn read_disk(disk: &Path, limits: &Limits) -> Found {
    let mut file = match fs::File::open(disk) {
        Ok(f) => f,
        Err(e) => {
            return Found::Bad(format!(
                "cannot open the Init-Data disk {}: {e}",
                disk.display()
            ))
        }
    };
    let bytes = match image::read_from(&mut file, limits) {
        Ok(b) => b,
        Err(e) => return Found::Bad(format!("Init-Data disk {}: {e}", disk.display())),
    };
    match InitData::parse(bytes) {
        Ok(doc) => Found::Document(doc),
        Err(e) => Found::Bad(format!("Init-Data disk {}: {e}", disk.display())),
    }
}

/// Compares the document with what the launch was bound to.
///
/// With a TEE the register is the truth (the command line is the host's word, the register the
/// hardware's). Without one, the command line is all there is, and the result says unmeasured.
pub fn verify(
    found: &Found,
    tee: Tee,
    cmdline: &KernelParams,
    register: RegisterReader,
) -> Verification {
    let cmdline_digest = cmdline
        .initdata_digest
        .as_deref()
        .map(str::to_ascii_lowercase);
    let doc = match found {
        Found::Document(doc) => doc,
        Found::Bad(reason) => {
            return Verification::Error {
                reason: reason.clone(),
            }
        }
        Found::NoDisk => {
            return match (tee, &cmdline_digest) {
                (Tee::None, None) => Verification::NoInitData,
                (Tee::None, Some(d)) => Verification::Error {
                    reason: format!(
                        "the kernel command line names Init-Data digest {d} but no Init-Data disk appeared (none with serial \"{SERIAL}\", none starting with its magic)"
                    ),
                },
                (_, _) => match register(tee) {
                    Ok(reg) if reg.iter().all(|&b| b == 0) => Verification::NoInitData,
                    Ok(reg) => Verification::Error {
                        reason: format!(
                            "the {} register is {} but no Init-Data disk appeared (none with serial \"{SERIAL}\", none starting with its magic)",
                            register_name(tee),
                            hex(&reg)
                        ),
                    },
                    Err(e) => Verification::Error {
                        reason: e.to_string(),
                    },
                },
            };
        }
    };
    let digest = doc.digest();
    match tee {
        Tee::None => match cmdline_digest {
            Some(d) if d == digest.to_hex() => Verification::Unmeasured {
                matches_cmdline: true,
            },
            Some(d) => Verification::Mismatch {
                source: "kernel command line".into(),
                expected: d,
                found: digest.to_hex(),
            },
            None => Verification::Unmeasured {
                matches_cmdline: false,
            },
        },
        Tee::Tdx | Tee::Snp => {
            let want = match tee {
                Tee::Tdx => digest.mrconfigid().to_vec(),
                _ => digest.host_data().to_vec(),
            };
            match register(tee) {
                Ok(reg) if reg == want => Verification::Verified {
                    tee,
                    register: hex(&reg),
                },
                Ok(reg) => Verification::Mismatch {
                    source: register_name(tee).into(),
                    expected: hex(&reg),
                    found: hex(&want),
                },
                Err(e) => Verification::Error {
                    reason: e.to_string(),
                },
            }
        }
    }
}

/// Reads a TEE's Init-Data register; a function so tests can hand in synthetic values.
pub type RegisterReader = fn(Tee) -> Result<Vec<u8>, tee::TeeError>;

/// Reads the real register.
pub fn hardware_register(t: Tee) -> Result<Vec<u8>, tee::TeeError> {
    match t {
        Tee::Tdx => tee::read_mrconfigid().map(|r| r.to_vec()),
        Tee::Snp => tee::read_host_data().map(|r| r.to_vec()),
        Tee::None => Err(tee::TeeError::Unavailable("no TEE".into())),
    }
}

fn register_name(t: Tee) -> &'static str {
    match t {
        Tee::Tdx => "MRCONFIGID",
        Tee::Snp => "HOST_DATA",
        Tee::None => "none",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `initdata.toml` (the exact bytes) and the known `[data]` entries into `dir`
/// (mode 0700, files 0600). Returns the names written, sorted.
///
/// Only `dir` is private: its parents (`/run/confidential-containers`) stay 0755, because
/// guest components that run unprivileged keep their sockets there.
pub fn deliver(doc: &InitData, dir: &Path) -> std::io::Result<Vec<String>> {
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    // The directory may have existed with a laxer mode.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut written = vec!["initdata.toml".to_string()];
    write_private(&dir.join("initdata.toml"), doc.as_bytes())?;
    for key in DELIVERED_KEYS {
        if let Some(value) = doc.get(key) {
            write_private(&dir.join(key), value.as_bytes())?;
            written.push(key.to_string());
        }
    }
    written.sort();
    Ok(written)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// What the Init-Data step hands to the rest of the agent.
#[derive(Debug)]
pub struct Processed {
    /// What hello reports (its `policy` is filled in by the caller).
    pub report: InitDataReport,
    /// `policy.rego` of a document that passed the check and was delivered; never that of a
    /// document the launch was not bound to.
    pub policy: Option<String>,
}

/// The whole step: find, read, verify, deliver, start services.
pub fn process(tee_claim: Tee, cmdline: &KernelParams, limits: &Limits) -> Processed {
    // The hardware decides which TEE this is; a command line that claims one the guest lacks is
    // an error rather than a silent downgrade.
    let (tee, tee_error) = match (tee_claim, tee::detect()) {
        (_, Ok(Some(t))) => (t, None),
        (Tee::None, Ok(None)) => (Tee::None, None),
        (claim, Ok(None)) => (
            claim,
            Some(format!(
                "the kernel command line says coffer.tee={claim} but the guest has no {claim} guest device (/dev/tdx_guest, /dev/sev-guest); the guest kernel lacks the driver"
            )),
        ),
        // The CPU says TDX or SEV-SNP but its driver is missing.
        (claim, Err(e)) => (claim, Some(e.to_string())),
    };
    // Without a digest on the command line the host attached no disk: do not wait long for one.
    let wait = if cmdline.initdata_digest.is_some() || tee != Tee::None {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(500)
    };
    let found = match find_disk(Path::new("/sys/block"), Path::new("/dev"), wait) {
        Some(disk) => read_disk(&disk, limits),
        None => Found::NoDisk,
    };
    let mut report = InitDataReport {
        tee,
        ..Default::default()
    };
    if let Found::Document(doc) = &found {
        report.digest = Some(doc.digest().to_hex());
        report.algorithm = Some(doc.algorithm().as_str().to_string());
        report.warnings = doc.warnings().iter().map(|w| w.to_string()).collect();
    }
    report.verification = match tee_error {
        Some(reason) => Verification::Error { reason },
        None => verify(&found, tee, cmdline, hardware_register),
    };
    // The payload is delivered only when it may be used: a document the launch did not bind
    // must not reach the attestation stack.
    let mut policy = None;
    if let (Found::Document(doc), true) = (&found, report.verification.allows_containers()) {
        match deliver(doc, Path::new(INITDATA_DIR)) {
            Ok(files) => {
                start_components(&mut report, Some(&files));
                report.files = files;
                policy = doc.get("policy.rego").map(str::to_owned);
            }
            Err(e) => {
                report.verification = Verification::Error {
                    reason: format!("cannot write {INITDATA_DIR}: {e}"),
                }
            }
        }
    }
    // Without Init-Data the components start too, as kata-agent starts them.
    if let (Found::NoDisk, Verification::NoInitData) = (&found, &report.verification) {
        start_components(&mut report, None);
    }
    Processed { report, policy }
}

/// Starts the guest components for the delivered `files` (`None`: no Init-Data) and records
/// what happened in `report`.
fn start_components(report: &mut InitDataReport, files: Option<&[String]>) {
    let started = components::start(
        &components::plan(files),
        Path::new(components::COMPONENT_DIR),
        components::SOCKET_WAIT,
    );
    report.services = started.services;
    report.component_failure = started.failure;
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\n\"extra\" = \"x\"\n";

    fn doc() -> InitData {
        InitData::parse(DOC.to_vec()).unwrap()
    }

    fn cmdline(digest: Option<&str>) -> KernelParams {
        KernelParams {
            tee: Tee::None,
            initdata_digest: digest.map(Into::into),
            limits: Limits::default(),
        }
    }

    fn no_register(_: Tee) -> Result<Vec<u8>, tee::TeeError> {
        Err(tee::TeeError::Unavailable("no device".into()))
    }

    fn zero_register(t: Tee) -> Result<Vec<u8>, tee::TeeError> {
        Ok(vec![0; if t == Tee::Tdx { 48 } else { 32 }])
    }

    fn doc_register(t: Tee) -> Result<Vec<u8>, tee::TeeError> {
        let d = InitData::parse(DOC.to_vec()).unwrap().digest();
        Ok(if t == Tee::Tdx {
            d.mrconfigid().to_vec()
        } else {
            d.host_data().to_vec()
        })
    }

    #[test]
    fn unmeasured_compares_with_the_command_line() {
        let found = Found::Document(doc());
        let hex = doc().digest().to_hex();
        assert_eq!(
            verify(
                &found,
                Tee::None,
                &cmdline(Some(&hex.to_uppercase())),
                no_register
            ),
            Verification::Unmeasured {
                matches_cmdline: true
            }
        );
        assert_eq!(
            verify(&found, Tee::None, &cmdline(None), no_register),
            Verification::Unmeasured {
                matches_cmdline: false
            }
        );
        let other = "00".repeat(32);
        assert_eq!(
            verify(&found, Tee::None, &cmdline(Some(&other)), no_register),
            Verification::Mismatch {
                source: "kernel command line".into(),
                expected: other,
                found: hex
            }
        );
    }

    #[test]
    fn registers_are_the_truth_with_a_tee() {
        let found = Found::Document(doc());
        let d = doc().digest();
        assert_eq!(
            verify(&found, Tee::Snp, &cmdline(None), doc_register),
            Verification::Verified {
                tee: Tee::Snp,
                register: d.to_hex()
            }
        );
        assert_eq!(
            verify(&found, Tee::Tdx, &cmdline(None), doc_register),
            Verification::Verified {
                tee: Tee::Tdx,
                register: format!("{}{}", d.to_hex(), "00".repeat(16))
            }
        );
        // A command line that agrees does not override a register that does not.
        assert_eq!(
            verify(&found, Tee::Snp, &cmdline(Some(&d.to_hex())), zero_register),
            Verification::Mismatch {
                source: "HOST_DATA".into(),
                expected: "00".repeat(32),
                found: d.to_hex()
            }
        );
        assert_eq!(
            verify(&found, Tee::Tdx, &cmdline(None), no_register),
            Verification::Error {
                reason: "no device".into()
            }
        );
    }

    #[test]
    fn missing_disks() {
        assert_eq!(
            verify(&Found::NoDisk, Tee::None, &cmdline(None), no_register),
            Verification::NoInitData
        );
        assert_eq!(
            verify(&Found::NoDisk, Tee::None, &cmdline(Some("abcd")), no_register),
            Verification::Error {
                reason: "the kernel command line names Init-Data digest abcd but no Init-Data disk appeared (none with serial \"initdata\", none starting with its magic)".into()
            }
        );
        assert_eq!(
            verify(&Found::NoDisk, Tee::Snp, &cmdline(None), zero_register),
            Verification::NoInitData
        );
        assert!(matches!(
            verify(&Found::NoDisk, Tee::Snp, &cmdline(None), doc_register),
            Verification::Error { reason } if reason.starts_with("the HOST_DATA register is ")
        ));
    }

    #[test]
    fn reads_and_rejects_disk_images() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let good = dir.join("good.img");
        fs::write(&good, image::write(DOC)).unwrap();
        match read_disk(&good, &Limits::default()) {
            Found::Document(d) => assert_eq!(d.as_bytes(), DOC),
            other => panic!("{other:?}"),
        }
        let mut bytes = image::write(DOC);
        bytes[0] = b'X';
        let bad = dir.join("bad.img");
        fs::write(&bad, bytes).unwrap();
        match read_disk(&bad, &Limits::default()) {
            Found::Bad(reason) => assert_eq!(
                reason,
                format!(
                    "Init-Data disk {}: Init-Data image does not start with the \"initdata\" magic",
                    bad.display()
                )
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_the_disk_by_serial_else_by_its_magic() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("sys");
        let dev = tmp.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        for (name, serial) in [
            ("vda", Some("other\n")),
            ("vdb", Some("initdata\n")),
            ("vdc", None),
            ("sda", Some("initdata")),
        ] {
            fs::create_dir_all(sys.join(name)).unwrap();
            if let Some(serial) = serial {
                fs::write(sys.join(name).join("serial"), serial).unwrap();
            }
        }
        fs::write(dev.join("vda"), b"some other disk").unwrap();
        fs::write(dev.join("vdc"), image::write(b"version = \"0.1.0\"\n")).unwrap();
        // The serial wins, whatever else carries the magic.
        assert_eq!(find_disk(&sys, &dev, Duration::ZERO), Some(dev.join("vdb")));
        // Without it, the disk that starts with the magic (Kata's runtime gives none).
        fs::remove_dir_all(sys.join("vdb")).unwrap();
        assert_eq!(find_disk(&sys, &dev, Duration::ZERO), Some(dev.join("vdc")));
        fs::remove_file(dev.join("vdc")).unwrap();
        assert_eq!(find_disk(&sys, &dev, Duration::ZERO), None);
    }

    #[test]
    fn delivers_exact_bytes_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/confidential-containers/initdata");
        let files = deliver(&doc(), &dir).unwrap();
        assert_eq!(files, ["aa.toml", "initdata.toml"]);
        assert_eq!(fs::read(dir.join("initdata.toml")).unwrap(), DOC);
        assert_eq!(fs::read(dir.join("aa.toml")).unwrap(), b"[token_configs]\n");
        assert!(!dir.join("extra").exists());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("aa.toml")), 0o600);
        // Only the initdata directory is private: unprivileged components use its parent.
        assert_eq!(mode(dir.parent().unwrap()), 0o755);
    }
}
