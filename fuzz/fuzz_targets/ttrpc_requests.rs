//! The ttrpc requests each daemon serves: contentd's content service,
//! snapd's snapshots service, metad's namespaces, images, containers,
//! leases, GC and events services (berth's and containerd's), taskd's
//! tasks and shim events services. Each daemon's service table is built
//! once, as its `main` builds it, over its own stores in a temp dir; the
//! daemons it would call (contentd for snapd's Unpack and Diff, contentd
//! and snapd for metad's collector and namespace deletion, metad and snapd
//! for taskd) are sockets that do not exist, so those calls fail with
//! Unavailable. contentd's transfer service (Fetch, Push) is left out: it
//! talks to registries.
//!
//! The first byte picks how the rest is delivered (`mode = byte & 3`; the
//! other six bits are flags, see [`Flags`]):
//!
//! - 0: a unary method picked by the next byte among the daemon's
//!   registered ones (daemon, then method), the rest its payload, with
//!   metadata and timeout from the flags; the method's handler is called
//!   directly, as ttrpc's server calls it.
//! - 1: the next byte picks the daemon, the rest is a ttrpc `Request`
//!   (service, method, payload, timeout, metadata, all the input's); a
//!   unary method is called directly, a stream method over the daemon's
//!   socket.
//! - 2: a stream method picked by the next byte, over the daemon's socket:
//!   the rest is chunks (u16 big-endian length, bytes): the request's
//!   payload, then data frames on the same stream.
//! - 3: the next byte picks the daemon, the rest is written as-is to a
//!   connection to its socket: ttrpc frames, as any caller could send.
//!
//! Over a socket, the daemon is served as `berth_daemon::serve` serves it
//! (ttrpc's server behind berth's guarded listener), in this process; the
//! caller reads replies until the stream ends or nothing comes for a few
//! milliseconds, then hangs up.
//!
//! What must hold: no panic, no hang (libFuzzer's -timeout), errors are
//! fine; and no handler outlives its connection for long (the runtime's
//! live tasks return to what they were).
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::proto::{Codec, KeyValue, MessageHeader};
use ttrpc::r#async::{MethodHandler, Server, Service, TtrpcContext};
use ttrpc::Request;

/// How long the caller waits for a reply frame before it hangs up.
const IDLE: Duration = Duration::from_millis(5);
/// The longest a caller stays connected.
const CONNECTED: Duration = Duration::from_secs(3);
/// How long the runtime gets to finish what a connection left running.
const SETTLE: Duration = Duration::from_secs(5);

const MESSAGE_TYPE_REQUEST: u8 = 1;
const MESSAGE_TYPE_RESPONSE: u8 = 2;
const MESSAGE_TYPE_DATA: u8 = 3;
const FLAG_REMOTE_CLOSED: u8 = 1;
const FLAG_REMOTE_OPEN: u8 = 2;
const FLAG_NO_DATA: u8 = 4;

struct Daemon {
    services: Arc<HashMap<String, Service>>,
    /// (service, method), sorted.
    unary: Vec<(String, String)>,
    streams: Vec<(String, String)>,
    socket: PathBuf,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    daemons: Vec<Daemon>,
    /// Kept serving (a Mutex only for Sync).
    _servers: std::sync::Mutex<Vec<Server>>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        // The stores commit on tokio's blocking pool, whose threads are
        // made on first use and live on detached: made during an input,
        // they would look like leaks to LeakSanitizer. So a few are made
        // here, before any input, and kept.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(Duration::from_secs(1 << 40))
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let warm: Vec<_> = (0..8)
                .map(|_| {
                    let barrier = barrier.clone();
                    tokio::task::spawn_blocking(move || {
                        barrier.wait();
                    })
                })
                .collect();
            for task in warm {
                task.await.expect("the blocking pool");
            }
        });
        let root = dir.path();
        let absent = root.join("absent");
        let tables = runtime.block_on(async {
            vec![
                contentd(&root.join("content")),
                snapd(&root.join("snapshots"), &absent),
                metad(&root.join("meta"), &absent),
                taskd(&root.join("tasks"), &absent),
            ]
        });
        let mut daemons = Vec::new();
        let mut servers = Vec::new();
        for (n, services) in tables.into_iter().enumerate() {
            let mut unary = Vec::new();
            let mut streams = Vec::new();
            for (name, service) in &services {
                unary.extend(service.methods.keys().map(|m| (name.clone(), m.clone())));
                streams.extend(service.streams.keys().map(|m| (name.clone(), m.clone())));
            }
            unary.sort();
            streams.sort();
            // The picks of modes 0 and 2, for making seeds.
            if std::env::var_os("TTRPC_REQUESTS_TABLES").is_some() {
                for (kind, list) in [("unary", &unary), ("stream", &streams)] {
                    for (service, method) in list {
                        eprintln!("table {n} {kind} {service} {method}");
                    }
                }
            }
            let services = Arc::new(services);
            let socket = root.join(format!("daemon{n}.sock"));
            servers.push(runtime.block_on(serve(&socket, &services)));
            daemons.push(Daemon {
                services,
                unary,
                streams,
                socket,
            });
        }
        Fixture {
            runtime,
            daemons,
            _servers: std::sync::Mutex::new(servers),
            _dir: dir,
        }
    })
}

