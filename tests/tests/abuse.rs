#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile local callers (issue 15): a caller that floods requests without
//! reading the replies, sends data to a stream that takes none, floods a
//! write stream faster than it is stored without reading its replies,
//! sends an oversized frame or frames out of order. Each daemon stays up, holds at most a bounded
//! amount of memory for the caller (ttrpc-rust reads whatever arrives;
//! berth's connection guard stops reading while too much is unanswered),
//! and serves other callers meanwhile.
//!
//! The figures each case gives (bytes the abuser got the daemon to take,
//! the daemon's memory growth) are printed, and written as a markdown table
//! to BERTH_ABUSE_REPORT when it is set.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_api::protobuf::Message;
use berth_e2e::wire::{frame, FLAG_NO_DATA, TYPE_DATA, TYPE_REQUEST, TYPE_RESPONSE};
use berth_e2e::{berth, binary, is_root, require, status_field_kib, Daemon};
use ttrpc::proto::{Codec, Response};

/// Memory a daemon may grow by while one abuser is at work. Without the
/// guard every case below grows the daemon by gigabytes; with it, by the
/// guard's per-connection bound (32 MiB of frames) and what serving them
/// costs.
const GROWTH_BOUND_KIB: u64 = 160 << 10;

/// How long a socket that takes no more bytes is given before the sender
/// decides the daemon stopped reading (a stall, not a timing figure).
const STALL: Duration = Duration::from_secs(2);

fn request(service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    berth_e2e::wire::request(service, method, payload, Some("abuse"))
}

