//! Guest pull through the CRI on the private containerd: the `coffer-qemu` handler set to
//! `rootfs = "guest"`, a real registry (Debian's docker-registry) on the pod bridge in a network
//! namespace of its own, and Init-Data that tells the guest where to pull from. The guest
//! fetches, verifies and unpacks the image itself: the host's snapshot is never used, nothing the
//! container writes lands on the host, a tampered layer is named, and the agent policy decides
//! which images may run.
//!
//! Without the shim, the guest image, containerd or the registry tools the tests print
//! `SKIP: <reason>` and pass.

use std::path::{Path, PathBuf};
use std::time::Instant;

use coffer_initdata::annotation::ANNOTATION;
use coffer_tests::lifecycle::{assert_nothing_left, wait_for_log_line};
use coffer_tests::registry::{self, GuestImages};
use coffer_tests::tools::{self, Coffer};
use coffer_tests::{skip, Container, Cri, Pod, PrivateContainerd};

/// The private containerd with `coffer-qemu` as packaged (pulling in the guest) and the test
/// images in a registry on its pod network.
struct Setup {
    ctd: PrivateContainerd,
    images: GuestImages,
    coffer: Coffer,
    busybox: String,
    other: String,
}

fn setup() -> Option<Setup> {
    let bin = match (tools::bin_dir(), tools::guest_dir()) {
        (Ok(b), Ok(_)) => b,
        (Err(reason), _) | (_, Err(reason)) => {
            skip(reason);
            return None;
        }
    };
    if let Some(reason) = tools::containerd_missing().or_else(registry::missing) {
        skip(reason);
        return None;
    }
    let ctd = PrivateContainerd::start_guest_pull().expect("the private containerd");
    let images = GuestImages::start(&ctd).unwrap_or_else(|e| panic!("the registry: {e}"));
    Some(Setup {
        busybox: images.busybox.clone(),
        other: images.other.clone(),
        ctd,
        images,
        coffer: Coffer::in_dir(&bin),
    })
}

impl Setup {
    /// The Init-Data annotation: the seed document, its data hub told to pull from the test
    /// registry over HTTP, and `policy` in place of the seed's CreateContainerRequest default.
    fn initdata(&self, name: &str, create_rule: Option<&str>) -> String {
        let seed = std::fs::read_to_string(tools::seed_initdata()).expect("the seed document");
        let mut doc = self.images.initdata(&seed).expect("the seed's cdh.toml");
        if let Some(rule) = create_rule {
            doc = doc.replace("default CreateContainerRequest := true\n", rule);
        }
        std::fs::create_dir_all(self.ctd.scratch()).expect("scratch");
        let path = self.ctd.scratch().join(format!("{name}.toml"));
        std::fs::write(&path, doc).expect("write the document");
        self.coffer.encode(&path).expect("coffer initdata encode")
    }

    fn pod(&self, name: &str, create_rule: Option<&str>) -> Pod {
        Pod::new(name, "coffer-qemu", &self.ctd.log_root())
            .annotation(ANNOTATION, &self.initdata(name, create_rule))
    }
}

fn container(name: &str, image: &str, script: &str) -> Container {
    let mut c = Container::busybox_sh(name, script);
    c.image = image.to_owned();
    c
}

/// Regular files under `dir` (not following links, skipping what cannot be read) that contain
/// `needle`.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            files_containing(&e.path(), needle, found);
        } else if meta.is_file() && meta.len() < 256 << 20 {
            if let Ok(bytes) = std::fs::read(e.path()) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
}

