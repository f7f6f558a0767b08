//! End to end through the CRI: a container in a coffer-qemu pod is confined as runc confines the
//! same container (capabilities, no_new_privs, seccomp), and nothing of the guest agent is in
//! its reach (its Init-Data directory, its process, its mounts, the TEE devices).
//!
//! Needs the private containerd (packaging/dev/up.sh), the built shim and the guest image:
//! without them the tests print `SKIP: <reason>` and pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_tests::tools;
use coffer_tests::{skip, Container, ContainerSecurity, Cri, Driver, Pod, PrivateContainerd};

/// Bound on waiting for a container's output to reach its log.
const LOG_WAIT: Duration = Duration::from_secs(120);

/// The lines of /proc/self/status the comparison is about.
const STATUS_KEYS: [&str; 4] = ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp"];

/// Prints the fields of /proc/self/status the test compares, then stays up for execs.
const SCRIPT: &str =
    "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; echo done; exec sleep 3600";

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

fn wait_for_log_line(driver: &mut dyn Driver, id: &str, line: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = driver
            .logs(id)
            .unwrap_or_else(|e| panic!("{}: reading the log of {id}: {e}", driver.name()));
        if lines.iter().any(|l| l == line) || start.elapsed() > LOG_WAIT {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `Key -> value` of `Key:\tvalue` lines.
fn status_fields<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    lines
        .into_iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| STATUS_KEYS.contains(k))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// What the pod spec asks for: drop NET_RAW and MKNOD, add SYS_TIME, no_new_privs, the
/// runtime's default seccomp profile.
fn hardened() -> ContainerSecurity {
    ContainerSecurity {
        add_capabilities: vec!["SYS_TIME".into()],
        drop_capabilities: vec!["NET_RAW".into(), "MKNOD".into()],
        no_new_privs: true,
        seccomp_runtime_default: true,
    }
}

/// A pod running the hardened busybox; returns the pod id, the container id and the status
/// fields its process printed.
fn run_hardened(cri: &mut Cri, pod: &Pod) -> (String, String, BTreeMap<String, String>) {
    let handler = pod.handler.clone();
    let pod_id = cri
        .run_pod(pod)
        .unwrap_or_else(|e| panic!("{handler}: RunPodSandbox: {e}"));
    let container = Container::busybox_sh("main", SCRIPT).security(hardened());
    let id = Driver::create_container(cri, &pod_id, pod, &container)
        .unwrap_or_else(|e| panic!("{handler}: CreateContainer: {e}"));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("{handler}: StartContainer: {e}"));
    let lines = wait_for_log_line(cri, &id, "done");
    assert!(
        lines.iter().any(|l| l == "done"),
        "{handler}: the container did not print its status: {lines:?}"
    );
    let fields = status_fields(lines.iter().map(String::as_str));
    (pod_id, id, fields)
}

fn remove(cri: &mut Cri, pod_id: &str) {
    cri.stop_pod(pod_id).expect("StopPodSandbox");
    cri.remove_pod(pod_id).expect("RemovePodSandbox");
}

/// Runs `script` in the container with ExecSync; returns its exit code and stdout.
fn exec(cri: &mut Cri, id: &str, script: &str) -> (i32, String) {
    let r = cri
        .exec_sync(id, &["sh", "-c", script])
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
}

#[test]
fn a_coffer_container_is_confined_as_runc_confines_it() {
    let Some((_bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");

    // The same container on runc, for reference.
    let runc_pod = Pod::new("hardened-runc", "runc", &ctd.log_root());
    let (runc_pod_id, _, runc) = run_hardened(&mut cri, &runc_pod);
    remove(&mut cri, &runc_pod_id);

    let pod = Pod::new("hardened", "coffer-qemu", &ctd.log_root());
    let (pod_id, id, coffer) = run_hardened(&mut cri, &pod);
    assert_eq!(
        coffer.len(),
        STATUS_KEYS.len(),
        "coffer: status lines missing: {coffer:?}"
    );
    assert_eq!(coffer, runc, "coffer-qemu and runc disagree");

    // What the spec asked for, independently of runc.
    let cap = |key: &str| {
        u64::from_str_radix(&coffer[key], 16).unwrap_or_else(|e| panic!("{key}: {e}: {coffer:?}"))
    };
    let (net_raw, mknod, sys_time, sys_admin) = (1u64 << 13, 1u64 << 27, 1u64 << 25, 1u64 << 21);
    for key in ["CapEff", "CapBnd"] {
        let v = cap(key);
        assert_eq!(v & (net_raw | mknod | sys_admin), 0, "{key} {v:#x}");
        assert_ne!(v & sys_time, 0, "{key} {v:#x}");
    }
    assert_eq!(coffer["NoNewPrivs"], "1");
    assert_eq!(coffer["Seccomp"], "2");

    // An exec'd process gets the same treatment.
    let (code, out) = exec(
        &mut cri,
        &id,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(status_fields(out.lines()), coffer, "exec'd process: {out}");

    remove(&mut cri, &pod_id);
}

#[test]
fn a_root_container_cannot_reach_the_agent() {
    let Some((_bin, _guest)) = coffer_parts() else {
        return;
    };
    let Some(ctd) = private_containerd() else {
        return;
    };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("reach", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod(&pod).expect("RunPodSandbox");
    // Root, with the runtime's default capabilities (CAP_SYS_CHROOT among them).
    let container = Container::busybox_sh("main", "echo up; exec sleep 3600");
    let id =
        Driver::create_container(&mut cri, &pod_id, &pod, &container).expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");
    let lines = wait_for_log_line(&mut cri, &id, "up");
    assert!(lines.iter().any(|l| l == "up"), "{lines:?}");

    let (code, out) = exec(&mut cri, &id, "id -u");
    assert_eq!((code, out.trim()), (0, "0"));

    // The agent's Init-Data directory and the share are not in the container's filesystem.
    let (code, out) = exec(&mut cri, &id, "ls /run/confidential-containers 2>&1");
    assert_ne!(code, 0, "the agent's directory is visible: {out}");
    let (code, out) = exec(&mut cri, &id, "ls /run/coffer 2>&1");
    assert_ne!(code, 0, "the share is visible: {out}");

    // PID 1 is the container's own process, not the agent.
    let (code, out) = exec(&mut cri, &id, "tr '\\0' ' ' < /proc/1/cmdline");
    assert_eq!(code, 0);
    assert!(
        out.starts_with("sleep 3600"),
        "pid 1 of the container is {out:?}"
    );

    // Its mounts: its root, its /proc, its /dev; nothing of the guest's.
    let (code, out) = exec(&mut cri, &id, "cat /proc/self/mountinfo");
    assert_eq!(code, 0);
    let mountpoints: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert!(mountpoints.contains(&"/"), "{out}");
    for forbidden in [
        "/run",
        "/run/coffer/share",
        "/sys/kernel/config",
        "/.coffer-root",
    ] {
        assert!(
            !mountpoints.contains(&forbidden),
            "{forbidden} is mounted in the container:\n{out}"
        );
    }
    assert!(
        !out.contains("rootfs rootfs"),
        "the initramfs is listed:\n{out}"
    );

    // No TEE device or agent port in its /dev.
    let (code, out) = exec(&mut cri, &id, "ls /dev");
    assert_eq!(code, 0);
    for node in ["tdx_guest", "sev-guest", "vport", "vda", "mem"] {
        assert!(
            !out.split_whitespace().any(|n| n.starts_with(node)),
            "/dev/{node} in the container: {out}"
        );
    }

    remove(&mut cri, &pod_id);
}
