//! Nothing leaks: 20 cycles of 4 Coffer pods created, used and removed at once through the CRI,
//! then the host is compared with how it was before — QEMU processes, shims, mounts, network
//! namespaces and TAPs, sandbox state, and containerd's open descriptors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_tests::lifecycle::assert_nothing_left;
use coffer_tests::{skip, tools, Container, Pod, PrivateContainerd};

const CYCLES: usize = 20;
const PODS: usize = 4;

/// The pod's network namespace, as its shim recorded it.
fn pod_netns(state_dir: &Path, pod_id: &str) -> PathBuf {
    let record = std::fs::read_to_string(state_dir.join(pod_id).join("state.json"))
        .expect("the sandbox's state.json");
    let v: serde_json::Value = serde_json::from_str(&record).expect("state.json is JSON");
    PathBuf::from(v["network"]["netns"].as_str().expect("a pod network"))
}

#[test]
fn twenty_cycles_of_four_concurrent_pods_leak_nothing() {
    if let Some(reason) = tools::coffer_pods_missing() {
        skip(reason);
        return;
    }
    let ctd = PrivateContainerd::start().expect("the private containerd starts");
    let before = ctd.footprint();
    let fds_before = ctd.containerd_fds();
    for cycle in 0..CYCLES {
        let workers: Vec<_> = (0..PODS)
            .map(|n| {
                let socket = ctd.socket().to_path_buf();
                let logs = ctd.log_root();
                let state_dir = ctd.coffer_state_dir();
                std::thread::spawn(move || {
                    let mut cri = coffer_tests::Cri::connect(&socket).expect("connect");
                    let pod = Pod::new(&format!("soak-{cycle}-{n}"), "coffer-qemu", &logs);
                    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
                    let c = Container::busybox_sh("main", "echo up; exec sleep 3600");
                    let c = cri
                        .create_container(&pod_id, &pod, &c)
                        .expect("CreateContainer");
                    cri.start_container(&c).expect("StartContainer");
                    let exec = cri.exec_sync(&c, &["echo", "hi"]).expect("ExecSync");
                    assert_eq!(exec.exit_code, 0);
                    let netns = pod_netns(&state_dir, &pod_id);
                    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
                    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
                    assert!(!netns.exists(), "{} outlived its pod", netns.display());
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a pod's cycle failed");
        }
        eprintln!("cycle {}: {:?}", cycle + 1, ctd.footprint());
    }
    // Shims exit once their last task is deleted; give the last ones a moment.
    let after = ctd.settled_footprint(&before, Duration::from_secs(30));
    assert_eq!(after, before, "the pods left something behind");
    let fds_after = ctd.containerd_fds();
    // containerd keeps a few descriptors of its own (connections, caches): a leak per pod
    // would show as dozens after 80 pods.
    assert!(
        fds_after <= fds_before + 8,
        "containerd's descriptors grew from {fds_before} to {fds_after}"
    );
    assert_nothing_left(&mut ctd.cri().expect("connect"));
}
