//! `berth pull`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct PullArgs {}

pub async fn run(global: &Global, args: PullArgs) -> anyhow::Result<()> {
    let _ = (global, args);
    anyhow::bail!("not yet")
}