fn contentd(root: &Path) -> HashMap<String, Service> {
    let (store, _) = berth_contentd::store::LocalStore::open(root).expect("the content store");
    let store: Arc<dyn berth_content::ContentStore> = Arc::new(store);
    berth_contentd::service::ContentService::new(store).into_ttrpc()
}

fn snapd(root: &Path, contentd: &Path) -> HashMap<String, Service> {
    use berth_snapd::local::{Backend, LocalSnapshotter};
    std::fs::create_dir_all(root).expect("snapd's root");
    let records = berth_snapd::records::Records::open(&root.join("meta")).expect("snapd's records");
    let snapshotters = [Backend::Overlay, Backend::Native]
        .into_iter()
        .map(|backend| {
            LocalSnapshotter::open(root, backend, records.clone()).expect("a snapshotter")
        })
        .collect();
    // Never the host's privileges: nothing from an input is applied as
    // root (and Unpack cannot reach contentd anyway).
    let source = berth_snapd::unpack::ContentSource::Socket(contentd.to_path_buf());
    let unpacker = Arc::new(berth_snapd::unpack::Unpacker::new(
        source.clone(),
        Arc::new(berth_snapd::apply::Unprivileged),
        false,
    ));
    let differ = Arc::new(berth_snapd::diff::Differ::new(source));
    berth_snapd::service::SnapshotService::new(snapshotters, unpacker, differ).into_ttrpc()
}

fn metad(root: &Path, absent: &Path) -> HashMap<String, Service> {
    use berth_metad::gc::{Collector, CollectorConfig, ScheduleConfig, Scheduler, Sockets};
    std::fs::create_dir_all(root).expect("metad's root");
    let records = berth_metad::store::Records::open(&root.join("meta")).expect("metad's records");
    let exchange = berth_metad::events::Exchange::new();
    let peers = Arc::new(Sockets {
        contentd: absent.to_path_buf(),
        snapd: absent.to_path_buf(),
    });
    let collector = Collector::new(
        Arc::new(records.clone()),
        peers.clone(),
        CollectorConfig::default(),
    )
    .with_events(exchange.clone());
    let scheduler = Scheduler::new(ScheduleConfig::default(), collector);
    let store =
        berth_metad::store::MetaStore::new(records, scheduler.clone(), exchange.clone(), peers);
    let mut services = berth_metad::service::services(&store);
    services.extend(berth_metad::gc::ttrpc_service(scheduler));
    services.extend(berth_metad::events::ttrpc_services(exchange));
    services
}

fn taskd(state: &Path, absent: &Path) -> HashMap<String, Service> {
    use berth_taskd::events::{MetadSink, Relay};
    use berth_taskd::manager::{LocalTasks, ManagerConfig, TaskManager};
    let bundles = state.join("io.containerd.runtime.v2.task");
    std::fs::create_dir_all(&bundles).expect("taskd's bundles");
    let relay = Relay::start(Arc::new(MetadSink::new(absent)), &bundles);
    let manager = TaskManager::new(
        ManagerConfig {
            bundles,
            runtime_root: state.join("runc"),
            address: state.join("taskd.sock"),
            // No shim is ever found: nothing an input asks for runs.
            beside: Some(absent.to_path_buf()),
            publish_binary: absent.to_path_buf(),
            search_path: Some(absent.as_os_str().to_owned()),
            debug: false,
        },
        Arc::new(berth_taskd::peers::SocketPeers {
            metad: absent.to_path_buf(),
            snapd: absent.to_path_buf(),
        }),
        relay.clone(),
    );
    let mut services =
        berth_taskd::service::TasksService::new(Arc::new(LocalTasks(manager))).into_ttrpc();
    services.extend(berth_taskd::events::ttrpc_service(relay));
    services
}

/// A unary method of the shared table, for the server's copy of it.
struct Shared {
    services: Arc<HashMap<String, Service>>,
    service: String,
    method: String,
}

