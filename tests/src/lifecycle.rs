//! The pod lifecycle a runtime handler must get through, as the kubelet drives it: a busybox pod
//! started, its output in the CRI log, ExecSync, then stopped and removed with nothing left.
//! Scenarios run it on each handler and each containerd version, through any [`Driver`].

use std::time::{Duration, Instant};

use crate::{Container, ContainerState, Cri, Driver, Pod, PrivateContainerd};

/// Bound on waiting for a container's output to reach its log.
pub const LOG_WAIT: Duration = Duration::from_secs(120);

/// A pod [`start_busybox`] started, for handler-specific checks before teardown.
#[derive(Debug, Clone)]
pub struct Running {
    /// The sandbox id.
    pub pod_id: String,
    /// Its busybox container.
    pub container_id: String,
}

/// The container's log lines once `line` is among them, or whatever is there after
/// [`LOG_WAIT`].
pub fn wait_for_log_line(driver: &mut dyn Driver, id: &str, line: &str) -> Vec<String> {
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

/// RunPodSandbox -> ready; CreateContainer + StartContainer of a busybox that prints
/// `hello from <pod name>` and stays up; the line in its CRI log; ExecSync output and exit code.
pub fn start_busybox(driver: &mut dyn Driver, pod: &Pod) -> Running {
    let who = driver.name();
    let pod_id = driver
        .run_pod(pod)
        .unwrap_or_else(|e| panic!("{who}: RunPodSandbox on {}: {e}", pod.handler));
    assert!(
        driver.pod_ready(&pod_id).expect("PodSandboxStatus"),
        "{who}: sandbox {pod_id} is not ready"
    );

    let line = format!("hello from {}", pod.name);
    let container = Container::busybox_sh("main", &format!("echo '{line}'; exec sleep 3600"));
    let container_id = driver
        .create_container(&pod_id, pod, &container)
        .unwrap_or_else(|e| panic!("{who}: CreateContainer: {e}"));
    assert_eq!(
        driver
            .container_state(&container_id)
            .expect("ContainerStatus"),
        ContainerState::Created
    );
    driver
        .start_container(&container_id)
        .unwrap_or_else(|e| panic!("{who}: StartContainer: {e}"));

    let lines = wait_for_log_line(driver, &container_id, &line);
    assert!(
        lines.contains(&line),
        "{who}: {line:?} not in the container's CRI log: {lines:?}"
    );
    assert_eq!(
        driver
            .container_state(&container_id)
            .expect("ContainerStatus"),
        ContainerState::Running
    );

    let exec = driver
        .exec_sync(
            &container_id,
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"],
        )
        .unwrap_or_else(|e| panic!("{who}: ExecSync: {e}"));
    assert_eq!(exec.exit_code, 7, "{who}: ExecSync exit code");
    assert_output(driver, &exec.stderr, b"exec-err\n", "ExecSync stderr");
    if driver.exec_output_is_exact() {
        assert_output(driver, &exec.stdout, b"exec-out\n", "ExecSync stdout");
    }

    Running {
        pod_id,
        container_id,
    }
}

/// ExecSync output must be `expected`, exactly through the CRI client; crictl reformats what it
/// prints (see [`Driver::exec_output_is_exact`]), so there it must contain it.
pub fn assert_output(driver: &dyn Driver, got: &[u8], expected: &[u8], what: &str) {
    let who = driver.name();
    if driver.exec_output_is_exact() {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(expected),
            "{who}: {what}"
        );
    } else {
        assert!(
            got.windows(expected.len()).any(|w| w == expected),
            "{who}: {what} {:?} lacks {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(expected)
        );
    }
}

/// StopPodSandbox (the sandbox is no longer ready), RemovePodSandbox, and its container is gone:
/// ExecSync into it is NotFound.
pub fn stop_and_remove(driver: &mut dyn Driver, running: &Running) {
    let who = driver.name();
    driver
        .stop_pod(&running.pod_id)
        .unwrap_or_else(|e| panic!("{who}: StopPodSandbox: {e}"));
    assert!(
        !driver.pod_ready(&running.pod_id).expect("PodSandboxStatus"),
        "{who}: sandbox still ready after StopPodSandbox"
    );
    driver
        .remove_pod(&running.pod_id)
        .unwrap_or_else(|e| panic!("{who}: RemovePodSandbox: {e}"));
    let err = driver
        .exec_sync(&running.container_id, &["true"])
        .expect_err("ExecSync into a removed container succeeded");
    assert!(
        err.to_string().contains("code = NotFound"),
        "{who}: ExecSync into a removed container: {err}"
    );
}

/// The CRI lists no pod sandbox and no container.
pub fn assert_nothing_left(cri: &mut Cri) {
    assert_eq!(
        cri.list_pod_sandboxes().expect("ListPodSandbox"),
        Vec::<String>::new(),
        "pod sandboxes left"
    );
    assert_eq!(
        cri.list_containers().expect("ListContainers"),
        Vec::<String>::new(),
        "containers left"
    );
}

/// A coffer-qemu pod of `ctd` stopped and removed: its QEMU is gone, the shim left no state,
/// and the CRI lists nothing.
pub fn stop_and_assert_gone(ctd: &PrivateContainerd, cri: &mut Cri, running: &Running) {
    stop_and_remove(cri, running);
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
    assert_nothing_left(cri);
}

/// The pod has an address from up.sh's CNI network, and its container has it on eth0.
pub fn assert_on_the_pod_network(ctd: &PrivateContainerd, cri: &mut Cri, running: &Running) {
    let status = cri
        .pod_sandbox_status(&running.pod_id)
        .expect("PodSandboxStatus");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    let subnet = ctd.up_env("SUBNET").expect("up.env");
    assert!(
        ip.starts_with(subnet.trim_end_matches("0/24")),
        "pod address {ip:?} is not from up.sh's {subnet}"
    );
    let exec = cri
        .exec_sync(
            &running.container_id,
            &["ip", "-o", "-4", "addr", "show", "eth0"],
        )
        .expect("ExecSync");
    let out = String::from_utf8_lossy(&exec.stdout);
    assert!(
        exec.exit_code == 0 && out.contains(&format!("inet {ip}/24")),
        "eth0 of the container lacks {ip}: {out}{}",
        String::from_utf8_lossy(&exec.stderr)
    );
}
