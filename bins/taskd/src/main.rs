//! berth-taskd: serves tasks (containers run through v2 shims) and the
//! events endpoint its shims publish to, on one unix socket.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_api::sockets;
use berth_daemon::{peer_socket, DaemonConfig, DaemonFlags, Defaults};
use berth_taskd::events::{MetadSink, Relay};
use berth_taskd::manager::{LocalTasks, ManagerConfig, TaskManager};
use berth_taskd::peers::SocketPeers;
use berth_taskd::service::TasksService;
use clap::{CommandFactory, Parser, Subcommand};

/// berth's task daemon: containers made into running processes through v2
/// shims, supervised, and found again after a restart.
#[derive(Debug, Parser)]
#[command(name = "berth-taskd", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// berth-metad's socket: container records, and where events go.
    #[arg(long, value_name = "SOCKET")]
    metad: Option<PathBuf>,
    /// berth-snapd's socket: the mounts of containers' snapshots.
    #[arg(long, value_name = "SOCKET")]
    snapd: Option<PathBuf>,
    /// Starts shims with -debug.
    #[arg(long)]
    debug_shims: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forwards one event (an encoded google.protobuf.Any on stdin) to the
    /// taskd at --address: for shims that publish by running their
    /// -publish-binary, as containerd's `publish` does.
    Publish {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        namespace: String,
    },
}

/// taskd's own keys in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    metad: Option<PathBuf>,
    snapd: Option<PathBuf>,
}

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/tasks"),
        state: PathBuf::from("/run/berth/tasks"),
        address: PathBuf::from(sockets::TASKD),
        config: PathBuf::from("/etc/berth/taskd.toml"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Publish { topic, namespace }) = &cli.command {
        let address = cli
            .daemon
            .address
            .clone()
            .unwrap_or_else(|| PathBuf::from(sockets::TASKD));
        return publish(&address, topic, namespace);
    }
    if cli.daemon.print_default_config {
        let own = [
            (
                "metad",
                Some(berth_daemon::ConfigValue::String(
                    sockets::METAD.to_string(),
                )),
            ),
            (
                "snapd",
                Some(berth_daemon::ConfigValue::String(
                    sockets::SNAPD.to_string(),
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
    let peers = SocketPeers {
        metad: peer_socket(cli.metad, settings.metad, sockets::METAD),
        snapd: peer_socket(cli.snapd, settings.snapd, sockets::SNAPD),
    };
    runtime.block_on(run(config, peers, cli.debug_shims))
}

async fn run(config: DaemonConfig, peers: SocketPeers, debug: bool) -> anyhow::Result<()> {
    // containerd's layout (<state>/io.containerd.runtime.v2.task/<ns>/<id>):
    // berth's shim derives its socket directory from it, so a taskd's shims
    // keep their sockets under its own state dir.
    let bundles = config.state.join("io.containerd.runtime.v2.task");
    let relay = Relay::start(Arc::new(MetadSink::new(&peers.metad)), &bundles);
    let executable = std::env::current_exe().context("finding taskd's executable")?;
    let manager = TaskManager::new(
        ManagerConfig {
            bundles,
            runtime_root: config.state.join("runc"),
            address: config.address.clone(),
            beside: executable.parent().map(PathBuf::from),
            publish_binary: executable,
            search_path: std::env::var_os("PATH"),
            debug,
        },
        Arc::new(peers),
        relay.clone(),
    );
    manager.recover().await;
    let metrics = berth_daemon::Metrics::when_enabled(&config, "taskd", |metrics| {
        berth_taskd::metrics::register(metrics, manager.clone())
    });
    let mut services = TasksService::new(Arc::new(LocalTasks(manager))).into_ttrpc();
    services.extend(berth_taskd::events::ttrpc_service(relay));
    berth_daemon::serve(&config, services, metrics).await?;
    // Shims keep running: they outlive taskd.
    tracing::info!("stopped");
    Ok(())
}

/// The `publish` subcommand: one event from stdin to taskd's socket.
fn publish(address: &std::path::Path, topic: &str, namespace: &str) -> anyhow::Result<()> {
    use containerd_shim_protos::protobuf::Message;
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(4 * 1024 * 1024)
        .read_to_end(&mut bytes)
        .context("reading the event")?;
    let event =
        containerd_shim_protos::protobuf::well_known_types::any::Any::parse_from_bytes(&bytes)
            .context("the event on stdin is not an encoded google.protobuf.Any")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let client = berth_client::connect(address).await?;
        let events = containerd_shim_protos::shim_async::EventsClient::new(client);
        let envelope = containerd_shim_protos::shim::event::Envelope {
            timestamp: berth_api::time::timestamp(std::time::SystemTime::now()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: containerd_shim_protos::protobuf::MessageField::some(event),
            ..Default::default()
        };
        let request = containerd_shim_protos::shim::events::ForwardRequest {
            envelope: containerd_shim_protos::protobuf::MessageField::some(envelope),
            ..Default::default()
        };
        events
            .forward(ttrpc::context::with_timeout(5_000_000_000), &request)
            .await
            .map_err(berth_errdefs::Error::from_ttrpc)?;
        Ok::<_, berth_errdefs::Error>(())
    })?;
    Ok(())
}
