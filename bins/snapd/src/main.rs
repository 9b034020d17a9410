//! berth-snapd: serves the snapshotters on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_api::sockets;
use berth_daemon::{peer_socket, DaemonConfig, DaemonFlags, Defaults};
use berth_snapd::apply::{Host, Privileged, Unprivileged};
use berth_snapd::diff::Differ;
use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;
use berth_snapd::service::SnapshotService;
use berth_snapd::unpack::{ContentSource, Unpacker, SCRATCH_PREFIX};
use berth_snapd::write_back::DEFAULT_WRITE_BACK_DELAY;
use clap::{CommandFactory, Parser};

/// berth's snapshot daemon: overlayfs and native snapshotters, layer
/// unpack from berth-contentd, and diffs.
#[derive(Debug, Parser)]
#[command(name = "berth-snapd", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// berth-contentd's socket, where Unpack reads layers and Diff writes
    /// them.
    #[arg(long, value_name = "SOCKET")]
    contentd: Option<PathBuf>,
    /// Milliseconds a commit's files may stay in the page cache before
    /// one syncfs writes them, and whatever was committed meanwhile, back
    /// to disk (500 by default). A power cut inside that window discards
    /// the snapshots not yet written back, and the next pull unpacks them
    /// again; a longer delay takes fewer syncfs calls for more unpacking
    /// after such a cut.
    #[arg(long, value_name = "MS")]
    write_back_delay: Option<u64>,
}

/// snapd's own keys in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    contentd: Option<PathBuf>,
    write_back_delay: Option<u64>,
}

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/snapshots"),
        state: PathBuf::from("/run/berth/snapshots"),
        address: PathBuf::from(sockets::SNAPD),
        config: PathBuf::from("/etc/berth/snapd.toml"),
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
                "write_back_delay",
                Some(berth_daemon::ConfigValue::Integer(
                    DEFAULT_WRITE_BACK_DELAY.as_millis() as i64,
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
    let write_back_delay = cli
        .write_back_delay
        .or(settings.write_back_delay)
        .map_or(DEFAULT_WRITE_BACK_DELAY, Duration::from_millis);
    runtime.block_on(run(config, contentd, write_back_delay))
}

async fn run(
    config: DaemonConfig,
    contentd: PathBuf,
    write_back_delay: Duration,
) -> anyhow::Result<()> {
    let root = config.root.clone();
    let (snapshotters, records) = tokio::task::spawn_blocking(
        move || -> anyhow::Result<(Vec<LocalSnapshotter>, Records)> {
            let records = Records::open(&root.join("meta"))?;
            let mut out = Vec::new();
            for backend in [Backend::Overlay, Backend::Native] {
                let sn = LocalSnapshotter::open_writing_back_after(
                    &root,
                    backend,
                    records.clone(),
                    write_back_delay,
                )?;
                let (discarded, written_back) = sn.recover_write_back()?;
                if discarded + written_back > 0 {
                    tracing::info!(
                        snapshotter = backend.name(),
                        discarded,
                        written_back,
                        "committed snapshots not known to be on disk: those from before a power cut discarded, the others written back"
                    );
                }
                // Unpacks that a crash interrupted, then their directories.
                let scratch = sn.remove_prefixed_actives(SCRATCH_PREFIX)?;
                let orphans = sn.cleanup_blocking()?;
                if scratch + orphans > 0 {
                    tracing::info!(
                        snapshotter = backend.name(),
                        scratch,
                        orphans,
                        "cleaned up after an earlier crash"
                    );
                }
                out.push(sn);
            }
            Ok((out, records))
        },
    )
    .await
    .context("opening the snapshotters")?
    .with_context(|| format!("opening the snapshotters in {}", config.root.display()))?;
    let root_user = nix::unistd::Uid::effective().is_root();
    let privileged: Arc<dyn Privileged> = if root_user {
        Arc::new(Host)
    } else {
        tracing::warn!("not root: layers lose ownership, xattrs and device nodes");
        Arc::new(Unprivileged)
    };
    let source = ContentSource::Socket(contentd);
    let unpacker = Arc::new(Unpacker::new(source.clone(), privileged, root_user));
    let differ = Arc::new(Differ::new(source));
    let metrics = berth_daemon::Metrics::when_enabled(&config, "snapd", |metrics| {
        berth_snapd::metrics::register(metrics, records)
    });
    let write_back: Vec<LocalSnapshotter> = snapshotters.clone();
    let services = SnapshotService::new(snapshotters, unpacker, differ).into_ttrpc();
    berth_daemon::serve(&config, services, metrics).await?;
    // What the last commits left in the page cache goes to disk before the
    // daemon does, so that a reboot after a clean stop discards nothing.
    tokio::task::spawn_blocking(move || {
        for sn in write_back {
            if let Err(e) = sn.write_back_now() {
                tracing::warn!(snapshotter = sn.backend().name(), error = %e, "writing back at stop");
            }
        }
    })
    .await
    .context("writing back at stop")?;
    tracing::info!("stopped");
    Ok(())
}