fn exec_out(cri: &mut Cri, id: &str, args: &[&str]) -> String {
    let r = cri.exec_sync(id, args).expect("ExecSync");
    assert_eq!(
        r.exit_code,
        0,
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// The container runs from the image its guest pulled: /bin/sh replaced in containerd's snapshot
/// on the host changes nothing it sees, the VM has no 9p share, and a marker it writes into its
/// root appears in no file of the host's containerd root, state directories or /run.
#[test]
fn a_guest_pulled_container_ignores_the_host_snapshot_and_leaves_nothing_on_the_host() {
    let Some(s) = setup() else { return };
    let mut cri = s.ctd.cri().expect("connect");
    // Every copy of /bin/sh in the host's snapshots becomes a script that would say so.
    let snapshots = s
        .ctd
        .dir()
        .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut replaced = 0;
    for snap in std::fs::read_dir(&snapshots)
        .expect("the snapshots")
        .flatten()
    {
        let sh = snap.path().join("fs/bin/sh");
        if sh.symlink_metadata().is_ok() {
            std::fs::remove_file(&sh).expect("remove the host's /bin/sh");
            std::fs::write(&sh, "#!/bin/busybox sh\necho HOST-SNAPSHOT\n").expect("write");
            replaced += 1;
        }
    }
    assert!(replaced > 0, "no /bin/sh in {}", snapshots.display());

    let pod = s.pod("pulled", None);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let c = container(
        "main",
        &s.busybox,
        "echo \"sh is $(readlink /bin/sh)\"; exec sleep 3600",
    );
    let id = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    // containerd creates the task (and the guest pulls) at StartContainer.
    let started = Instant::now();
    cri.start_container(&id).unwrap_or_else(|e| {
        panic!(
            "StartContainer: {}\n{}",
            e.message(),
            s.images.registry.log()
        )
    });
    eprintln!("StartContainer with guest pull: {:?}", started.elapsed());
    let lines = wait_for_log_line(&mut cri, &id, "sh is busybox");
    assert!(
        lines.iter().any(|l| l == "sh is busybox"),
        "the container does not see the pulled image's /bin/sh: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("HOST-SNAPSHOT")),
        "{lines:?}"
    );
    assert_eq!(
        exec_out(&mut cri, &id, &["readlink", "/bin/sh"]),
        "busybox\n"
    );
    // A second container of the same image: the guest unpacked it once and gives it its own
    // overlay (what one container writes, the other does not see).
    let second = cri
        .create_container(
            &pod_id,
            &pod,
            &container("second", &s.busybox, "exec sleep 3600"),
        )
        .expect("CreateContainer");
    cri.start_container(&second).expect("StartContainer");
    exec_out(&mut cri, &id, &["touch", "/only-in-main"]);
    assert_eq!(
        exec_out(
            &mut cri,
            &second,
            &["sh", "-c", "test -e /only-in-main; echo $?"]
        ),
        "1\n"
    );
    let console =
        std::fs::read_to_string(s.ctd.coffer_state_dir().join(&pod_id).join("console.log"))
            .expect("the pod's console log");
    let pulls = console
        .lines()
        .filter(|l| l.contains(&format!("pulled image {} (", s.busybox)))
        .count();
    assert_eq!(
        pulls, 1,
        "the image was not pulled exactly once:\n{console}"
    );

    // No share: the VM's command line has no 9p device and the sandbox no share directory.
    let sandbox_dir = s.ctd.coffer_state_dir().join(&pod_id);
    assert!(
        !sandbox_dir.join("share").exists(),
        "the sandbox has a share"
    );
    let cmdline = tools::processes("qemu-system", &sandbox_dir.to_string_lossy())
        .into_iter()
        .map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!cmdline.is_empty(), "no VM for the pod");
    assert!(
        !cmdline.contains("virtio-9p"),
        "the VM has a 9p device: {cmdline}"
    );

    // A marker made inside the guest (never on a command line the host keeps), written into the
    // container's root; read back through exec, whose output the host does not store.
    exec_out(
        &mut cri,
        &id,
        &[
            "sh",
            "-c",
            "echo \"guest-only-$(cat /proc/sys/kernel/random/uuid)\" > /root/marker",
        ],
    );
    let marker = exec_out(&mut cri, &id, &["cat", "/root/marker"]);
    let marker = marker.trim();
    assert!(
        marker.starts_with("guest-only-") && marker.len() > 20,
        "{marker}"
    );
    let mut found = Vec::new();
    for dir in [s.ctd.dir(), Path::new("/run")] {
        files_containing(dir, marker.as_bytes(), &mut found);
    }
    assert!(
        found.is_empty(),
        "the container's marker is in host files: {found:?}"
    );

    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    assert_eq!(s.ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
}

/// A registry that serves a modified layer: the create fails naming the layer's digest, and the
/// pod is still stopped and removed cleanly.
#[test]
fn a_tampered_layer_fails_creation_naming_its_digest() {
    let Some(s) = setup() else { return };
    let blobs = s
        .ctd
        .dir()
        .join("registry/data/docker/registry/v2/blobs/sha256");
    // The largest blob is the layer (the manifest and config are a few hundred bytes).
    let mut largest: Option<(u64, PathBuf)> = None;
    let mut stack = vec![blobs];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("blobs").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data") {
                let len = p.metadata().map(|m| m.len()).unwrap_or(0);
                if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                    largest = Some((len, p));
                }
            }
        }
    }
    let (_, layer) = largest.expect("a layer blob");
    let digest = format!(
        "sha256:{}",
        layer
            .parent()
            .and_then(|p| p.file_name())
            .expect("blob dir")
            .to_string_lossy()
    );
    assert_eq!(s.images.registry.blob_path(&digest), layer);
    let mut bytes = std::fs::read(&layer).expect("read the layer");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).expect("tamper");

    let mut cri = s.ctd.cri().expect("connect");
    let pod = s.pod("tampered", None);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let id = cri
        .create_container(
            &pod_id,
            &pod,
            &container("main", &s.busybox, "exec sleep 3600"),
        )
        .expect("CreateContainer");
    // containerd creates the task, which the guest refuses, at StartContainer.
    let err = cri
        .start_container(&id)
        .expect_err("a tampered layer must fail the container's creation");
    let message = err.message();
    assert!(
        message.contains(&format!("layer {digest} does not match its digest")),
        "the error does not name the layer {digest}: {message}"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    assert_eq!(s.ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(s.ctd.sandbox_state(), Vec::<String>::new(), "state left");
}

/// A policy that allows only image A refuses image B, naming the rule, and runs A.
#[test]
fn a_policy_allowing_only_image_a_refuses_image_b() {
    let Some(s) = setup() else { return };
    // Written as for kata-agent: the image in the spec's annotation and the guest-pull storage,
    // the command in the OCI process.
    let rule = format!(
        "default CreateContainerRequest := false\nCreateContainerRequest {{\n    input.OCI.Annotations[\"io.kubernetes.cri.image-name\"] == \"{0}\"\n    input.storages[_].source == \"{0}\"\n    input.OCI.Process.Args[0] == \"sh\"\n}}\n",
        s.busybox
    );
    let mut cri = s.ctd.cri().expect("connect");
    let pod = s.pod("policy", Some(&rule));
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let b = cri
        .create_container(&pod_id, &pod, &container("b", &s.other, "exec sleep 3600"))
        .expect("CreateContainer B");
    let err = cri
        .start_container(&b)
        .expect_err("image B must be refused");
    let message = err.message();
    assert!(
        message.contains("the agent policy denies CreateContainerRequest"),
        "the refusal does not name the rule: {message}"
    );
    let a = cri
        .create_container(
            &pod_id,
            &pod,
            &container("a", &s.busybox, "echo allowed; exec sleep 3600"),
        )
        .unwrap_or_else(|e| panic!("image A: {}", e.message()));
    cri.start_container(&a).expect("StartContainer A");
    let lines = wait_for_log_line(&mut cri, &a, "allowed");
    assert!(lines.iter().any(|l| l == "allowed"), "{lines:?}");
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
}

/// The pull's own errors reach the CRI, each naming what failed: an image the registry does not
/// have, and a registry that does not answer. The pod stays clean and removable.
#[test]
fn an_unknown_image_and_an_unreachable_registry_are_named() {
    let Some(mut s) = setup() else { return };
    let host = s.images.registry.host();
    // The registry forgets `other`...
    let repo = s.images.registry.repository_path("other");
    std::fs::remove_dir_all(&repo).unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
    let mut cri = s.ctd.cri().expect("connect");
    let pod = s.pod("errors", None);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let mut fails = |name: &str, image: &str, expected: &str| {
        let id = cri
            .create_container(&pod_id, &pod, &container(name, image, "exec sleep 3600"))
            .expect("CreateContainer");
        let err = cri.start_container(&id).expect_err("the pull must fail");
        assert!(
            err.message().contains(expected),
            "{name}: expected {expected:?} in: {}",
            err.message()
        );
    };
    fails(
        "unknown",
        &s.other,
        &format!("image {} not found in registry {host}", s.other),
    );
    // ...and then stops answering.
    s.images.registry.stop();
    fails(
        "unreachable",
        &s.busybox,
        &format!(
            "cannot pull image {}: registry {host} is unreachable from the guest",
            s.busybox
        ),
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    assert_eq!(s.ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
}

/// Makes the OCI layout of a one-layer image whose layer is a file of `mib` MiB of zeros (a few
/// hundred KiB gzip'ed) and tars it into `archive`, its image named `latest`.
const ZEROS_IMAGE: &str = r#"set -euo pipefail
archive=$1 mib=$2 work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/layout/blobs/sha256" "$work/files"
truncate -s "${mib}M" "$work/files/zeros"
blob() { # FILE -> its digest hex; moves it into the layout
  local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$work/layout/blobs/sha256/$d"; echo "$d"
}
diff_id=$(tar -C "$work/files" --owner=0 --group=0 --mtime=@0 -cf - zeros | tee >(gzip -1 > "$work/layer") | sha256sum | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer"); layer=$(blob "$work/layer")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/zeros"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff_id" > "$work/config"
config_size=$(stat -c %s "$work/config"); config=$(blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest"
manifest_size=$(stat -c %s "$work/manifest"); manifest=$(blob "$work/manifest")
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$manifest" "$manifest_size" > "$work/layout/index.json"
tar -C "$work/layout" -cf "$archive" .
"#;

/// An image that unpacks to more than the guest's memory (a layer of 640 MiB of zeros, which
/// gzip makes small enough to pass the size estimate) is refused while it unpacks, saying so;
/// the guest survives and the pod is removed cleanly.
#[test]
fn an_image_larger_than_the_guests_memory_is_refused_saying_so() {
    let Some(s) = setup() else { return };
    let archive = s.ctd.scratch().join("zeros.oci.tar");
    std::fs::create_dir_all(s.ctd.scratch()).expect("scratch");
    let out = std::process::Command::new("bash")
        .args(["-c", ZEROS_IMAGE, "zeros-image"])
        .arg(&archive)
        .arg("640")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "making the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = s
        .images
        .registry
        .load(&archive, "zeros:latest")
        .unwrap_or_else(|e| panic!("{e}"));
    // containerd knows it too, under the same name (the CRI checks that the image exists).
    let ctr = s.ctd.up_env("CTR").expect("CTR");
    let base = image.trim_end_matches(":latest");
    let out = std::process::Command::new(&ctr)
        .arg("--address")
        .arg(s.ctd.socket())
        .args(["-n", "k8s.io", "images", "import", "--base-name", base])
        .arg(&archive)
        .output()
        .expect("ctr images import");
    assert!(
        out.status.success(),
        "ctr images import: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cri = s.ctd.cri().expect("connect");
    let pod = s.pod("too-large", None);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let id = cri
        .create_container(
            &pod_id,
            &pod,
            &container("zeros", &image, "exec sleep 3600"),
        )
        .expect("CreateContainer");
    let err = cri
        .start_container(&id)
        .expect_err("the image does not fit in the guest");
    assert!(
        err.message()
            .contains(&format!("image {image} is too large for this guest")),
        "{}",
        err.message()
    );
    // The guest is still there and still pulls what fits.
    let ok = cri
        .create_container(
            &pod_id,
            &pod,
            &container("ok", &s.busybox, "echo fits; exec sleep 3600"),
        )
        .expect("CreateContainer");
    cri.start_container(&ok).expect("StartContainer");
    let lines = wait_for_log_line(&mut cri, &ok, "fits");
    assert!(lines.iter().any(|l| l == "fits"), "{lines:?}");
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    assert_eq!(s.ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
}

/// The `Shmem` line of the guest's /proc/meminfo (tmpfs, where pulled images live), in KiB.
fn guest_shmem_kib(cri: &mut Cri, id: &str) -> u64 {
    exec_out(cri, id, &["cat", "/proc/meminfo"])
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Shmem in /proc/meminfo")
}

/// Benchmark for docs/benchmarks.md: CreateContainer + StartContainer (where containerd makes
/// the task, so where the guest pulls) of the same busybox image in a host-mode
/// pod (9p share) and in a guest-pull pod, one run each, and the guest memory the pulled image
/// takes (the difference in the guests' Shmem). Run with `--ignored --show-output`.
#[test]
#[ignore = "benchmark: run explicitly"]
fn benchmark_create_guest_pull_vs_host() {
    let Some(s) = setup() else { return };
    let config = s.ctd.dir().join("coffer/coffer-qemu.toml");
    let guest = std::fs::read_to_string(&config).expect("config");
    let host = guest.replace("rootfs = \"guest\"", "rootfs = \"host\"");
    let mut cri = s.ctd.cri().expect("connect");
    let mut results = Vec::new();
    for (mode, text) in [("host", &host), ("guest", &guest)] {
        std::fs::write(&config, text).expect("config");
        let pod = s.pod(&format!("bench-{mode}"), None);
        let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
        let started = Instant::now();
        let id = cri
            .create_container(
                &pod_id,
                &pod,
                &container("main", &s.busybox, "exec sleep 3600"),
            )
            .unwrap_or_else(|e| panic!("{mode}: {}", e.message()));
        // The task (and the pull) is made at StartContainer.
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("{mode}: {}", e.message()));
        let create = started.elapsed();
        let shmem = guest_shmem_kib(&mut cri, &id);
        results.push((mode, create, shmem));
        cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
        cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    }
    for (mode, create, shmem) in &results {
        eprintln!(
            "BENCH rootfs={mode}: CreateContainer + StartContainer {create:?}, guest Shmem {shmem} KiB"
        );
    }
    eprintln!(
        "BENCH guest memory of the pulled image (Shmem difference): {} KiB",
        results[1].2.saturating_sub(results[0].2)
    );
}

/// With `[vm] user` set, QEMU runs as that unprivileged user (here `nobody`), with the groups
/// the shim gave it; the pod boots, pulls, runs and is removed leaving nothing, and the sandbox
/// state QEMU could write is only its own sockets' directory.
#[test]
fn qemu_runs_as_an_unprivileged_user() {
    let Some(s) = setup() else { return };
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        skip("this host has no user `nobody`");
        return;
    };
    // The user must reach its sockets under the state directory, which lies in this test's
    // private directory.
    use std::os::unix::fs::PermissionsExt;
    for dir in [s.ctd.dir().to_path_buf(), s.ctd.coffer_state_dir()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .expect("open the private directory for passage");
    }
    let config = s.ctd.dir().join("coffer/coffer-qemu.toml");
    let text = std::fs::read_to_string(&config).expect("the handler's config");
    let text = text.replace("[vm]\n", "[vm]\nuser = \"nobody\"\n");
    assert!(
        text.contains("user = \"nobody\""),
        "no [vm] table in {text}"
    );
    std::fs::write(&config, text).expect("write the handler's config");

    let before = s.ctd.footprint();
    let mut cri = s.ctd.cri().expect("connect");
    let pod = s.pod("unprivileged", None);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let vms = s.ctd.vms();
    assert_eq!(vms.len(), 1, "one VM: {vms:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vms[0])).expect("status");
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let uid = nobody.uid.as_raw();
    assert_eq!(ids("Uid:"), vec![uid; 4], "QEMU's user ids:\n{status}");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or_default();
    assert_eq!(cap_eff, "0000000000000000", "QEMU keeps capabilities");
    // What QEMU owns in the sandbox's state: its sockets' directory, nothing else.
    let state = s.ctd.coffer_state_dir().join(&pod_id);
    for entry in std::fs::read_dir(&state)
        .expect("the sandbox state")
        .flatten()
    {
        use std::os::unix::fs::MetadataExt;
        let owner = entry.metadata().expect("metadata").uid();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(
            owner == uid,
            name == coffer_hypervisor::QEMU_DIR,
            "{name} is owned by {owner}"
        );
    }

    let c = container("main", &s.busybox, "echo unprivileged-vm; exec sleep 3600");
    let id = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");
    let lines = wait_for_log_line(&mut cri, &id, "unprivileged-vm");
    assert!(lines.iter().any(|l| l == "unprivileged-vm"), "{lines:?}");
    assert_eq!(exec_out(&mut cri, &id, &["echo", "hi"]), "hi\n");
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    let after = s
        .ctd
        .settled_footprint(&before, std::time::Duration::from_secs(30));
    assert_eq!(after, before, "the unprivileged VM's pod left something");
}
