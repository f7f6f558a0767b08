//! The sandbox and its containers in process, with a real QEMU (TCG) and the real guest image.
//!
//! Needs root (mounts, QEMU's 9p share), `qemu-system-x86_64` and a built guest image
//! (`COFFER_GUEST_DIR`, else `target/guest/` at the workspace root); without them each test
//! prints `SKIP: <reason>` and passes. Refusals that happen before any VM starts run everywhere.

// Fixture helpers outside #[test] functions: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_hypervisor::config::QBOOT_FIRMWARE;
use coffer_initdata::annotation::{self, ANNOTATION};
use coffer_initdata::InitData;
use coffer_shim::options::encode_config_path;
use coffer_shim::sandbox::Sandbox;
use coffer_shim::spec::BundleSpec;
use coffer_shim::state::StateDir;
use coffer_shim::task::TaskService;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, ResizePtyRequest,
    StartRequest, StateRequest, Status, WaitRequest,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;

use coffer_testkit::seed_initdata;

/// The guest image, or why the VM tests cannot run.
fn vm_prerequisites() -> Result<PathBuf, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(
            "not root: the sandbox mounts root filesystems and runs QEMU's 9p share".into(),
        );
    }
    coffer_testkit::qemu()?;
    coffer_testkit::guest_dir()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state_root: PathBuf,
    options: Any,
}

impl Fixture {
    fn new(guest: Option<&Path>) -> Fixture {
        Fixture::with_config(guest, "")
    }

    /// A fixture whose handler config ends with `extra` (TOML tables after `[vm]`).
    fn with_config(guest: Option<&Path>, extra: &str) -> Fixture {
        // Short paths: QEMU's sockets live in the state directory and sockaddr_un is small.
        let tmp = tempfile::Builder::new()
            .prefix("cs")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        let state_root = root.join("s");
        let guest = guest.unwrap_or(Path::new("/nonexistent"));
        let config = root.join("coffer.toml");
        // rootfs = "host": these bundles carry their root filesystem on the host.
        std::fs::write(
            &config,
            format!(
                "tee = \"none\"\nrootfs = \"host\"\nagent_timeout_secs = 300\nstate_dir = \"{}\"\n[vm]\naccel = \"tcg\"\nkernel = \"{}\"\nfirmware = \"{QBOOT_FIRMWARE}\"\ninitrd = \"{}\"\n{extra}",
                state_root.display(),
                guest.join("vmlinux").display(),
                guest.join("initrd.img").display()
            ),
        )
        .unwrap();
        let options = encode_config_path(config.to_str().unwrap());
        Fixture {
            _tmp: tmp,
            root,
            state_root,
            options,
        }
    }

    /// A bundle with a config.json carrying `annotations`, in a network namespace without
    /// interfaces.
    fn bundle(&self, name: &str, args: &[&str], annotations: &HashMap<String, String>) -> PathBuf {
        let bundle = self.root.join(name);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            // A network namespace of its own without CNI: a VM without a NIC.
            "linux": {"namespaces": [{"type": "network"}]},
            "annotations": annotations,
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle
    }

    fn sandbox_annotations(&self, id: &str, initdata: Option<&str>) -> HashMap<String, String> {
        let mut a = HashMap::new();
        a.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        a.insert("io.kubernetes.cri.sandbox-id".into(), id.into());
        if let Some(v) = initdata {
            a.insert(ANNOTATION.into(), v.into());
        }
        a
    }

