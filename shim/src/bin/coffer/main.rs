//! `coffer`: the operator's command line for Init-Data, hosts, launch plans, sandboxes and
//! containerd's configuration.
//!
//! Exit codes are a contract scripts rely on: 0 success, 1 invalid input (one line on stderr),
//! 2 usage errors (clap's own code).

mod containerd_config;
mod host;
mod initdata;
mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "coffer",
    version,
    about = "Author Init-Data and run confidential pods with Coffer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Author, encode, decode, check and digest Init-Data documents.
    #[command(subcommand)]
    Initdata(initdata::Command),
    /// Print which TEEs (none, tdx, snp) this host can launch, with kvm or tcg, and why not.
    CheckHost(host::CheckHostArgs),
    /// Print the hypervisor command line a sandbox would run, without running it.
    LaunchPlan(host::LaunchPlanArgs),
    /// Print what Coffer recorded about a running sandbox.
    Inspect(inspect::Args),
    /// Register Coffer's runtime handlers in containerd's configuration, or take them out.
    #[command(subcommand)]
    ContainerdConfig(containerd_config::Command),
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Invalid input or a failed operation: exit 1.
    Invalid(String),
    /// The command line itself is wrong in a way clap cannot see: exit 2.
    Usage(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Invalid(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Initdata(cmd) => initdata::run(cmd),
        Command::CheckHost(args) => host::check_host(args),
        Command::LaunchPlan(args) => host::launch_plan(args),
        Command::Inspect(args) => inspect::run(args),
        Command::ContainerdConfig(cmd) => containerd_config::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(msg)) => {
            eprintln!("coffer: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("coffer: {msg}");
            ExitCode::from(2)
        }
    }
}
