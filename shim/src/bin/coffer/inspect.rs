//! `coffer inspect <sandbox-id>`.

use crate::Failure;

/// Arguments of `coffer inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sandbox (pod) id containerd gave the sandbox.
    sandbox_id: String,
}

pub fn run(args: Args) -> Result<(), Failure> {
    Err(Failure::Invalid(format!("no sandbox {}", args.sandbox_id)))
}
