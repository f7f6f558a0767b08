//! `coffer-demo`: runs the Init-Data example as a confidential pod through the CRI and explains
//! each step, as `crictl` would drive it. `packaging/demo.sh` starts the private containerd and
//! calls this; it uses `crictl` when one is installed (or `CRICTL` names one), and the CRI client
//! shipped in this crate otherwise.
//!
//! ```text
//! coffer-demo --socket DIR/containerd.sock --bin-dir target/release \
//!     [--handler coffer-qemu] [--initdata FILE] [--containerd-dir DIR] [--keep] [--ready-only]
//! ```
//!
//! `--ready-only` stops at the ready pod (then stops and removes it): what the boot benchmark
//! times, for any handler, `runc` included.
//!
//! With `--containerd-dir` (the directory `packaging/dev/up.sh` made), the container's image is
//! pulled inside the guest, as the handlers do by default: a registry holding busybox is started
//! on the pod network and the Init-Data gains the `cdh.toml` `[image]` section and the
//! `registries.conf` that point the guest at it. Without it, the handler must share containerd's
//! snapshot (`rootfs = "host"`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coffer_initdata::annotation::ANNOTATION;
use coffer_initdata::{InitData, TeeField};
use coffer_tests::registry::GuestImages;
use coffer_tests::tools::{self, Coffer};
use coffer_tests::{Container, Cri, Crictl, Driver, Pod};

/// What the demo was asked to do.
struct Args {
    socket: PathBuf,
    bin_dir: PathBuf,
    handler: String,
    initdata: PathBuf,
    log_root: PathBuf,
    state_dir: Option<String>,
    containerd_dir: Option<PathBuf>,
    name: String,
    keep: bool,
    ready_only: bool,
}

