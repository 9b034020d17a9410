//! `berth leases`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Subcommand)]
pub enum LeasesCommand {
    /// List.
    Ls,
}

pub async fn run(global: &Global, command: LeasesCommand) -> anyhow::Result<()> {
    let _ = (global, command);
    anyhow::bail!("not yet")
}
