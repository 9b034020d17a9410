//! `berth namespaces`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Subcommand)]
pub enum NamespacesCommand {
    /// List.
    Ls,
}

pub async fn run(global: &Global, command: NamespacesCommand) -> anyhow::Result<()> {
    let _ = (global, command);
    anyhow::bail!("not yet")
}
