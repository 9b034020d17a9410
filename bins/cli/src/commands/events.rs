//! `berth events`. (Being written.)

use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {}

pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    let _ = (global, args);
    anyhow::bail!("not yet")
}
