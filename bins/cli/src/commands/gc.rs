//! `berth gc`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct GcArgs {}

pub async fn run(global: &Global, args: GcArgs) -> anyhow::Result<()> {
    let _ = (global, args);
    anyhow::bail!("not yet")
}
