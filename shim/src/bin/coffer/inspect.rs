//! `coffer inspect <sandbox-id>`: what Coffer recorded about a running sandbox.
//!
//! Reads `<state-dir>/<sandbox-id>/state.json`, which the shim writes once the guest agent
//! confirmed the Init-Data digest, and prints it: TEE, whether the launch is measured, the
//! digest in hex, the VM's pid and command line.

use std::path::PathBuf;

use coffer_shim::config::{Config, DEFAULT_STATE_DIR};
use coffer_shim::state::{format_utc, StateDir};

use crate::Failure;

/// Arguments of `coffer inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sandbox (pod) id containerd gave the sandbox.
    sandbox_id: String,
    /// Root of the per-sandbox state directories (the handler config's `state_dir`;
    /// default /run/coffer).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
    /// Take the state directory from this runtime handler configuration instead.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the record as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let root = match (args.state_dir, args.config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => Config::load(&config)?.state_dir,
        (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let dir = StateDir::new(&root, &args.sandbox_id)?;
    let Some(state) = dir.read_state()? else {
        return Err(Failure::Invalid(format!(
            "no sandbox {} under {}",
            args.sandbox_id,
            root.display()
        )));
    };
    if args.json {
        let text = serde_json::to_string_pretty(&state)?;
        println!("{text}");
        return Ok(());
    }
    println!("sandbox:     {}", state.sandbox_id);
    println!("tee:         {}", state.tee);
    println!(
        "measured:    {}",
        if state.measured {
            "yes (the Init-Data digest is bound into the launch measurement)"
        } else {
            "no (TEE none: the guest checks the digest, nothing attests it)"
        }
    );
    match &state.initdata {
        Some(i) => {
            println!("initdata:    {} ({})", i.algorithm, i.source);
            println!("digest:      {}", i.digest);
        }
        None => println!("initdata:    none"),
    }
    if !state.guest_report.is_empty() {
        println!("guest:       {}", state.guest_report);
    }
    println!("vm pid:      {}", state.vm_pid);
    println!("created:     {}", format_utc(state.created_unix));
    println!("config:      {}", state.config_path.display());
    println!("state dir:   {}", dir.path().display());
    println!(
        "launch:      {}",
        std::iter::once(state.launch.program.to_string_lossy().into_owned())
            .chain(state.launch.args.iter().cloned())
            .map(|a| coffer_hypervisor::plan::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
