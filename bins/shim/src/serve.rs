//! Serve mode: the long-lived shim. One thread (a current-thread tokio
//! runtime) runs the ttrpc server, the reaper, the exit monitor and the
//! event publisher.

use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;
use nix::sys::signal::Signal;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::sync::Notify;
use ttrpc::security_extension::{AcceptHook, HookError, HookOutput};

use crate::error::{Result, ShimError};
use crate::events::{Destination, Publisher};
use crate::flags::Flags;
use crate::reaper::Reaper;
use crate::service::TaskService;
use crate::signals::Signals;
use crate::tasks::Tasks;

/// The listening socket `start` passes to the server.
const LISTENER_FD: RawFd = 3;
const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";
const EVENT_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// See [`idle_limit`].
const IDLE_EXIT_AFTER: Duration = Duration::from_secs(300);

/// How long the blocking-pool thread that runs ttrpc's accept hook stays
/// after its last job: containerd connects once per shim (again after a
/// restart), so it need not linger.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// epoll events taken per tick; the shim watches a handful of fds.
const IO_EVENTS_PER_TICK: usize = 64;

/// The long-lived server, on `listener` when `start` forked it, else on
/// `-socket` or the listening socket inherited as fd 3.
pub fn run(flags: &Flags, listener: Option<UnixListener>) -> Result<()> {
    // One malloc arena: the accept hook's blocking-pool thread would
    // otherwise get its own arena, kept (and resident) for the shim's life.
    // SAFETY: mallopt only changes allocator settings; it runs before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    Reaper::become_subreaper()?;
    // `start` runs the server in the bundle it was started in.
    if let Ok(bundle) = std::env::current_dir() {
        crate::log::init(&bundle, flags.debug);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(1)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .thread_stack_size(256 * 1024)
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .build()
        .map_err(|e| ShimError::io("building the runtime", e))?;
    runtime.block_on(serve(flags, listener))
}

fn listener(flags: &Flags, given: Option<UnixListener>) -> Result<(UnixListener, Option<PathBuf>)> {
    if let Some(listener) = given {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(PathBuf::from));
        return Ok((listener, path));
    }
    if !flags.socket.is_empty() {
        // Absolute: the working directory moves with the log (log.rs).
        let given = PathBuf::from(flags.socket.trim_start_matches("unix://"));
        let path = if given.is_absolute() {
            given
        } else {
            std::env::current_dir()
                .map_err(|e| ShimError::io("reading the working directory", e))?
                .join(given)
        };
        let listener = crate::start::bind_socket(&path)?.ok_or_else(|| {
            ShimError::AlreadyExists(format!("a shim already serves at {}", path.display()))
        })?;
        return Ok((listener, Some(path)));
    }
    // SAFETY: fd 3 is only borrowed to check that it is a socket.
    let borrowed = unsafe { BorrowedFd::borrow_raw(LISTENER_FD) };
    if getsockopt(&borrowed, sockopt::AcceptConn) != Ok(true) {
        return Err(ShimError::InvalidArgument(
            "no listening socket on fd 3 (serve mode is started by `start`, or given -socket)"
                .into(),
        ));
    }
    // SAFETY: whoever ran us in serve mode passed fd 3 as the listening
    // socket (checked above) and nothing else in this process uses it; the
    // listener owns it from here.
    let listener = unsafe { UnixListener::from_raw_fd(LISTENER_FD) };
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| ShimError::sys("setting close-on-exec on the socket", e))?;
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from));
    Ok((listener, path))
}

