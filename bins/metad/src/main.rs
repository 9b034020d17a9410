//! berth-metad: serves namespaces, images, containers and leases on a unix
//! socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_api::sockets;
use berth_daemon::{peer_socket, DaemonConfig, DaemonFlags, Defaults};
use berth_metad::events::Exchange;
use berth_metad::gc::{Collector, CollectorConfig, ScheduleConfig, Scheduler, Sockets};
use berth_metad::store::{MetaStore, Records};
use clap::{CommandFactory, Parser};

/// berth's metadata daemon: namespaces, images, containers, leases,
/// garbage collection and events.
#[derive(Debug, Parser)]
#[command(name = "berth-metad", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// berth-contentd's socket, asked before a namespace is deleted.
    #[arg(long, value_name = "SOCKET")]
    contentd: Option<PathBuf>,
    /// berth-snapd's socket, asked before a namespace is deleted.
    #[arg(long, value_name = "SOCKET")]
    snapd: Option<PathBuf>,
    /// Milliseconds after start before the first scheduled collection
    /// (containerd's `startup_delay`, 100 by default); 0: none until
    /// deletions or mutations call for one.
    #[arg(long, value_name = "MS")]
    gc_startup_delay: Option<u64>,
}

/// metad's own keys in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    contentd: Option<PathBuf>,
    snapd: Option<PathBuf>,
    gc_startup_delay: Option<u64>,
}

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/meta"),
        state: PathBuf::from("/run/berth/meta"),
        address: PathBuf::from(sockets::METAD),
        config: PathBuf::from("/etc/berth/metad.toml"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.daemon.print_default_config {
        let own = [
            (
                "contentd",
                Some(berth_daemon::ConfigValue::String(
                    sockets::CONTENTD.to_string(),
                )),
            ),
            (
                "snapd",
                Some(berth_daemon::ConfigValue::String(
                    sockets::SNAPD.to_string(),
                )),
            ),
            (
                "gc_startup_delay",
                Some(berth_daemon::ConfigValue::Integer(
                    ScheduleConfig::default().startup_delay.as_millis() as i64,
                )),
            ),
        ];
        print!(
            "{}",
            berth_daemon::default_config_toml(&Cli::command(), &defaults(), &own)
        );
        return Ok(());
    }
    let (config, runtime) =
        berth_daemon::start(&cli.daemon, defaults(), berth_daemon::Scheduler::MainThread)?;
    let settings: Settings = config.daemon_settings()?;
    let contentd = peer_socket(cli.contentd, settings.contentd, sockets::CONTENTD);
    let snapd = peer_socket(cli.snapd, settings.snapd, sockets::SNAPD);
    let mut schedule = ScheduleConfig::default();
    if let Some(ms) = cli.gc_startup_delay.or(settings.gc_startup_delay) {
        schedule.startup_delay = std::time::Duration::from_millis(ms);
    }
    runtime.block_on(run(config, contentd, snapd, schedule))
}

async fn run(
    config: DaemonConfig,
    contentd: PathBuf,
    snapd: PathBuf,
    schedule: ScheduleConfig,
) -> anyhow::Result<()> {
    let dir = config.root.join("meta");
    let records = tokio::task::spawn_blocking(move || Records::open(&dir))
        .await
        .context("opening the metadata store")?
        .with_context(|| format!("opening the metadata store in {}", config.root.display()))?;

    // The collector reads the roots from the records and lists and deletes
    // through contentd and snapd.
    let exchange = Exchange::new();
    let peers = Arc::new(Sockets { contentd, snapd });
    let collector = Collector::new(
        Arc::new(records.clone()),
        peers.clone(),
        CollectorConfig::default(),
    )
    .with_events(exchange.clone());
    let scheduler = Scheduler::new(schedule, collector);
    // Subscribers end on SIGTERM, so they cannot hold metad's exit.
    berth_metad::events::close_on_termination(exchange.clone())?;

    // Namespaces are deleted only when contentd and snapd hold nothing in
    // them.
    let metrics = berth_daemon::Metrics::when_enabled(&config, "metad", |metrics| {
        berth_metad::metrics::register(metrics, records.clone())
    });
    let store = MetaStore::new(records, scheduler.clone(), exchange.clone(), peers);
    let mut services = berth_metad::service::services(&store);
    services.extend(berth_metad::gc::ttrpc_service(scheduler));
    services.extend(berth_metad::events::ttrpc_services(exchange));

    berth_daemon::serve(&config, services, metrics).await?;
    tracing::info!("stopped");
    Ok(())
}