fn usage() -> String {
    "usage: coffer-demo --socket SOCK --bin-dir DIR [--handler H] [--initdata FILE] [--log-root DIR] [--state-dir DIR] [--containerd-dir DIR] [--name POD] [--keep] [--ready-only]".into()
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut bin_dir = None;
    let mut handler = "coffer-qemu".to_owned();
    let mut initdata = tools::seed_initdata();
    let mut log_root = std::env::temp_dir().join("coffer-demo-logs");
    let mut state_dir = None;
    let mut containerd_dir = None;
    let mut name = "coffer-demo".to_owned();
    let mut keep = false;
    let mut ready_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            "--handler" => handler = value()?,
            "--initdata" => initdata = PathBuf::from(value()?),
            "--log-root" => log_root = PathBuf::from(value()?),
            "--state-dir" => state_dir = Some(value()?),
            "--containerd-dir" => containerd_dir = Some(PathBuf::from(value()?)),
            "--name" => name = value()?,
            "--keep" => keep = true,
            "--ready-only" => ready_only = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(Args {
        socket: socket.ok_or_else(usage)?,
        bin_dir: bin_dir.ok_or_else(usage)?,
        handler,
        initdata,
        log_root,
        state_dir,
        containerd_dir,
        name,
        keep,
        ready_only,
    })
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn say(text: &str) {
    println!("    {text}");
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ncoffer-demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let coffer = Coffer::in_dir(&args.bin_dir);
    let mut driver: Box<dyn Driver> = match Crictl::find() {
        Some(bin) => {
            let scratch = args.log_root.join("crictl");
            Box::new(Crictl::new(bin, &args.socket, &scratch).map_err(|e| e.to_string())?)
        }
        None => Box::new(Cri::connect(&args.socket).map_err(|e| e.to_string())?),
    };

    step(&format!("The Init-Data: {}", args.initdata.display()));
    let mut bytes = std::fs::read(&args.initdata)
        .map_err(|e| format!("cannot read {}: {e}", args.initdata.display()))?;
    let mut initdata = args.initdata.clone();
    let images = match &args.containerd_dir {
        Some(dir) => {
            let images = GuestImages::start_in(dir)?;
            say(&format!(
                "images are pulled inside the guest: a registry on the pod network serves {}",
                images.busybox
            ));
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("{} is not UTF-8", args.initdata.display()))?;
            bytes = images.initdata(&text)?.into_bytes();
            std::fs::create_dir_all(&args.log_root)
                .map_err(|e| format!("cannot create {}: {e}", args.log_root.display()))?;
            initdata = args.log_root.join(format!("{}-initdata.toml", args.name));
            std::fs::write(&initdata, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", initdata.display()))?;
            say(&format!(
                "with its cdh.toml [image] and registries.conf naming that registry: {}",
                initdata.display()
            ));
            Some(images)
        }
        None => None,
    };
    let doc = InitData::parse(bytes).map_err(|e| e.to_string())?;
    let keys: Vec<&str> = doc.data().keys().map(String::as_str).collect();
    say(&format!(
        "{} bytes, version {}, algorithm {}, entries: {}",
        doc.as_bytes().len(),
        doc.version(),
        doc.algorithm(),
        keys.join(", ")
    ));
    let value = coffer.encode(&initdata)?;
    let digest = coffer.digest(&initdata, "none")?;
    say(&format!(
        "annotation {ANNOTATION}: {} characters (gzip + base64)",
        value.len()
    ));
    say(&format!("digest: {digest}"));

    step(
        "Reference values to register in the key broker (hex, as Trustee's init_data claim shows)",
    );
    let d = doc.digest();
    for field in [
        TeeField::TdxMrConfigId,
        TeeField::SnpHostData,
        TeeField::VtpmPcr8,
    ] {
        say(&format!(
            "{:<20} {}",
            field.register_name(),
            d.bind(field).to_hex()
        ));
    }

    step(&format!(
        "RunPodSandbox on handler {} through {}: Coffer boots a VM for the pod",
        args.handler,
        driver.name()
    ));
    let pod = Pod::new(&args.name, &args.handler, &args.log_root).annotation(ANNOTATION, &value);
    let started = Instant::now();
    let pod_id = driver
        .run_pod(&pod)
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let ready = driver.pod_ready(&pod_id).map_err(|e| e.to_string())?;
    say(&format!(
        "pod {} is {} after {:.2} s",
        short(&pod_id),
        if ready { "ready" } else { "NOT ready" },
        started.elapsed().as_secs_f64()
    ));

    let image = images.as_ref().map(|i| i.busybox.as_str());
    let result = if args.ready_only {
        Ok(())
    } else {
        inside_the_pod(
            driver.as_mut(),
            &coffer,
            args,
            &pod,
            &pod_id,
            &digest,
            image,
        )
    };

    if args.keep {
        // The registry keeps serving the pod; packaging/dev/down.sh stops it.
        std::mem::forget(images);
        step("Keeping the pod running (--keep)");
        say(&format!("pod id: {pod_id}"));
        say(&format!("containerd socket: {}", args.socket.display()));
        return result;
    }
    step("StopPodSandbox and RemovePodSandbox: the VM stops and its state is removed");
    driver
        .stop_pod(&pod_id)
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
    driver
        .remove_pod(&pod_id)
        .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    let left = tools::processes("qemu-system", &pod_id);
    if !left.is_empty() {
        return Err(format!("QEMU processes left behind: {left:?}"));
    }
    say("no QEMU process left for the pod");
    result
}

/// What the demo shows while the pod runs: the digest the guest confirmed, a container's output
/// and an exec.
fn inside_the_pod(
    driver: &mut dyn Driver,
    coffer: &Coffer,
    args: &Args,
    pod: &Pod,
    pod_id: &str,
    digest: &str,
    image: Option<&str>,
) -> Result<(), String> {
    step("What the guest confirmed (coffer inspect)");
    let mut inspect_args = vec!["inspect", pod_id, "--json"];
    if let Some(dir) = &args.state_dir {
        inspect_args.extend(["--state-dir", dir]);
    }
    let inspect: serde_json::Value = serde_json::from_str(&coffer.ok(&inspect_args)?)
        .map_err(|e| format!("coffer inspect --json printed something else: {e}"))?;
    let seen = inspect["initdata"]["digest"].as_str().unwrap_or_default();
    say(&format!(
        "tee {}, measured: {}, VM pid {}",
        inspect["tee"].as_str().unwrap_or("?"),
        inspect["measured"],
        inspect["vm_pid"]
    ));
    say(&format!("digest {seen}"));
    if let Some(report) = inspect["guest_report"].as_str() {
        say(&format!("guest: {report}"));
    }
    if seen != digest {
        return Err(format!("the guest confirmed {seen:?}, expected {digest}"));
    }
    say("the digest the guest read equals the one computed on the host");

    let script =
        "echo hello from a container in a Coffer VM; echo guest kernel: $(uname -r); sleep 3600";
    let mut container = Container::busybox_sh("hello", script);
    match image {
        Some(image) => {
            step(&format!(
                "A busybox container in the pod's VM: the guest pulls {image}, checks every digest and unpacks it in guest memory"
            ));
            container.image = image.to_owned();
        }
        None => step(
            "A busybox container in the pod's VM, on containerd's snapshot shared from the host",
        ),
    }
    let id = driver
        .create_container(pod_id, pod, &container)
        .map_err(|e| format!("CreateContainer: {e}"))?;
    driver
        .start_container(&id)
        .map_err(|e| format!("StartContainer: {e}"))?;
    let lines = wait_for_lines(driver, &id, 2)?;
    for l in &lines {
        say(&format!("log: {l}"));
    }
    say(&format!(
        "host kernel: {} (the container runs on the guest's own kernel)",
        host_kernel()
    ));

    step("ExecSync into the container");
    let r = driver
        .exec_sync(&id, &["sh", "-c", "echo exec works; exit 3"])
        .map_err(|e| format!("ExecSync: {e}"))?;
    say(&format!(
        "stdout: {:?}, exit code {}",
        String::from_utf8_lossy(&r.stdout).trim(),
        r.exit_code
    ));
    Ok(())
}

fn wait_for_lines(driver: &mut dyn Driver, id: &str, n: usize) -> Result<Vec<String>, String> {
    let start = Instant::now();
    loop {
        let lines = driver.logs(id).map_err(|e| e.to_string())?;
        if lines.len() >= n {
            return Ok(lines);
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("the container wrote {lines:?} within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
