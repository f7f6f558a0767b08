//! `coffer-boot`: the boot floor of a runtime handler — its VM launched bare, as the shim would
//! launch it for a pod with the Init-Data example, timed from QEMU's spawn to the agent's hello
//! (the same handshake that makes a pod ready), then stopped. No containerd, no shim.
//!
//! ```text
//! coffer-boot --config /etc/coffer/coffer-qemu.toml [--runs N] [--initdata FILE] [--settle SECS]
//!             [--console] [--no-nic]
//! ```
//!
//! The VM gets the devices a pod's VM gets: the Init-Data disk, the 9p share (empty) and a NIC,
//! backed by a TAP in a network namespace of its own that goes with the run. The guest is given
//! no address: configuring the pod's network is the pod's part, not the floor's. `--no-nic`
//! leaves the NIC out (the floor as it was measured before pods had a network).
//!
//! Prints one line per run (`run N: hello after S s, QEMU PSS M MiB`, the PSS read once the
//! guest has idled for `--settle` seconds, default 2) and needs root only where QEMU does.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coffer_agent::protocol::client::AgentClient;
use coffer_hypervisor::{HostCapabilities, LaunchPlan, Nic, Vm, VmResources};
use coffer_initdata::InitData;
use coffer_shim::config::Config;
use coffer_tests::tools;

struct Args {
    config: PathBuf,
    runs: u32,
    initdata: PathBuf,
    /// How long the guest idles after hello before QEMU's memory is read.
    settle: Duration,
    /// Print each run's guest console to stderr.
    console: bool,
    /// Give the VM a NIC, as a pod's VM has.
    nic: bool,
}

fn usage() -> String {
    "usage: coffer-boot --config HANDLER.toml [--runs N] [--initdata FILE] [--settle SECS] \
     [--console] [--no-nic]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut runs = 1;
    let mut console = false;
    let mut nic = true;
    let mut settle = Duration::from_secs(2);
    let mut initdata = tools::seed_initdata();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--runs" => {
                let v = value()?;
                runs = v
                    .parse()
                    .map_err(|_| format!("--runs {v:?} is not a number"))?;
            }
            "--initdata" => initdata = PathBuf::from(value()?),
            "--settle" => {
                let v = value()?;
                settle = v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| format!("--settle {v:?} is not a number of seconds"))?;
            }
            "--console" => console = true,
            "--no-nic" => nic = false,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(Args {
        config: config.ok_or_else(usage)?,
        runs,
        initdata,
        settle,
        console,
        nic,
    })
}

/// What one boot measured.
struct Boot {
    /// From QEMU's spawn to the agent's hello.
    hello: Duration,
    /// QEMU's proportional set size once the guest idles after hello, in KiB.
    pss_kib: Option<u64>,
}

/// `Pss:` of a process, in KiB, from `/proc/PID/smaps_rollup`.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The guest NIC's MAC: locally administered, as a pod's veth has.
const NIC_MAC: &str = "02:42:0a:58:00:02";

/// One boot: spawn, hello, a short idle, stop.
async fn boot_once(config: &Config, doc: &InitData, args: &Args) -> Result<Boot, String> {
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .map_err(|e| format!("cannot make a state directory: {e}"))?;
    // The same devices a pod's VM has: the Init-Data disk, the (here empty) 9p share and a NIC.
    let mut resources = VmResources::in_dir(dir.path());
    let tap = if args.nic {
        Some(tools::isolated_tap()?)
    } else {
        None
    };
    resources.nic = tap.as_ref().map(|t| Nic {
        tap_fd: t.as_raw_fd(),
        mac: NIC_MAC.into(),
    });
    if let Some(share) = &resources.share_dir {
        std::fs::create_dir(share)
            .map_err(|e| format!("cannot create {}: {e}", share.display()))?;
    }
    let image = resources
        .initdata_image
        .as_ref()
        .ok_or("no Init-Data image path")?;
    std::fs::write(image, coffer_initdata::image::write(doc.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", image.display()))?;
    let host = HostCapabilities::probe();
    let digest = doc.digest();
    let plan = LaunchPlan::build(&config.vm, config.tee, &host, Some(&digest), &resources)
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut vm = Vm::spawn(&plan, &resources)
        .await
        .map_err(|e| e.to_string())?;
    // QEMU holds the TAP now.
    drop(tap);
    let hello = AgentClient::connect(&resources.agent_socket, config.agent_timeout()).await;
    let took = start.elapsed();
    let pss = if hello.is_ok() {
        tokio::time::sleep(args.settle).await;
        pss_kib(vm.pid())
    } else {
        None
    };
    let _ = vm.stop(Duration::from_secs(5)).await;
    if args.console {
        // What the guest printed, to see where its boot time goes (with `printk.time=1` among
        // the handler's kernel_params, the kernel's lines carry their times).
        eprint!(
            "{}",
            String::from_utf8_lossy(&std::fs::read(&resources.console_log).unwrap_or_default())
        );
    }
    let (_client, hello) = hello.map_err(|e| format!("no hello: {e}"))?;
    if hello.initdata.digest.as_deref() != Some(digest.to_hex().as_str()) {
        return Err(format!(
            "the guest read digest {:?}, not {}",
            hello.initdata.digest,
            digest.to_hex()
        ));
    }
    Ok(Boot {
        hello: took,
        pss_kib: pss,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coffer-boot: {e}");
            return ExitCode::FAILURE;
        }
    };
    let doc = match std::fs::read(&args.initdata)
        .map_err(|e| e.to_string())
        .and_then(|b| InitData::parse(b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("coffer-boot: {}: {e}", args.initdata.display());
            return ExitCode::FAILURE;
        }
    };
    for run in 1..=args.runs {
        match boot_once(&config, &doc, &args).await {
            Ok(boot) => println!(
                "run {run}: hello after {:.2} s, QEMU PSS {} MiB",
                boot.hello.as_secs_f64(),
                boot.pss_kib.map_or("unknown".to_string(), |k| format!(
                    "{:.0}",
                    k as f64 / 1024.0
                ))
            ),
            Err(e) => {
                eprintln!("coffer-boot: run {run}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
