//! `coffer inspect <sandbox-id>`: what Coffer recorded about a running sandbox.
//!
//! Reads `<state-dir>/<sandbox-id>/state.json`, which the shim writes once the guest agent
//! confirmed the Init-Data digest, and prints it: TEE, whether the launch is measured, the
//! digest in hex, the VM's pid and command line. Without `--state-dir` or `--config` it looks
//! in the state directory of every installed handler configuration (`/etc/coffer/*.toml`) and
//! in the default one, and says where it looked when the sandbox is in none of them.

use std::path::{Path, PathBuf};

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
    #[arg(long, value_name = "FILE", conflicts_with = "config_dir")]
    config: Option<PathBuf>,
    /// Where the installed handler configurations are, to search their state directories.
    #[arg(long, value_name = "DIR", default_value = "/etc/coffer")]
    config_dir: PathBuf,
    /// Print the record as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let searched = args.state_dir.is_none() && args.config.is_none();
    let roots = match (args.state_dir, args.config) {
        (Some(dir), _) => vec![dir],
        (None, Some(config)) => vec![Config::load(&config)?.state_dir],
        (None, None) => installed_state_dirs(&args.config_dir),
    };
    let mut found = None;
    for root in &roots {
        let dir = StateDir::new(root, &args.sandbox_id)?;
        if let Some(state) = dir.read_state()? {
            found = Some((dir, state));
            break;
        }
    }
    let Some((dir, state)) = found else {
        let looked: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        let hint = if searched {
            "; pass --state-dir or --config when its handler keeps state elsewhere"
        } else {
            ""
        };
        return Err(Failure::Invalid(format!(
            "no sandbox {} under {}{hint}",
            args.sandbox_id,
            looked.join(", ")
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
    match &state.network {
        Some(n) => println!(
            "network:     {} {} {} ({}; namespace {})",
            n.interface,
            n.mac,
            n.addresses.join(" "),
            n.status,
            n.netns.display()
        ),
        None => println!("network:     none"),
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

/// The state directories of the handler configurations in `config_dir` (those that load), then
/// the default one, each once.
fn installed_state_dirs(config_dir: &Path) -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(config_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    configs.sort();
    let mut roots: Vec<PathBuf> = Vec::new();
    let candidates = configs
        .iter()
        .filter_map(|c| Config::load(c).ok().map(|c| c.state_dir))
        .chain(std::iter::once(PathBuf::from(DEFAULT_STATE_DIR)));
    for root in candidates {
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}
