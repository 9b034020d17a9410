//! berth-contentd: serves the content store on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_contentd::service::ContentService;
use berth_contentd::store::LocalStore;
use berth_contentd::transfer::fetch::Fetcher;
use berth_contentd::transfer::push::Pusher;
use berth_contentd::transfer::service::TransferService;
use berth_daemon::{DaemonConfig, DaemonFlags, Defaults};
use clap::{CommandFactory, Parser};

/// berth's content store: content-addressed blobs and resumable ingests,
/// and image transfer from registries.
#[derive(Debug, Parser)]
#[command(name = "berth-contentd", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// Per-registry settings in containerd's certs.d layout
    /// (`<dir>/<host>/hosts.toml`, CAs, client certificates).
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
}

/// contentd's own keys in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    hosts_dir: Option<PathBuf>,
}

const DEFAULT_HOSTS_DIR: &str = "/etc/berth/certs.d";

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/content"),
        state: PathBuf::from("/run/berth/content"),
        address: PathBuf::from(berth_api::sockets::CONTENTD),
        config: PathBuf::from("/etc/berth/contentd.toml"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.daemon.print_default_config {
        let own = [(
            "hosts_dir",
            Some(berth_daemon::ConfigValue::String(
                DEFAULT_HOSTS_DIR.to_string(),
            )),
        )];
        print!(
            "{}",
            berth_daemon::default_config_toml(&Cli::command(), &defaults(), &own)
        );
        return Ok(());
    }
    let (config, runtime) =
        berth_daemon::start(&cli.daemon, defaults(), berth_daemon::Scheduler::MainThread)?;
    let settings: Settings = config.daemon_settings()?;
    let hosts_dir = cli
        .hosts_dir
        .or(settings.hosts_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
    runtime.block_on(run(config, hosts_dir))
}

async fn run(config: DaemonConfig, hosts_dir: PathBuf) -> anyhow::Result<()> {
    let root = config.root.clone();
    let (store, recovery) = tokio::task::spawn_blocking(move || LocalStore::open(&root))
        .await
        .context("opening the content store")?
        .with_context(|| format!("opening the content store in {}", config.root.display()))?;
    if recovery != Default::default() {
        tracing::info!(?recovery, "cleaned up after an earlier crash");
    }
    let metrics = berth_daemon::Metrics::when_enabled(&config, "contentd", |metrics| {
        berth_contentd::metrics::register(metrics, store.clone())
    });
    let store: Arc<dyn berth_content::ContentStore> = Arc::new(store);
    let mut services = ContentService::new(store.clone()).into_ttrpc();
    let transfer = TransferService::new(
        Fetcher::new(store.clone(), Some(hosts_dir.clone())),
        Pusher::new(store, Some(hosts_dir)),
    );
    services.extend(transfer.into_ttrpc());
    berth_daemon::serve(&config, services, metrics).await?;
    tracing::info!("stopped");
    Ok(())
}
