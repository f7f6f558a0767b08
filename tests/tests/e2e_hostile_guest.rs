//! A hostile guest, inside a real VM, through the CRI: the guest's initrd gets
//! `coffer-hostile-guest` (tests/hostile-guest) as its init, which answers the hello correctly
//! and then breaks the protocol as each case asks. For every case the shim stays up and bounded
//! in memory, the step that meets the misbehaviour ends in an error that names it (or, for host
//! pids, the host never takes the guest's pid for its own), and the pod is stopped and removed
//! leaving nothing behind.
//!
//! Without the hostile guest binary (built static for the guest by packaging/dev/test.sh), the
//! shim, the guest image or containerd, each test prints `SKIP: <reason>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_tests::lifecycle::assert_nothing_left;
use coffer_tests::{skip, tools, Container, Cri, Driver, Pod, PrivateContainerd};

/// The kubelet's default `--runtime-request-timeout`.
const CRI_DEADLINE: Duration = Duration::from_secs(120);

/// The shim's output buffers (16 MiB of events, 4 MiB per stream) and its own pages, with room.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// Twice the console's rotation size (hypervisor/src/console.rs), which is all it may keep.
const CONSOLE_LIMIT: u64 = 2 * 512 * 1024;

/// VMs are counted host-wide, and the machine is small: one case at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The hostile guest built for the guest (static), or why there is none.
fn hostile_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("COFFER_HOSTILE_GUEST") {
        Some(p) => PathBuf::from(p),
        None => {
            tools::workspace().join("target/x86_64-unknown-linux-gnu/debug/coffer-hostile-guest")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no hostile guest binary at {} (packaging/dev/test.sh builds it; or set COFFER_HOSTILE_GUEST)",
            path.display()
        ))
    }
}

/// The guest's initrd with the hostile guest added as `/hostile`: the kernel unpacks
/// concatenated cpio archives in turn.
fn hostile_initrd(dir: &Path, binary: &Path) -> PathBuf {
    let guest = tools::guest_dir().expect("the guest image");
    let stage = dir.join("hostile-stage");
    std::fs::create_dir_all(&stage).expect("stage directory");
    std::fs::copy(binary, stage.join("hostile")).expect("copy the hostile guest");
    let out = Command::new("sh")
        .arg("-c")
        .arg("echo hostile | cpio --quiet -o -H newc -R 0:0")
        .current_dir(&stage)
        .output()
        .expect("run cpio");
    assert!(
        out.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut initrd = std::fs::read(guest.join("initrd.img")).expect("the guest's initrd");
    initrd.extend_from_slice(&out.stdout);
    let path = dir.join("initrd-hostile.img");
    std::fs::write(&path, initrd).expect("write the hostile initrd");
    path
}

/// The private containerd whose coffer-qemu handler boots the hostile guest; `None` (skipped,
/// saying why) without what it needs.
fn setup() -> Option<(PrivateContainerd, PathBuf)> {
    let binary = match tools::coffer_pods_missing().map_or_else(hostile_binary, Err) {
        Ok(b) => b,
        Err(reason) => {
            skip(reason);
            return None;
        }
    };
    let ctd = PrivateContainerd::start().expect("the private containerd starts");
    std::fs::create_dir_all(ctd.scratch()).expect("scratch directory");
    let initrd = hostile_initrd(&ctd.scratch(), &binary);
    Some((ctd, initrd))
}

/// Points the handler at the hostile initrd, playing `case`.
fn play(ctd: &PrivateContainerd, initrd: &Path, case: &str) {
    let config = ctd.dir().join("coffer/coffer-qemu.toml");
    let text = std::fs::read_to_string(&config).expect("the handler's config");
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("initrd =") || line.starts_with("kernel_params =") {
            continue;
        }
        out.push(line.to_owned());
        if line == "[vm]" {
            out.push(format!("initrd = \"{}\"", initrd.display()));
            out.push(format!(
                "kernel_params = \"rdinit=/hostile coffer.hostile={case}\""
            ));
        }
    }
    std::fs::write(&config, out.join("\n")).expect("write the handler's config");
}

fn shim_of(ctd: &PrivateContainerd) -> u32 {
    let shims = tools::processes("containerd-shim-coffer", &ctd.socket().to_string_lossy());
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    shims[0]
}

