//! `berth containers`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ContainersCommand {
    /// List.
    Ls,
}

pub async fn run(global: &Global, command: ContainersCommand) -> anyhow::Result<()> {
    let _ = (global, command);
    anyhow::bail!("not yet")
}
