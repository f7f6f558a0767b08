//! End to end through the CRI, as the kubelet and crictl drive containerd: a private containerd
//! (packaging/dev/up.sh) with the runc handler and Coffer's handlers, a busybox pod per scenario.
//!
//! The runc scenarios prove the private containerd, its images, its CNI config and the CRI
//! harness on their own. The coffer-qemu scenarios boot a VM per pod (QEMU, TCG here) and need
//! the built shim and guest image: without them they print `SKIP: <reason>` and pass.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_initdata::annotation::{ANNOTATION, LEGACY_ANNOTATION};
use coffer_initdata::InitData;
use coffer_tests::lifecycle::{
    assert_nothing_left, start_busybox, stop_and_remove, wait_for_log_line,
};
use coffer_tests::tools::{self, Coffer};
use coffer_tests::{skip, Container, Cri, Crictl, Driver, Pod, PodResources, PrivateContainerd};

fn private_containerd() -> Option<PrivateContainerd> {
    if let Some(reason) = tools::containerd_missing() {
        skip(reason);
        return None;
    }
    match PrivateContainerd::start() {
        Ok(c) => Some(c),
        Err(e) => panic!("the private containerd did not start: {e}"),
    }
}

/// The shim, CLI and guest image, or a SKIP line naming what is missing.
fn coffer_parts() -> Option<(PathBuf, PathBuf)> {
    let bin = match tools::bin_dir() {
        Ok(b) => b,
        Err(reason) => {
            skip(reason);
            return None;
        }
    };
    let guest = match tools::guest_dir() {
        Ok(g) => g,
        Err(reason) => {
            skip(reason);
            return None;
        }
    };
    Some((bin, guest))
}

#[test]
fn runc_pod_runs_through_the_cri_client() {
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect to the private containerd");

    let version = cri.version().expect("Version");
    assert_eq!(version.runtime_name, "containerd");
    let images = cri.list_images().expect("ListImages");
    assert!(
        images.iter().any(|i| i == coffer_tests::BUSYBOX_IMAGE),
        "busybox not imported: {images:?}"
    );
    assert!(
        images.iter().any(|i| i == "localhost/coffer/pause:latest"),
        "pause not imported: {images:?}"
    );

    let pod = Pod::new("runc-host", "runc", &ctd.log_root());
    let running = start_busybox(&mut cri, &pod);
    stop_and_remove(&mut cri, &running);
    assert_nothing_left(&mut cri);
}

#[test]
fn runc_pod_gets_an_address_from_the_private_cni_network() {
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect to the private containerd");

    let pod = Pod::new("runc-cni", "runc", &ctd.log_root());
    let running = start_busybox(&mut cri, &pod);
    let status = cri
        .pod_sandbox_status(&running.pod_id)
        .expect("PodSandboxStatus");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    let subnet = ctd.up_env("SUBNET").expect("up.env");
    let net = subnet.trim_end_matches("0/24");
    assert!(
        ip.starts_with(net),
        "pod address {ip:?} is not from up.sh's {subnet}"
    );
    // The container sees the same address on its eth0.
    let exec = cri
        .exec_sync(
            &running.container_id,
            &["ip", "-o", "-4", "addr", "show", "eth0"],
        )
        .expect("ExecSync");
    assert_eq!(
        exec.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&format!("inet {ip}/24")),
        "eth0 of the container: {}",
        String::from_utf8_lossy(&exec.stdout)
    );
    stop_and_remove(&mut cri, &running);
    assert_nothing_left(&mut cri);
}

#[test]
fn runc_pod_runs_through_crictl() {
    let Some(crictl) = Crictl::find() else {
        skip("no crictl on PATH and CRICTL is not set; the CRI client scenarios cover the calls");
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut driver = Crictl::new(crictl, ctd.socket(), &ctd.scratch()).expect("crictl answers");
    let pod = Pod::new("runc-crictl", "runc", &ctd.log_root());
    let running = start_busybox(&mut driver, &pod);
    stop_and_remove(&mut driver, &running);
    assert_nothing_left(&mut ctd.cri().expect("connect"));
}

/// RunPodSandbox of `pod` is refused with a message that holds each of `needles`, and leaves no
/// VM, no state and no sandbox behind.
fn assert_refused_leaving_nothing(
    ctd: &PrivateContainerd,
    cri: &mut Cri,
    pod: &Pod,
    needles: &[&str],
) {
    let err = cri
        .run_pod_sandbox(pod)
        .expect_err("RunPodSandbox accepted a pod it must refuse");
    let message = err.message();
    for needle in needles {
        assert!(
            message.contains(needle),
            "the refusal does not say {needle:?}: {message}"
        );
    }
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind"
    );
    assert_nothing_left(cri);
}