/// What a case expects of StartContainer (where the shim first asks the guest for a container).
enum Expect {
    /// RunPodSandbox already fails (the first request after the hello configures the pod's
    /// network), the message containing this.
    RunFails(&'static str),
    /// It fails, the message containing this.
    Fails(&'static str),
    /// It works (the misbehaviour is elsewhere).
    Works,
}

/// Runs a pod on the hostile guest playing `case` and checks what `expect` says, plus: the shim
/// alive and bounded, the console bounded, teardown in time, nothing left.
fn hostile(case: &str, expect: Expect, check: impl FnOnce(&PrivateContainerd, &mut Cri, &str)) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((ctd, initrd)) = setup() else { return };
    play(&ctd, &initrd, case);
    let before = ctd.footprint();
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new(case, "coffer-qemu", &ctd.log_root());
    if let Expect::RunFails(what) = expect {
        let started = Instant::now();
        let e = cri
            .run_pod_sandbox(&pod)
            .expect_err("RunPodSandbox on a hostile guest succeeded");
        let took = started.elapsed();
        eprintln!("{case}: RunPodSandbox {e} after {took:.1?}");
        assert!(took < CRI_DEADLINE, "{case}: RunPodSandbox took {took:?}");
        assert!(e.to_string().contains(what), "{case}: {e}");
        for id in cri.list_pod_sandboxes().expect("ListPodSandbox") {
            cri.stop_pod_sandbox(&id).expect("StopPodSandbox");
            cri.remove_pod_sandbox(&id).expect("RemovePodSandbox");
        }
        let after = ctd.settled_footprint(&before, Duration::from_secs(30));
        assert_eq!(after, before, "{case}: left behind");
        return;
    }
    let pod_id = cri
        .run_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("{case}: RunPodSandbox on the hostile guest: {e}"));
    // The shim exits once a pod whose VM was killed is cleaned up: its peak is sampled while
    // it lives.
    let shim = shim_of(&ctd);
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || loop {
            let now = tools::peak_rss_kib(shim);
            if now == 0 {
                return;
            }
            peak.fetch_max(now, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        })
    };
    let c = Container::busybox_sh("main", "exec sleep 3600");
    let c = cri
        .create_container(&pod_id, &pod, &c)
        .expect("CreateContainer");
    let started = Instant::now();
    let result = cri.start_container(&c);
    let took = started.elapsed();
    eprintln!("{case}: StartContainer {result:?} after {took:.1?}");
    assert!(took < CRI_DEADLINE, "{case}: StartContainer took {took:?}");
    match expect {
        Expect::Fails(what) => {
            let e = result.expect_err("StartContainer on a hostile guest succeeded");
            assert!(e.to_string().contains(what), "{case}: {e}");
        }
        Expect::Works => result.unwrap_or_else(|e| panic!("{case}: StartContainer: {e}")),
        Expect::RunFails(_) => unreachable!("handled above"),
    }
    check(&ctd, &mut cri, &c);

    let peak_now = peak.load(Ordering::Relaxed);
    eprintln!("{case}: shim peak RSS {peak_now} KiB");
    assert!(peak_now > 0, "{case}: the shim's memory was never read");
    assert!(
        peak_now < PEAK_LIMIT_KIB,
        "{case}: the shim's peak RSS is {peak_now} KiB"
    );
    let console = ctd.coffer_state_dir().join(&pod_id);
    let console_bytes: u64 = ["console.log", "console.log.1"]
        .iter()
        .filter_map(|f| std::fs::metadata(console.join(f)).ok())
        .map(|m| m.len())
        .sum();
    eprintln!("{case}: console kept {console_bytes} bytes");
    assert!(
        console_bytes <= CONSOLE_LIMIT,
        "{case}: console {console_bytes} bytes"
    );

    let started = Instant::now();
    cri.stop_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("{case}: StopPodSandbox: {e}"));
    cri.remove_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("{case}: RemovePodSandbox: {e}"));
    let took = started.elapsed();
    eprintln!("{case}: teardown {took:.1?}");
    assert!(took < CRI_DEADLINE);
    assert_nothing_left(&mut cri);
    let after = ctd.settled_footprint(&before, Duration::from_secs(30));
    assert_eq!(after, before, "{case}: left behind");
    sampler.join().expect("the sampler");
    // The shim's own log goes to containerd's: it ended its pod, it did not crash.
    let log = ctd.containerd_log();
    assert!(
        !log.contains("panicked at"),
        "{case}: the shim panicked:\n{}",
        ctd.containerd_log_tail(40)
    );
}

/// The pod is no longer ready (its VM was killed or lost), within a short while.
fn pod_ends(ctd: &PrivateContainerd, cri: &mut Cri, container: &str) {
    let _ = (ctd, container);
    let deadline = Instant::now() + Duration::from_secs(30);
    let pods = cri.list_pod_sandboxes().expect("ListPodSandbox");
    while pods.iter().any(|p| cri.pod_ready(p).unwrap_or(false)) {
        assert!(
            Instant::now() < deadline,
            "the pod of a broken guest is still ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_oversized_frame_ends_the_pod_naming_it() {
    hostile("oversized", Expect::Fails("exceeds the limit"), pod_ends);
}

#[test]
fn a_wrong_answer_fails_the_call_naming_it() {
    hostile("wrong-answer", Expect::Fails("unexpected"), |_, _, _| {});
}

#[test]
fn a_truncated_frame_is_a_hung_guest_and_its_vm_is_killed() {
    hostile("truncated", Expect::Fails("did not answer"), pod_ends);
}

#[test]
fn answers_with_unknown_ids_are_a_hung_guest_and_its_vm_is_killed() {
    hostile(
        "unknown-ids",
        Expect::RunFails("did not answer"),
        |_, _, _| {},
    );
}

/// The guest says its process is pid 1: containerd is told the VM's pid, never the guest's.
#[test]
fn a_guest_pid_is_never_taken_for_a_host_pid() {
    hostile("host-pids", Expect::Works, |ctd, _cri, container| {
        let vm = ctd.vms();
        assert_eq!(vm.len(), 1, "one VM: {vm:?}");
        let text = ctd.ctr(&["tasks", "ls"]).expect("ctr tasks ls");
        let line = text
            .lines()
            .find(|l| l.starts_with(container))
            .unwrap_or_else(|| panic!("no task {container} in:\n{text}"));
        let pid: u32 = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        assert_eq!(pid, vm[0], "containerd was told pid {pid}, not the VM's");
    });
}

/// Output and exits for containers that do not exist, without end: ignored, bounded.
#[test]
fn endless_events_for_unknown_containers_leave_the_shim_bounded() {
    hostile("endless-events", Expect::Works, |_, cri, container| {
        // Let the flood run, then check the pod still answers.
        std::thread::sleep(Duration::from_secs(5));
        let status = cri.container_status(container).expect("ContainerStatus");
        assert_eq!(status.id, container);
    });
}

/// A console written as fast as the guest can: the host keeps a bounded tail.
#[test]
fn a_console_flood_is_kept_bounded() {
    hostile("console-flood", Expect::Works, |_, _, _| {
        std::thread::sleep(Duration::from_secs(5));
    });
}
