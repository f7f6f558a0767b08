//! `coffer check-host` and `coffer launch-plan`.

use crate::Failure;

/// Arguments of `coffer check-host`.
#[derive(Debug, clap::Args)]
pub struct CheckHostArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `coffer launch-plan`.
#[derive(Debug, clap::Args)]
pub struct LaunchPlanArgs {}

pub fn check_host(_args: CheckHostArgs) -> Result<(), Failure> {
    Err(Failure::Invalid("check-host is not available in this build".into()))
}

pub fn launch_plan(_args: LaunchPlanArgs) -> Result<(), Failure> {
    Err(Failure::Invalid("launch-plan is not available in this build".into()))
}
