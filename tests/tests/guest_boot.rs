//! Boots the real guest image (Debian's kernel, the initramfs with coffer-agent as /init) under
//! QEMU with an Init-Data disk written by the `initdata` crate, and talks to the agent over the
//! virtio-serial port with the protocol client the shim uses.
//!
//! The image comes from `COFFER_GUEST_DIR`, else `<workspace>/target/guest` (built by
//! `packaging/guest/build.sh target/guest`); without it, or without QEMU, the tests SKIP.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_agent::protocol::client::{AgentClient, ClientError, EventReceiver};
use coffer_agent::protocol::{
    CreateContainer, ErrorKind, Event, ExitStatus, Hello, PolicyStatus, Process, Stream,
    Tee as GuestTee, Verification,
};
use coffer_hypervisor::{
    Accel, HostCapabilities, LaunchPlan, Machine, StopStep, Tee, Vm, VmConfig, VmResources,
};
use coffer_initdata::{image, Digest, InitData};

/// A document with every entry the guest delivers, and one it only warns about. Its agent policy
/// allows what the tests do and refuses an exec of anything but `sh`.
const DOCUMENT: &str = r#"version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://127.0.0.1:8080"
'''
"cdh.toml" = '''
[kbc]
name = "cc_kbc"
url = "http://127.0.0.1:8080"
'''
"policy.rego" = '''
package agent_policy
import rego.v1
default CreateContainerRequest := true
default StartContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default RemoveContainerRequest := true
default DestroySandboxRequest := true
# the host may read the processes' output (kata-agent's rule; undefined keeps it in the guest)
default ReadStreamRequest := true
# exec only through a shell: anything else is refused.
default ExecProcessRequest := false
ExecProcessRequest if input.process.Args[0] == "sh"
'''
"note.txt" = "not for the guest"
"#;

/// Generous: a TCG boot takes a few seconds, more on a loaded machine.
const HELLO_DEADLINE: Duration = Duration::from_secs(180);

fn guest_dir() -> Option<PathBuf> {
    coffer_testkit::guest_dir()
        .map_err(|reason| eprintln!("SKIP: {reason}"))
        .ok()
}

fn have_qemu() -> bool {
    coffer_testkit::qemu()
        .map_err(|reason| eprintln!("SKIP: {reason}"))
        .is_ok()
}

/// What the VM gets as its Init-Data disk.
enum Disk {
    /// This image.
    Image(Vec<u8>),
    /// None at all, although the command line names a digest.
    Missing,
    /// This image, on a disk without the `initdata` serial (as Kata's runtime attaches it).
    NoSerial(Vec<u8>),
}

struct Guest {
    vm: Vm,
    client: AgentClient,
    hello: Hello,
    events: Events,
    dir: tempfile::TempDir,
}

/// Boots a guest whose launch is bound (command line) to `digest`, with `disk` attached.
async fn boot(guest: &Path, disk: Disk, digest: &Digest) -> Guest {
    boot_on(Machine::Q35, guest, disk, digest).await
}

/// [`boot`] on `machine`.
async fn boot_on(machine: Machine, guest: &Path, disk: Disk, digest: &Digest) -> Guest {
    let dir = tempfile::Builder::new()
        .prefix("coffer-guest-")
        .tempdir()
        .unwrap();
    let res = VmResources::in_dir(dir.path());
    let share = res.share_dir.clone().unwrap();
    std::fs::create_dir_all(&share).unwrap();
    busybox_rootfs(&share.join("rootfs1"));
    if let Disk::Image(bytes) | Disk::NoSerial(bytes) = &disk {
        std::fs::write(res.initdata_image.as_ref().unwrap(), bytes).unwrap();
    }
    let config = VmConfig {
        accel: Accel::Tcg,
        // The coffer-qemu handler's boot path (qboot and the kernel's PVH entry point), on q35
        // as the TEE handlers' guests run unless asked: the end-to-end tests boot the handler's
        // microvm.
        machine,
        kernel: guest.join("vmlinux"),
        initrd: guest.join("initrd.img"),
        firmware: Some(coffer_hypervisor::config::QBOOT_FIRMWARE.into()),
        ..VmConfig::default()
    };
    // A microvm gets a NIC as well, so that it has as many devices as a pod's VM can: five
    // virtio-mmio devices, one more than fits without a transport on the RTC's interrupt.
    let mut res = res;
    let tap = (machine == Machine::Microvm).then(|| coffer_tests::tools::isolated_tap().unwrap());
    res.nic = tap.as_ref().map(|t| coffer_hypervisor::Nic {
        tap_fd: std::os::fd::AsRawFd::as_raw_fd(t),
        mac: "02:42:0a:58:00:02".into(),
    });
    let host = HostCapabilities::for_dry_run(Accel::Tcg);
    let mut plan = LaunchPlan::build(&config, Tee::None, &host, Some(digest), &res).unwrap();
    match disk {
        Disk::Missing => drop_initdata_disk(&mut plan.args),
        Disk::NoSerial(_) => {
            let device = plan
                .args
                .iter_mut()
                .find(|a| a.starts_with("virtio-blk-") && a.ends_with(",serial=initdata"))
                .expect("the plan attached the Init-Data disk with its serial");
            *device = device.trim_end_matches(",serial=initdata").to_string();
        }
        Disk::Image(_) => {}
    }
    let vm = Vm::spawn(&plan, &res).await.unwrap();
    // QEMU holds the TAP now.
    drop(tap);
    let (client, hello) = match AgentClient::connect(&res.agent_socket, HELLO_DEADLINE).await {
        Ok(c) => c,
        Err(e) => panic!(
            "no hello from the guest: {e}\nconsole:\n{}",
            std::fs::read_to_string(&res.console_log).unwrap_or_default()
        ),
    };
    let events = Events {
        rx: client.take_events().unwrap(),
        seen: Vec::new(),
    };
    Guest {
        vm,
        client,
        hello,
        events,
        dir,
    }
}

/// Removes the `-drive ...id=initdata...` and `-device virtio-blk-pci,...` pairs.
fn drop_initdata_disk(args: &mut Vec<String>) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let pair = args.get(i + 1).map(String::as_str).unwrap_or("");
        let is_disk = (args[i] == "-drive" && pair.contains("id=initdata"))
            || (args[i] == "-device" && pair.starts_with("virtio-blk-pci"));
        if is_disk {
            i += 2;
        } else {
            out.push(args[i].clone());
            i += 1;
        }
    }
    assert_eq!(
        out.len() + 4,
        args.len(),
        "the plan attached no Init-Data disk"
    );
    *args = out;
}

/// A root filesystem holding only busybox (static) and the applets the tests use.
fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "ls", "hostname", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

impl Guest {
    /// Drops the connection and connects again, as a restarted shim would.
    async fn reconnect(&mut self) -> Hello {
        // QEMU serves one connection at a time: the old one must be gone before the new hello.
        let (placeholder, _) = tokio::net::UnixStream::pair().unwrap();
        drop(std::mem::replace(
            &mut self.client,
            AgentClient::from_stream(placeholder),
        ));
        while let Ok(e) = self.events.rx.try_recv() {
            self.events.seen.push(e);
        }
        let socket = self.dir.path().join("agent.sock");
        let (client, hello) = AgentClient::connect(&socket, HELLO_DEADLINE).await.unwrap();
        self.events.rx = client.take_events().unwrap();
        self.client = client;
        hello
    }

    /// Runs `script` to its end in a container of the share's busybox, which must exit 0 and
    /// print one number; returns it.
    async fn number_from(&mut self, id: &str, script: &str) -> u64 {
        self.client
            .create_container(in_rootfs1(id, shell(script)))
            .await
            .unwrap();
        self.client.start(id).await.unwrap();
        let (out, err, status) = self.events.until_exit(id, None).await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status.code, 0, "{out}{}", String::from_utf8_lossy(&err));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script:?} printed no number: {out}"))
    }
}

async fn shutdown(g: Guest) {
    let dir = shutdown_keeping_dir(g).await;
    drop(dir);
}

/// Shuts the guest down and returns its directory (console log, sockets) for a look after.
async fn shutdown_keeping_dir(mut g: Guest) -> tempfile::TempDir {
    g.client.shutdown().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(120), g.vm.wait())
        .await
        .expect("the VM keeps running after the agent acknowledged shutdown")
        .unwrap();
    assert!(exit.status.success(), "{exit}");
    g.dir
}

/// The guest's events, kept so that waiting for one process does not lose another's output.
struct Events {
    rx: EventReceiver,
    seen: Vec<Event>,
}

impl Events {
    /// Stdout of a process so far.
    fn stdout(&self, id: &str, exec: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.seen {
            if let Event::Output {
                id: i,
                exec_id,
                stream: Stream::Stdout,
                data,
            } = e
            {
                if i == id && exec_id.as_deref() == exec {
                    out.extend(data);
                }
            }
        }
        out
    }

    /// Waits until a process has printed `text` on stdout.
    async fn until_stdout(&mut self, id: &str, exec: Option<&str>, text: &str) {
        while !String::from_utf8_lossy(&self.stdout(id, exec)).contains(text) {
            match self.rx.recv().await {
                Some(e) => self.seen.push(e),
                None => panic!("the event stream ended before {id}/{exec:?} printed {text:?}"),
            }
        }
    }

    /// Stdout, stderr and exit status of a process, once its exit event arrived.
    async fn until_exit(&mut self, id: &str, exec: Option<&str>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let is_exit = |e: &Event| matches!(e, Event::Exit { id: i, exec_id, .. } if i == id && exec_id.as_deref() == exec);
        while !self.seen.iter().any(is_exit) {
            match self.rx.recv().await {
                Some(e) => self.seen.push(e),
                None => panic!("the event stream ended before {id}/{exec:?} exited"),
            }
        }
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
        for e in &self.seen {
            match e {
                Event::Output {
                    id: i,
                    exec_id,
                    stream,
                    data,
                } if i == id && exec_id.as_deref() == exec => match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                },
                Event::Exit {
                    id: i,
                    exec_id,
                    status: s,
                } if i == id && exec_id.as_deref() == exec => status = Some(*s),
                _ => {}
            }
        }
        (out, err, status.unwrap())
    }
}

/// A container of the busybox root filesystem in the share, running `process`.
fn in_rootfs1(id: &str, process: Process) -> CreateContainer {
    CreateContainer {
        id: id.into(),
        rootfs: Some("rootfs1".into()),
        image: None,
        hostname: None,
        process,
        files: vec![],
        resources: None,
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        readonly_root: false,
        oci: Default::default(),
    }
}

fn shell(script: &str) -> Process {
    Process {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        ..Process::default()
    }
}

#[tokio::test]
async fn guest_reads_verifies_and_delivers_initdata_and_runs_containers() {
    let Some(guest) = guest_dir() else { return };
    if !have_qemu() {
        return;
    }
    let doc = InitData::parse(DOCUMENT.as_bytes().to_vec()).unwrap();
    let digest = doc.digest();
    let mut g = boot(&guest, Disk::Image(image::write(doc.as_bytes())), &digest).await;

    let report = &g.hello.initdata;
    assert_eq!(
        g.hello.protocol_version,
        coffer_agent::protocol::PROTOCOL_VERSION
    );
    assert_eq!(report.tee, GuestTee::None);
    assert_eq!(report.digest.as_deref(), Some(digest.to_hex().as_str()));
    assert_eq!(report.algorithm.as_deref(), Some("sha384"));
    assert_eq!(
        report.verification,
        Verification::Unmeasured {
            matches_cmdline: true
        }
    );
    assert_eq!(
        report.files,
        ["aa.toml", "cdh.toml", "initdata.toml", "policy.rego"]
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("note.txt"),
        "{:?}",
        report.warnings
    );
    let absent: Vec<_> = report
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.pid))
        .collect();
    // The image has no guest components: none runs, and the sandbox is fine without them.
    assert_eq!(
        absent,
        [
            ("attestation-agent", None),
            ("confidential-data-hub", None),
            ("api-server-rest", None)
        ]
    );
    assert_eq!(report.component_failure, None);
    // Nine rule definitions: eight defaults and the exec rule.
    assert_eq!(report.policy, PolicyStatus::Enforced { rules: 9 });

    // The delivered files hold exactly the document and its entries.
    assert_eq!(
        g.client
            .read_file("/run/confidential-containers/initdata/initdata.toml")
            .await
            .unwrap(),
        DOCUMENT.as_bytes()
    );
    for key in ["aa.toml", "cdh.toml", "policy.rego"] {
        assert_eq!(
            g.client.read_file(key).await.unwrap(),
            doc.get(key).unwrap().as_bytes(),
            "{key}"
        );
    }
    // Each refusal carries its kind, which becomes containerd's status code.
    let unknown = g
        .client
        .signal("no-such-container", None, 9)
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, ClientError::Remote { op: "signal", kind: ErrorKind::NotFound, message } if message == "no container \"no-such-container\" in this guest"),
        "{unknown}"
    );
    let outside = g.client.read_file("/etc/coffer/modules").await.unwrap_err();
    assert!(
        matches!(&outside, ClientError::Remote { op: "read_file", kind: ErrorKind::InvalidArgument, message } if message.contains("is outside it")),
        "{outside}"
    );

    // A container prints and exits with a chosen code; both reach the host.
    g.client
        .create_container(CreateContainer {
            hostname: Some("coffer-c1".into()),
            ..in_rootfs1("c1", shell(
                "echo hello from $(hostname) as pid $$; echo to stderr >&2; read line; echo \"stdin:$line\"; sleep 30; echo not reached",
            ))
        })
        .await
        .unwrap();
    g.client.start("c1").await.unwrap();

    // exec into the running container: same namespaces (hostname, PID 1 is the container's
    // shell: busybox would exec a last simple command in place, hence the trailing echo), and
    // the guest's Init-Data directory is not in its root.
    g.client
        .exec(
            "c1",
            "e1",
            shell(
                "hostname; cat /proc/1/cmdline; echo; ls /run/confidential-containers 2>&1; exit 3",
            ),
        )
        .await
        .unwrap();
    let (out, _, status) = g.events.until_exit("c1", Some("e1")).await;
    // The policy refuses an exec that is not a shell, in the words the user will see.
    let denied = g
        .client
        .exec(
            "c1",
            "e2",
            Process {
                args: vec!["cat".into(), "/etc/hostname".into()],
                ..shell("")
            },
        )
        .await
        .unwrap_err();
    match &denied {
        ClientError::Remote { op, kind, message } => {
            assert_eq!(*op, "exec");
            // PERMISSION_DENIED at containerd, as kata-agent answers a denial.
            assert_eq!(*kind, ErrorKind::PermissionDenied);
            assert_eq!(message, "the agent policy denies ExecProcessRequest");
        }
        other => panic!("expected the policy to refuse the exec, got {other}"),
    }
    let out = String::from_utf8(out).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("coffer-c1"));
    assert!(
        lines.next().unwrap().starts_with("sh\0-c\0echo hello"),
        "{out}"
    );
    assert!(
        lines.next().unwrap().contains("No such file or directory"),
        "{out}"
    );
    assert_eq!(
        status,
        ExitStatus {
            code: 3,
            signal: None
        }
    );
    assert_eq!(
        g.client.wait("c1", Some("e1")).await.unwrap(),
        ExitStatus {
            code: 3,
            signal: None
        }
    );

    // The container's process is PID 1 of its namespace: SIGKILL is the signal it cannot
    // ignore.
    g.events.until_stdout("c1", None, "stdin:\n").await;
    g.client.signal("c1", None, 9).await.unwrap();
    let (out, err, status) = g.events.until_exit("c1", None).await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "hello from coffer-c1 as pid 1\nstdin:\n"
    );
    assert_eq!(err, b"to stderr\n");
    assert_eq!(
        status,
        ExitStatus {
            code: 137,
            signal: Some(9)
        }
    );

    // Waits for the host to drop a file into the share, so it runs after the reconnect.
    g.client
        .create_container(in_rootfs1(
            "c2",
            shell("while [ ! -e /go ]; do sleep 0.2; done; echo done; exit 42"),
        ))
        .await
        .unwrap();
    g.client.start("c2").await.unwrap();
    // The host goes away and comes back while c2 runs; its answers and events reach the new
    // connection.
    let again = g.reconnect().await;
    assert_eq!(again.initdata, g.hello.initdata);
    std::fs::write(g.dir.path().join("share/rootfs1/go"), b"").unwrap();
    assert_eq!(
        g.client.wait("c2", None).await.unwrap(),
        ExitStatus {
            code: 42,
            signal: None
        }
    );
    let (out, _, status) = g.events.until_exit("c2", None).await;
    assert_eq!(out, b"done\n");
    assert_eq!(status.code, 42);
    g.client.remove("c1").await.unwrap();
    g.client.remove("c2").await.unwrap();
    let gone = g.client.wait("c2", None).await.unwrap_err();
    assert_eq!(
        gone.to_string(),
        "the guest agent refused wait: no container \"c2\" in this guest"
    );

    shutdown(g).await;
}

/// Kata's runtime attaches the Init-Data disk without a serial; the guest finds it by the
/// image's magic, as kata-agent does, and checks it as any other. On a microvm (virtio-mmio, no
/// ACPI), which also shows that the agent's shutdown ends a guest that cannot power off.
#[tokio::test]
async fn a_disk_without_the_serial_is_found_by_its_magic() {
    let Some(guest) = guest_dir() else { return };
    if !have_qemu() {
        return;
    }
    let doc = InitData::parse(DOCUMENT.as_bytes().to_vec()).unwrap();
    let digest = doc.digest();
    let mut g = boot_on(
        Machine::Microvm,
        &guest,
        Disk::NoSerial(image::write(doc.as_bytes())),
        &digest,
    )
    .await;
    assert!(!g.vm.has_power_button());
    let report = &g.hello.initdata;
    assert_eq!(report.digest, Some(digest.to_hex()));
    assert_eq!(
        report.verification,
        Verification::Unmeasured {
            matches_cmdline: true
        }
    );
    // The guest's clock comes from the microvm's RTC (image pulls check certificates against
    // it), whose driver must not lose its interrupt to a virtio device.
    let guest_now = g.number_from("clock", "date +%s").await;
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest_now.abs_diff(host_now) < 300,
        "guest clock {guest_now}, host clock {host_now}"
    );
    // QEMU offers every virtio-mmio queue at 1024 entries; the plan caps what the guest sets up
    // at 128 (the image's kernel patch). The console driver keeps a 4 KiB receive buffer per
    // entry of its control queue and of the agent's port: ~270 kmalloc-4k objects in all at
    // 128, ~670 at 256, ~2,060 uncapped (the cache is not merged with others in this kernel).
    let buffers = g
        .number_from(
            "queues",
            "awk '$1 == \"kmalloc-4k\" {print $2}' /proc/slabinfo",
        )
        .await;
    eprintln!("kmalloc-4k objects in the microvm guest: {buffers}");
    assert!(
        buffers < 512,
        "{buffers} kmalloc-4k objects: the guest set up virtio-mmio queues larger than the plan's cap"
    );
    let console = std::fs::read_to_string(g.dir.path().join("console.log")).unwrap();
    assert!(!console.contains("genirq: Flags mismatch"), "{console}");
    assert!(!console.contains("rtc_cmos: probe"), "{console}");
    // With no ACPI the guest resets, which ends QEMU (-no-reboot).
    g.client.shutdown().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(120), g.vm.wait())
        .await
        .expect("the microvm keeps running after the agent acknowledged shutdown")
        .unwrap();
    assert!(exit.status.success(), "{exit}");
    assert_eq!(
        exit.shutdown_reason.as_deref(),
        Some("guest-reset"),
        "{exit}"
    );
}

#[tokio::test]
async fn corrupt_missing_and_mismatched_initdata_are_reported_and_refuse_containers() {
    let Some(guest) = guest_dir() else { return };
    if !have_qemu() {
        return;
    }
    let doc = InitData::parse(DOCUMENT.as_bytes().to_vec()).unwrap();
    let digest = doc.digest();
    let mut corrupt = image::write(doc.as_bytes());
    corrupt[..8].copy_from_slice(b"INITDATA");
    let other = InitData::parse(format!("{DOCUMENT}\n").into_bytes())
        .unwrap()
        .digest();

    // Three guests at once: each boot is mostly waiting for TCG.
    let (bad, missing, mismatch) = tokio::join!(
        boot(&guest, Disk::Image(corrupt), &digest),
        boot(&guest, Disk::Missing, &digest),
        // Launched for `other`, given the document whose digest is `digest`.
        boot(&guest, Disk::Image(image::write(doc.as_bytes())), &other),
    );

    let expected = [
        Verification::Error {
            reason: "Init-Data disk /dev/vda: Init-Data image does not start with the \"initdata\" magic"
                .into(),
        },
        Verification::Error {
            reason: format!(
                "the kernel command line names Init-Data digest {} but no Init-Data disk appeared (none with serial \"initdata\", none starting with its magic)",
                digest.to_hex()
            ),
        },
        Verification::Mismatch {
            source: "kernel command line".into(),
            expected: other.to_hex(),
            found: digest.to_hex(),
        },
    ];
    let digests = [None, None, Some(digest.to_hex())];
    for ((g, want), want_digest) in [bad, missing, mismatch]
        .into_iter()
        .zip(expected)
        .zip(digests)
    {
        let report = &g.hello.initdata;
        assert_eq!(report.verification, want);
        assert_eq!(report.digest, want_digest);
        // Nothing is handed to the attestation stack, and the document's policy is not applied.
        assert!(report.files.is_empty(), "{:?}", report.files);
        assert_eq!(report.policy, PolicyStatus::None);
        let err = g
            .client
            .create_container(in_rootfs1("c1", shell("echo must not run")))
            .await
            .unwrap_err();
        match err {
            ClientError::Remote { op, kind, message } => {
                assert_eq!(op, "create_container");
                assert_eq!(kind, ErrorKind::FailedPrecondition);
                assert_eq!(
                    message,
                    format!(
                        "this guest refuses to run containers: {}",
                        want.refusal().unwrap()
                    )
                );
            }
            other => panic!("expected a refusal, got {other}"),
        }
        let read = g.client.read_file("initdata.toml").await.unwrap_err();
        assert!(read.to_string().contains("cannot read"), "{read}");
        if matches!(want, Verification::Mismatch { .. }) {
            // The way a host stops a VM without the agent: ACPI powerdown, which the agent
            // answers by powering off.
            let mut g = g;
            let exit = g.vm.stop(Duration::from_secs(60)).await.unwrap();
            assert_eq!(exit.stopped_by, Some(StopStep::Powerdown), "{exit}");
            assert!(exit.status.success(), "{exit}");
        } else {
            shutdown(g).await;
        }
    }
}

/// `packaging/guest/build.sh`, when this machine can run it (root, Debian's package tools).
fn guest_builder() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let builder = root.join("packaging/guest/build.sh");
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIP: building the guest image needs root (it makes /dev/console)");
        return None;
    }
    let have = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if let Some(missing) = ["apt-get", "dpkg-deb", "depmod", "cpio"]
        .into_iter()
        .find(|t| !have(t))
    {
        eprintln!("SKIP: {missing} is not installed (packaging/dev/deps.sh installs it)");
        return None;
    }
    Some(builder)
}

/// The agent of the guest image in `guest`, taken out of its initrd into `dir` (to build other
/// images around it without building it again).
fn agent_of(guest: &Path, dir: &Path) -> PathBuf {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("cpio --quiet -id init < \"$0\"")
        .arg(guest.join("initrd.img"))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "extracting /init from the initrd: {status}"
    );
    dir.join("init")
}

/// Stand-ins for the Confidential Containers guest components (busybox shell scripts): each
/// prints its arguments to the console and makes its socket the way the real one would, except
/// that the data hub makes its socket only when it is given a config (`-c`, the Init-Data's
/// `cdh.toml`), so a document without one shows a component that never comes up.
const STAND_INS: [(&str, &str); 3] = [
    (
        "attestation-agent",
        "echo \"stand-in attestation-agent: $*\"
/bin/busybox mkdir -p /run/confidential-containers/attestation-agent
/bin/busybox touch /run/confidential-containers/attestation-agent/attestation-agent.sock
exec /bin/busybox sleep 100000",
    ),
    (
        "confidential-data-hub",
        "echo \"stand-in confidential-data-hub: $* OCICRYPT_KEYPROVIDER_CONFIG=$OCICRYPT_KEYPROVIDER_CONFIG\"
[ \"$1\" = -c ] && /bin/busybox touch /run/confidential-containers/cdh.sock
exec /bin/busybox sleep 100000",
    ),
    (
        "api-server-rest",
        "echo \"stand-in api-server-rest: $*\"
exec /bin/busybox sleep 100000",
    ),
];

/// The guest components start as kata-agent starts them: in order, with its flags, each waited
/// for until its socket appears; a socket that never appears fails the sandbox, and the later
/// components do not start.
#[tokio::test]
async fn guest_components_start_in_kata_agents_order_and_a_missing_socket_fails_the_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let Some(guest) = guest_dir() else { return };
    if !have_qemu() {
        return;
    }
    let Some(builder) = guest_builder() else {
        return;
    };
    // The test's own image: the usual one plus the stand-ins in /usr/local/bin.
    let work = tempfile::tempdir().unwrap();
    let components = work.path().join("components");
    std::fs::create_dir(&components).unwrap();
    for (name, body) in STAND_INS {
        let path = components.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let built = work.path().join("guest");
    let status = std::process::Command::new(&builder)
        .arg(&built)
        .env("COFFER_AGENT_BIN", agent_of(&guest, work.path()))
        .env("COFFER_GUEST_COMPONENTS", &components)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "build.sh with components failed: {status}"
    );
    let manifest = std::fs::read_to_string(built.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"usr/local/bin/confidential-data-hub\": { \"sha256\""),
        "{manifest}"
    );
    // The kernel is the usual image's: only the initrd differs.
    assert!(
        std::fs::read(built.join("vmlinux")).unwrap()
            == std::fs::read(guest.join("vmlinux")).unwrap()
    );

    // With cdh.toml: all three run, in order, with kata-agent's arguments.
    let doc = InitData::parse(DOCUMENT.as_bytes().to_vec()).unwrap();
    let digest = doc.digest();
    let g = boot(&built, Disk::Image(image::write(doc.as_bytes())), &digest).await;
    let report = g.hello.initdata.clone();
    let dir = shutdown_keeping_dir(g).await;
    let console = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    assert_eq!(report.component_failure, None, "{console}");
    let names: Vec<&str> = report.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "attestation-agent",
            "confidential-data-hub",
            "api-server-rest"
        ]
    );
    assert!(
        report
            .services
            .iter()
            .all(|s| s.pid.is_some() && s.note.is_none()),
        "{:?}",
        report.services
    );
    let lines: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end().split_once("stand-in ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(
        lines,
        [
            "attestation-agent: --attestation_sock unix:///run/confidential-containers/attestation-agent/attestation-agent.sock --initdata-toml /run/confidential-containers/initdata/initdata.toml -c /run/confidential-containers/initdata/aa.toml",
            "confidential-data-hub: -c /run/confidential-containers/initdata/cdh.toml OCICRYPT_KEYPROVIDER_CONFIG=/etc/ocicrypt_config.json",
            "api-server-rest: --features resource",
        ],
        "the console:\n{console}"
    );

    // Without cdh.toml the data hub never makes its socket: the sandbox fails, naming it, and
    // the REST server is not started.
    let cdh =
        "\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://127.0.0.1:8080\"\n'''\n";
    assert!(DOCUMENT.contains(cdh));
    let doc = InitData::parse(DOCUMENT.replace(cdh, "").into_bytes()).unwrap();
    let digest = doc.digest();
    let g = boot(&built, Disk::Image(image::write(doc.as_bytes())), &digest).await;
    let report = g.hello.initdata.clone();
    shutdown(g).await;
    let failure = report
        .component_failure
        .clone()
        .expect("the data hub never came up");
    assert!(
        failure.starts_with("confidential-data-hub (pid ")
            && failure.ends_with(
                "did not create its socket /run/confidential-containers/cdh.sock within 6s"
            ),
        "{failure}"
    );
    assert_eq!(
        report.services[2].note.as_deref(),
        Some("not started: an earlier component failed")
    );
    // The host refuses such a sandbox with the guest's reason.
    let refused = coffer_shim::sandbox::check_hello(Some(digest.to_hex()), &report).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("a guest component failed: confidential-data-hub (pid "),
        "{refused}"
    );
}