async fn serve(flags: &Flags, given: Option<UnixListener>) -> Result<()> {
    let (listener, socket_path) = listener(flags, given)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ShimError::io("configuring the socket", e))?;

    let (reaper, mut exits) = Reaper::new();
    let reaper = Arc::new(reaper);
    let destination = match std::env::var("TTRPC_ADDRESS") {
        Ok(address) if !address.is_empty() => Destination::Ttrpc(address),
        _ if !flags.publish_binary.is_empty() => Destination::Binary {
            binary: flags.publish_binary.clone(),
            address: flags.address.clone(),
        },
        _ => Destination::Nowhere,
    };
    let publisher = Publisher::start(destination, flags.namespace.clone(), reaper.clone());
    let shutdown = Arc::new(Notify::new());
    let service = Tasks::new(
        flags.namespace.clone(),
        reaper.clone(),
        publisher.clone(),
        shutdown.clone(),
    );

    let mut signals = Signals::install(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT])?;
    let terminated = Arc::new(Notify::new());
    let reaping = reaper.clone();
    let terminating = terminated.clone();
    tokio::spawn(async move {
        reaping.reap();
        while let Ok(signal) = signals.next().await {
            match signal {
                Signal::SIGCHLD => reaping.reap(),
                _ => terminating.notify_one(),
            }
        }
    });
    let monitor = service.clone();
    tokio::spawn(async move {
        while let Some(exit) = exits.recv().await {
            monitor.handle_exit(exit);
        }
    });

    let mut services = create_task(Arc::new(TaskService(service.clone())));
    // containerd 1.x and 2.x (plain address) call the v2 service; the
    // messages of v2 and v3 are identical.
    let v2 = create_task(Arc::new(TaskService(service.clone()))).remove(TASK_V3);
    if let Some(v2) = v2 {
        services.insert(TASK_V2.to_string(), v2);
    }
    let listener = ttrpc::r#async::transport::Listener::try_from(listener)
        .map_err(|e| ShimError::io("serving the socket", e))?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .set_accept_hook(SameUserOrRoot)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| ShimError::io("starting the server", std::io::Error::other(e.to_string())))?;

    let idle = service.clone();
    let idle_after = idle_limit();
    tokio::select! {
        _ = shutdown.notified() => {}
        _ = terminated.notified() => {}
        _ = exit_if_never_used(idle, idle_after) => {
            crate::log_warn!("no Create came within {idle_after:?}: exiting");
        }
    }
    publisher.flush(EVENT_FLUSH_LIMIT).await;
    // Lets the Shutdown reply go out before the connections close.
    let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// How long a shim waits for its first Create. The caller sends one as
/// soon as it has dialled the address `start` printed (containerd gives
/// the dial 100 s); a shim that gets none was started by a caller that
/// died or gave up, and nobody else will ever stop it.
/// `BERTH_SHIM_IDLE_EXIT_SECONDS` overrides it (tests).
fn idle_limit() -> Duration {
    std::env::var("BERTH_SHIM_IDLE_EXIT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(IDLE_EXIT_AFTER)
}

/// Returns after `limit` if no Create has come by then; otherwise never.
async fn exit_if_never_used(tasks: Arc<Tasks>, limit: Duration) {
    tokio::time::sleep(limit).await;
    if tasks.create_requested() {
        std::future::pending::<()>().await;
    }
}

/// Only root and the shim's own user may call it (SO_PEERCRED), on top of
/// the socket's 0600 mode.
#[derive(Debug)]
struct SameUserOrRoot;

impl AcceptHook for SameUserOrRoot {
    fn on_accept(&self, fd: RawFd) -> std::result::Result<HookOutput, HookError> {
        // SAFETY: ttrpc lends us the accepted socket for the duration of the call.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let creds =
            getsockopt(&socket, sockopt::PeerCredentials).map_err(|e| HookError::Io(e.into()))?;
        let own = nix::unistd::Uid::effective().as_raw();
        if creds.uid() == 0 || creds.uid() == own {
            Ok(HookOutput {
                data: ttrpc::ConnectionData::new(),
                payload_transform: None,
            })
        } else {
            crate::log_warn!("refused a connection from uid {}", creds.uid());
            Err(HookError::Rejected(format!(
                "uid {} may not call this shim",
                creds.uid()
            )))
        }
    }
}