#[async_trait::async_trait]
impl MethodHandler for Shared {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<ttrpc::Response> {
        let method = self
            .services
            .get(&self.service)
            .and_then(|s| s.methods.get(&self.method))
            .ok_or_else(|| ttrpc::Error::Others("no such method".to_string()))?;
        method.handler(ctx, req).await
    }
}

/// Serves the daemon's table on `socket`, as `berth_daemon::serve` does.
async fn serve(socket: &Path, services: &Arc<HashMap<String, Service>>) -> Server {
    let table = services
        .iter()
        .map(|(name, service)| {
            let methods = service
                .methods
                .keys()
                .map(|m| {
                    let handler: Box<dyn MethodHandler + Send + Sync> = Box::new(Shared {
                        services: services.clone(),
                        service: name.clone(),
                        method: m.clone(),
                    });
                    (m.clone(), handler)
                })
                .collect();
            let streams = service.streams.clone();
            (name.clone(), Service { methods, streams })
        })
        .collect();
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("the daemon's socket");
    let policy = berth_daemon::PeerPolicy::new(None).expect("the peer policy");
    berth_daemon::start_server(listener, policy, table)
        .await
        .expect("the server")
}

/// The six bits above the mode.
#[derive(Clone, Copy)]
struct Flags(u8);

impl Flags {
    fn metadata(self) -> Vec<KeyValue> {
        let mut metadata = Vec::new();
        let namespace = match self.0 & 3 {
            0 => None,
            1 => Some("default"),
            2 => Some("fuzz"),
            _ => Some("../fuzz"),
        };
        if let Some(namespace) = namespace {
            metadata.push(KeyValue {
                key: berth_api::NAMESPACE_KEY.to_string(),
                value: namespace.to_string(),
                ..Default::default()
            });
        }
        if self.0 & 4 != 0 {
            metadata.push(KeyValue {
                key: berth_api::LEASE_KEY.to_string(),
                value: "fuzz-lease".to_string(),
                ..Default::default()
            });
        }
        metadata
    }

    fn timeout_nano(self) -> i64 {
        if self.0 & 8 != 0 {
            1_000_000_000
        } else {
            0
        }
    }

    /// Stream requests: the request carries no data (the client streams).
    fn no_data(self) -> bool {
        self.0 & 16 != 0
    }

    /// Stream requests: the last data frame closes the caller's side.
    fn close(self) -> bool {
        self.0 & 32 != 0
    }
}

fn request(service: &str, method: &str, payload: &[u8], flags: Flags) -> Request {
    Request {
        service: service.to_string(),
        method: method.to_string(),
        payload: payload.to_vec(),
        timeout_nano: flags.timeout_nano(),
        metadata: flags.metadata(),
        ..Default::default()
    }
}

/// Calls a unary method as ttrpc's server does (`handle_method`).
async fn call(daemon: &Daemon, req: Request) {
    let Some(method) = daemon
        .services
        .get(&req.service)
        .and_then(|s| s.methods.get(&req.method))
    else {
        return;
    };
    let ctx = TtrpcContext {
        mh: MessageHeader::new_request(1, req.payload.len() as u32),
        metadata: ttrpc::context::from_pb(&req.metadata),
        timeout_nano: req.timeout_nano,
        ..Default::default()
    };
    if req.timeout_nano == 0 {
        let _ = method.handler(ctx, req).await;
    } else {
        let limit = Duration::from_nanos(req.timeout_nano as u64);
        let _ = tokio::time::timeout(limit, method.handler(ctx, req)).await;
    }
}

fn frame(out: &mut Vec<u8>, stream_id: u32, kind: u8, flags: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(payload);
}

/// A stream request and its data frames, on stream 1.
fn stream_frames(req: &Request, data: &[&[u8]], flags: Flags) -> Vec<u8> {
    let mut out = Vec::new();
    let encoded = req.encode().unwrap_or_default();
    let header_flags = if flags.no_data() {
        FLAG_REMOTE_OPEN | FLAG_NO_DATA
    } else {
        0
    };
    frame(&mut out, 1, MESSAGE_TYPE_REQUEST, header_flags, &encoded);
    for (n, chunk) in data.iter().enumerate() {
        let last = n + 1 == data.len();
        let f = if last && flags.close() {
            FLAG_REMOTE_CLOSED
        } else {
            0
        };
        frame(&mut out, 1, MESSAGE_TYPE_DATA, f, chunk);
    }
    out
}