/// Two builds of the guest image are byte-identical, and the manifest's hashes are the files'.
/// (`packaging/guest/test-reproducible.sh` does the same with a from-scratch agent build.)
#[test]
fn guest_image_builds_are_reproducible() {
    let Some(builder) = guest_builder() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // The agent of the test image when there is one (the image build is what is checked here;
    // packaging/guest/test-reproducible.sh also rebuilds the agent from scratch).
    let agent = guest_dir().map(|g| agent_of(&g, out.path()));
    for (name, umask) in [("a", "022"), ("b", "077")] {
        let mut build = std::process::Command::new("sh");
        build
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$1\""))
            .arg(&builder)
            .arg(out.path().join(name));
        if let Some(agent) = &agent {
            build.env("COFFER_AGENT_BIN", agent);
        }
        let status = build.status().unwrap();
        assert!(status.success(), "build.sh {name} failed: {status}");
    }
    for file in ["vmlinuz", "vmlinux", "initrd.img", "manifest.json"] {
        let a = std::fs::read(out.path().join("a").join(file)).unwrap();
        let b = std::fs::read(out.path().join("b").join(file)).unwrap();
        assert!(a == b, "{file} differs between two builds");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("a/manifest.json")).unwrap())
            .unwrap();
    for file in ["vmlinuz", "vmlinux", "initrd.img"] {
        let sum = std::process::Command::new("sha256sum")
            .arg(out.path().join("a").join(file))
            .output()
            .unwrap();
        let sum = String::from_utf8(sum.stdout).unwrap();
        assert_eq!(
            manifest["files"][file]["sha256"].as_str(),
            sum.split_whitespace().next(),
            "{file}"
        );
    }
    // The default kernel is built from source with every driver built in: no module list.
    let kernel = manifest["kernel_version"].as_str().unwrap();
    assert!(
        kernel.starts_with("6.12.") && kernel.ends_with("-coffer"),
        "{kernel}"
    );
    assert!(manifest["kernel_package"]
        .as_str()
        .unwrap()
        .starts_with("linux-source-6.12="));
    assert_eq!(manifest["initrd"]["modules"], serde_json::json!([]));
}
