pub fn run(_c: Command) -> Result<(), crate::Failure> { Ok(()) }
#[derive(Debug, clap::Subcommand)] pub enum Command { New }
