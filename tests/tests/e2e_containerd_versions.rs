//! End to end on the containerd versions besides the machine's own 1.6 (on which e2e_cri.rs runs
//! every scenario): 1.7 from Debian trixie and 2.x from Debian sid, which
//! `packaging/dev/containerd-versions.sh` fetches into target/containerd without installing
//! them. Each runs as a private containerd (packaging/dev/up.sh) configured in its own native
//! format (version 2 for 1.x, version 3 for 2.x: nothing relies on 2.x migrating an old file).
//!
//! Per version, a lifecycle smoke on runc (the containerd, its images, CNI and the CRI client on
//! their own) and the same on coffer-qemu (Coffer's shim and a VM): when only the second fails,
//! Coffer is at fault, not the containerd. Without a fetched version, or without the built shim
//! and guest image, a test prints `SKIP: <reason>` and passes.

use std::path::PathBuf;

use coffer_tests::lifecycle;
use coffer_tests::tools;
use coffer_tests::{skip, Options, Pod, PrivateContainerd};

/// A containerd version under test.
struct Version {
    /// Its folder under the cache (`tools::other_containerd`).
    folder: &'static str,
    /// What `containerd --version` and the CRI's Version show it starts with.
    prefix: &'static str,
    /// Its native configuration format.
    config_version: i64,
}

const V1_7: Version = Version {
    folder: "1.7",
    prefix: "1.7.",
    config_version: 2,
};

const V2: Version = Version {
    folder: "2.x",
    prefix: "2.",
    config_version: 3,
};

/// The binary of `v`, checked to be that version, or a SKIP line saying why there is none.
fn binary(v: &Version) -> Option<PathBuf> {
    if let Some(reason) = tools::containerd_missing() {
        skip(reason);
        return None;
    }
    let bin = match tools::other_containerd(v.folder) {
        Ok(b) => b,
        Err(reason) => {
            skip(reason);
            return None;
        }
    };
    let version = tools::containerd_version(&bin).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        version.starts_with(v.prefix),
        "{} is containerd {version}, not {}",
        bin.display(),
        v.folder
    );
    Some(bin)
}

/// A private containerd on `bin`, with only runc registered or with Coffer's handlers too.
fn start(v: &Version, bin: PathBuf, coffer: Option<(PathBuf, PathBuf)>) -> PrivateContainerd {
    let runc_only = coffer.is_none();
    let (bin_dir, guest_dir) = coffer.unzip();
    let ctd = PrivateContainerd::start_with(&Options {
        bin_dir,
        guest_dir,
        accel: std::env::var("COFFER_ACCEL").ok().filter(|a| !a.is_empty()),
        runc_only,
        rootfs: Some("host".into()),
        containerd: Some(bin),
    })
    .unwrap_or_else(|e| panic!("the private containerd {} did not start: {e}", v.folder));

    // The one answering is that version (not the machine's own), on its native config format.
    let mut cri = ctd.cri().expect("connect to the private containerd");
    let version = cri.version().expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    assert!(
        version
            .runtime_version
            .trim_start_matches('v')
            .starts_with(v.prefix),
        "the CRI answers as containerd {}, not {}",
        version.runtime_version,
        v.folder
    );
    let text = std::fs::read_to_string(ctd.config_path()).expect("read config.toml");
    let config: toml::Table = text.parse().expect("config.toml is TOML");
    assert_eq!(
        config["version"].as_integer(),
        Some(v.config_version),
        "config.toml for containerd {}:\n{text}",
        v.folder
    );
    let log = ctd.containerd_log();
    assert!(
        !log.to_lowercase().contains("migrat"),
        "containerd {} migrated its config:\n{}",
        v.folder,
        ctd.containerd_log_tail(20)
    );
    ctd
}

/// The busybox lifecycle on runc: proves the containerd, its config and images on their own.
fn runc_smoke(v: &Version) {
    let Some(bin) = binary(v) else { return };
    let ctd = start(v, bin, None);
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("runc-smoke", "runc", &ctd.log_root());
    let running = lifecycle::start_busybox(&mut cri, &pod);
    lifecycle::assert_on_the_pod_network(&ctd, &mut cri, &running);
    lifecycle::stop_and_remove(&mut cri, &running);
    lifecycle::assert_nothing_left(&mut cri);
}

/// The busybox lifecycle on coffer-qemu: one VM while the pod runs, nothing once it is removed.
fn coffer_smoke(v: &Version) {
    let Some(bin) = binary(v) else { return };
    let parts = match (tools::bin_dir(), tools::guest_dir()) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(reason), _) | (_, Err(reason)) => return skip(reason),
    };
    let ctd = start(v, bin, Some(parts));
    if v.config_version == 3 {
        // 2.x: the handlers are a version 3 drop-in that config.toml imports.
        let dropin = ctd.dir().join("conf.d/coffer.toml");
        let d: toml::Table = std::fs::read_to_string(&dropin)
            .unwrap_or_else(|e| panic!("{}: {e}", dropin.display()))
            .parse()
            .expect("the drop-in is TOML");
        assert_eq!(d["version"].as_integer(), Some(3));
    }
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("coffer-smoke", "coffer-qemu", &ctd.log_root());
    let running = lifecycle::start_busybox(&mut cri, &pod);
    assert_eq!(ctd.vms().len(), 1, "expected exactly one VM for the pod");
    assert_eq!(ctd.sandbox_state(), vec![running.pod_id.clone()]);
    lifecycle::assert_on_the_pod_network(&ctd, &mut cri, &running);
    lifecycle::stop_and_assert_gone(&ctd, &mut cri, &running);
}

#[test]
fn containerd_1_7_runs_a_runc_pod() {
    runc_smoke(&V1_7);
}

#[test]
fn containerd_1_7_runs_a_coffer_qemu_pod() {
    coffer_smoke(&V1_7);
}

#[test]
fn containerd_2_runs_a_runc_pod() {
    runc_smoke(&V2);
}

#[test]
fn containerd_2_runs_a_coffer_qemu_pod() {
    coffer_smoke(&V2);
}