fn content_info(digest: &str) -> Vec<u8> {
    berth_api::content::InfoRequest {
        digest: digest.into(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

const CONTENT: &str = "berth.content.v1.Content";
const EVENTS: &str = "berth.events.v1.Events";
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Sends what `next` makes, again and again, never reading, until `total`
/// bytes are out or the daemon has taken nothing for [`STALL`]. Returns the
/// bytes it took.
fn flood(socket: &UnixStream, total: u64, mut next: impl FnMut() -> Vec<u8>) -> u64 {
    socket.set_nonblocking(true).unwrap();
    let mut socket = socket;
    let mut sent = 0u64;
    let mut last_progress = Instant::now();
    let mut chunk = next();
    let mut at = 0;
    while sent < total {
        match socket.write(&chunk[at..]) {
            Ok(n) => {
                sent += n as u64;
                at += n;
                last_progress = Instant::now();
                if at == chunk.len() {
                    chunk = next();
                    at = 0;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if last_progress.elapsed() > STALL {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("the daemon hung up on the abuser: {e}"),
        }
    }
    sent
}

fn rss_kib(daemon: &Daemon) -> u64 {
    status_field_kib(daemon.pid(), "VmRSS:")
}

/// Reads one frame (blocking).
fn read_frame(socket: &mut UnixStream) -> (u32, u8, Vec<u8>) {
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut header = [0; 10];
    socket.read_exact(&mut header).unwrap();
    let length = u32::from_be_bytes(header[..4].try_into().unwrap());
    let stream_id = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let mut payload = vec![0; length as usize];
    socket.read_exact(&mut payload).unwrap();
    (stream_id, header[8], payload)
}

/// The status code of the response to `stream_id` (skipping other frames).
fn response_code(socket: &mut UnixStream, stream_id: u32) -> ttrpc::Code {
    loop {
        let (id, kind, payload) = read_frame(socket);
        if id == stream_id && kind == TYPE_RESPONSE {
            let response = Response::decode(&payload).unwrap();
            return response.status.code.enum_value_or_default();
        }
    }
}

struct Report {
    rows: Vec<String>,
}

impl Report {
    fn row(&mut self, daemon: &str, case: &str, taken: u64, growth_kib: u64) {
        let row = format!(
            "| {daemon} | {case} | {:.1} MiB | {:.1} MiB |",
            taken as f64 / (1 << 20) as f64,
            growth_kib as f64 / 1024.0
        );
        eprintln!("{row}");
        self.rows.push(row);
    }

    fn write(&self) {
        if let Ok(path) = std::env::var("BERTH_ABUSE_REPORT") {
            let mut text = String::from(
                "| daemon | abuse | taken from the abuser | memory growth |\n|---|---|---|---|\n",
            );
            for row in &self.rows {
                text.push_str(row);
                text.push('\n');
            }
            std::fs::write(path, text).unwrap();
        }
    }
}

/// Runs `case` against `daemon` and checks the bound; `serves` is another
/// caller's request, made while the abuser is still connected.
fn judge(
    report: &mut Report,
    daemon: &Daemon,
    name: &str,
    case: &str,
    serves: &dyn Fn() -> bool,
    abuse: impl FnOnce() -> (u64, UnixStream),
) {
    let before = rss_kib(daemon);
    let (taken, abuser) = abuse();
    let growth = rss_kib(daemon).saturating_sub(before);
    report.row(name, case, taken, growth);
    assert!(
        serves(),
        "{name}: another caller was not served during: {case}"
    );
    assert!(
        growth < GROWTH_BOUND_KIB,
        "{name} grew by {growth} KiB during: {case} (it took {taken} bytes)"
    );
    drop(abuser);
}

fn metad_answers(metad: &Daemon) -> bool {
    Command::new(binary("berth"))
        .env("BERTH_METAD_ADDRESS", &metad.socket)
        .args(["namespaces", "ls"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

fn contentd_answers(contentd: &Path) -> bool {
    berth(contentd, &["content", "ls"], None).0
}

#[test]
fn hostile_callers_get_bounded_memory_and_others_are_served() {
    if !require(is_root(), "snapd (under metad) needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    let metad = Daemon::metad(&dir.path().join("metad"), &contentd, &snapd);
    let mut report = Report { rows: Vec::new() };
    let contentd_serves = || contentd_answers(&contentd.socket);
    let metad_serves = || metad_answers(&metad);

    // 1. Requests without reading a reply: each would be a task in ttrpc.
    judge(
        &mut report,
        &contentd,
        "contentd",
        "2,000,000 small requests, replies never read",
        &contentd_serves,
        || {
            let socket = UnixStream::connect(&contentd.socket).unwrap();
            let payload = request(CONTENT, "Info", content_info(ABSENT));
            let mut stream_id = 1u32;
            let taken = flood(&socket, 2_000_000 * (10 + payload.len() as u64), || {
                let bytes = frame(stream_id, TYPE_REQUEST, 0, &payload);
                stream_id += 2;
                bytes
            });
            (taken, socket)
        },
    );

    // 2. Data sent to a stream that takes none (a subscription): each
    // frame is refused as it comes, none is kept.
    judge(
        &mut report,
        &metad,
        "metad",
        "2 GiB of 1 MiB data frames to an events subscription, replies never read",
        &metad_serves,
        || {
            let mut socket = UnixStream::connect(&metad.socket).unwrap();
            let subscribe = request(
                EVENTS,
                "Subscribe",
                berth_api::events::SubscribeRequest::default()
                    .write_to_bytes()
                    .unwrap(),
            );
            socket
                .write_all(&frame(1, TYPE_REQUEST, 0, &subscribe))
                .unwrap();
            let data = frame(1, TYPE_DATA, 0, &vec![0x5a; 1 << 20]);
            let taken = flood(&socket, 2 << 30, || data.clone());
            (taken, socket)
        },
    );

    // 3. A write stream sent faster than contentd hashes and stores it,
    // replies never read.
    judge(
        &mut report,
        &contentd,
        "contentd",
        "512 MiB written to an ingest at full speed, replies never read",
        &contentd_serves,
        || {
            let mut socket = UnixStream::connect(&contentd.socket).unwrap();
            socket
                .write_all(&frame(
                    1,
                    TYPE_REQUEST,
                    FLAG_NO_DATA,
                    &request(CONTENT, "Write", Vec::new()),
                ))
                .unwrap();
            let mut offset = 0i64;
            let taken = flood(&socket, 512 << 20, || {
                let chunk = berth_api::content::WriteRequest {
                    action: berth_api::content::WriteAction::WRITE.into(),
                    ref_: "abuse".into(),
                    offset,
                    data: vec![0x5a; 1 << 20],
                    ..Default::default()
                };
                offset += 1 << 20;
                frame(1, TYPE_DATA, 0, &chunk.write_to_bytes().unwrap())
            });
            (taken, socket)
        },
    );

    // 4. An oversized frame (ttrpc takes at most 4 MiB): refused, read
    // past in pages, and the connection goes on serving.
    judge(
        &mut report,
        &contentd,
        "contentd",
        "one 256 MiB frame, then a request on the same connection",
        &contentd_serves,
        || {
            let mut socket = UnixStream::connect(&contentd.socket).unwrap();
            let length: u32 = 256 << 20;
            let mut header = frame(1, TYPE_REQUEST, 0, &[]);
            header[..4].copy_from_slice(&length.to_be_bytes());
            socket.write_all(&header).unwrap();
            let page = vec![0x5a; 1 << 20];
            let mut taken = 0u64;
            while taken < u64::from(length) {
                socket.write_all(&page).unwrap();
                taken += page.len() as u64;
            }
            socket
                .write_all(&frame(
                    3,
                    TYPE_REQUEST,
                    0,
                    &request(CONTENT, "Info", content_info(ABSENT)),
                ))
                .unwrap();
            assert_ne!(response_code(&mut socket, 1), ttrpc::Code::OK);
            assert_eq!(response_code(&mut socket, 3), ttrpc::Code::NOT_FOUND);
            (taken, socket)
        },
    );

    // 5. Frames out of order or malformed, each answered with an error (or
    // ignored), on one connection that keeps serving.
    judge(
        &mut report,
        &contentd,
        "contentd",
        "frames out of order: data for no stream, even ids, unknown types, bad payloads",
        &contentd_serves,
        || {
            let mut socket = UnixStream::connect(&contentd.socket).unwrap();
            let info = request(CONTENT, "Info", content_info(ABSENT));
            let cases: Vec<(u32, Vec<u8>)> = vec![
                (7, frame(7, TYPE_DATA, 0, b"data for a stream never opened")),
                (2, frame(2, TYPE_REQUEST, 0, &info)),
                (0, frame(9, 0x7f, 0, b"a frame type ttrpc does not know")),
                (
                    11,
                    frame(11, TYPE_REQUEST, 0, b"\xff\xff\xff not a request"),
                ),
                (
                    13,
                    frame(
                        13,
                        TYPE_REQUEST,
                        0,
                        &request("no.such.Service", "Info", vec![]),
                    ),
                ),
                (
                    15,
                    frame(
                        15,
                        TYPE_REQUEST,
                        0,
                        &request(CONTENT, "Info", vec![0xff; 9]),
                    ),
                ),
            ];
            let mut taken = 0;
            for (_, bytes) in &cases {
                socket.write_all(bytes).unwrap();
                taken += bytes.len() as u64;
            }
            socket
                .write_all(&frame(17, TYPE_REQUEST, 0, &info))
                .unwrap();
            // Answers come in any order; each erroneous one is an error.
            let mut answered = std::collections::BTreeMap::new();
            while !answered.contains_key(&17) || answered.len() < cases.len() {
                let (id, kind, payload) = read_frame(&mut socket);
                if kind == TYPE_RESPONSE {
                    let code = Response::decode(&payload).unwrap().status.code;
                    answered.insert(id, code.enum_value_or_default());
                }
            }
            for (id, _) in cases.iter().filter(|(id, _)| *id != 0) {
                assert_ne!(answered[id], ttrpc::Code::OK, "stream {id}");
            }
            assert_eq!(answered[&17], ttrpc::Code::NOT_FOUND);
            (taken, socket)
        },
    );

    report.write();
    // Both still up and serving.
    assert!(contentd_serves() && metad_serves());
    // The ingest of case 3 was let go when its connection went: it can be
    // aborted (until the daemon notices the hang-up, the ref is locked).
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = berth(
            &contentd.socket,
            &["-n", "abuse", "content", "abort", "abuse"],
            None,
        );
        if ok {
            break;
        }
        assert!(err.contains("locked") && Instant::now() < give_up, "{err}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Descriptors in a daemon's table.
fn open_fds(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count()
}

/// A caller that passes a descriptor with every request and never names
/// one gets the daemon to hold at most four of them, and none once it
/// hangs up, even if one was its own end of the connection: passed
/// descriptors cannot fill the daemon's table.
#[test]
fn descriptors_a_caller_passes_and_never_uses_are_few_and_go_with_it() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(dir.path());
    let mut socket = UnixStream::connect(&contentd.socket).unwrap();
    let info = || {
        request(
            "berth.content.v1.Content",
            "Info",
            content_info(&format!("sha256:{}", "0".repeat(64))),
        )
    };
    // One plain request first, so that the connection is accepted and its
    // own descriptors are counted in the baseline.
    socket
        .write_all(&frame(1, TYPE_REQUEST, 0, &info()))
        .unwrap();
    assert_eq!(response_code(&mut socket, 1), ttrpc::Code::NOT_FOUND);
    let baseline = open_fds(&contentd);

    let file = tempfile::tempfile().unwrap();
    for n in 0..100u32 {
        let id = 3 + 2 * n;
        let bytes = frame(id, TYPE_REQUEST, 0, &info());
        // The first time, the caller's own end of this connection: were
        // contentd to keep it, the connection would outlive the caller.
        let passing = if n == 0 {
            socket.as_raw_fd()
        } else {
            file.as_raw_fd()
        };
        let fds = [passing];
        let passed = [ControlMessage::ScmRights(&fds)];
        let sent = sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &passed,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(sent, bytes.len());
        assert_eq!(response_code(&mut socket, id), ttrpc::Code::NOT_FOUND);
    }
    let held = open_fds(&contentd).saturating_sub(baseline);
    assert!(
        held <= 4,
        "contentd holds {held} more descriptors after 100 passed"
    );

    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(&contentd) >= baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        open_fds(&contentd) < baseline,
        "the passed descriptors and the connection's own close with it"
    );
    assert!(contentd_answers(&contentd.socket));
}