    /// The sandboxes' state (the state root also keeps the host's KVM speed verdict).
    fn state_entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.state_root)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != coffer_shim::sandbox::KVM_SPEED_RECORD)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Waits for a process (`exec_id` "": the container's own) and returns its exit status.
async fn exit_status(service: &TaskService, id: &str, exec_id: &str) -> u32 {
    service
        .wait_task(WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("wait for {id} {exec_id}: {e}"))
        .exit_status
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn malformed_annotation_is_refused_before_anything_starts() {
    let f = Fixture::new(None);
    let bundle = f.bundle(
        "sb",
        &["/pause"],
        &f.sandbox_annotations("sb", Some("this is not base64!")),
    );
    let spec = BundleSpec::load(&bundle).unwrap();
    let e = Sandbox::create("sb", &bundle, &spec, Some(&f.options))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("pod Init-Data refused: Init-Data annotation is not valid base64"),
        "{msg}"
    );
    assert_eq!(f.state_entries(), Vec::<String>::new());
}

/// An agent policy sent by the host (Kata's SetPolicy annotation) is no measured policy: refused,
/// never silently ignored, before anything starts.
#[tokio::test]
async fn a_host_sent_agent_policy_is_refused_naming_the_annotation() {
    let f = Fixture::new(None);
    let mut annotations = f.sandbox_annotations("sb", None);
    annotations.insert(
        coffer_shim::sandbox::KATA_POLICY_ANNOTATION.into(),
        "cGFja2FnZSBhZ2VudF9wb2xpY3k=".into(),
    );
    let bundle = f.bundle("sb", &["/pause"], &annotations);
    let spec = BundleSpec::load(&bundle).unwrap();
    let e = Sandbox::create("sb", &bundle, &spec, Some(&f.options))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT
    );
    assert!(
        e.to_string()
            .starts_with("the pod carries io.katacontainers.config.agent.policy,"),
        "{e}"
    );
    assert_eq!(f.state_entries(), Vec::<String>::new());
}

#[tokio::test]
async fn bad_config_is_refused_naming_file_and_field() {
    let f = Fixture::new(None);
    let config = f.root.join("bad.toml");
    std::fs::write(&config, "tee = \"none\"\n[vm]\nmemory = 512\n").unwrap();
    let bundle = f.bundle("sb", &["/pause"], &f.sandbox_annotations("sb", None));
    let spec = BundleSpec::load(&bundle).unwrap();
    let options = encode_config_path(config.to_str().unwrap());
    let msg = Sandbox::create("sb", &bundle, &spec, Some(&options))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&format!("bad coffer config {}: line 3", config.display())),
        "{msg}"
    );
    assert!(msg.contains("unknown field `memory`"), "{msg}");
}

#[tokio::test]
async fn sandbox_vm_starts_with_the_initdata_and_leaves_nothing() {
    let guest = match vm_prerequisites() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let f = Fixture::new(Some(&guest));
    let document = seed_initdata();
    let digest = InitData::parse(document.clone()).unwrap().digest().to_hex();
    let value = annotation::encode(&document);
    let bundle = f.bundle(
        "sb1",
        &["/pause"],
        &f.sandbox_annotations("sb1", Some(&value)),
    );
    let spec = BundleSpec::load(&bundle).unwrap();

    let (mut sandbox, _events) = Sandbox::create("sb1", &bundle, &spec, Some(&f.options))
        .await
        .unwrap_or_else(|e| panic!("sandbox create: {e}"));
    let pid = sandbox.pid();
    assert!(alive(pid));

    let dir = StateDir::new(&f.state_root, "sb1").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    assert_eq!(mode(&dir.path().join("initdata.img")), 0o600);
    let image = std::fs::read(dir.path().join("initdata.img")).unwrap();
    assert_eq!(
        coffer_initdata::image::read(&image, &Default::default()).unwrap(),
        document
    );
    let record = dir.read_state().unwrap().expect("state.json");
    assert_eq!(record.sandbox_id, "sb1");
    assert_eq!(record.tee, "none");
    assert!(!record.measured);
    assert_eq!(record.vm_pid, pid);
    assert_eq!(
        record.guest_report,
        "unmeasured (no TEE); the guest's digest matches the kernel command line"
    );
    let initdata = record.initdata.expect("initdata in the record");
    assert_eq!(initdata.digest, digest);
    assert_eq!(initdata.algorithm, "sha256");
    assert_eq!(initdata.source, "annotation");
    assert!(record
        .launch
        .args
        .iter()
        .any(|a| a.contains(&format!("coffer.initdata_digest={digest}"))));
    // The guest wrote the document where the attestation agent reads it.
    let delivered = sandbox
        .agent
        .read_file("initdata.toml")
        .await
        .expect("read back the delivered Init-Data");
    assert_eq!(delivered, document);

    sandbox.take_vm().expect("a running VM").stop().await;
    assert!(sandbox.take_vm().is_none(), "the VM is taken once");
    assert!(!alive(pid), "QEMU {pid} outlived stop");
    sandbox.remove_state().unwrap();
    assert_eq!(f.state_entries(), Vec::<String>::new());
    assert!(!bundle.join(coffer_shim::sandbox::BUNDLE_RECORD).exists());
}

