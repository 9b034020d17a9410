#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Heavy and idle local callers (issue 15, load): many clients at once
//! against real daemons, then a thousand idle connections per daemon.
//!
//! - 64 clients (tokio tasks, each with its own connections, through
//!   berth-client's remote stores as the CLI uses them) loop for a fixed
//!   time (`BERTH_LOAD_SECONDS`, default 10), each choosing at random:
//!   ingest of a random blob (1 KiB to 4 MiB), content list and info,
//!   image list and get, pull of one of four small images from a local
//!   registry (a first pull does the work, a re-pull of an image the
//!   namespace holds does none), image removal (so that pulls do work
//!   again) and a garbage collection. Each client works in a namespace of
//!   its own, so nothing another client does may legitimately fail its
//!   call: every error is a real one, and there must be none. Reads check
//!   what they get against what the client knows it made.
//! - Each daemon's peak RSS (VmHWM) stays under a bound justified below
//!   from the workload; per-method count, p50, p99 and max latency are
//!   reported, never asserted.
//! - Then 1,000 idle connections to each daemon's socket (contentd,
//!   snapd, metad, taskd) are held open: a new client's requests to every
//!   daemon, and a pull, still succeed (latency reported), and the RSS
//!   they cost stays bounded. Once closed, the daemons serve, and give the
//!   descriptors back.
//!
//! `BERTH_LOAD_REPORT=FILE` writes the figures as a markdown table
//! (bench/load.sh runs the long version and prints it);
//! `BERTH_LOAD_CLIENTS` changes the number of clients.
//!
//! The second test is the smallest load that showed a defect the first
//! found: more concurrent callers than LMDB has reader slots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::labels::GC_ROOT;
use berth_client::{
    RemoteContentStore, RemoteGc, RemoteImages, RemoteLeases, RemoteNamespaces, RemoteSnapshotter,
    RemoteTransfer,
};
use berth_content::{set_label, write_blob, ContentStore, Labels};
use berth_e2e::images::{busybox_rootfs, files_rootfs, host_architecture, Layout};
use berth_e2e::registry::Registry;
use berth_e2e::rng::Rng;
use berth_e2e::stack::Stack;
use berth_e2e::{status_field_kib, BlockSource, Daemon};
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use berth_image::{BlobState, Progress, PullEvent, PullOptions, Puller, Unpacker};
use berth_metadata::{ImageStore, Namespace, NamespaceStore};
use berth_snapshot::Snapshotter;
use berth_tasks::Tasks;

/// Concurrent clients in the load.
const CLIENTS: usize = 64;
/// Idle connections held open to each daemon.
const IDLE: usize = 1000;
/// Images (tags) in the registry.
const TAGS: usize = 4;
/// Blobs a client keeps rooted (`containerd.io/gc.root`); older ones lose
/// the label and are garbage for the next collection, so disk use stays
/// bounded however long the load runs.
const KEEP: usize = 8;
/// Largest ingested blob.
const MAX_BLOB: usize = 4 << 20;
/// The snapshotter pulls unpack into.
const SNAPSHOTTER: &str = "overlayfs";

const MIB: u64 = 1024;

/// Peak RSS bounds (KiB), generous by design: a failure means memory that
/// grows with the work done, not a slightly bigger build.
///
/// - contentd: each of the 64 clients may have one ingest in flight, whose
///   writer keeps up to 8 writes of up to 1 MiB unacknowledged
///   (berth-client's WRITE_WINDOW, berth_content::MAX_READ): 512 MiB if the
///   daemon held every one of them at once, which it need not; fetches of
///   the pulls stream layers of at most a few MiB. Plus its idle size
///   (~10-20 MiB). 640 MiB.
/// - snapd: at most 64 unpacks at once (one per client), each streaming a
///   layer of a few MiB through a decompressor with bounded buffers;
///   64 × 4 MiB = 256 MiB plus its idle size. 320 MiB.
/// - metad: records only (images, leases, namespaces: a few hundred small
///   records), the collector's listing of at most 64 × (8 + images) blobs
///   and 64 × 2 snapshots; 64 clients' connections. 256 MiB.
/// - taskd: not loaded (only the idle connections). 128 MiB.
fn peak_bound_kib(daemon: &str) -> u64 {
    match daemon {
        "contentd" => 640 * MIB,
        "snapd" => 320 * MIB,
        "metad" => 256 * MIB,
        _ => 128 * MIB,
    }
}

