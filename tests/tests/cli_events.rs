#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth events` against a real berth-metad: what is published shows up,
//! one line per event, as it happens.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_api::events as pb;
use berth_api::protobuf::well_known_types::any::Any;
use berth_api::protobuf::MessageField;
use berth_e2e::{binary, Daemon};

/// `berth events ARGS...` with its stdout lines delivered to a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(socket: &Path, args: &[&str]) -> Watcher {
        let mut child = Command::new(binary("berth"))
            .env("BERTH_METAD_ADDRESS", socket)
            .arg("events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running berth events");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd.events.TaskOOM { container_id }, encoded by hand.
fn task_oom(container_id: &str) -> Any {
    let mut value = vec![0x0a, container_id.len() as u8];
    value.extend_from_slice(container_id.as_bytes());
    Any {
        type_url: "containerd.events.TaskOOM".into(),
        value,
        ..Default::default()
    }
}

async fn publish(client: &pb::EventsClient, namespace: &str, topic: &str, event: Any) {
    let request = pb::PublishRequest {
        topic: topic.into(),
        event: MessageField::some(event),
        ..Default::default()
    };
    client
        .publish(berth_client::request_context(namespace), &request)
        .await
        .unwrap();
}

/// Publishes `event` until a watcher prints a line (`berth events` may not
/// have subscribed yet when the first goes out); returns that line.
async fn first_line(
    client: &pb::EventsClient,
    watcher: &Watcher,
    namespace: &str,
    topic: &str,
    event: Any,
) -> String {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < give_up, "berth events printed nothing");
        publish(client, namespace, topic, event.clone()).await;
        if let Ok(line) = watcher.lines.recv_timeout(Duration::from_millis(200)) {
            return line;
        }
    }
}

/// The next line that is not a repeat of the probe `first_line` sent.
fn next_line(watcher: &Watcher, probe: &str) -> String {
    loop {
        let line = watcher.lines.recv().expect("berth events exited");
        if !line.contains(probe) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_events_prints_what_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let metad = Daemon::metad_alone(dir.path());
    let client = pb::EventsClient::new(berth_client::connect(&metad.socket).await.unwrap());

    let table = Watcher::start(&metad.socket, &["--filter", "topic~=\"^/tasks/\""]);
    let line = first_line(&client, &table, "team-a", "/tasks/oom", task_oom("web")).await;
    // time namespace topic event, as ctr events prints them.
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{line}"
    );
    assert_eq!(
        fields[1..],
        ["team-a", "/tasks/oom", "{\"container_id\":\"web\"}"]
    );

    // Later events arrive while it runs; filtered ones do not.
    publish(&client, "team-a", "/images/delete", task_oom("skipped")).await;
    publish(&client, "team-b", "/tasks/oom", task_oom("db")).await;
    let next = next_line(&table, " team-a /tasks/oom ");
    assert!(
        next.ends_with(" team-b /tasks/oom {\"container_id\":\"db\"}"),
        "{next}"
    );

    let json = Watcher::start(
        &metad.socket,
        &[
            "--format",
            "json",
            "namespace==team-c",
            "topic==\"/custom/x\"",
        ],
    );
    let opaque = Any {
        type_url: "example.Opaque".into(),
        value: vec![1, 2, 3],
        ..Default::default()
    };
    let line = first_line(&client, &json, "team-c", "/custom/x", opaque).await;
    let object: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(object["namespace"], "team-c");
    assert_eq!(object["topic"], "/custom/x");
    assert_eq!(object["type_url"], "example.Opaque");
    assert_eq!(object["size"], 3);
    assert!(object.get("event").is_none(), "{line}");

    publish(&client, "team-c", "/tasks/oom", task_oom("c1")).await;
    let line = next_line(&json, "\"example.Opaque\"");
    let object: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(object["type_url"], "containerd.events.TaskOOM");
    assert_eq!(object["event"]["container_id"], "c1");
}

#[test]
fn a_malformed_filter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let metad = Daemon::metad_alone(dir.path());
    let out = Command::new(binary("berth"))
        .env("BERTH_METAD_ADDRESS", &metad.socket)
        .args(["events", "--filter", "topic=="])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("berth: receiving events: ") && stderr.contains("topic=="),
        "{stderr}"
    );
}