/// A handler that allows documents larger than the default 4 MiB: the guest must read the disk
/// with the same limit, or it would refuse what the host accepted.
#[tokio::test]
async fn the_guest_reads_with_the_handlers_limits() {
    let guest = match vm_prerequisites() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let f = Fixture::with_config(
        Some(&guest),
        "[initdata]\nmax_encoded = 1048576\nmax_inflated = 8388608\n",
    );
    let mut document = concat!(
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n",
        "\"policy.rego\" = '''\npackage agent_policy\n"
    )
    .as_bytes()
    .to_vec();
    let mut i = 0;
    while document.len() < 5 << 20 {
        document.extend_from_slice(format!("default Request{i} := true\n").as_bytes());
        i += 1;
    }
    document.extend_from_slice(b"'''\n");
    let digest = InitData::parse(document.clone()).unwrap().digest().to_hex();
    let value = annotation::encode(&document);
    let bundle = f.bundle(
        "big",
        &["/pause"],
        &f.sandbox_annotations("big", Some(&value)),
    );
    let spec = BundleSpec::load(&bundle).unwrap();

    let (mut sandbox, _events) = Sandbox::create("big", &bundle, &spec, Some(&f.options))
        .await
        .unwrap_or_else(|e| panic!("sandbox create with a 5 MiB document: {e}"));
    let record = StateDir::new(&f.state_root, "big")
        .unwrap()
        .read_state()
        .unwrap()
        .expect("state.json");
    assert_eq!(record.initdata.expect("initdata").digest, digest);
    assert!(record
        .launch
        .args
        .iter()
        .any(|a| a.contains("coffer.initdata_max_inflated=8388608")));
    assert_eq!(
        record.guest_report,
        "unmeasured (no TEE); the guest's digest matches the kernel command line"
    );
    sandbox.take_vm().expect("a running VM").stop().await;
    assert!(sandbox.take_vm().is_none(), "the VM is taken once");
    sandbox.remove_state().unwrap();
}

fn req_create(
    id: &str,
    bundle: &Path,
    rootfs_lower: Option<&Path>,
    out: &Path,
    options: &Any,
) -> CreateTaskRequest {
    let rootfs = rootfs_lower
        .map(|lower| {
            vec![containerd_shim_protos::api::Mount {
                type_: "bind".into(),
                source: lower.to_string_lossy().into(),
                options: vec!["rbind".into(), "rw".into()],
                ..Default::default()
            }]
        })
        .unwrap_or_default();
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.to_string_lossy().into(),
        rootfs,
        stdout: out.join(format!("{id}.out")).to_string_lossy().into(),
        stderr: out.join(format!("{id}.err")).to_string_lossy().into(),
        options: MessageField::some(options.clone()),
        ..Default::default()
    }
}

/// Writes `data` into a FIFO as containerd does for a client's stdin, then closes it (the
/// open waits until the shim reads the FIFO).
fn feed_fifo(fifo: &Path, data: &'static [u8]) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let fifo = fifo.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)?
            .write_all(data)
    })
}

