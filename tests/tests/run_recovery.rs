#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Restarts and failures around running containers: taskd SIGKILLed and
//! restarted (tasks found again, an exit missed while it was down reported
//! once), a shim that dies (cleaned up, reported stopped), and contentd,
//! snapd and metad SIGKILLed under running containers (untouched).

use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::images::RUN_IMAGE;
use berth_e2e::on_path;
use berth_e2e::stack::Stack;

fn prerequisites() -> bool {
    berth_e2e::run_prerequisites()
}

/// A stack with the run image imported (the stack removes its containers
/// when it goes, also when a test fails half-way).
struct Setup {
    stack: Stack,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let (dir, stack) = Stack::with_run_image("berth-recovery-");
        Setup { stack, _dir: dir }
    }
}

fn tasks(stack: &Stack) -> Vec<(String, u32, String)> {
    stack
        .berth_json(&["tasks", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["pid"].as_u64().unwrap() as u32,
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_detached(stack: &Stack, id: &str, command: &[&str]) {
    let mut args = vec!["run", "-d", "--name", id, RUN_IMAGE];
    args.extend_from_slice(command);
    let (ok, _, err) = stack.berth(&args);
    assert!(ok, "run -d {id}: {err}");
}

/// `berth events` for one topic, collected in the background.
struct Events {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Events {
    fn watch(stack: &Stack, topic: &str) -> Events {
        Events::matching(stack, &format!("topic==\"{topic}\""), topic)
    }

    /// Every event matching `filter` (containerd's syntax), which an event
    /// on `probe_topic` matches: returns once the watcher has printed one
    /// (the subscription is live), ignored by [`Events::about`].
    fn matching(stack: &Stack, filter: &str, probe_topic: &str) -> Events {
        let mut child = stack.spawn_berth(&["--format", "json", "events", "--filter", filter]);
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let events = Events { child, lines };
        // Until metad has the subscription, events go unseen; a probe is
        // published until one is printed.
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while events.about(PROBE).is_empty() {
            assert!(
                std::time::Instant::now() < give_up,
                "berth events printed no probe"
            );
            let out = publish_with_taskd(stack, probe_topic, &probe_event());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        events
    }

    /// The events about `container` ([`PROBE`]'s only when asked for).
    fn about(&self, container: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["container_id"] == container)
            .cloned()
            .collect()
    }
}

/// The container id of the events that probe a subscription.
const PROBE: &str = "events-probe";

/// containerd.events.TaskOOM about [`PROBE`], as an Any.
fn probe_event() -> Vec<u8> {
    use containerd_shim_protos::protobuf::Message;
    let event = containerd_shim_protos::events::task::TaskOOM {
        container_id: PROBE.into(),
        ..Default::default()
    };
    containerd_shim_protos::protobuf::well_known_types::any::Any {
        type_url: "containerd.events.TaskOOM".into(),
        value: event.write_to_bytes().unwrap(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

/// `berth-taskd --address SOCK publish --topic TOPIC` with `event` (an
/// encoded Any) on stdin, as a shim runs it.
fn publish_with_taskd(stack: &Stack, topic: &str, event: &[u8]) -> std::process::Output {
    let mut child = std::process::Command::new(berth_e2e::binary("berth-taskd"))
        .arg("--address")
        .arg(&stack.taskd.socket)
        .args(["publish", "--topic", topic, "--namespace", "default"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(event).unwrap();
    }
    child.wait_with_output().unwrap()
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_restarted_taskd_finds_every_task_and_reports_a_missed_exit_once() {
    if !prerequisites() {
        return;
    }
    let mut setup = Setup::new();
    let exits = Events::watch(&setup.stack, "/tasks/exit");
    let stack = &mut setup.stack;
    for i in 0..10 {
        run_detached(stack, &format!("c{i}"), &["sleep", "1000"]);
    }
    run_detached(stack, "brief", &["sleep", "1000"]);
    run_detached(stack, "gone", &["sleep", "1000"]);
    // The Go shims are found again too.
    let mut go_shims = Vec::new();
    if on_path("containerd-shim-runc-v2") {
        go_shims.push(("go16", "io.containerd.runc.v2".to_string()));
    }
    let peer = berth_e2e::cri::shared().join("peers/bin/containerd-shim-runc-v2");
    if peer.exists() {
        go_shims.push(("go22", peer.canonicalize().unwrap().display().to_string()));
    }
    for (id, runtime) in &go_shims {
        let (ok, _, err) = stack.berth(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--name",
            id,
            RUN_IMAGE,
            "sleep",
            "1000",
        ]);
        assert!(ok, "{runtime}: {err}");
    }
    let running = 12 + go_shims.len();
    wait_until("every task running", || {
        tasks(stack).iter().filter(|t| t.2 == "RUNNING").count() == running
    });
    let before = tasks(stack);
    let brief_pid = before.iter().find(|t| t.0 == "brief").unwrap().1;

    stack.taskd.kill();
    // While taskd is down, one container ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(brief_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // And one shim dies while taskd is down.
    let gone_bundle = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task/default/gone");
    let gone_pid = before.iter().find(|t| t.0 == "gone").unwrap().1;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_in(&gone_bundle)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stack.taskd.restart();

    // The dead shim's task is cleaned up after: gone from the list, its
    // bundle and its container's process gone, its exit reported. (brief's
    // shim records its exit on its own time.)
    wait_until("brief stopped", || {
        tasks(stack)
            .iter()
            .any(|t| t.0 == "brief" && t.2 == "STOPPED")
    });
    let after = tasks(stack);
    assert_eq!(after.len(), running - 1, "{after:?}");
    assert!(!after.iter().any(|t| t.0 == "gone"), "{after:?}");
    assert!(!gone_bundle.exists());
    wait_until("gone's process to go", || {
        !Path::new(&format!("/proc/{gone_pid}")).exists()
    });
    wait_until("gone's exit event", || !exits.about("gone").is_empty());
    let (ok, _, err) = stack.berth(&["containers", "rm", "gone"]);
    assert!(ok, "{err}");
    for (id, pid, status) in &before {
        if id == "gone" {
            continue;
        }
        let now = after.iter().find(|t| &t.0 == id).unwrap();
        assert_eq!(now.1, *pid, "{id}'s pid changed");
        if id == "brief" {
            assert_eq!(now.2, "STOPPED");
        } else {
            assert_eq!(&now.2, status);
        }
    }
    wait_until("brief's exit event", || !exits.about("brief").is_empty());
    // Give a duplicate (a shim retrying, a second report) time to show.
    std::thread::sleep(Duration::from_secs(3));
    let reported = exits.about("brief");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["event"]["exit_status"], 137);

    // The found tasks work as before.
    for id in ["c3"].into_iter().chain(go_shims.iter().map(|(id, _)| *id)) {
        let out = stack
            .command(&["tasks", "exec", id, "sh", "-c", "echo alive"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "alive\n",
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if id != "c3" {
            let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "KILL", id]);
            assert!(ok, "{id}: {err}");
            let (_, status, _) = stack.berth(&["tasks", "wait", id]);
            assert_eq!(status.trim(), "137", "{id}");
        }
    }
    let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "KILL", "c4"]);
    assert!(ok, "{err}");
    let (_, status, _) = stack.berth(&["tasks", "wait", "c4"]);
    assert_eq!(status.trim(), "137");
    let (ok, _, err) = stack.berth(&["tasks", "rm", "brief"]);
    assert!(ok, "{err}");
}

/// The pid of the shim serving in `bundle` (shims run in their bundle).
fn shim_in(bundle: &Path) -> i32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            (cwd == bundle && exe.to_string_lossy().contains("containerd-shim")).then_some(pid)
        })
        .expect("the shim runs in the bundle")
}

#[test]
fn a_shim_that_dies_is_cleaned_up_and_its_task_reported_stopped() {
    if !prerequisites() {
        return;
    }
    let setup = Setup::new();
    let stack = &setup.stack;
    let exits = Events::watch(stack, "/tasks/exit");
    run_detached(stack, "orphan", &["sleep", "1000"]);
    wait_until("orphan running", || {
        tasks(stack)
            .iter()
            .any(|t| t.0 == "orphan" && t.2 == "RUNNING")
    });
    let container_pid = tasks(stack)[0].1;
    let bundle = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task")
        .join("default")
        .join("orphan");
    let shim = shim_in(&bundle);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the task to go", || tasks(stack).is_empty());
    wait_until("the bundle to go", || !bundle.exists());
    wait_until("the container's process to go", || {
        !Path::new(&format!("/proc/{container_pid}")).exists()
    });
    wait_until("an exit event", || !exits.about("orphan").is_empty());
    let (ok, _, err) = stack.berth(&["containers", "rm", "orphan"]);
    assert!(ok, "{err}");
}

#[test]
fn restarting_contentd_snapd_and_metad_leaves_running_containers_alone() {
    if !prerequisites() {
        return;
    }
    let mut setup = Setup::new();
    let stack = &mut setup.stack;
    run_detached(stack, "steady", &["sleep", "1000"]);
    wait_until("steady running", || {
        tasks(stack)
            .iter()
            .any(|t| t.0 == "steady" && t.2 == "RUNNING")
    });
    let pid = tasks(stack)[0].1;
    for which in ["contentd", "snapd", "metad"] {
        let daemon = match which {
            "contentd" => &mut stack.contentd,
            "snapd" => &mut stack.snapd,
            _ => &mut stack.metad,
        };
        daemon.kill();
        daemon.restart();
        let now = tasks(stack);
        assert_eq!(
            now,
            vec![("steady".to_string(), pid, "RUNNING".to_string())],
            "after {which}"
        );
        let out = stack
            .command(&["tasks", "exec", "steady", "sh", "-c", "echo ok"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ok\n",
            "after {which}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_task_event_reaches_metads_exchange_with_containerds_topics() {
    if !prerequisites() {
        return;
    }
    let setup = Setup::new();
    let stack = &setup.stack;
    let events = Events::matching(stack, "topic~=\"^/tasks/\"", "/tasks/oom");
    run_detached(stack, "noisy", &["sleep", "1000"]);
    let out = stack
        .command(&["tasks", "exec", "--exec-id", "e1", "noisy", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = stack.berth(&["rm", "--force", "noisy"]);
    assert!(ok, "{err}");
    let wanted = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let topics = || -> Vec<String> {
        events
            .about("noisy")
            .iter()
            .filter_map(|e| e["topic"].as_str().map(str::to_string))
            .collect()
    };
    wait_until("every task event", || {
        let seen = topics();
        wanted.iter().all(|w| seen.iter().any(|t| t == w))
    });
    // Both exits (the exec's and the task's) arrive, the task's once.
    let exits: Vec<serde_json::Value> = events
        .about("noisy")
        .into_iter()
        .filter(|e| e["topic"] == "/tasks/exit")
        .collect();
    let of_task = exits.iter().filter(|e| e["event"]["id"] == "noisy").count();
    let of_exec = exits.iter().filter(|e| e["event"]["id"] == "e1").count();
    assert_eq!((of_task, of_exec), (1, 1), "{exits:?}");
}

#[test]
fn taskds_publish_subcommand_forwards_an_event_as_a_shim_would() {
    use containerd_shim_protos::protobuf::Message;
    if !prerequisites() {
        return;
    }
    let setup = Setup::new();
    let stack = &setup.stack;
    let ooms = Events::watch(stack, "/tasks/oom");
    let event = containerd_shim_protos::events::task::TaskOOM {
        container_id: "published".into(),
        ..Default::default()
    };
    let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
        type_url: "containerd.events.TaskOOM".into(),
        value: event.write_to_bytes().unwrap(),
        ..Default::default()
    };
    let publish = |stdin: &[u8]| publish_with_taskd(stack, "/tasks/oom", stdin);
    let out = publish(&any.write_to_bytes().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the published event", || {
        !ooms.about("published").is_empty()
    });
    // Garbage on stdin is refused.
    assert!(!publish(b"\xff\xff not protobuf").status.success());
}

/// A task whose container record went while taskd was down (a client that
/// gave up undid its run) is removed when taskd starts again, as
/// containerd removes the tasks of deleted containers: its process, shim,
/// bundle, mount and cgroup go. Its neighbour, whose record is there, runs
/// on.
#[test]
fn a_task_whose_record_went_while_taskd_was_down_is_removed_at_start() {
    if !prerequisites() {
        return;
    }
    let mut setup = Setup::new();
    run_detached(&setup.stack, "kept", &["sleep", "1000"]);
    run_detached(&setup.stack, "unrecorded", &["sleep", "1000"]);
    let stack = &mut setup.stack;
    wait_until("both running", || {
        tasks(stack).iter().filter(|t| t.2 == "RUNNING").count() == 2
    });
    let pids: std::collections::HashMap<String, u32> =
        tasks(stack).into_iter().map(|t| (t.0, t.1)).collect();
    let bundle = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task")
        .join("default")
        .join("unrecorded");
    let shim = shim_in(&bundle);

    stack.taskd.kill();
    let (ok, _, err) = stack.berth(&["containers", "rm", "unrecorded"]);
    assert!(ok, "{err}");
    stack.taskd.restart();

    let ids: Vec<String> = tasks(stack).into_iter().map(|t| t.0).collect();
    assert_eq!(ids, ["kept"]);
    assert!(!bundle.exists(), "its bundle is left");
    wait_until("its process and shim to go", || {
        !berth_e2e::alive(pids["unrecorded"]) && !berth_e2e::alive(shim as u32)
    });
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains("/default/unrecorded/rootfs")),
        "its rootfs is still mounted"
    );
    assert!(
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|h| h.path().join("berth/default/unrecorded"))
            .chain(std::iter::once(
                Path::new("/sys/fs/cgroup/berth/default/unrecorded").to_path_buf()
            ))
            .all(|cgroup| !cgroup.exists()),
        "its cgroup is left"
    );
    assert!(berth_e2e::alive(pids["kept"]), "the other container died");
}
