//! Faults at every step of a Coffer pod's life, through the CRI as the kubelet drives it.
//!
//! For each fault (QEMU killed, the shim killed, containerd killed and restarted, a guest that
//! stops answering) and each step (RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! stop, RemovePodSandbox), the pod is brought to just before the step, the fault is injected,
//! and the step is made. Then:
//! - the CRI answered within the kubelet's deadline, with the outcome a user expects: a step
//!   that needs the guest fails when the guest is gone, stop and remove always succeed, and
//!   after a containerd restart everything works as if nothing happened;
//! - the pod and its container reach the state a user expects (a pod whose VM is gone is no
//!   longer ready, its container has exited);
//! - after StopPodSandbox and RemovePodSandbox, the host holds exactly what it held before:
//!   QEMU processes, shims, mounts, sandbox state, network namespaces (with their TAPs), and
//!   containerd's open descriptors.
//!
//! Without the shim, the guest image or containerd, each test prints `SKIP: <reason>`.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_tests::lifecycle::{assert_nothing_left, wait_for_log_line};
use coffer_tests::{skip, tools, Container, ContainerState, Cri, Driver, Pod, PrivateContainerd};

/// The kubelet's default `--runtime-request-timeout`: every CRI call must answer within it.
const CRI_DEADLINE: Duration = Duration::from_secs(120);

/// How long containerd may take to notice a dead VM or shim and update the pod's state.
const STATE_WAIT: Duration = Duration::from_secs(30);

/// The guest's boot deadline for these pods: a hung boot fails RunPodSandbox after it.
const AGENT_TIMEOUT_SECS: u64 = 40;

/// The host-wide counts (network namespaces) and the 2 cores allow one case at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the other tests of this file off (a failed one does not stop the rest).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -KILL` of the pod's QEMU.
    KillVm,
    /// `kill -KILL` of the pod's shim.
    KillShim,
    /// `kill -KILL` of containerd, then containerd started again.
    RestartContainerd,
    /// `kill -STOP` of the pod's QEMU: the guest stops answering, the connection stays open.
    HangGuest,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillVm => "kill-vm",
            Fault::KillShim => "kill-shim",
            Fault::RestartContainerd => "restart-containerd",
            Fault::HangGuest => "hang-guest",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    RunPod,
    CreateContainer,
    StartContainer,
    Exec,
    /// StopContainer, then StopPodSandbox.
    Stop,
    /// RemovePodSandbox of a stopped pod.
    Remove,
}

const STEPS: [Step; 6] = [
    Step::RunPod,
    Step::CreateContainer,
    Step::StartContainer,
    Step::Exec,
    Step::Stop,
    Step::Remove,
];

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::RunPod => "run",
            Step::CreateContainer => "create",
            Step::StartContainer => "start",
            Step::Exec => "exec",
            Step::Stop => "stop",
            Step::Remove => "remove",
        })
    }
}