/// Execs and starts `args` in container c2 with stdin from `stdin`, output to
/// `out/<exec_id>.out` (and `.err` without a terminal).
async fn run_exec(
    service: &TaskService,
    out: &Path,
    exec_id: &str,
    args: serde_json::Value,
    stdin: &Path,
    terminal: bool,
) {
    let stdout = out.join(format!("{exec_id}.out"));
    std::fs::write(&stdout, b"").unwrap();
    let stderr = if terminal {
        String::new()
    } else {
        let p = out.join(format!("{exec_id}.err"));
        std::fs::write(&p, b"").unwrap();
        p.to_string_lossy().into()
    };
    let process = serde_json::json!({
        "args": args, "terminal": terminal,
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    });
    service
        .exec_process(ExecProcessRequest {
            id: "c2".into(),
            exec_id: exec_id.into(),
            stdin: stdin.to_string_lossy().into(),
            stdout: stdout.to_string_lossy().into(),
            stderr,
            terminal,
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.to_string().into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("exec {exec_id}: {e}"));
    service
        .start_task(StartRequest {
            id: "c2".into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("exec start {exec_id}: {e}"));
}

#[tokio::test]
async fn containers_run_in_the_vm_with_output_exit_codes_and_exec() {
    let guest = match vm_prerequisites() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let f = Fixture::new(Some(&guest));
    let out = f.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A busybox root filesystem, as a snapshot would give it.
    let lower = f.root.join("busybox-root");
    std::fs::create_dir_all(lower.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "tty", "stty"] {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
    }

    let service = TaskService::new("test", None, Arc::new(ExitSignal::default()));
    let document = seed_initdata();
    let sb_bundle = f.bundle(
        "pod",
        &["/pause"],
        &f.sandbox_annotations("pod", Some(&annotation::encode(&document))),
    );
    let created = service
        .create_task(req_create("pod", &sb_bundle, None, &out, &f.options))
        .await
        .unwrap_or_else(|e| panic!("sandbox create: {e}"));
    let vm_pid = created.pid;
    assert!(alive(vm_pid));
    service
        .start_task(StartRequest {
            id: "pod".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut ctr_annotations = HashMap::new();
    ctr_annotations.insert(
        "io.kubernetes.cri.container-type".to_string(),
        "container".to_string(),
    );
    ctr_annotations.insert(
        "io.kubernetes.cri.sandbox-id".to_string(),
        "pod".to_string(),
    );
    // Init-Data annotations on a container spec are stripped before the guest sees anything.
    ctr_annotations.insert(ANNOTATION.to_string(), "H4sI".to_string());
    let c_bundle = f.bundle(
        "c1",
        &[
            "sh",
            "-c",
            "echo hello from the guest; echo to stderr >&2; exit 3",
        ],
        &ctr_annotations,
    );
    for name in ["c1.out", "c1.err"] {
        std::fs::write(out.join(name), b"").unwrap();
    }
    service
        .create_task(req_create("c1", &c_bundle, Some(&lower), &out, &f.options))
        .await
        .unwrap_or_else(|e| panic!("container create: {e}"));
    let state = service
        .task_state(StateRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(state.status.enum_value_or_default(), Status::CREATED);
    let started = service
        .start_task(StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("container start: {e}"));
    // containerd is told a host pid, the VM's, never the guest's.
    assert_eq!(started.pid, vm_pid);
    assert_eq!(exit_status(&service, "c1", "").await, 3);
    assert_eq!(
        std::fs::read_to_string(out.join("c1.out")).unwrap(),
        "hello from the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("c1.err")).unwrap(),
        "to stderr\n"
    );
    let deleted = service
        .delete_task(DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.exit_status, 3);
    assert!(!f.state_root.join("pod/share/c1").exists());

    // A long-running container with an exec, then killed.
    let c2_bundle = f.bundle("c2", &["sleep", "3600"], &ctr_annotations);
    for name in ["c2.out", "c2.err", "e1.out", "e1.err"] {
        std::fs::write(out.join(name), b"").unwrap();
    }
    service
        .create_task(req_create("c2", &c2_bundle, Some(&lower), &out, &f.options))
        .await
        .unwrap();
    service
        .start_task(StartRequest {
            id: "c2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo exec-out; cat /proc/self/cmdline >&2; exit 7"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    });
    service
        .exec_process(ExecProcessRequest {
            id: "c2".into(),
            exec_id: "e1".into(),
            stdout: out.join("e1.out").to_string_lossy().into(),
            stderr: out.join("e1.err").to_string_lossy().into(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: process.to_string().into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    service
        .start_task(StartRequest {
            id: "c2".into(),
            exec_id: "e1".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("exec start: {e}"));
    assert_eq!(exit_status(&service, "c2", "e1").await, 7);
    assert_eq!(
        std::fs::read_to_string(out.join("e1.out")).unwrap(),
        "exec-out\n"
    );
    assert_eq!(
        std::fs::read(out.join("e1.err")).unwrap(),
        b"cat\0/proc/self/cmdline\0"
    );

    // Stdin from containerd's FIFO, in order, then end-of-file (cat ends).
    let stdin_fifo = out.join("e2.in");
    nix::unistd::mkfifo(&stdin_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let typed = feed_fifo(&stdin_fifo, b"line one\nline two\n");
    run_exec(
        &service,
        &out,
        "e2",
        serde_json::json!(["sh", "-c", "read x; echo got $x; cat"]),
        &stdin_fifo,
        false,
    )
    .await;
    typed.await.unwrap().unwrap();
    assert_eq!(exit_status(&service, "c2", "e2").await, 0);
    assert_eq!(
        std::fs::read_to_string(out.join("e2.out")).unwrap(),
        "got line one\nline two\n"
    );

    // A terminal: the process's own /dev/pts (the container's devpts, so index 0), resized
    // before it reads, its input echoed, and stdout its only stream.
    let tty_fifo = out.join("e3.in");
    nix::unistd::mkfifo(&tty_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    run_exec(
        &service,
        &out,
        "e3",
        serde_json::json!(["sh", "-c", "read x; stty size; tty; echo got $x"]),
        &tty_fifo,
        true,
    )
    .await;
    let state = service
        .task_state(StateRequest {
            id: "c2".into(),
            exec_id: "e3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(state.terminal);
    service
        .resize_pty_task(ResizePtyRequest {
            id: "c2".into(),
            exec_id: "e3".into(),
            width: 100,
            height: 30,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("resize: {e}"));
    feed_fifo(&tty_fifo, b"typed\n").await.unwrap().unwrap();
    assert_eq!(exit_status(&service, "c2", "e3").await, 0);
    assert_eq!(
        std::fs::read_to_string(out.join("e3.out")).unwrap(),
        "typed\r\n30 100\r\n/dev/pts/0\r\ngot typed\r\n"
    );
    // A process without a terminal has nothing to resize.
    let err = service
        .resize_pty_task(ResizePtyRequest {
            id: "c2".into(),
            width: 80,
            height: 24,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task c2 has no terminal to resize; create it with terminal: true"
    );
    service
        .kill_task(KillRequest {
            id: "c2".into(),
            signal: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(exit_status(&service, "c2", "").await, 137);
    service
        .delete_task(DeleteRequest {
            id: "c2".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A container whose own process runs on a terminal with stdin (`kubectl run -it`): it
    // takes the pty the agent allocated in its devpts at start.
    let c3_bundle = f.bundle(
        "c3",
        &["sh", "-c", "read x; tty; echo got $x; exit 4"],
        &ctr_annotations,
    );
    let c3_fifo = out.join("c3.in");
    nix::unistd::mkfifo(&c3_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(out.join("c3.out"), b"").unwrap();
    let mut c3 = req_create("c3", &c3_bundle, Some(&lower), &out, &f.options);
    c3.terminal = true;
    c3.stdin = c3_fifo.to_string_lossy().into();
    c3.stderr = String::new();
    service
        .create_task(c3)
        .await
        .unwrap_or_else(|e| panic!("terminal container create: {e}"));
    service
        .start_task(StartRequest {
            id: "c3".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("terminal container start: {e}"));
    service
        .resize_pty_task(ResizePtyRequest {
            id: "c3".into(),
            width: 80,
            height: 24,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("resize: {e}"));
    feed_fifo(&c3_fifo, b"hi\n").await.unwrap().unwrap();
    assert_eq!(exit_status(&service, "c3", "").await, 4);
    assert_eq!(
        std::fs::read_to_string(out.join("c3.out")).unwrap(),
        "hi\r\n/dev/pts/0\r\ngot hi\r\n"
    );
    service
        .delete_task(DeleteRequest {
            id: "c3".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Sandbox teardown as containerd does it: kill, wait, delete, shutdown.
    service
        .kill_task(KillRequest {
            id: "pod".into(),
            signal: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(exit_status(&service, "pod", "").await, 137);
    assert!(!alive(vm_pid), "QEMU outlived the sandbox kill");
    service
        .delete_task(DeleteRequest {
            id: "pod".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    service.shutdown_pod().await.unwrap();
    assert_eq!(f.state_entries(), Vec::<String>::new());
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .all(|l| !l.contains(f.root.to_str().unwrap())));
}

#[tokio::test]
async fn a_guest_dying_at_boot_is_refused_at_once_with_the_console_and_leaves_nothing() {
    let guest = match vm_prerequisites() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let f = Fixture::new(Some(&guest));
    // The real kernel with an empty initramfs never reaches an agent: it panics, and with
    // panic=-1 and -no-reboot QEMU exits. The shim sees QEMU end and does not wait out the
    // agent's deadline (long enough here to fail the test if it did).
    let empty = f.root.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let config = f.root.join("timeout.toml");
    std::fs::write(
        &config,
        format!(
            "agent_timeout_secs = 600\nstate_dir = \"{}\"\n[vm]\naccel = \"tcg\"\nkernel = \"{}\"\ninitrd = \"{}\"\n",
            f.state_root.display(),
            guest.join("vmlinuz").display(),
            empty.display()
        ),
    )
    .unwrap();
    let options = encode_config_path(config.to_str().unwrap());
    let bundle = f.bundle("sb", &["/pause"], &f.sandbox_annotations("sb", None));
    let spec = BundleSpec::load(&bundle).unwrap();
    let started = std::time::Instant::now();
    let e = Sandbox::create("sb", &bundle, &spec, Some(&options))
        .await
        .unwrap_err();
    eprintln!("refused after {:?}", started.elapsed());
    assert_eq!(
        e.code(),
        containerd_shim_protos::ttrpc::Code::FAILED_PRECONDITION
    );
    let msg = e.to_string();
    eprintln!("refusal: {msg}");
    assert!(
        msg.starts_with("the VM exited before its guest agent answered (")
            && msg.contains("kernel panic"),
        "{msg}"
    );
    assert!(msg.contains("last lines of the guest console: "), "{msg}");
    assert_eq!(f.state_entries(), Vec::<String>::new());
    let qemu_left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(f.state_root.to_str().unwrap()));
    assert!(!qemu_left, "a QEMU of the refused sandbox is still running");
}

#[tokio::test]
async fn a_vm_that_dies_ends_every_task_of_the_pod() {
    let guest = match vm_prerequisites() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let f = Fixture::new(Some(&guest));
    let out = f.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lower = f.root.join("busybox-root");
    std::fs::create_dir_all(lower.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", lower.join("bin/sleep")).unwrap();

    let service = TaskService::new("test", None, Arc::new(ExitSignal::default()));
    let sb_bundle = f.bundle("pod", &["/pause"], &f.sandbox_annotations("pod", None));
    let vm_pid = service
        .create_task(req_create("pod", &sb_bundle, None, &out, &f.options))
        .await
        .unwrap_or_else(|e| panic!("sandbox create: {e}"))
        .pid;
    let mut annotations = HashMap::new();
    annotations.insert(
        "io.kubernetes.cri.sandbox-id".to_string(),
        "pod".to_string(),
    );
    let c_bundle = f.bundle("c1", &["sleep", "3600"], &annotations);
    for name in ["c1.out", "c1.err"] {
        std::fs::write(out.join(name), b"").unwrap();
    }
    service
        .create_task(req_create("c1", &c_bundle, Some(&lower), &out, &f.options))
        .await
        .unwrap();
    service
        .start_task(StartRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The VM dies under the pod (OOM killer, a crash): nothing asked for it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(vm_pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for id in ["c1", "pod"] {
        assert_eq!(exit_status(&service, id, "").await, 255, "{id}");
        let state = service
            .task_state(StateRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            state.status.enum_value_or_default(),
            Status::STOPPED,
            "{id}"
        );
    }
    for id in ["c1", "pod"] {
        service
            .delete_task(DeleteRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
    service.shutdown_pod().await.unwrap();
    assert_eq!(f.state_entries(), Vec::<String>::new());
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .all(|l| !l.contains(f.root.to_str().unwrap())));
}
