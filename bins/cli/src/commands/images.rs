//! `berth images`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// List.
    Ls,
}

pub async fn run(global: &Global, command: ImagesCommand) -> anyhow::Result<()> {
    let _ = (global, command);
    anyhow::bail!("not yet")
}
