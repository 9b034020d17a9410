#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Each daemon's Prometheus endpoint (`--metrics-address`), scraped over
//! HTTP as Prometheus would: contentd on TCP, the others on unix sockets.
//! The figures must move with the work done: an import shows up as
//! ingested bytes, stored blobs, an unpacked layer, committed snapshots and
//! an image record; a running container as a running task with
//! containerd-named cgroup figures; a refused request under its status
//! code; a collection as a GC run.

use std::io::{Read, Write};
use std::path::Path;

use berth_e2e::images::{run_image_archive, RUN_IMAGE};
use berth_e2e::registry::free_port;
use berth_e2e::stack::Stack;
use berth_e2e::{require, Daemon};

/// Where a daemon serves its metrics.
enum Endpoint {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl Endpoint {
    fn flag(&self) -> String {
        match self {
            Endpoint::Tcp(address) => address.clone(),
            Endpoint::Unix(path) => path.display().to_string(),
        }
    }

    /// One HTTP/1.1 request; returns (status line, headers, body).
    fn request(&self, method: &str, path: &str) -> (String, String, String) {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
        let mut reply = String::new();
        match self {
            Endpoint::Tcp(address) => {
                let mut stream = std::net::TcpStream::connect(address).expect("connecting");
                stream.write_all(request.as_bytes()).unwrap();
                stream.read_to_string(&mut reply).unwrap();
            }
            Endpoint::Unix(path) => {
                let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connecting");
                stream.write_all(request.as_bytes()).unwrap();
                stream.read_to_string(&mut reply).unwrap();
            }
        }
        let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_string(), headers.to_lowercase(), body.to_string())
    }

    fn scrape(&self) -> Scrape {
        let (status, headers, body) = self.request("GET", "/metrics");
        assert!(status.contains(" 200 "), "{status}\n{body}");
        assert!(
            headers.contains("content-type: application/openmetrics-text"),
            "{headers}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        Scrape(body)
    }
}

struct Scrape(String);

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; the
    /// sum when several match.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some(parts) => parts,
                None => continue,
            };
            let (sample_name, sample_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if sample_name != name {
                continue;
            }
            let has = |(k, v): &(&str, &str)| {
                sample_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            if labels.iter().all(has) {
                let value: f64 = value.parse().unwrap();
                found = Some(found.unwrap_or(0.0) + value);
            }
        }
        found
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.0))
    }
}

struct Scraped {
    contentd: Endpoint,
    snapd: Endpoint,
    metad: Endpoint,
    taskd: Endpoint,
}

/// The four daemons wired as [`Stack::start`] wires them, each serving
/// metrics: contentd on 127.0.0.1, the others on sockets in their dirs.
fn stack_with_metrics(dir: &Path) -> (Stack, Scraped) {
    let endpoints = Scraped {
        contentd: Endpoint::Tcp(format!("127.0.0.1:{}", free_port())),
        snapd: Endpoint::Unix(dir.join("snapd/run/metrics.sock")),
        metad: Endpoint::Unix(dir.join("metad/run/metrics.sock")),
        taskd: Endpoint::Unix(dir.join("taskd/run/metrics.sock")),
    };
    let flag = |e: &Endpoint| e.flag();
    let contentd = Daemon::start_with_args(
        "berth-contentd",
        &dir.join("contentd"),
        &["--metrics-address", &flag(&endpoints.contentd)],
    );
    let contentd_socket = contentd.socket.display().to_string();
    let snapd = Daemon::start_with_args(
        "berth-snapd",
        &dir.join("snapd"),
        &[
            "--contentd",
            &contentd_socket,
            "--metrics-address",
            &flag(&endpoints.snapd),
        ],
    );
    let snapd_socket = snapd.socket.display().to_string();
    let metad = Daemon::start_with_args(
        "berth-metad",
        &dir.join("metad"),
        &[
            "--contentd",
            &contentd_socket,
            "--snapd",
            &snapd_socket,
            "--gc-startup-delay",
            "0",
            "--metrics-address",
            &flag(&endpoints.metad),
        ],
    );
    let metad_socket = metad.socket.display().to_string();
    let taskd = Daemon::start_with_args(
        "berth-taskd",
        &dir.join("taskd"),
        &[
            "--metad",
            &metad_socket,
            "--snapd",
            &snapd_socket,
            "--metrics-address",
            &flag(&endpoints.taskd),
        ],
    );
    let stack = Stack {
        dir: dir.to_path_buf(),
        contentd,
        snapd,
        metad,
        taskd,
    };
    (stack, endpoints)
}