/// What 1,000 idle connections may add to a daemon's RSS: 64 MiB, i.e.
/// 64 KiB a connection, an order of magnitude above what a ttrpc
/// connection's tasks and buffers need (a few KiB each).
const IDLE_RSS_BOUND_KIB: u64 = 64 * MIB;

/// `BERTH_LOAD_CLIENTS` (default [`CLIENTS`]): fewer clients, to tell
/// errors of concurrency from others.
fn load_clients() -> usize {
    std::env::var("BERTH_LOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CLIENTS)
}

fn load_seconds() -> u64 {
    std::env::var("BERTH_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// The operations, as the report names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Ingest,
    ContentInfo,
    ContentList,
    /// Taking the root label off a blob the client no longer keeps.
    ContentUnroot,
    ImageList,
    ImageGet,
    /// A pull of an image the namespace does not hold: fetch and unpack.
    Pull,
    /// A pull of an image the namespace holds: no blob is fetched.
    Repull,
    ImageRemove,
    Gc,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Ingest => "content ingest",
            Method::ContentInfo => "content info",
            Method::ContentList => "content list",
            Method::ContentUnroot => "content update (unroot)",
            Method::ImageList => "image list",
            Method::ImageGet => "image get",
            Method::Pull => "pull",
            Method::Repull => "pull (again, no-op)",
            Method::ImageRemove => "image remove",
            Method::Gc => "gc",
        }
    }
}

/// Each method's latencies and errors.
#[derive(Debug, Default)]
struct Record {
    latencies: BTreeMap<Method, Vec<Duration>>,
    errors: BTreeMap<Method, Vec<String>>,
}

impl Record {
    fn add(&mut self, method: Method, took: Duration, outcome: Result<(), String>) {
        self.latencies.entry(method).or_default().push(took);
        if let Err(e) = outcome {
            self.errors.entry(method).or_default().push(e);
        }
    }

    fn merge(&mut self, other: Record) {
        for (m, l) in other.latencies {
            self.latencies.entry(m).or_default().extend(l);
        }
        for (m, e) in other.errors {
            self.errors.entry(m).or_default().extend(e);
        }
    }

    fn error_count(&self) -> usize {
        self.errors.values().map(Vec::len).sum()
    }
}

/// The sockets, and what the registry serves.
struct World {
    contentd: PathBuf,
    snapd: PathBuf,
    metad: PathBuf,
    /// (reference, manifest digest) per tag.
    images: Vec<(String, Digest)>,
    /// Random bytes that ingested blobs are cut from (each stamped to be
    /// unique).
    base: Vec<u8>,
    /// Unique ids for stamping blobs.
    next_blob: AtomicU64,
}

/// A client's connections: its own, as a process using berth-client
/// holds them.
struct Clients {
    content: RemoteContentStore,
    transfer: RemoteTransfer,
    images: RemoteImages,
    leases: RemoteLeases,
    snapshots: RemoteSnapshotter,
    gc: RemoteGc,
}

impl Clients {
    async fn connect(world: &World) -> Clients {
        Clients {
            content: RemoteContentStore::connect(&world.contentd).await.unwrap(),
            transfer: RemoteTransfer::connect(&world.contentd).await.unwrap(),
            images: RemoteImages::connect(&world.metad).await.unwrap(),
            leases: RemoteLeases::connect(&world.metad).await.unwrap(),
            snapshots: RemoteSnapshotter::connect(&world.snapd, SNAPSHOTTER)
                .await
                .unwrap(),
            gc: RemoteGc::connect(&world.metad).await.unwrap(),
        }
    }

    fn puller(&self) -> Puller<'_> {
        Puller {
            content: &self.content,
            transfer: &self.transfer,
            images: &self.images,
            leases: &self.leases,
            unpacker: Some(&self.snapshots as &dyn Unpacker),
        }
    }
}

fn fetch_options(reference: &str) -> PullOptions {
    PullOptions {
        request: berth_api::transfer::FetchRequest {
            reference: reference.to_string(),
            plain_http: true,
            ..Default::default()
        },
        unpack_platform: None,
        sync_fs: false,
    }
}