/// The private containerd with the coffer-qemu handler, its boot deadline shortened, or `None`
/// (skipped, saying why).
fn setup() -> Option<PrivateContainerd> {
    if let Some(reason) = tools::coffer_pods_missing() {
        skip(reason);
        return None;
    }
    let ctd = PrivateContainerd::start().expect("the private containerd starts");
    let config = ctd.dir().join("coffer/coffer-qemu.toml");
    let text = std::fs::read_to_string(&config).expect("the handler's config");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("agent_timeout_secs") {
                format!("agent_timeout_secs = {AGENT_TIMEOUT_SECS}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).expect("write the handler's config");
    Some(ctd)
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn the_one(what: &str, pids: Vec<u32>) -> u32 {
    assert_eq!(pids.len(), 1, "one {what} for the pod: {pids:?}");
    pids[0]
}

fn shims(ctd: &PrivateContainerd) -> Vec<u32> {
    tools::processes("containerd-shim-coffer", &ctd.socket().to_string_lossy())
}

/// Injects `fault` into the one pod of `ctd`; after a restart, `cri` is connected again.
fn inject(fault: Fault, ctd: &mut PrivateContainerd, cri: &mut Cri) {
    match fault {
        Fault::KillVm => signal(the_one("VM", ctd.vms()), "KILL"),
        Fault::KillShim => signal(the_one("shim", shims(ctd)), "KILL"),
        Fault::HangGuest => signal(the_one("VM", ctd.vms()), "STOP"),
        Fault::RestartContainerd => {
            ctd.kill_containerd().expect("kill containerd");
            ctd.restart().expect("containerd starts again");
            *cri = ctd.cri().expect("connect to the restarted containerd");
        }
    }
}

/// Injects `fault` from another thread as soon as the pod's VM exists, while RunPodSandbox
/// boots it. Returns whether it was injected.
fn inject_during_boot(fault: Fault, ctd: &PrivateContainerd) -> std::thread::JoinHandle<bool> {
    let dir = ctd.dir().to_string_lossy().into_owned();
    let socket = ctd.socket().to_string_lossy().into_owned();
    let containerd_pid = ctd.dir().join("containerd.pid");
    std::thread::spawn(move || {
        let deadline = Instant::now() + CRI_DEADLINE;
        let vm = loop {
            if let Some(&pid) = tools::processes("qemu-system", &dir).first() {
                break pid;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match fault {
            Fault::KillVm => signal(vm, "KILL"),
            Fault::HangGuest => signal(vm, "STOP"),
            Fault::KillShim => {
                for pid in tools::processes("containerd-shim-coffer", &socket) {
                    signal(pid, "KILL");
                }
            }
            Fault::RestartContainerd => {
                let pid = std::fs::read_to_string(&containerd_pid).expect("containerd.pid");
                signal(pid.trim().parse().expect("a pid"), "KILL");
            }
        }
        true
    })
}

/// Waits until `ok` holds or [`STATE_WAIT`] passes; returns whether it held.
fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Makes `step` and checks its outcome; `pod_id` and `container_id` are what the steps before
/// it made.
fn take_step(
    fault: Fault,
    step: Step,
    cri: &mut Cri,
    pod: &Pod,
    pod_id: &str,
    container_id: Option<&str>,
) {
    let case = format!("{fault} at {step}");
    let started = Instant::now();
    let result: Result<(), String> = match step {
        Step::RunPod => unreachable!("RunPodSandbox faults are injected during the call"),
        Step::CreateContainer => {
            let c = Container::busybox_sh("main", "echo up; exec sleep 3600");
            cri.create_container(pod_id, pod, &c)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Step::StartContainer => cri
            .start_container(container_id.expect("a container"))
            .map_err(|e| e.to_string()),
        Step::Exec => cri
            .exec_sync(container_id.expect("a container"), &["echo", "still-here"])
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.exit_code == 0 && r.stdout == b"still-here\n" {
                    Ok(())
                } else {
                    Err(format!("ExecSync answered {r:?}"))
                }
            }),
        Step::Stop => cri
            .stop_container(container_id.expect("a container"), 2)
            .and_then(|()| cri.stop_pod_sandbox(pod_id))
            .map_err(|e| e.to_string()),
        Step::Remove => cri.remove_pod_sandbox(pod_id).map_err(|e| e.to_string()),
    };
    let took = started.elapsed();
    eprintln!("{case}: {result:?} in {took:.1?}");
    assert!(
        took < CRI_DEADLINE,
        "{case}: the CRI answered after {took:?}"
    );
    let must_succeed = fault == Fault::RestartContainerd || step >= Step::Stop;
    // containerd's CreateContainer makes metadata and a snapshot, not the task (StartContainer
    // does): it needs no guest, and refuses only once containerd has seen the sandbox exit.
    if step == Step::CreateContainer && !must_succeed {
        eprintln!("{case}: either outcome is right");
    } else if must_succeed {
        assert_eq!(result, Ok(()), "{case}");
    } else {
        assert!(
            result.is_err(),
            "{case}: the step succeeded without its guest"
        );
    }

    // The state a user expects: a pod whose guest is gone is not ready and its container has
    // exited; after a containerd restart the pod is as it was.
    if step >= Step::Stop {
        return;
    }
    if fault == Fault::RestartContainerd {
        assert!(cri.pod_ready(pod_id).expect("PodSandboxStatus"), "{case}");
        return;
    }
    if fault == Fault::HangGuest && step == Step::CreateContainer {
        // Nothing asked the guest anything yet: nobody can tell it is hung.
        return;
    }
    assert!(
        eventually(|| !cri.pod_ready(pod_id).unwrap_or(true)),
        "{case}: the pod is still ready"
    );
    if let Some(id) = container_id {
        let mut state = ContainerState::Unknown;
        let exited = eventually(|| {
            state = cri.container_state(id).unwrap_or(ContainerState::Unknown);
            matches!(state, ContainerState::Exited(_))
                || (step == Step::StartContainer && state == ContainerState::Created)
        });
        assert!(exited, "{case}: the container is {state:?}");
    }
}

/// One case: the pod brought to just before `step`, `fault` injected, the step made, the pod
/// removed, and the host compared with how it was.
fn case(ctd: &mut PrivateContainerd, fault: Fault, step: Step) {
    let label = format!("{fault} at {step}");
    eprintln!("==> {label}");
    let before = ctd.footprint();
    let fds_before = ctd.containerd_fds();
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new(&format!("{fault}-{step}"), "coffer-qemu", &ctd.log_root());

    if step == Step::RunPod {
        let injector = inject_during_boot(fault, ctd);
        let started = Instant::now();
        let result = cri.run_pod_sandbox(&pod);
        let took = started.elapsed();
        assert!(
            injector.join().expect("the injector"),
            "{label}: no VM came up"
        );
        eprintln!("{label}: {result:?} in {took:.1?}");
        assert!(
            took < CRI_DEADLINE,
            "{label}: RunPodSandbox answered after {took:?}"
        );
        assert!(result.is_err(), "{label}: RunPodSandbox succeeded");
        if fault == Fault::RestartContainerd {
            ctd.restart().expect("containerd starts again");
            cri = ctd.cri().expect("connect to the restarted containerd");
        }
    } else {
        let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
        let mut container_id = None;
        if step > Step::CreateContainer {
            let c = Container::busybox_sh("main", "echo up; exec sleep 3600");
            container_id = Some(
                cri.create_container(&pod_id, &pod, &c)
                    .expect("CreateContainer"),
            );
        }
        if step > Step::StartContainer {
            let id = container_id.as_deref().expect("a container");
            cri.start_container(id).expect("StartContainer");
            let lines = wait_for_log_line(&mut cri, id, "up");
            assert!(lines.iter().any(|l| l == "up"), "{label}: {lines:?}");
        }
        if step == Step::Remove {
            cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
        }
        inject(fault, ctd, &mut cri);
        take_step(
            fault,
            step,
            &mut cri,
            &pod,
            &pod_id,
            container_id.as_deref(),
        );
    }

    // Teardown as the kubelet does it: every sandbox stopped and removed, which must succeed.
    for id in cri.list_pod_sandboxes().expect("ListPodSandbox") {
        cri.stop_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{label}: StopPodSandbox: {e}"));
        cri.remove_pod_sandbox(&id)
            .unwrap_or_else(|e| panic!("{label}: RemovePodSandbox: {e}"));
    }
    assert_nothing_left(&mut cri);
    let after = ctd.settled_footprint(&before, STATE_WAIT);
    assert_eq!(
        after,
        before,
        "{label}: left behind; containerd's warnings and errors:\n{}",
        complaints(ctd)
    );
    // A restarted containerd is another process, with descriptors of its own.
    if fault != Fault::RestartContainerd {
        let fds = ctd.containerd_fds();
        assert!(
            fds <= fds_before + 4,
            "{label}: containerd's descriptors grew from {fds_before} to {fds}"
        );
    }
}

/// The warnings and errors in containerd's log (the shims' own included).
fn complaints(ctd: &PrivateContainerd) -> String {
    let log = ctd.containerd_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["level=warn", "level=error", "WARN", "ERROR"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn every_step(fault: Fault) {
    let _one = one_at_a_time();
    let Some(mut ctd) = setup() else { return };
    // Every step is tried, so that one failure does not hide the others'.
    let mut failed = Vec::new();
    for step in STEPS {
        // A stopped pod has no VM and no shim left to lose.
        if step == Step::Remove && fault != Fault::RestartContainerd {
            continue;
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case(&mut ctd, fault, step);
        }));
        if run.is_err() {
            eprintln!(
                "{fault} at {step} failed; containerd's log ends:\n{}",
                ctd.containerd_log_tail(80)
            );
            failed.push(format!("{fault} at {step}"));
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?} (see above)");
}

#[test]
fn qemu_killed_at_every_step() {
    every_step(Fault::KillVm);
}

#[test]
fn shim_killed_at_every_step() {
    every_step(Fault::KillShim);
}

#[test]
fn containerd_restarted_at_every_step() {
    every_step(Fault::RestartContainerd);
}

#[test]
fn guest_hung_at_every_step() {
    every_step(Fault::HangGuest);
}

/// The bound on the shim's memory under a flood: its output buffers (16 MiB of events, 4 MiB
/// per stream) and the binary's own pages, with room to spare.
const FLOOD_PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// A container that floods its output as fast as the guest can write it: meanwhile ExecSync
/// still returns exactly its own output, the pod stops and is removed within the CRI's deadline,
/// the shim's memory stays bounded, and nothing is left.
#[test]
fn a_flooding_container_leaves_the_pod_answering_and_the_shim_bounded() {
    let _one = one_at_a_time();
    let Some(ctd) = setup() else { return };
    let before = ctd.footprint();
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("flood", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    // Bounded, so that containerd's log of it stays within the disk's means.
    let flood = Container::busybox_sh(
        "flood",
        "echo start; yes 0123456789abcdef0123456789abcdef | head -c 400000000; echo end; exec sleep 3600",
    );
    let flood = cri
        .create_container(&pod_id, &pod, &flood)
        .expect("CreateContainer");
    cri.start_container(&flood).expect("StartContainer");
    let shim = the_one("shim", shims(&ctd));
    std::thread::sleep(Duration::from_secs(3));

    for n in 0..3 {
        let word = format!("exec-{n}");
        let started = Instant::now();
        let r = cri
            .exec_sync(&flood, &["echo", &word])
            .expect("ExecSync during the flood");
        eprintln!("ExecSync {n} during the flood: {:?}", started.elapsed());
        assert_eq!(r.exit_code, 0);
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{word}\n"));
    }
    let peak = tools::peak_rss_kib(shim);
    let log = std::fs::metadata(pod.log_directory.join("flood.log")).map_or(0, |m| m.len());
    eprintln!("shim peak RSS under the flood: {peak} KiB; container log so far: {log} bytes");
    assert!(
        peak > 0 && peak < FLOOD_PEAK_LIMIT_KIB,
        "the shim's peak RSS is {peak} KiB"
    );

    let started = Instant::now();
    cri.stop_pod_sandbox(&pod_id)
        .expect("StopPodSandbox during the flood");
    cri.remove_pod_sandbox(&pod_id)
        .expect("RemovePodSandbox after the flood");
    let took = started.elapsed();
    eprintln!("teardown during the flood: {took:?}");
    assert!(took < CRI_DEADLINE);
    assert_nothing_left(&mut cri);
    let after = ctd.settled_footprint(&before, STATE_WAIT);
    assert_eq!(after, before, "the flooded pod left something behind");
}

/// Stopping a VM whose guest is hung waits out the agent's shutdown deadline (5 s) before it
/// kills QEMU. Meanwhile the pod still answers: `ctr tasks ls` asks the shim for every task's
/// state, and gets it before the stop has given up on the guest. The kill itself returns at
/// once, as a kill does; the exits follow.
#[test]
fn a_vm_being_stopped_does_not_hold_the_pod() {
    let _one = one_at_a_time();
    let Some(ctd) = setup() else { return };
    let before = ctd.footprint();
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new("stopping", "coffer-qemu", &ctd.log_root());
    let pod_id = cri.run_pod_sandbox(&pod).expect("RunPodSandbox");
    let c = Container::busybox_sh("main", "echo up; exec sleep 3600");
    let container = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    cri.start_container(&container).expect("StartContainer");
    wait_for_log_line(&mut cri, &container, "up");
    signal(the_one("VM", ctd.vms()), "STOP");

    const GAVE_UP: &str = "the agent did not acknowledge shutdown";
    std::thread::scope(|s| {
        let kill = s.spawn(|| ctd.ctr(&["tasks", "kill", "--signal", "SIGKILL", &pod_id]));
        assert!(
            eventually(|| ctd.containerd_log().contains("stopping the sandbox VM")),
            "the shim never began stopping the VM:\n{}",
            ctd.containerd_log_tail(20)
        );
        let listed = ctd.ctr(&["tasks", "ls"]).expect("ctr tasks ls");
        let log = ctd.containerd_log();
        assert!(
            !log.contains(GAVE_UP),
            "the pod's state was answered only after the stop gave up on the guest:\n{listed}"
        );
        // containerd lists a task whose state it could not get within 2 s as UNKNOWN.
        for id in [&pod_id, &container] {
            let line = listed.lines().find(|l| l.starts_with(id.as_str()));
            assert!(
                line.is_some_and(|l| l.split_whitespace().nth(2) == Some("RUNNING")),
                "task {id} during the stop:\n{listed}"
            );
        }
        eprintln!("state during the stop:\n{listed}");
        kill.join()
            .expect("the kill")
            .expect("killing the sandbox task succeeds");
    });
    assert!(
        eventually(|| ctd.containerd_log().contains(GAVE_UP)),
        "the hung guest's VM was stopped without the shutdown deadline"
    );
    assert!(
        eventually(|| !cri.pod_ready(&pod_id).unwrap_or(true)),
        "the pod is still ready"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
    let after = ctd.settled_footprint(&before, STATE_WAIT);
    assert_eq!(after, before, "the stopped pod left something behind");
}