#[test]
fn every_daemons_metrics_move_with_the_work_done() {
    if !require(
        berth_e2e::run_prerequisites(),
        "root, runc and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-metrics-")
        .tempdir_in("/tmp")
        .unwrap();
    let archive = run_image_archive(dir.path());
    let (stack, at) = stack_with_metrics(&dir.path().join("stack"));

    // Before any work: every endpoint answers with the base families and
    // empty stores.
    for (name, endpoint) in [
        ("contentd", &at.contentd),
        ("snapd", &at.snapd),
        ("metad", &at.metad),
        ("taskd", &at.taskd),
    ] {
        let scrape = endpoint.scrape();
        assert_eq!(scrape.value("berth_build_info", &[("daemon", name)]), 1.0);
        assert!(scrape.value("process_resident_memory_bytes", &[]) > 0.0);
        assert!(scrape.value("process_open_fds", &[]) > 0.0);
    }
    let before = at.contentd.scrape();
    assert_eq!(before.value("berth_content_stored_blobs", &[]), 0.0);
    assert_eq!(before.value("berth_content_ingested_bytes_total", &[]), 0.0);
    assert_eq!(before.sum("berth_snapshots", &[]), None);
    assert_eq!(
        at.snapd.scrape().value("berth_unpack_layers_total", &[]),
        0.0
    );

    // An import: blobs in, a layer unpacked, an image recorded.
    let (ok, _, err) = stack.berth(&["import", archive.to_str().unwrap()]);
    assert!(ok, "import: {err}");
    let content = at.contentd.scrape();
    let archive_bytes = std::fs::metadata(&archive).unwrap().len() as f64;
    let stored = content.value("berth_content_stored_bytes", &[]);
    assert!(content.value("berth_content_stored_blobs", &[]) >= 3.0);
    assert!(
        stored > 0.0 && stored <= archive_bytes,
        "{stored} stored from a {archive_bytes}-byte archive"
    );
    assert!(content.value("berth_content_ingested_bytes_total", &[]) >= stored);
    assert!(content.value("berth_content_committed_blobs_total", &[]) >= 3.0);
    assert_eq!(
        content.value("berth_content_passed_file_bytes_total", &[]),
        0.0
    );

    // A file on standard input is passed to contentd, which reads it.
    let passed = dir.path().join("passed.blob");
    std::fs::write(&passed, vec![b'p'; 3 << 20]).unwrap();
    let out = stack
        .command(&["content", "ingest", "passed-file"])
        .stdin(std::fs::File::open(&passed).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = at.contentd.scrape();
    assert_eq!(
        after.value("berth_content_passed_file_bytes_total", &[]),
        f64::from(3 << 20),
        "contentd read the file itself"
    );
    assert_eq!(
        after.value("berth_content_ingested_bytes_total", &[])
            - content.value("berth_content_ingested_bytes_total", &[]),
        f64::from(3 << 20)
    );
    assert_eq!(
        content.value("berth_content_blob_bytes", &[("namespace", "default")]),
        stored
    );
    assert!(
        content.value(
            "berth_ttrpc_requests_total",
            &[("method", "Write"), ("code", "OK")]
        ) >= 1.0,
        "{}",
        content.0
    );
    assert!(
        content.value(
            "berth_ttrpc_request_duration_seconds_count",
            &[("method", "Write")]
        ) >= 1.0
    );
    let snapshots = at.snapd.scrape();
    assert_eq!(snapshots.value("berth_unpack_layers_total", &[]), 1.0);
    assert!(snapshots.value("berth_unpack_layer_bytes_total", &[]) > 0.0);
    assert_eq!(
        snapshots.value("berth_unpack_layer_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        snapshots.value(
            "berth_snapshots",
            &[("snapshotter", "overlayfs"), ("kind", "committed")]
        ),
        1.0
    );
    let meta = at.metad.scrape();
    assert_eq!(
        meta.value(
            "berth_metadata_records",
            &[("kind", "image"), ("namespace", "default")]
        ),
        1.0
    );
    assert!(meta.value("berth_namespaces", &[]) >= 1.0);

    // A refused request is counted under its code.
    let (ok, _, _) = stack.berth(&["images", "rm", "berth.test/no-such:image"]);
    assert!(!ok);
    assert!(
        at.metad
            .scrape()
            .value("berth_ttrpc_requests_total", &[("code", "NOT_FOUND")])
            >= 1.0
    );

    // A running container: a running task with its cgroup's figures under
    // containerd's names.
    let (ok, _, err) = stack.berth(&["run", "-d", "--name", "metered", RUN_IMAGE, "sleep", "100"]);
    assert!(ok, "{err}");
    let tasks = at.taskd.scrape();
    let metered = [("container_id", "metered"), ("namespace", "default")];
    assert_eq!(
        tasks.value(
            "berth_tasks",
            &[("namespace", "default"), ("status", "running")]
        ),
        1.0
    );
    assert!(tasks.value("container_pids_current", &metered) >= 1.0);
    let cpu = tasks
        .sum("container_cpu_total_nanoseconds", &metered)
        .or_else(|| tasks.sum("container_cpu_usage_usec_microseconds", &metered));
    assert!(cpu.is_some_and(|v| v > 0.0), "no cpu figure:\n{}", tasks.0);
    let memory = tasks
        .sum("container_memory_usage_usage_bytes", &metered)
        .or_else(|| tasks.sum("container_memory_usage_bytes", &metered));
    assert!(
        memory.is_some_and(|v| v > 0.0),
        "no memory figure:\n{}",
        tasks.0
    );
    let (ok, _, err) = stack.berth(&["rm", "--force", "metered"]);
    assert!(ok, "{err}");
    let after = at.taskd.scrape();
    assert_eq!(after.sum("berth_tasks", &[]), None, "{}", after.0);
    assert_eq!(after.sum("container_pids_current", &metered), None);

    // A collection.
    let (ok, _, err) = stack.berth(&["gc"]);
    assert!(ok, "{err}");
    let meta = at.metad.scrape();
    assert!(meta.value("berth_gc_runs_total", &[("result", "ok")]) >= 1.0);
    assert!(meta.value("berth_gc_pause_seconds_count", &[]) >= 1.0);

    // Only /metrics (and containerd's /v1/metrics) is served, only to GET
    // and HEAD.
    let (status, _, _) = at.snapd.request("GET", "/v1/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let (status, _, _) = at.snapd.request("GET", "/debug");
    assert!(status.contains(" 404 "), "{status}");
    let (status, _, _) = at.contentd.request("POST", "/metrics");
    assert!(status.contains(" 405 "), "{status}");
    let (status, _, body) = at.contentd.request("HEAD", "/metrics");
    assert!(status.contains(" 200 ") && body.is_empty(), "{status}");
}

#[test]
fn a_bad_metrics_address_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(berth_e2e::binary("berth-contentd"))
        .args(["--root"])
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(dir.path().join("c.sock"))
        .args(["--metrics-address", "metrics.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics address must be host:port or an absolute socket path"),
        "{err}"
    );
    assert!(!dir.path().join("c.sock").exists());
}