/// What down.sh must remove, checked after it ran.
fn assert_down_left_nothing(dir: &Path, bridge: &str) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert_eq!(
        tools::mounts_under(dir),
        Vec::<String>::new(),
        "mounts left"
    );
    assert_eq!(
        tools::processes_of(dir),
        Vec::<u32>::new(),
        "processes left"
    );
    let link = std::process::Command::new("ip")
        .args(["link", "show", bridge])
        .output()
        .expect("run ip");
    assert!(
        !link.status.success(),
        "the CNI bridge {bridge} is still there"
    );
}

/// A running pod (CNI network, so a network namespace and a bridge) and its container:
/// `running` says whether containerd is still alive when down.sh runs.
fn down_cleans_up(containerd_alive: bool) {
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("left-running", "runc", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let container = Container::busybox_sh("main", "exec sleep 3600");
    let id = cri
        .create_container(&pod_id, &pod, &container)
        .expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");
    assert!(
        !tools::mounts_under(ctd.dir()).is_empty(),
        "no rootfs mounted"
    );
    assert!(!tools::processes_of(ctd.dir()).is_empty(), "no processes");

    let dir = ctd.dir().to_path_buf();
    let bridge = ctd.up_env("BRIDGE").expect("up.env");
    if !containerd_alive {
        ctd.kill_containerd().expect("kill containerd");
    }
    drop(cri);
    drop(ctd);
    assert_down_left_nothing(&dir, &bridge);
}

#[test]
fn down_removes_running_pods_and_everything_up_made() {
    down_cleans_up(true);
}

#[test]
fn down_cleans_up_after_containerd_died() {
    down_cleans_up(false);
}

/// The Init-Data example's digest, computed by the library (the CLI must agree with it).
fn example_digest(file: &Path) -> String {
    let bytes = std::fs::read(file).expect("read the Init-Data example");
    InitData::parse(bytes)
        .expect("the example is valid Init-Data")
        .digest()
        .to_hex()
}

/// `coffer inspect --state-dir <the private handlers' state_dir> <id>`.
fn inspect(coffer: &Coffer, ctd: &PrivateContainerd, id: &str) -> std::process::Output {
    let state = ctd.coffer_state_dir().to_string_lossy().into_owned();
    coffer
        .run(&["inspect", "--state-dir", &state, id])
        .expect("run coffer inspect")
}

/// The seed-initdata pod on coffer-qemu, with the annotation under `key`, through `driver`.
fn seed_initdata_pod(
    ctd: &PrivateContainerd,
    driver: &mut dyn Driver,
    coffer: &Coffer,
    key: &str,
    name: &str,
) {
    let example = tools::seed_initdata();
    let annotation = coffer.encode(&example).expect("coffer initdata encode");
    let cli_digest = coffer
        .digest(&example, "none")
        .expect("coffer initdata digest");
    assert_eq!(
        cli_digest,
        example_digest(&example),
        "CLI and library disagree on the digest"
    );

    let pod = Pod::new(name, "coffer-qemu", &ctd.log_root()).annotation(key, &annotation);
    let running = start_busybox(driver, &pod);

    let out = inspect(coffer, ctd, &running.pod_id);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "coffer inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&cli_digest),
        "coffer inspect does not show the digest {cli_digest}:\n{stdout}"
    );
    let record = std::fs::read_to_string(
        ctd.coffer_state_dir()
            .join(&running.pod_id)
            .join("state.json"),
    )
    .expect("the sandbox's state.json");
    assert!(
        record.contains(&cli_digest),
        "state.json lacks the digest: {record}"
    );
    assert_eq!(ctd.vms().len(), 1, "expected exactly one VM for the pod");
    // The packaged handler runs QEMU's microvm.
    let args = launch_args(ctd, &running.pod_id);
    assert!(
        args.iter().any(|a| a == "microvm,acpi=off,rtc=on"),
        "{args:?}"
    );

    stop_and_remove(driver, &running);
    assert_eq!(
        ctd.vms(),
        Vec::<u32>::new(),
        "a QEMU process outlived its pod"
    );
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state left in {}",
        ctd.coffer_state_dir().display()
    );
    let out = inspect(coffer, ctd, &running.pod_id);
    assert!(
        !out.status.success(),
        "coffer inspect still finds the removed sandbox"
    );
    assert_nothing_left(&mut ctd.cri().expect("connect"));
    // A microvm guest has no power button: it ended itself on the agent's shutdown (a reset,
    // which ends QEMU), not on QEMU's quit.
    assert!(
        ctd.containerd_log()
            .contains("the guest reset, which ends the VM"),
        "no sign of the guest's own reset in containerd's log:\n{}",
        ctd.containerd_log_tail(40)
    );
}

