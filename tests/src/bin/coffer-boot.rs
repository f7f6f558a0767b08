//! `coffer-boot`: the boot floor of a runtime handler — its VM launched bare, as the shim would
//! launch it for a pod with the Init-Data example, timed from QEMU's spawn to the agent's hello
//! (the same handshake that makes a pod ready), then stopped. No containerd, no shim.
//!
//! ```text
//! coffer-boot --config /etc/coffer/coffer-qemu.toml [--runs N] [--initdata FILE]
//! ```
//!
//! Prints one line per run (`run N: hello after S s`) and needs root only where QEMU does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coffer_agent::protocol::client::AgentClient;
use coffer_hypervisor::{HostCapabilities, LaunchPlan, Vm, VmResources};
use coffer_initdata::InitData;
use coffer_shim::config::Config;
use coffer_tests::tools;

struct Args {
    config: PathBuf,
    runs: u32,
    initdata: PathBuf,
}

fn usage() -> String {
    "usage: coffer-boot --config HANDLER.toml [--runs N] [--initdata FILE]".into()
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut runs = 1;
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
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(Args {
        config: config.ok_or_else(usage)?,
        runs,
        initdata,
    })
}

/// One boot: spawn, hello, stop. Returns the time to hello.
async fn boot_once(config: &Config, doc: &InitData) -> Result<Duration, String> {
    let dir = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .map_err(|e| format!("cannot make a state directory: {e}"))?;
    // The same devices a pod's VM has: the Init-Data disk and the (here empty) 9p share.
    let resources = VmResources::in_dir(dir.path());
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
    let hello = AgentClient::connect(&resources.agent_socket, config.agent_timeout()).await;
    let took = start.elapsed();
    let _ = vm.stop(Duration::from_secs(5)).await;
    let (_client, hello) = hello.map_err(|e| format!("no hello: {e}"))?;
    if hello.initdata.digest.as_deref() != Some(digest.to_hex().as_str()) {
        return Err(format!(
            "the guest read digest {:?}, not {}",
            hello.initdata.digest,
            digest.to_hex()
        ));
    }
    Ok(took)
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
        match boot_once(&config, &doc).await {
            Ok(took) => println!("run {run}: hello after {:.2} s", took.as_secs_f64()),
            Err(e) => {
                eprintln!("coffer-boot: run {run}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
