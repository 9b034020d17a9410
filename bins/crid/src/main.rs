//! berth-crid: serves the CRI (RuntimeService and ImageService) over gRPC
//! on a unix socket, through berth's other daemons.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use berth_api::sockets;
use berth_crid::daemons::Daemons;
use berth_crid::runtime::{Crid, PauseProcess, Settings};
use berth_crid::service::CriService;
use berth_crid::spec::{can_lower_oom_scores, Host};
use berth_daemon::{peer_socket, DaemonConfig, DaemonFlags, Defaults, PeerPolicy, SocketSource};
use berth_network::Cni;
use clap::{CommandFactory, Parser};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::signal::unix::{signal, SignalKind};

/// The largest CRI message crid takes or sends (the kubelet's own bound).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The streaming server's address unless one is configured (containerd's
/// default: loopback, a free port).
const DEFAULT_STREAM_ADDRESS: &str = "127.0.0.1:0";
/// The sandbox image unless one is configured: berth's own, made locally.
const DEFAULT_SANDBOX_IMAGE: &str = berth_crid::pause::BUILTIN_PAUSE;

/// berth's CRI server: Kubernetes pods and containers on berth.
#[derive(Debug, Parser)]
#[command(name = "berth-crid", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonFlags,
    /// berth-contentd's socket.
    #[arg(long, value_name = "SOCKET")]
    contentd: Option<PathBuf>,
    /// berth-snapd's socket.
    #[arg(long, value_name = "SOCKET")]
    snapd: Option<PathBuf>,
    /// berth-metad's socket.
    #[arg(long, value_name = "SOCKET")]
    metad: Option<PathBuf>,
    /// berth-taskd's socket.
    #[arg(long, value_name = "SOCKET")]
    taskd: Option<PathBuf>,
    /// The image of pods' pause processes.
    #[arg(long, value_name = "IMAGE")]
    sandbox_image: Option<String>,
    /// Which pods get a pause process [default: when-pid-shared].
    #[arg(long, value_name = "WHICH")]
    pause_process: Option<PauseProcess>,
    /// Where the CNI network configuration is.
    #[arg(long, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Where the CNI plugins are; repeatable.
    #[arg(long, value_name = "DIR")]
    cni_bin_dir: Vec<PathBuf>,
    /// Where CDI spec files are, in rising priority; repeatable [default:
    /// /etc/cdi /var/run/cdi].
    #[arg(long, value_name = "DIR")]
    cdi_spec_dir: Vec<PathBuf>,
    /// The shim of the default runtime handler (io.containerd.NAME.VERSION
    /// or a path).
    #[arg(long, value_name = "RUNTIME")]
    runtime: Option<String>,
    /// Another runtime handler: NAME=RUNTIME; repeatable.
    #[arg(long, value_name = "NAME=RUNTIME")]
    runtime_handler: Vec<String>,
    /// Place pods' cgroups with systemd (slices) rather than cgroupfs paths.
    #[arg(long)]
    systemd_cgroup: bool,
    /// The snapshotter pods' filesystems are made in.
    #[arg(long, value_name = "NAME")]
    snapshotter: Option<String>,
    /// Where the exec/attach/port-forward streaming server listens
    /// (host:port; port 0 picks a free one).
    #[arg(long, value_name = "ADDRESS")]
    stream_address: Option<String>,
}

/// crid's own keys in its config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    contentd: Option<PathBuf>,
    snapd: Option<PathBuf>,
    metad: Option<PathBuf>,
    taskd: Option<PathBuf>,
    sandbox_image: Option<String>,
    pause_process: Option<PauseProcess>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dirs: Option<Vec<PathBuf>>,
    cdi_spec_dirs: Option<Vec<PathBuf>>,
    runtime: Option<String>,
    runtime_handlers: Option<HashMap<String, String>>,
    systemd_cgroup: Option<bool>,
    snapshotter: Option<String>,
    stream_address: Option<String>,
}

fn defaults() -> Defaults {
    Defaults {
        root: PathBuf::from("/var/lib/berth/cri"),
        state: PathBuf::from("/run/berth/cri"),
        address: PathBuf::from(sockets::CRI),
        config: PathBuf::from("/etc/berth/crid.toml"),
    }
}

