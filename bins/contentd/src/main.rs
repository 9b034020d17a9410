//! berth-contentd: serves the content store on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_contentd::service::ContentService;
use berth_contentd::store::LocalStore;
use berth_daemon::{DaemonConfig, DaemonFlags, Defaults};
use clap::Parser;

/// berth's content store: content-addressed blobs and resumable ingests.
#[derive(Debug, Parser)]
#[command(name = "berth-contentd", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
}

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/content"),
        state: PathBuf::from("/run/berth/content"),
        address: PathBuf::from("/run/berth/contentd.sock"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Nothing the daemon creates is for other users; the socket is opened up
    // to 0660 explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config = DaemonConfig::resolve(&cli.daemon, defaults())?;
    berth_daemon::init_logging(&config)?;
    berth_daemon::prepare_dirs(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let root = config.root.clone();
    let (store, recovery) = tokio::task::spawn_blocking(move || LocalStore::open(&root))
        .await
        .context("opening the content store")?
        .with_context(|| format!("opening the content store in {}", config.root.display()))?;
    if recovery != Default::default() {
        tracing::info!(?recovery, "cleaned up after an earlier crash");
    }
    let service = ContentService::new(Arc::new(store));
    berth_daemon::serve(&config, service.into_ttrpc()).await?;
    tracing::info!("stopped");
    Ok(())
}
