use sd_notify::NotifyState;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use ttrpc::r#async::{Server, Service};

use crate::connection::{guarded_listener, Limits};
use crate::liveness::end_streams_when_callers_hang_up;
use crate::socket::SocketSource;
use crate::{serve_metrics, DaemonConfig, DaemonError, Metrics, PeerPolicy};

/// Serves `services` until SIGTERM or SIGINT: on the inherited socket under
/// systemd socket activation, otherwise on `config.address`. Tells systemd
/// READY=1 once serving and STOPPING=1 on the way out, and pets the watchdog
/// when systemd asks for one. With `metrics` (see [`Metrics::when_enabled`])
/// every request is counted, and the metrics are served at
/// `config.metrics_address`.
pub async fn serve(
    config: &DaemonConfig,
    services: HashMap<String, Service>,
    metrics: Option<Metrics>,
) -> Result<(), DaemonError> {
    let services = match (metrics, &config.metrics_address) {
        (Some(metrics), Some(address)) => {
            let services = metrics.instrument(services);
            serve_metrics(Arc::new(metrics), address, config.socket_group.as_deref()).await?;
            services
        }
        _ => services,
    };
    let policy = PeerPolicy::new(config.socket_group.as_deref())?;
    // Before the socket exists: whoever sees it may send SIGTERM at once,
    // and it must be handled (a clean stop), not kill the daemon.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| DaemonError::Server(format!("installing SIGTERM handler: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| DaemonError::Server(format!("installing SIGINT handler: {e}")))?;
    let source = SocketSource::open(config)?;
    let activated = matches!(source, SocketSource::Activated(_));
    let (listener, bound_path) = source.into_listener();
    let mut server = start_server(listener, policy, services).await?;
    tracing::info!(
        address = %config.address.display(),
        socket_activated = activated,
        "serving"
    );
    tell_systemd(|| sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")])).await;
    let watchdog = spawn_watchdog();

    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    tell_systemd(|| sd_notify::notify(&[NotifyState::Stopping])).await;
    if let Some(task) = watchdog {
        task.abort();
    }
    server
        .shutdown()
        .await
        .map_err(|e| DaemonError::Server(e.to_string()))?;
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Starts serving `services` on `listener` as every daemon does: each
/// connection guarded (`GuardedConnection`, in connection.rs) and its caller checked by
/// `policy`, and every stream handler ended when its caller hangs up.
pub async fn start_server(
    listener: std::os::unix::net::UnixListener,
    policy: PeerPolicy,
    services: HashMap<String, Service>,
) -> Result<Server, DaemonError> {
    let listener = guarded_listener(listener, policy, Limits::DEFAULT)?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(end_streams_when_callers_hang_up(services));
    server
        .start()
        .await
        .map_err(|e| DaemonError::Server(e.to_string()))?;
    Ok(server)
}

fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let timeout = sd_notify::watchdog_enabled().filter(|t| !t.is_zero())?;
    let period = timeout / 2;
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            tell_systemd(|| sd_notify::notify(&[NotifyState::Watchdog])).await;
        }
    }))
}

/// Sends a notification to systemd off the runtime's threads: the send
/// blocks while systemd's queue is full, and the daemon serves requests
/// meanwhile (on a one-thread runtime nothing else would run).
async fn tell_systemd(send: fn() -> std::io::Result<()>) {
    let _ = tokio::task::spawn_blocking(send).await;
}