/// Serves gRPC on one connection. hyper serves it directly rather than
/// tonic's server, whose deadline layer answers an expired `grpc-timeout`
/// with CANCELLED: the CRI's clients (as grpc-go's servers behave) expect
/// the deadline to be theirs, ending in DEADLINE_EXCEEDED.
async fn serve_connection(stream: tokio::net::UnixStream, routes: tonic::service::Routes) {
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut routes = routes.clone();
            async move {
                let answer =
                    tower_service::Service::call(&mut routes, request.map(tonic::body::boxed))
                        .await;
                Ok::<_, std::convert::Infallible>(
                    answer.unwrap_or_else(|e| tonic::Status::internal(e.to_string()).into_http()),
                )
            }
        });
    let served = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("connection: {e}");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.daemon.print_default_config {
        use berth_daemon::ConfigValue::{Array, Boolean, String as Text};
        let own = [
            ("contentd", Some(Text(sockets::CONTENTD.into()))),
            ("snapd", Some(Text(sockets::SNAPD.into()))),
            ("metad", Some(Text(sockets::METAD.into()))),
            ("taskd", Some(Text(sockets::TASKD.into()))),
            ("sandbox_image", Some(Text(DEFAULT_SANDBOX_IMAGE.into()))),
            ("pause_process", Some(Text("when-pid-shared".into()))),
            ("cni_conf_dir", Some(Text("/etc/cni/net.d".into()))),
            (
                "cni_bin_dirs",
                Some(Array(vec![
                    Text("/usr/lib/cni".into()),
                    Text("/opt/cni/bin".into()),
                ])),
            ),
            (
                "cdi_spec_dirs",
                Some(Array(
                    berth_oci::DEFAULT_CDI_SPEC_DIRS
                        .iter()
                        .map(|d| Text(d.to_string()))
                        .collect(),
                )),
            ),
            (
                "runtime",
                Some(Text(berth_tasks::container::DEFAULT_RUNTIME.into())),
            ),
            ("runtime_handlers", None),
            ("systemd_cgroup", Some(Boolean(false))),
            (
                "snapshotter",
                Some(Text(berth_snapshot::DEFAULT_SNAPSHOTTER.into())),
            ),
            ("stream_address", Some(Text(DEFAULT_STREAM_ADDRESS.into()))),
        ];
        print!(
            "{}",
            berth_daemon::default_config_toml(&Cli::command(), &defaults(), &own)
        );
        return Ok(());
    }
    // Two workers: crid's tasks copy every container's output into its log
    // and serve the streams, which one thread would put in a queue.
    let (config, runtime) =
        berth_daemon::start(&cli.daemon, defaults(), berth_daemon::Scheduler::Workers(2))?;
    let file: FileSettings = config.daemon_settings()?;
    let daemons = Daemons {
        contentd: peer_socket(cli.contentd, file.contentd, sockets::CONTENTD),
        snapd: peer_socket(cli.snapd, file.snapd, sockets::SNAPD),
        metad: peer_socket(cli.metad, file.metad, sockets::METAD),
        taskd: peer_socket(cli.taskd, file.taskd, sockets::TASKD),
        snapshotter: cli
            .snapshotter
            .or(file.snapshotter)
            .unwrap_or_else(|| berth_snapshot::DEFAULT_SNAPSHOTTER.to_string()),
    };
    let mut runtimes = file.runtime_handlers.unwrap_or_default();
    for pair in &cli.runtime_handler {
        let (name, shim) = pair
            .split_once('=')
            .with_context(|| format!("--runtime-handler {pair:?}: NAME=RUNTIME"))?;
        runtimes.insert(name.to_string(), shim.to_string());
    }
    runtimes.insert(
        String::new(),
        cli.runtime
            .or(file.runtime)
            .unwrap_or_else(|| berth_tasks::container::DEFAULT_RUNTIME.to_string()),
    );
    let bin_dirs = if cli.cni_bin_dir.is_empty() {
        file.cni_bin_dirs
            .unwrap_or_else(|| vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()])
    } else {
        cli.cni_bin_dir
    };
    let settings = Settings {
        root: config.root.clone(),
        state: config.state.clone(),
        sandbox_image: cli
            .sandbox_image
            .or(file.sandbox_image)
            .unwrap_or_else(|| DEFAULT_SANDBOX_IMAGE.to_string()),
        runtimes,
        pause_process: cli.pause_process.or(file.pause_process).unwrap_or_default(),
        cni: Cni {
            conf_dir: cli
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            bin_dirs,
        },
        host: Host {
            systemd_cgroup: cli.systemd_cgroup || file.systemd_cgroup.unwrap_or(false),
            restrict_oom_score_adj: !can_lower_oom_scores(),
            seccomp_root: config.root.join("seccomp"),
            recursive_read_only: berth_crid::spec::runc_has_recursive_read_only(),
            id_mapped_mounts: berth_crid::spec::kernel_id_maps(&config.root),
            cdi_spec_dirs: if cli.cdi_spec_dir.is_empty() {
                file.cdi_spec_dirs.unwrap_or_else(|| {
                    berth_oci::DEFAULT_CDI_SPEC_DIRS
                        .iter()
                        .map(PathBuf::from)
                        .collect()
                })
            } else {
                cli.cdi_spec_dir
            },
        },
    };
    let stream_address = cli
        .stream_address
        .or(file.stream_address)
        .unwrap_or_else(|| DEFAULT_STREAM_ADDRESS.to_string());
    runtime.block_on(run(config, daemons, settings, stream_address))
}

async fn run(
    config: DaemonConfig,
    daemons: Daemons,
    settings: Settings,
    stream_address: String,
) -> anyhow::Result<()> {
    let crid = Crid::new(daemons, settings);
    let (streams, stream_listener) = berth_crid::streaming::Streams::bind(&stream_address).await?;
    tokio::spawn(berth_crid::streaming::serve(
        streams.clone(),
        stream_listener,
        crid.clone(),
    ));
    crid.watch_ooms();
    if let Err(e) = crid.recover().await {
        // The daemons may still be starting; what was not recovered now is
        // found on the first request that touches it.
        tracing::warn!("recovery: {e}");
    }
    let policy = PeerPolicy::new(config.socket_group.as_deref())?;
    // Before the socket exists: a SIGTERM sent as soon as it appears is a
    // clean stop, not the default action's kill.
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let source = SocketSource::open(&config)?;
    let (listener, bound) = source.into_listener();
    listener
        .set_nonblocking(true)
        .context("making the socket non-blocking")?;
    let listener = tokio::net::UnixListener::from_std(listener).context("listening")?;
    let service = CriService { crid, streams };
    let routes = tonic::service::Routes::new(
        RuntimeServiceServer::new(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        ImageServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
    .prepare();
    tracing::info!(address = %config.address.display(), "serving");
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            },
            _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); break }
        };
        if !policy.admits(stream.as_fd()).unwrap_or(false) {
            continue;
        }
        tokio::spawn(serve_connection(stream, routes.clone()));
    }
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    // Pods keep running: their shims outlive crid.
    tracing::info!("stopped");
    Ok(())
}