/// Pulls `reference` into `namespace`; checks the root is `want`, and
/// with `no_op` that no blob was fetched.
async fn pull(
    clients: &Clients,
    namespace: &str,
    reference: &str,
    want: &Digest,
    no_op: bool,
) -> Result<(), String> {
    let mut fetched = Vec::new();
    let pulled = clients
        .puller()
        .pull(namespace, &fetch_options(reference), &mut |event| {
            if let PullEvent::Transfer(progress) = &event {
                if let Progress::Blob {
                    descriptor,
                    state: BlobState::Done,
                    ..
                } = &**progress
                {
                    fetched.push(descriptor.digest.to_string());
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    if pulled.root.digest != *want {
        return Err(format!("pulled {} for {want}", pulled.root.digest));
    }
    if pulled.unpacked.is_none() {
        return Err("not unpacked".into());
    }
    if no_op && !fetched.is_empty() {
        return Err(format!("a re-pull fetched {fetched:?}"));
    }
    Ok(())
}

/// A blob of a random size (log-uniform, 1 KiB to 4 MiB), unique.
fn random_blob(world: &World, rng: &mut Rng) -> Vec<u8> {
    let octave = 1024usize << rng.below(12);
    let size = (octave + rng.below(octave as u64) as usize).min(MAX_BLOB);
    let mut data = world.base[..size].to_vec();
    let id = world.next_blob.fetch_add(1, Ordering::Relaxed);
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        let stamp = [id.to_le_bytes(), (i as u64).to_le_bytes()].concat();
        let n = chunk.len().min(stamp.len());
        chunk[..n].copy_from_slice(&stamp[..n]);
    }
    data
}

/// One client: its own namespace and connections; random operations
/// until `deadline`.
async fn client(world: Arc<World>, index: usize, seed: u64, deadline: Instant) -> Record {
    let namespace = format!("load-{index:02}");
    let ns = namespace.as_str();
    // metad must know the namespace for its blobs to be collected.
    let namespaces = RemoteNamespaces::connect(&world.metad).await.unwrap();
    match namespaces
        .create(Namespace {
            name: namespace.clone(),
            labels: Labels::new(),
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => panic!("creating namespace {namespace}: {e}"),
    }
    drop(namespaces);
    let clients = Clients::connect(&world).await;
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut record = Record::default();
    // Blobs this client keeps rooted, oldest first, with their sizes.
    let mut rooted: VecDeque<(Digest, u64)> = VecDeque::new();
    // Tags whose image this namespace holds.
    let mut held: BTreeSet<usize> = BTreeSet::new();
    let mut ingests = 0u64;
    while Instant::now() < deadline {
        let roll = rng.below(100);
        let (method, started, outcome) = match roll {
            0..=24 => {
                let data = random_blob(&world, &mut rng);
                let digest = Digest::of(&data);
                let reference = format!("load-{index}-{ingests}");
                ingests += 1;
                let labels: Labels = [(GC_ROOT.to_string(), "load".to_string())].into();
                let started = Instant::now();
                let outcome = write_blob(
                    &clients.content,
                    ns,
                    &reference,
                    &data,
                    Some(digest.clone()),
                    labels,
                )
                .await
                .map_err(|e| e.to_string())
                .and_then(|got| {
                    if got == digest {
                        Ok(())
                    } else {
                        Err(format!("committed {got}, wrote {digest}"))
                    }
                });
                if outcome.is_ok() {
                    rooted.push_back((digest, data.len() as u64));
                }
                (Method::Ingest, started, outcome)
            }
            25..=42 if !rooted.is_empty() => {
                let (digest, size) = rooted[rng.below(rooted.len() as u64) as usize].clone();
                let started = Instant::now();
                let outcome = match clients.content.info(ns, &digest).await {
                    Ok(info) if info.size == size => Ok(()),
                    Ok(info) => Err(format!("{digest}: size {} for {size}", info.size)),
                    Err(e) => Err(format!("{digest}: {e}")),
                };
                (Method::ContentInfo, started, outcome)
            }
            25..=54 => {
                let started = Instant::now();
                let outcome = match clients.content.list(ns, &[]).await {
                    Ok(infos) => {
                        let listed: BTreeSet<&Digest> = infos.iter().map(|i| &i.digest).collect();
                        match rooted.iter().find(|(d, _)| !listed.contains(d)) {
                            None => Ok(()),
                            Some((d, _)) => Err(format!("rooted blob {d} not listed")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                (Method::ContentList, started, outcome)
            }
            55..=64 => {
                let started = Instant::now();
                let outcome = match clients.images.list(ns, &[]).await {
                    Ok(images) => {
                        let listed: BTreeSet<&str> =
                            images.iter().map(|i| i.name.as_str()).collect();
                        let want: BTreeSet<&str> =
                            held.iter().map(|t| world.images[*t].0.as_str()).collect();
                        if listed == want {
                            Ok(())
                        } else {
                            Err(format!("listed {listed:?}, holds {want:?}"))
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                (Method::ImageList, started, outcome)
            }
            65..=74 if !held.is_empty() => {
                let tag = *held
                    .iter()
                    .nth(rng.below(held.len() as u64) as usize)
                    .unwrap();
                let (reference, digest) = &world.images[tag];
                let started = Instant::now();
                let outcome = match clients.images.get(ns, reference).await {
                    Ok(image) if image.target.digest == *digest => Ok(()),
                    Ok(image) => Err(format!("{reference}: target {}", image.target.digest)),
                    Err(e) => Err(format!("{reference}: {e}")),
                };
                (Method::ImageGet, started, outcome)
            }
            65..=89 => {
                let tag = rng.below(TAGS as u64) as usize;
                let (reference, digest) = &world.images[tag];
                let again = held.contains(&tag);
                let started = Instant::now();
                let outcome = pull(&clients, ns, reference, digest, again).await;
                if outcome.is_ok() {
                    held.insert(tag);
                }
                let method = if again { Method::Repull } else { Method::Pull };
                (method, started, outcome)
            }
            90..=96 if !held.is_empty() => {
                let tag = *held
                    .iter()
                    .nth(rng.below(held.len() as u64) as usize)
                    .unwrap();
                let reference = &world.images[tag].0;
                let started = Instant::now();
                let outcome = clients
                    .images
                    .delete(ns, reference, false)
                    .await
                    .map_err(|e| format!("{reference}: {e}"));
                held.remove(&tag);
                (Method::ImageRemove, started, outcome)
            }
            90..=96 => continue,
            _ => {
                let started = Instant::now();
                let outcome = match clients.gc.collect().await {
                    Ok(r) if r.skipped.is_empty() => Ok(()),
                    Ok(r) => Err(format!("skipped {:?}", r.skipped)),
                    Err(e) => Err(e.to_string()),
                };
                (Method::Gc, started, outcome)
            }
        };
        record.add(method, started.elapsed(), outcome);
        // Blobs beyond the newest KEEP lose their root: the next
        // collection takes them.
        while rooted.len() > KEEP {
            let (digest, _) = rooted.pop_front().unwrap();
            let started = Instant::now();
            let outcome = set_label(&clients.content, ns, &digest, GC_ROOT, None)
                .await
                .map_err(|e| format!("{digest}: {e}"));
            record.add(Method::ContentUnroot, started.elapsed(), outcome);
        }
    }
    // Every ingest committed: none is left in progress.
    match clients.content.list_statuses(ns, &[]).await {
        Ok(statuses) if statuses.is_empty() => {}
        Ok(statuses) => record
            .errors
            .entry(Method::Ingest)
            .or_default()
            .push(format!(
                "ingests left in progress: {:?}",
                statuses.iter().map(|s| &s.reference).collect::<Vec<_>>()
            )),
        Err(e) => record
            .errors
            .entry(Method::Ingest)
            .or_default()
            .push(format!("listing ingests: {e}")),
    }
    record
}

/// Four images sharing a busybox layer, each with a small layer of its
/// own (64 KiB to 512 KiB), pushed to `registry`.
fn push_images(dir: &Path, registry: &Registry) -> Vec<(String, Digest)> {
    let mut layout = Layout::new(&dir.join("layout"));
    let base = layout.add_layer(&busybox_rootfs(
        &dir.join("rootfs-base"),
        &[("etc/motd", b"load\n")],
    ));
    let mut images = Vec::new();
    for tag in 0..TAGS {
        let own = layout.add_layer(&files_rootfs(
            &dir.join(format!("rootfs-{tag}")),
            &[(
                "data/own",
                BlockSource::new((64 << 10) << tag).block(tag as u64),
            )],
        ));
        let manifest = layout.add_image(&[base.clone(), own], host_architecture(), false);
        let name = format!("t{tag}");
        layout.tag(&name, &manifest);
        let reference = format!("{}/load/image:{name}", registry.host);
        layout.push(&name, &reference, None, false);
        images.push((reference, manifest.digest));
    }
    images
}

/// p-th percentile (nearest rank) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The number of threads of `pid`.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(daemon: &Daemon) -> u64 {
    status_field_kib(daemon.pid(), "VmRSS:")
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to
/// the hard limit, raising that too if we may).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= want {
        return;
    }
    let hard = hard.max(want);
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_err() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= want,
        "RLIMIT_NOFILE is {soft}; {want} descriptors are needed"
    );
}

/// One request to a daemon from a client that connects for it.
async fn fresh_request(stack: &Stack, daemon: &str) -> Result<(), String> {
    let e = |e: berth_errdefs::Error| format!("{daemon}: {e}");
    match daemon {
        "contentd" => RemoteContentStore::connect(&stack.contentd.socket)
            .await
            .map_err(e)?
            .list("load-00", &[])
            .await
            .map(|_| ())
            .map_err(e),
        "snapd" => RemoteSnapshotter::connect(&stack.snapd.socket, SNAPSHOTTER)
            .await
            .map_err(e)?
            .list("load-00", &[])
            .await
            .map(|_| ())
            .map_err(e),
        "metad" => RemoteImages::connect(&stack.metad.socket)
            .await
            .map_err(e)?
            .list("load-00", &[])
            .await
            .map(|_| ())
            .map_err(e),
        _ => berth_client::RemoteTasks::connect(&stack.taskd.socket)
            .await
            .map_err(e)?
            .list("default", &[])
            .await
            .map(|_| ())
            .map_err(e),
    }
}

/// A daemon's figures with idle connections.
#[derive(Debug, Default)]
struct IdleFigures {
    rss_before: u64,
    rss_with: u64,
    fds_before: usize,
    fds_with: usize,
    fds_after: usize,
    threads_with: u64,
    /// connect + one request, while the idle connections are open.
    latencies: Vec<Duration>,
}

/// Requests per daemon from new clients while the idle connections are
/// held.
const IDLE_PROBES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_then_many_idle_connections() {
    if !berth_e2e::pull_prerequisites() {
        return;
    }
    let seconds = load_seconds();
    let clients = load_clients();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("load: {clients} clients for {seconds} s, seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let images = push_images(dir.path(), &registry);
    let stack = Stack::start(&dir.path().join("stack"));
    let daemons: [(&str, &Daemon); 4] = [
        ("contentd", &stack.contentd),
        ("snapd", &stack.snapd),
        ("metad", &stack.metad),
        ("taskd", &stack.taskd),
    ];
    let world = Arc::new(World {
        contentd: stack.contentd.socket.clone(),
        snapd: stack.snapd.socket.clone(),
        metad: stack.metad.socket.clone(),
        images,
        base: berth_content::testsuite::test_data(MAX_BLOB, seed),
        next_blob: AtomicU64::new(0),
    });

    // Each daemon's largest thread count, sampled while the load runs.
    let pids: Vec<u32> = daemons.iter().map(|(_, d)| d.pid()).collect();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let pids = pids.clone();
        std::thread::spawn(move || {
            let mut most = vec![0u64; pids.len()];
            while sampling.load(Ordering::Relaxed) {
                for (m, pid) in most.iter_mut().zip(&pids) {
                    *m = (*m).max(threads(*pid));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };

    // The load.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(world.clone(), i, seed, deadline)))
        .collect();
    let mut record = Record::default();
    for task in tasks {
        record.merge(task.await.expect("a client panicked"));
    }
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let most_threads = sampler.join().unwrap();
    let peaks: Vec<(&str, u64)> = daemons
        .iter()
        .map(|(name, d)| (*name, d.peak_rss_kib()))
        .collect();
    let fds_after_load: Vec<usize> = daemons.iter().map(|(_, d)| fd_count(d.pid())).collect();
    let total: usize = record.latencies.values().map(Vec::len).sum();
    eprintln!(
        "load: {total} operations in {:.1} s, {} errors",
        elapsed.as_secs_f64(),
        record.error_count()
    );

    // The idle connections: opened and held, a thousand per daemon.
    raise_nofile((daemons.len() * IDLE + 1024) as u64);
    let mut idle: Vec<IdleFigures> = Vec::new();
    let mut held = Vec::new();
    // The load's blocking threads go (2 s idle) and the daemons trim
    // what they freed: the RSS before is the daemons' at rest.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, daemon) in daemons {
        let mut figures = IdleFigures {
            rss_before: rss_kib(daemon),
            fds_before: fd_count(daemon.pid()),
            ..Default::default()
        };
        for i in 0..IDLE {
            let stream = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::net::UnixStream::connect(&daemon.socket),
            )
            .await
            .unwrap_or_else(|_| panic!("{name}: idle connection {i} hangs in connect"))
            .unwrap_or_else(|e| panic!("{name}: idle connection {i}: {e}"));
            held.push(stream);
        }
        // Until the daemon has accepted them (or stopped taking more).
        let mut last = 0;
        let mut stable = 0;
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_secs(30) {
            let fds = fd_count(daemon.pid());
            stable = if fds == last { stable + 1 } else { 0 };
            if stable >= 20 {
                break;
            }
            last = fds;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        figures.fds_with = fd_count(daemon.pid());
        idle.push(figures);
    }
    // Service with all of them open.
    let mut idle_errors = Vec::new();
    for ((name, daemon), figures) in daemons.iter().zip(idle.iter_mut()) {
        for _ in 0..IDLE_PROBES {
            let t = Instant::now();
            let outcome =
                tokio::time::timeout(Duration::from_secs(60), fresh_request(&stack, name)).await;
            figures.latencies.push(t.elapsed());
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => idle_errors.push(e),
                Err(_) => idle_errors.push(format!("{name}: no answer in 60 s")),
            }
        }
        figures.rss_with = rss_kib(daemon);
        figures.threads_with = threads(daemon.pid());
    }
    // A pull too, through new connections to every daemon.
    let pull_started = Instant::now();
    let pull_outcome = {
        let clients = Clients::connect(&world).await;
        let (reference, digest) = &world.images[0];
        pull(&clients, "idle-check", reference, digest, false).await
    };
    let idle_pull = pull_started.elapsed();
    if let Err(e) = pull_outcome {
        idle_errors.push(format!("pull: {e}"));
    }
    drop(held);

    // Closed again: the daemons serve and give the descriptors back.
    let mut after_errors = Vec::new();
    for ((name, daemon), figures) in daemons.iter().zip(idle.iter_mut()) {
        if let Err(e) = fresh_request(&stack, name).await {
            after_errors.push(e);
        }
        let wait = Instant::now();
        loop {
            figures.fds_after = fd_count(daemon.pid());
            if figures.fds_after <= figures.fds_before + 8
                || wait.elapsed() > Duration::from_secs(30)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let peaks_end: Vec<u64> = daemons.iter().map(|(_, d)| d.peak_rss_kib()).collect();

    // The report.
    let mut table = String::new();
    table.push_str(&format!(
        "{clients} clients for {:.1} s ({total} operations, {:.0}/s), seed {seed}\n\n",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    ));
    table.push_str(
        "| method | count | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    for (method, latencies) in &mut record.latencies {
        latencies.sort();
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            method.name(),
            latencies.len(),
            record.errors.get(method).map_or(0, Vec::len),
            ms(percentile(latencies, 50.0)),
            ms(percentile(latencies, 99.0)),
            ms(*latencies.last().unwrap()),
        ));
    }
    table.push_str(&format!(
        "\n| daemon | peak RSS after load MiB | bound MiB | most threads in load | fds after load | RSS before idle MiB | RSS with {IDLE} idle MiB | KiB per idle conn | threads with idle | fds before / with / after idle | new client p50 / max ms | peak RSS at end MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    for (i, ((name, peak), figures)) in peaks.iter().zip(idle.iter_mut()).enumerate() {
        figures.latencies.sort();
        let per_conn = figures.rss_with.saturating_sub(figures.rss_before) as f64 / IDLE as f64;
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {per_conn:.1} | {} | {} / {} / {} | {} / {} | {} |\n",
            mib(*peak),
            mib(peak_bound_kib(name)),
            most_threads[i],
            fds_after_load[i],
            mib(figures.rss_before),
            mib(figures.rss_with),
            figures.threads_with,
            figures.fds_before,
            figures.fds_with,
            figures.fds_after,
            ms(percentile(&figures.latencies, 50.0)),
            ms(*figures.latencies.last().unwrap()),
            mib(peaks_end[i]),
        ));
    }
    table.push_str(&format!(
        "\npull ({}) with {IDLE} idle connections on each daemon: {} ms\n",
        world.images[0].0,
        ms(idle_pull)
    ));
    let mut errors: Vec<String> = Vec::new();
    for (method, list) in &record.errors {
        for e in list.iter().take(5) {
            errors.push(format!("{}: {e}", method.name()));
        }
    }
    for e in &idle_errors {
        errors.push(format!("idle: {e}"));
    }
    for e in &after_errors {
        errors.push(format!("after idle: {e}"));
    }
    if !errors.is_empty() {
        table.push_str("\nerrors (first 5 per method):\n");
        for e in &errors {
            table.push_str(&format!("- {e}\n"));
        }
    }
    eprintln!("{table}");
    if let Ok(path) = std::env::var("BERTH_LOAD_REPORT") {
        std::fs::write(path, &table).unwrap();
    }

    // The assertions.
    assert_eq!(record.error_count(), 0, "errors under load:\n{table}");
    for (name, peak) in &peaks {
        assert!(
            *peak <= peak_bound_kib(name),
            "{name}'s peak RSS {} MiB is over its bound {} MiB:\n{table}",
            mib(*peak),
            mib(peak_bound_kib(name))
        );
    }
    assert!(
        idle_errors.is_empty(),
        "requests failed with {IDLE} idle connections open:\n{table}"
    );
    assert!(
        after_errors.is_empty(),
        "requests failed after the idle connections closed:\n{table}"
    );
    for ((name, _), figures) in daemons.iter().zip(&idle) {
        assert!(
            figures.rss_with.saturating_sub(figures.rss_before) <= IDLE_RSS_BOUND_KIB,
            "{IDLE} idle connections cost {name} more than {} MiB:\n{table}",
            mib(IDLE_RSS_BOUND_KIB)
        );
        assert!(
            figures.fds_after <= figures.fds_before + 8,
            "{name} kept descriptors of closed connections:\n{table}"
        );
    }
    for ((name, _), peak) in daemons.iter().zip(&peaks_end) {
        assert!(
            *peak <= peak_bound_kib(name),
            "{name}'s peak RSS {} MiB is over its bound:\n{table}",
            mib(*peak)
        );
    }
    // Every daemon is still alive.
    for (name, daemon) in daemons {
        assert!(berth_e2e::alive(daemon.pid()), "{name} died:\n{table}");
    }
}

/// The smallest load that shows a daemon running out of LMDB reader
/// slots (found by the test above): 200 clients of contentd, each with its
/// own connection, ingesting 4 KiB blobs and reading their records back
/// for 3 s. Every LMDB read in the daemons runs on tokio's blocking pool
/// (up to 512 threads), in a read transaction whose reader slot belongs to
/// the thread (heed's default, `WithTls`) until the thread exits; LMDB has
/// 126 slots unless told otherwise (berth_daemon::lmdb::open_env does not).
/// Writers queue on LMDB's write lock, the pool grows past 126 threads,
/// and the next thread's read fails with MDB_READERS_FULL (Internal).
/// Needs neither root nor a registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contentd_serves_more_concurrent_callers_than_lmdb_has_reader_slots() {
    const CALLERS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let pid = contentd.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while sampling.load(Ordering::Relaxed) {
                most = threads(pid).max(most);
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let socket = contentd.socket.clone();
            tokio::spawn(async move {
                let store = RemoteContentStore::connect(&socket).await.unwrap();
                let mut errors = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let data = [caller.to_le_bytes(), n.to_le_bytes()].concat().repeat(256);
                    let reference = format!("r-{caller}-{n}");
                    n += 1;
                    match write_blob(&store, "default", &reference, &data, None, Labels::new())
                        .await
                    {
                        Ok(digest) => {
                            if let Err(e) = store.info("default", &digest).await {
                                errors.push(format!("info: {e}"));
                            }
                        }
                        Err(e) => errors.push(format!("ingest: {e}")),
                    }
                }
                (n, errors)
            })
        })
        .collect();
    let mut ingests = 0;
    let mut errors = Vec::new();
    for task in tasks {
        let (n, e) = task.await.unwrap();
        ingests += n;
        errors.extend(e);
    }
    sampling.store(false, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    eprintln!(
        "{CALLERS} callers: {ingests} ingests, {} errors; contentd had up to {most} threads",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} of {ingests} ingests failed with contentd at up to {most} threads, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
}