#[test]
fn seed_initdata_pod_runs_on_coffer_qemu() {
    let Some((bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    seed_initdata_pod(&ctd, &mut cri, &Coffer::in_dir(&bin), ANNOTATION, "seed");
}

#[test]
fn legacy_annotation_key_works() {
    let Some((bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    seed_initdata_pod(
        &ctd,
        &mut cri,
        &Coffer::in_dir(&bin),
        LEGACY_ANNOTATION,
        "seed-legacy",
    );
}

#[test]
fn seed_initdata_pod_runs_through_crictl() {
    let Some(crictl) = Crictl::find() else {
        skip("no crictl on PATH and CRICTL is not set; the CRI client scenario covers the calls");
        return;
    };
    let Some((bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut driver = Crictl::new(crictl, ctd.socket(), &ctd.scratch()).expect("crictl answers");
    seed_initdata_pod(
        &ctd,
        &mut driver,
        &Coffer::in_dir(&bin),
        ANNOTATION,
        "seed-crictl",
    );
}

#[test]
fn malformed_annotation_fails_run_pod_sandbox_and_leaves_nothing() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");

    let pod = Pod::new("malformed", "coffer-qemu", &ctd.log_root())
        .annotation(ANNOTATION, "this is not base64!");
    // The error names the problem (invalid base64).
    assert_refused_leaving_nothing(&ctd, &mut cri, &pod, &["base64"]);
}

/// Kata's agent policy annotation reaches the shim (the handler lists it in pod_annotations) and
/// is refused by name: a confidential pod's policy comes only from its measured Init-Data.
#[test]
fn a_pod_with_kata_s_policy_annotation_is_refused_by_name() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("kata-policy", "coffer-qemu", &ctd.log_root()).annotation(
        "io.katacontainers.config.agent.policy",
        "cGFja2FnZSBhZ2VudF9wb2xpY3k=",
    );
    assert_refused_leaving_nothing(
        &ctd,
        &mut cri,
        &pod,
        &["the pod carries io.katacontainers.config.agent.policy"],
    );
}

#[test]
fn tee_handlers_refuse_on_a_host_without_tdx_or_snp() {
    let Some((bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let coffer = Coffer::in_dir(&bin);
    let annotation = coffer
        .encode(&tools::seed_initdata())
        .expect("coffer initdata encode");

    for (handler, tee) in [("coffer-qemu-tdx", "TDX"), ("coffer-qemu-snp", "SNP")] {
        let pod = Pod::new(
            &format!("refused-{}", tee.to_lowercase()),
            handler,
            &ctd.log_root(),
        )
        .annotation(ANNOTATION, &annotation);
        let err = cri
            .run_pod_sandbox(&pod)
            .expect_err("this host has no TDX or SNP, yet RunPodSandbox succeeded");
        let message = err.message();
        let expected = format!("this host cannot launch {tee} guests: ");
        assert!(
            message.contains(&expected),
            "{handler}: expected {expected:?} in: {message}"
        );
        assert_eq!(
            ctd.vms(),
            Vec::<u32>::new(),
            "{handler}: a VM was left behind"
        );
        assert_eq!(
            ctd.sandbox_state(),
            Vec::<String>::new(),
            "{handler}: state was left behind"
        );
    }
    assert_nothing_left(&mut cri);
}

#[test]
fn a_bad_handler_config_fails_run_pod_sandbox_naming_the_file_and_field() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    // containerd passes the handler's ConfigPath on every pod start: break the file in place.
    let config = ctd.dir().join("coffer/coffer-qemu.toml");
    let text = std::fs::read_to_string(&config).expect("the handler config");
    let broken = text.replace("vcpus = 1", "vcpus = \"two\"");
    assert_ne!(broken, text, "the packaged config has no `vcpus = 1` line");
    std::fs::write(&config, broken).expect("write the handler config");

    let pod = Pod::new("bad-config", "coffer-qemu", &ctd.log_root());
    let err = cri
        .run_pod_sandbox(&pod)
        .expect_err("RunPodSandbox accepted a broken handler config");
    let message = err.message();
    assert!(
        message.contains(&config.to_string_lossy().into_owned()) && message.contains("vcpus"),
        "the error does not name the file and the field: {message}"
    );
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind"
    );
    assert_nothing_left(&mut cri);
}

/// The coffer-qemu handler on q35 (`machine = "q35"`, the TEE handlers' machine; the packaged
/// config runs microvm), with Init-Data and the host-rootfs share, so that its VM has all five
/// virtio devices on PCI: the host reaches the pod on its IP, the guest has the host's time, and
/// the pod stops through its agent (the guest powers off through ACPI), leaving nothing.
#[test]
fn a_q35_pod_serves_on_the_pod_network_and_powers_off_through_its_agent() {
    let Some((bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let config = ctd.dir().join("coffer/coffer-qemu.toml");
    let text = std::fs::read_to_string(&config).expect("the handler config");
    let q35 = text.replace("machine = \"microvm\"", "machine = \"q35\"");
    assert_ne!(
        q35, text,
        "the packaged config has no `machine = \"microvm\"` line"
    );
    std::fs::write(&config, q35).expect("write the handler config");

    let mut cri = ctd.cri().expect("connect");
    let annotation = Coffer::in_dir(&bin)
        .encode(&tools::seed_initdata())
        .expect("coffer initdata encode");
    let pod = Pod::new("q35", "coffer-qemu", &ctd.log_root()).annotation(ANNOTATION, &annotation);
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let args = launch_args(&ctd, &pod_id);
    assert!(args.iter().any(|a| a == "q35"), "{args:?}");
    let devices = args
        .iter()
        .filter(|a| a.starts_with("virtio-") && a.contains("-pci,"))
        .count();
    assert_eq!(devices, 5, "{args:?}");

    let server = serve_http(&mut cri, &pod_id, &pod, "served-from-a-q35-pod");
    let ip = pod_ip(&mut cri, &pod_id);
    let socket = format!("{ip}:8080").parse().expect("socket address");
    let body = tools::http_get(socket, Duration::from_secs(60)).expect("GET from the host");
    assert_eq!(body, "served-from-a-q35-pod\n");
    let guest_now: u64 = exec_ok(&mut cri, &server, &["date", "+%s"])
        .trim()
        .parse()
        .expect("date +%s");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the host's clock")
        .as_secs();
    assert!(
        guest_now.abs_diff(host_now) < 300,
        "guest clock {guest_now}, host clock {host_now}"
    );

    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind"
    );
    assert_nothing_left(&mut cri);
    // The guest powered itself off on the agent's shutdown, not on QEMU's quit.
    let log = ctd.containerd_log();
    assert!(
        log.contains("the guest powered off"),
        "no sign of the guest's own power-off in containerd's log:\n{}",
        ctd.containerd_log_tail(40)
    );
}

/// The launch arguments the shim recorded for a sandbox.
fn launch_args(ctd: &PrivateContainerd, pod_id: &str) -> Vec<String> {
    let record = std::fs::read(ctd.coffer_state_dir().join(pod_id).join("state.json"))
        .expect("the sandbox's state.json");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("state.json is JSON");
    record["launch"]["args"]
        .as_array()
        .expect("launch.args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The VM follows the pod's limits (kubelet's LinuxPodSandboxConfig.resources, which containerd
/// turns into the sandbox-cpu/-memory annotations): the handler's 512 MiB and 1 vCPU plus a
/// 256 MiB, 1.5-CPU pod is a 768 MiB VM with 3 vCPUs, capped at the host's CPUs. A pod that
/// needs more memory than the handler allows is refused and leaves nothing.
#[test]
fn the_pods_limits_size_its_vm() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("sized", "coffer-qemu", &ctd.log_root()).resources(PodResources {
        memory_bytes: 256 << 20,
        cpu_quota: 150_000,
        cpu_period: 100_000,
    });
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let args = launch_args(&ctd, &pod_id);
    let after = |flag: &str| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1].clone()
    };
    assert_eq!(after("-m"), "768M", "{args:?}");
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(after("-smp"), 3.min(host_cpus).to_string(), "{args:?}");
    // The guest has them: on the packaged microvm, with no ACPI, the vCPUs come from qboot's
    // MP table.
    let server = serve_http(&mut cri, &pod_id, &pod, "sized");
    let cpus = exec_ok(&mut cri, &server, &["nproc"]);
    assert_eq!(cpus.trim(), 3.min(host_cpus).to_string(), "nproc: {cpus}");
    let meminfo = exec_ok(&mut cri, &server, &["cat", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in the guest's /proc/meminfo:\n{meminfo}"));
    // 768 MiB less what the kernel keeps for itself; the handler's own 512 MiB would be below.
    assert!(
        (600 << 10..=768 << 10).contains(&total_kib),
        "guest MemTotal {total_kib} kB"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");

    let huge = Pod::new("too-big", "coffer-qemu", &ctd.log_root()).resources(PodResources {
        memory_bytes: 1 << 50,
        cpu_quota: 0,
        cpu_period: 100_000,
    });
    assert_refused_leaving_nothing(
        &ctd,
        &mut cri,
        &huge,
        &["max_memory_mib", "io.kubernetes.cri.sandbox-memory"],
    );
}

/// The pod's network namespace as the shim recorded it (`state.json`'s `network.netns`).
fn pod_netns(ctd: &PrivateContainerd, pod_id: &str) -> PathBuf {
    let record = std::fs::read_to_string(ctd.coffer_state_dir().join(pod_id).join("state.json"))
        .expect("the sandbox's state.json");
    let v: serde_json::Value = serde_json::from_str(&record).expect("state.json is JSON");
    PathBuf::from(
        v["network"]["netns"]
            .as_str()
            .unwrap_or_else(|| panic!("state.json has no network: {record}")),
    )
}

/// Starts a busybox `httpd` container in the pod that serves `body` (and a newline) on port 8080,
/// and returns its id.
fn serve_http(cri: &mut Cri, pod_id: &str, pod: &Pod, body: &str) -> String {
    let server = Container::busybox_sh(
        "httpd",
        &format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"),
    );
    let server = cri
        .create_container(pod_id, pod, &server)
        .expect("CreateContainer httpd");
    cri.start_container(&server).expect("StartContainer httpd");
    server
}

/// The pod IP the CRI reports.
fn pod_ip(cri: &mut Cri, pod_id: &str) -> String {
    let status = cri.pod_sandbox_status(pod_id).expect("PodSandboxStatus");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(!ip.is_empty(), "pod {pod_id} has no IP");
    ip
}

/// Runs `args` in the container and returns its stdout; fails the test on a non-zero exit.
fn exec_ok(cri: &mut Cri, container_id: &str, args: &[&str]) -> String {
    let exec = cri.exec_sync(container_id, args).expect("ExecSync");
    assert_eq!(
        exec.exit_code,
        0,
        "{args:?}: {}{}",
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&exec.stderr)
    );
    String::from_utf8_lossy(&exec.stdout).into_owned()
}

/// Two Coffer pods on the private CNI network: A serves HTTP from its VM, the host and B fetch
/// it; B has the pod's DNS config, hostname and a kubelet-style /etc/hosts; each container's
/// eth0 has the IP the CRI reports; the TAP and the redirect live in the pod's namespace and
/// go with the pod.
#[test]
fn coffer_pods_are_reachable_on_the_pod_network() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");

    let pod_a = Pod::new("net-a", "coffer-qemu", &ctd.log_root());
    let a = cri.run_pod_sandbox(&pod_a).expect("RunPodSandbox A");
    let server = serve_http(&mut cri, &a, &pod_a, "served-from-pod-a");
    let ip_a = pod_ip(&mut cri, &a);

    // The container's eth0 has the pod IP the CRI reports.
    let addr = exec_ok(
        &mut cri,
        &server,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    );
    assert!(
        addr.contains(&format!("inet {ip_a}/")),
        "eth0 in pod A does not have {ip_a}: {addr}"
    );
    // The host reaches the VM through the bridge, the pod's veth, the redirect and the TAP.
    let socket = format!("{ip_a}:8080").parse().expect("socket address");
    let body = tools::http_get(socket, Duration::from_secs(60)).expect("GET from the host");
    assert_eq!(body, "served-from-pod-a\n");

    // The TAP and both redirects are in pod A's namespace.
    let netns_a = pod_netns(&ctd, &a);
    tools::in_netns(
        &netns_a,
        &["ip", "link", "show", coffer_shim::network::TAP_NAME],
    )
    .expect("the TAP in the pod's namespace");
    let filters = tools::in_netns(
        &netns_a,
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    )
    .expect("tc filter show");
    assert!(
        filters.contains("mirred") && filters.contains(coffer_shim::network::TAP_NAME),
        "no redirect from eth0 to the TAP: {filters}"
    );

    // Pod B: DNS config, hostname, and a hosts file as kubelet mounts it.
    let dns = coffer_tests::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc.example".into()],
        options: vec!["ndots:2".into()],
    };
    let pod_b = Pod::new("net-b", "coffer-qemu", &ctd.log_root()).dns(dns);
    let b = cri.run_pod_sandbox(&pod_b).expect("RunPodSandbox B");
    std::fs::create_dir_all(ctd.scratch()).expect("scratch dir");
    let hosts = ctd.scratch().join("net-b-hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{ip_a} pod-a\n")).expect("hosts file");
    let client =
        Container::busybox_sh("client", "exec sleep 3600").mount(&hosts, "/etc/hosts", true);
    let client = cri
        .create_container(&b, &pod_b, &client)
        .expect("CreateContainer client");
    cri.start_container(&client).expect("StartContainer client");
    let ip_b = pod_ip(&mut cri, &b);
    let addr = exec_ok(
        &mut cri,
        &client,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    );
    assert!(
        addr.contains(&format!("inet {ip_b}/")),
        "eth0 in pod B: {addr}"
    );

    // The name comes from the mounted hosts file. (busybox-static's wget and resolver crash
    // in an image without glibc's NSS libraries once /etc/resolv.conf names a server, under
    // runc too: the test reads the hosts file and speaks HTTP with nc.)
    let reply = exec_ok(
        &mut cri,
        &client,
        &[
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc \"$(sed -n 's/ pod-a$//p' /etc/hosts)\" 8080",
        ],
    );
    let page = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(page, "served-from-pod-a\n");
    assert_eq!(
        exec_ok(&mut cri, &client, &["cat", "/etc/resolv.conf"]),
        "search svc.example\nnameserver 10.0.0.10\noptions ndots:2\n"
    );
    assert_eq!(exec_ok(&mut cri, &client, &["hostname"]), "net-b\n");
    assert_eq!(
        exec_ok(&mut cri, &client, &["cat", "/etc/hostname"]),
        "net-b\n"
    );
    // The mount is read-only, as the container config asked.
    let write = cri
        .exec_sync(&client, &["sh", "-c", "echo x >> /etc/hosts"])
        .expect("ExecSync");
    assert_ne!(write.exit_code, 0, "/etc/hosts is writable");

    // Teardown: the TAP and the redirect go with the pod, then the namespace.
    cri.stop_pod_sandbox(&a).expect("StopPodSandbox A");
    if netns_a.exists() {
        assert!(
            tools::in_netns(
                &netns_a,
                &["ip", "link", "show", coffer_shim::network::TAP_NAME]
            )
            .is_err(),
            "the TAP outlived StopPodSandbox"
        );
    }
    cri.remove_pod_sandbox(&a).expect("RemovePodSandbox A");
    cri.stop_pod_sandbox(&b).expect("StopPodSandbox B");
    cri.remove_pod_sandbox(&b).expect("RemovePodSandbox B");
    assert!(!netns_a.exists(), "pod A's namespace outlived the pod");
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind"
    );
    assert_nothing_left(&mut cri);
}

#[test]
fn a_host_network_pod_is_refused_by_the_vm_handler() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("hostnet", "coffer-qemu", &ctd.log_root()).host_network();
    assert_refused_leaving_nothing(
        &ctd,
        &mut cri,
        &pod,
        &["asks for the host's network", "runc runtime class"],
    );
}

/// A Coffer pod serving HTTP keeps its network across a containerd restart; after its shim is
/// killed, StopPodSandbox and RemovePodSandbox still tear everything down: CNI's namespace, the
/// VM, the TAP and the state.
#[test]
fn pod_network_survives_containerd_restart_and_a_dead_shim_leaves_nothing() {
    let Some(_) = coffer_parts() else { return };
    let Some(mut ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("net-crash", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let server = Container::busybox_sh(
        "httpd",
        "mkdir -p /www && echo still-here > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    let server = cri
        .create_container(&pod_id, &pod, &server)
        .expect("CreateContainer");
    cri.start_container(&server).expect("StartContainer");
    let socket = format!("{}:8080", pod_ip(&mut cri, &pod_id))
        .parse()
        .expect("socket address");
    let wait = Duration::from_secs(60);
    assert_eq!(tools::http_get(socket, wait).expect("GET"), "still-here\n");
    let netns = pod_netns(&ctd, &pod_id);

    ctd.stop_containerd().expect("stop containerd");
    assert_eq!(
        tools::http_get(socket, wait).expect("GET while containerd is down"),
        "still-here\n"
    );
    ctd.restart().expect("containerd restarts");
    let mut cri = ctd.cri().expect("connect again");
    assert!(cri.pod_ready(&pod_id).expect("PodSandboxStatus"));
    assert_eq!(
        tools::http_get(socket, wait).expect("GET after the restart"),
        "still-here\n"
    );

    let shims = tools::processes("containerd-shim-coffer-v2", &pod_id);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &shims[0].to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {}", shims[0]);

    cri.stop_pod_sandbox(&pod_id)
        .expect("StopPodSandbox after the shim died");
    cri.remove_pod_sandbox(&pod_id)
        .expect("RemovePodSandbox after the shim died");
    assert!(!netns.exists(), "the pod's namespace outlived the pod");
    // containerd runs the dead shim's `delete` in the background when it notices the death:
    // its cleanup may finish after RemovePodSandbox returned.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (!ctd.vms().is_empty() || !ctd.sandbox_state().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "a VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind; containerd's log:\n{}",
        ctd.containerd_log_tail(40)
    );
    assert_nothing_left(&mut cri);
}

/// An agent policy that denies UpdateInterfaceRequest leaves the pod without network: the pod
/// runs, its container has no pod IP on eth0, and `coffer inspect` says why.
#[test]
fn a_policy_that_denies_the_network_leaves_the_pod_without_one_and_says_so() {
    let Some((ctd, pod)) = with_policy(
        "no-net",
        "default UpdateInterfaceRequest := true",
        "default UpdateInterfaceRequest := false",
    ) else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let c = Container::busybox_sh("main", "exec sleep 3600");
    let c = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    cri.start_container(&c).expect("StartContainer");
    let ip = pod_ip(&mut cri, &pod_id);
    let addr = exec_ok(&mut cri, &c, &["ip", "-o", "-4", "addr"]);
    assert!(
        !addr.contains(&ip),
        "the denied interface has the pod IP: {addr}"
    );

    let coffer = Coffer::in_dir(&tools::bin_dir().expect("the binaries"));
    let out = inspect(&coffer, &ctd, &pod_id);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("none: the agent policy denied it")
            && stdout.contains("UpdateInterfaceRequest"),
        "coffer inspect does not say the policy denied the network:\n{stdout}"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
}

/// A guest that stops answering (its QEMU stopped with SIGSTOP) does not block the pod's
/// teardown: StopPodSandbox and RemovePodSandbox return, the VM is killed, nothing is left.
#[test]
fn a_hung_vm_does_not_block_stop_pod_sandbox() {
    let Some(_) = coffer_parts() else { return };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("hung", "coffer-qemu", &ctd.log_root());
    let running = start_busybox(&mut cri, &pod);
    let qemu = ctd.vms();
    assert_eq!(qemu.len(), 1, "one VM for the pod: {qemu:?}");
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &qemu[0].to_string()])
        .status()
        .expect("run kill");
    assert!(stopped.success());

    let started = Instant::now();
    cri.stop_pod_sandbox(&running.pod_id)
        .expect("StopPodSandbox of a hung VM");
    cri.remove_pod_sandbox(&running.pod_id)
        .expect("RemovePodSandbox of a hung VM");
    eprintln!("teardown of the hung pod took {:?}", started.elapsed());
    assert_eq!(ctd.vms(), Vec::<u32>::new(), "the hung VM was left behind");
    assert_eq!(
        ctd.sandbox_state(),
        Vec::<String>::new(),
        "state was left behind"
    );
    assert_nothing_left(&mut cri);
}

/// A policy with `ReadStreamRequest := false` keeps the containers' output in the guest, as
/// kata-agent does: the process runs, its CRI log stays empty, ExecSync returns no output.
/// The private containerd and a coffer-qemu pod named `name` whose Init-Data is the example
/// with its policy line `from` replaced by `to`; `None` (skipped, saying why) without them.
fn with_policy(name: &str, from: &str, to: &str) -> Option<(PrivateContainerd, Pod)> {
    let (bin, _guest) = coffer_parts()?;
    let ctd = private_containerd()?;
    let pod = pod_with_policy(&ctd, &Coffer::in_dir(&bin), name, from, to);
    Some((ctd, pod))
}

/// A coffer-qemu pod named `name` whose Init-Data is the example with its policy line `from`
/// replaced by `to`.
fn pod_with_policy(
    ctd: &PrivateContainerd,
    coffer: &Coffer,
    name: &str,
    from: &str,
    to: &str,
) -> Pod {
    let example = std::fs::read_to_string(tools::seed_initdata()).expect("the example");
    let edited = example.replace(from, to);
    assert_ne!(edited, example, "the example's policy has no {from:?}");
    std::fs::create_dir_all(ctd.scratch()).expect("scratch dir");
    let doc = ctd.scratch().join(format!("{name}.toml"));
    std::fs::write(&doc, edited).expect("write the document");
    let annotation = coffer.encode(&doc).expect("coffer initdata encode");
    Pod::new(name, "coffer-qemu", &ctd.log_root()).annotation(ANNOTATION, &annotation)
}

/// kata-agent's long rule answer, `{"allowed": ..., "ops": [...]}`: the ops of an allowed
/// request patch `data.pstate`, which later requests of the same sandbox see. Here the policy
/// (in Rego v1) lets one container of the pod start, and no second one.
#[test]
fn a_policy_keeps_state_across_the_sandboxs_requests() {
    let Some((ctd, pod)) = with_policy(
        "pstate",
        "default StartContainerRequest := true\n",
        "default StartContainerRequest := {\"allowed\": false}\n\
         StartContainerRequest := {\"allowed\": true, \"ops\": [{\"op\": \"add\", \"path\": \"/pstate/started\", \"value\": true}]} if {\n\
         \x20   not data.pstate.started\n}\n",
    ) else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let first = cri
        .create_container(
            &pod_id,
            &pod,
            &Container::busybox_sh("first", "echo first; exec sleep 3600"),
        )
        .expect("CreateContainer");
    cri.start_container(&first)
        .expect("the first container starts");
    let second = cri
        .create_container(
            &pod_id,
            &pod,
            &Container::busybox_sh("second", "exec sleep 3600"),
        )
        .expect("CreateContainer");
    let err = cri
        .start_container(&second)
        .expect_err("the policy state allows one start");
    assert!(
        err.message()
            .contains("the agent policy denies StartContainerRequest"),
        "{}",
        err.message()
    );
    let lines = wait_for_log_line(&mut cri, &first, "first");
    assert!(lines.iter().any(|l| l == "first"), "{lines:?}");
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
}

/// An exec allow-list in genpolicy's style, over kata-agent's ExecProcessRequest input
/// (`input.process.Args`): `sh -c ...` runs, anything else is refused naming the rule.
#[test]
fn an_exec_allow_list_admits_only_sh_c() {
    let Some((ctd, pod)) = with_policy(
        "exec-list",
        "default ExecProcessRequest := true\n",
        "default ExecProcessRequest := false\n\
         ExecProcessRequest if {\n\
         \x20   input.process.Args[0] == \"sh\"\n\
         \x20   input.process.Args[1] == \"-c\"\n\
         \x20   count(input.process.Args) == 3\n}\n",
    ) else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let running = start_busybox(&mut cri, &pod);
    let ok = cri
        .exec_sync(&running.container_id, &["sh", "-c", "echo allowed"])
        .expect("sh -c is allowed");
    assert_eq!(
        (ok.exit_code, String::from_utf8_lossy(&ok.stdout).as_ref()),
        (0, "allowed\n")
    );
    for refused in [
        &["ls", "/"][..],
        &["sh", "-i"][..],
        &["sh", "-c", "id", "x"][..],
    ] {
        let err = cri
            .exec_sync(&running.container_id, refused)
            .expect_err("the allow-list admits only sh -c CMD");
        assert!(
            err.message()
                .contains("the agent policy denies ExecProcessRequest"),
            "{refused:?}: {}",
            err.message()
        );
    }
    stop_and_remove(&mut cri, &running);
    assert_nothing_left(&mut cri);
}

#[test]
fn read_stream_request_false_keeps_output_in_the_guest() {
    let Some((ctd, pod)) = with_policy(
        "quiet",
        "default ReadStreamRequest := true",
        "default ReadStreamRequest := false",
    ) else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let c = Container::busybox_sh(
        "main",
        "echo secret-line; echo secret-err >&2; touch /printed; exec sleep 3600",
    );
    let c = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    cri.start_container(&c).expect("StartContainer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exec = cri
            .exec_sync(&c, &["test", "-f", "/printed"])
            .expect("ExecSync");
        if exec.exit_code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the container never printed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let exec = cri
        .exec_sync(&c, &["sh", "-c", "echo exec-secret; echo err-secret >&2"])
        .expect("ExecSync");
    assert_eq!(exec.exit_code, 0);
    assert!(exec.stdout.is_empty() && exec.stderr.is_empty(), "{exec:?}");
    std::thread::sleep(Duration::from_secs(1));
    let log = cri.read_log(&c).expect("the CRI log");
    assert!(
        !log.iter().any(|l| l.contains("secret")),
        "the container's output reached the host: {log:?}"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
}
