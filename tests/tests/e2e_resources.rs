//! The task API beyond the lifecycle, through the CRI and ctr against a private containerd:
//! stats from the guest's cgroups, limits applied and updated in the guest, the OOM killer
//! reported as with runc, and pause/resume.

use std::time::{Duration, Instant};

use coffer_tests::lifecycle::assert_nothing_left;
use coffer_tests::{skip, tools, Container, Cri, Driver, Pod, PrivateContainerd};

fn setup() -> Option<PrivateContainerd> {
    if let Err(reason) = tools::bin_dir() {
        skip(reason);
        return None;
    }
    if let Err(reason) = tools::guest_dir() {
        skip(reason);
        return None;
    }
    if let Some(reason) = tools::containerd_missing() {
        skip(reason);
        return None;
    }
    Some(PrivateContainerd::start().expect("the private containerd starts"))
}

/// `ctr` against the private containerd, in the CRI's namespace; its stdout.
fn ctr(ctd: &PrivateContainerd, args: &[&str]) -> String {
    ctd.ctr(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The memory limit the guest's cgroup has, from the task's metrics (`ctr task metrics`).
fn guest_memory_limit(ctd: &PrivateContainerd, id: &str) -> u64 {
    let json = ctr(ctd, &["task", "metrics", "--format", "json", id]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("metrics JSON");
    v["memory"]["usage_limit"]
        .as_u64()
        .unwrap_or_else(|| panic!("no memory.usage_limit in {json}"))
}

fn start(cri: &mut Cri, pod_id: &str, pod: &Pod, c: &Container) -> String {
    let id = cri
        .create_container(pod_id, pod, c)
        .expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");
    id
}

fn remove(cri: &mut Cri, pod_id: &str) {
    cri.stop_pod_sandbox(pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(pod_id).expect("RemovePodSandbox");
    assert_nothing_left(cri);
}

#[test]
fn stats_are_real_and_limits_are_applied_and_updated_in_the_guest() {
    let Some(ctd) = setup() else { return };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("stats", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let mut busy = Container::busybox_sh("busy", "while :; do :; done");
    busy.memory_limit = Some(48 << 20);
    let id = start(&mut cri, &pod_id, &pod, &busy);

    let (cpu1, mem1) = cri.container_stats(&id).expect("ContainerStats");
    std::thread::sleep(Duration::from_secs(2));
    let (cpu2, mem2) = cri.container_stats(&id).expect("ContainerStats");
    assert!(cpu2 > cpu1, "CPU time did not grow: {cpu1} -> {cpu2} ns");
    assert!(
        mem1 > 0 && mem2 > 0,
        "no memory working set: {mem1}, {mem2}"
    );

    assert_eq!(guest_memory_limit(&ctd, &id), 48 << 20);
    cri.update_memory_limit(&id, 96 << 20)
        .expect("UpdateContainerResources");
    assert_eq!(guest_memory_limit(&ctd, &id), 96 << 20);
    remove(&mut cri, &pod_id);
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_as_with_runc() {
    let Some(ctd) = setup() else { return };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("oom", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    // tail keeps the whole of an endless line in memory.
    let mut hog = Container::busybox_sh("hog", "tail /dev/zero");
    hog.memory_limit = Some(32 << 20);
    let id = start(&mut cri, &pod_id, &pod, &hog);
    let code = cri
        .wait_exited(&id, Duration::from_secs(120))
        .expect("the hog exits");
    assert_eq!(code, 137, "killed by SIGKILL");
    let status = cri.container_status(&id).expect("ContainerStatus");
    assert_eq!(status.reason, "OOMKilled");
    remove(&mut cri, &pod_id);
}

#[test]
fn pause_freezes_a_container_and_resume_thaws_it() {
    let Some(ctd) = setup() else { return };
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("pause", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let ticker = Container::busybox_sh("ticker", "while :; do echo tick; sleep 0.2; done");
    let id = start(&mut cri, &pod_id, &pod, &ticker);
    let ticks = |cri: &mut Cri| cri.logs(&id).expect("log").len();
    wait_until(|| ticks(&mut cri) > 2, "the first ticks");

    ctr(&ctd, &["task", "pause", &id]);
    let listed = ctr(&ctd, &["task", "ls"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(id.as_str()) && l.contains("PAUSED")),
        "ctr task ls: {listed}"
    );
    // Output already on its way settles, then nothing more comes.
    std::thread::sleep(Duration::from_millis(500));
    let frozen = ticks(&mut cri);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(&mut cri), frozen, "the paused container kept running");

    ctr(&ctd, &["task", "resume", &id]);
    wait_until(|| ticks(&mut cri) > frozen, "ticks after resume");
    remove(&mut cri, &pod_id);
}

fn wait_until(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