/// Connects to the daemon, writes `bytes`, reads replies until the stream
/// ends (for `ends_on_reply`), nothing comes for [`IDLE`], or
/// [`CONNECTED`] passed; then hangs up.
async fn converse(daemon: &Daemon, bytes: &[u8], ends_on_reply: bool) {
    let Ok(mut socket) = tokio::net::UnixStream::connect(&daemon.socket).await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + CONNECTED;
    let (mut reader, mut writer) = socket.split();
    let write = async {
        let _ = writer.write_all(bytes).await;
    };
    let read = async {
        let mut header = [0u8; 10];
        loop {
            let next = tokio::time::timeout(IDLE, reader.read_exact(&mut header)).await;
            let Ok(Ok(_)) = next else {
                return;
            };
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let (kind, flags) = (header[8], header[9]);
            let mut payload = vec![0u8; length.min(8 << 20) as usize];
            if reader.read_exact(&mut payload).await.is_err() {
                return;
            }
            let ends = kind == MESSAGE_TYPE_RESPONSE
                || (kind == MESSAGE_TYPE_DATA && flags & FLAG_REMOTE_CLOSED != 0);
            if ends_on_reply && ends {
                return;
            }
        }
    };
    // Replies may come before everything is written (the guard stops
    // reading from a caller that is too far ahead).
    let both = async {
        tokio::join!(write, async {
            // Let the first frames arrive before the idle clock starts.
            tokio::task::yield_now().await;
            read.await
        })
    };
    let _ = tokio::time::timeout_at(deadline, both).await;
    drop(socket);
}

/// Chunks of `u16` big-endian length and bytes; a short last chunk is
/// whatever is left.
fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let len = len.min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

async fn run(fixture: &Fixture, data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Some((&pick, rest)) = rest.split_first() else {
        return;
    };
    let flags = Flags(first >> 2);
    let daemons = &fixture.daemons;
    match first & 3 {
        0 => {
            let total: usize = daemons.iter().map(|d| d.unary.len()).sum();
            let mut index = pick as usize % total;
            for daemon in daemons {
                if index < daemon.unary.len() {
                    let (service, method) = &daemon.unary[index];
                    call(daemon, request(service, method, rest, flags)).await;
                    return;
                }
                index -= daemon.unary.len();
            }
        }
        1 => {
            let daemon = &daemons[pick as usize % daemons.len()];
            let Ok(req) = Request::decode(rest) else {
                return;
            };
            let is_stream = daemon
                .services
                .get(&req.service)
                .is_some_and(|s| s.streams.contains_key(&req.method));
            if is_stream {
                let bytes = stream_frames(&req, &[], flags);
                converse(daemon, &bytes, true).await;
            } else {
                call(daemon, req).await;
            }
        }
        2 => {
            let total: usize = daemons.iter().map(|d| d.streams.len()).sum();
            let mut index = pick as usize % total;
            for daemon in daemons {
                if index < daemon.streams.len() {
                    let (service, method) = &daemon.streams[index];
                    let parts = chunks(rest);
                    let (payload, data): (&[u8], &[&[u8]]) = match parts.split_first() {
                        Some((payload, data)) => (payload, data),
                        None => (&[], &[]),
                    };
                    let req = request(service, method, payload, flags);
                    let bytes = stream_frames(&req, data, flags);
                    converse(daemon, &bytes, true).await;
                    return;
                }
                index -= daemon.streams.len();
            }
        }
        _ => {
            let daemon = &daemons[pick as usize % daemons.len()];
            converse(daemon, rest, false).await;
        }
    }
}

/// Waits until the runtime runs no more tasks than `before`: whatever a
/// connection left (its reader and writer, handlers) must end once the
/// caller hung up.
async fn settle(fixture: &Fixture, before: usize) {
    let metrics = fixture.runtime.metrics();
    let start = tokio::time::Instant::now();
    // TTRPC_REQUESTS_ALLOW_LEAKS=1: only wait a little, to look for other
    // findings past a known leak.
    static ALLOW_LEAKS: OnceLock<bool> = OnceLock::new();
    let allow =
        *ALLOW_LEAKS.get_or_init(|| std::env::var_os("TTRPC_REQUESTS_ALLOW_LEAKS").is_some());
    while metrics.num_alive_tasks() > before {
        if allow && start.elapsed() > Duration::from_millis(50) {
            return;
        }
        if start.elapsed() > SETTLE {
            panic!(
                "{} tasks still running {SETTLE:?} after the caller hung up (before: {before})",
                metrics.num_alive_tasks()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let before = fixture.runtime.metrics().num_alive_tasks();
    fixture.runtime.block_on(async {
        run(fixture, data).await;
        settle(fixture, before).await;
    });
});
