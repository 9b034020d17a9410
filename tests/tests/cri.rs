#![allow(clippy::unwrap_used, clippy::expect_used)]

//! berth-crid through the CRI's own clients: crictl (cri-tools 1.34) for a
//! pod's life and a restart of crid under a running pod, and critest, the
//! CRI validation suite, run by ../shared/critest/run.sh against a fresh
//! berth stack, with every spec berth is known to pass required to pass.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::binary;
use berth_e2e::cri::{crictl_path, crictl_test_dir, shared, Cri, POD_IMAGE};
use berth_e2e::images::{busybox_rootfs, host_architecture, Layout};
use serde_json::json;

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CRI log lines of a file: (stream, tag, text), each line checked
/// for the kubelet's format.
fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let stamp = fields.next().unwrap();
            assert!(
                berth_metadata::parse_rfc3339(stamp).is_ok(),
                "not an RFC 3339 time: {line:?}"
            );
            let stream = fields.next().unwrap().to_string();
            let tag = fields.next().unwrap().to_string();
            assert!(["stdout", "stderr"].contains(&stream.as_str()), "{line:?}");
            assert!(["F", "P"].contains(&tag.as_str()), "{line:?}");
            (stream, tag, fields.next().unwrap_or("").to_string())
        })
        .collect()
}

fn counted_lines(path: &Path) -> Vec<u64> {
    log_entries(path)
        .into_iter()
        .filter_map(|(_, _, text)| text.strip_prefix("line ")?.parse().ok())
        .collect()
}

/// A pod's whole life through crictl, with crid SIGKILLed and restarted
/// while its container runs and writes: the pod and container are listed
/// again as they are, output written while crid was down reaches the log
/// in order and without loss, exec works, and stopping and removing the
/// pod leaves no task, record, snapshot, namespace file or state behind.
#[test]
fn a_pod_lives_through_crictl_and_a_crid_restart() {
    let Some(tmp) = crictl_test_dir() else {
        return;
    };
    let dir = tmp.path();
    let mut cri = Cri::start(dir);
    let logs = dir.join("pod-logs");

    let events = cri.spawn_events();
    let version = cri.ok(&["version"]);
    assert!(version.contains("RuntimeName:  berth"), "{version}");

    let pod = cri.write_config(
        "pod.json",
        json!({
            "metadata": {"name": "web", "namespace": "test", "uid": "pod-uid-1", "attempt": 0},
            "log_directory": logs.display().to_string(),
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    // A device as a device plugin hands it over: a node made here (char
    // 240:0, no driver: an open the device cgroup lets through fails with
    // ENXIO, one it stops with EPERM).
    let device = dir.join("device");
    berth_e2e::make_char_device(&device, 240, 0);
    let container = cri.write_config(
        "container.json",
        json!({
            "metadata": {"name": "counter"},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/sh", "-c",
                "trap 'exit 42' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done"],
            "log_path": "counter.log",
            "labels": {"app": "counter"},
            "devices": [{
                "container_path": "/dev/plugged",
                "host_path": device.display().to_string(),
                "permissions": "rw",
            }],
            // CDI devices, by the CRI's field and by a device plugin's
            // annotation.
            "CDI_devices": [{"name": "berth.test/pod=field"}],
            "annotations": {"cdi.k8s.io/berth-plugin": "berth.test/pod=annotated"},
        }),
    );
    std::fs::create_dir_all(dir.join("cdi")).unwrap();
    std::fs::write(
        dir.join("cdi").join("pod.json"),
        json!({
            "cdiVersion": "0.6.0",
            "kind": "berth.test/pod",
            "devices": [
                {"name": "field", "containerEdits": {"env": ["POD_CDI=field"]}},
                {"name": "annotated", "containerEdits": {
                    "env": ["POD_CDI_ANNOTATION=yes"],
                    "deviceNodes": [{"path": "/dev/cdi-zero", "hostPath": "/dev/zero"}],
                }},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let pod_id = cri.ok(&["runp", &pod]);
    let status = cri.inspect("inspectp", &pod_id);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    let images = cri.ok(&["images"]);
    assert!(
        images.contains("berth.local/pause"),
        "the built-in pause image: {images}"
    );

    // A second pod of the same name and attempt is refused.
    let (ok, _, err) = cri.crictl(&["runp", &pod]);
    assert!(!ok, "a second pod with the same name");
    assert!(err.contains("taken"), "{err}");

    // A CDI device no spec file names: refused, and nothing made.
    let unknown_cdi = cri.write_config(
        "unknown-cdi.json",
        json!({
            "metadata": {"name": "unknown-cdi"},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/true"],
            "CDI_devices": [{"name": "berth.test/pod=missing"}],
        }),
    );
    let (ok, _, err) = cri.crictl(&["create", &pod_id, &unknown_cdi, &pod]);
    assert!(!ok, "an unknown CDI device was accepted");
    assert!(
        err.contains("unresolvable CDI devices: berth.test/pod=missing"),
        "{err}"
    );
    assert_eq!(cri.ok(&["ps", "-a", "-q", "--name", "unknown-cdi"]), "");
    let ctr_id = cri.ok(&["create", &pod_id, &container, &pod]);
    assert_eq!(
        cri.inspect("inspect", &ctr_id)["status"]["state"],
        "CONTAINER_CREATED"
    );
    cri.ok(&["start", &ctr_id]);
    assert_eq!(
        cri.inspect("inspect", &ctr_id)["status"]["state"],
        "CONTAINER_RUNNING"
    );
    let listed = cri.ok(&["ps", "-q", "--label", "app=counter"]);
    assert_eq!(listed, ctr_id);
    assert_eq!(cri.ok(&["ps", "-q", "--label", "app=other"]), "");

    let log = logs.join("counter.log");
    wait_for(
        "the first lines in the log",
        Duration::from_secs(30),
        || counted_lines(&log).len() >= 5,
    );
    let out = cri.ok(&["exec", "-s", &ctr_id, "/bin/echo", "from exec"]);
    assert_eq!(out, "from exec");
    // The pod's metrics as the kubelet reads them for /metrics/cadvisor:
    // every metric named by a descriptor, the container's CPU and memory
    // under its id.
    let descriptors: serde_json::Value =
        serde_json::from_str(&cri.ok(&["metricdescs", "-o", "json"])).unwrap();
    let described: Vec<&str> = descriptors["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        described.contains(&"container_memory_working_set_bytes"),
        "{descriptors}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&cri.ok(&["metricsp", "-o", "json"])).unwrap();
    let pod_metrics = metrics["podMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podSandboxId"] == pod_id.as_str())
        .unwrap_or_else(|| panic!("no metrics of the pod: {metrics}"))
        .clone();
    let counter_metrics = pod_metrics["containerMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["containerId"] == ctr_id.as_str())
        .unwrap_or_else(|| panic!("no metrics of the container: {pod_metrics}"))
        .clone();
    let working_set = counter_metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "container_memory_working_set_bytes")
        .unwrap_or_else(|| panic!("no working set: {counter_metrics}"));
    assert_eq!(
        working_set["labelValues"][0],
        ctr_id.as_str(),
        "{working_set}"
    );
    assert!(
        working_set["value"]["value"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| working_set["value"]["value"].as_u64())
            .is_some_and(|v| v > 0),
        "{working_set}"
    );
    for metric in pod_metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .chain(counter_metrics["metrics"].as_array().unwrap())
    {
        let name = metric["name"].as_str().unwrap_or_default();
        assert!(described.contains(&name), "{name} has no descriptor");
    }

    let numbers = cri.ok(&[
        "exec",
        "-s",
        &ctr_id,
        "/bin/busybox",
        "stat",
        "-c",
        "%t:%T",
        "/dev/plugged",
    ]);
    assert_eq!(numbers, "f0:0");
    let cdi = cri.ok(&[
        "exec",
        "-s",
        &ctr_id,
        "/bin/sh",
        "-c",
        "echo $POD_CDI $POD_CDI_ANNOTATION; head -c 2 /dev/cdi-zero | wc -c",
    ]);
    assert_eq!(cdi, "field yes\n2", "the CDI devices' edits");
    let (ok, _, err) = cri.crictl(&[
        "exec",
        "-s",
        &ctr_id,
        "/bin/sh",
        "-c",
        "exec 3<>/dev/plugged",
    ]);
    assert!(!ok, "a device without a driver opened");
    assert!(
        err.contains("No such device or address"),
        "the device cgroup refused the pod's device: {err}"
    );
    let (ok, _, _) = cri.crictl(&["exec", "-s", &ctr_id, "/bin/sh", "-c", "exit 3"]);
    assert!(!ok, "a failing exec's status reaches crictl");
    // The streaming exec (SPDY), stdin in and stdout out, and its status.
    let streamed = cri.crictl_with_input(
        &[
            "exec",
            "-i",
            &ctr_id,
            "/bin/sh",
            "-c",
            "read line; echo got $line; exit 4",
        ],
        b"hello\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout).trim(),
        "got hello"
    );
    let said = String::from_utf8_lossy(&streamed.stderr);
    assert!(
        !streamed.status.success() && said.contains("exit code 4"),
        "{said}"
    );
    // `crictl logs` reads the file crid writes.
    let logged = cri.ok(&["logs", "--tail", "1", &ctr_id]);
    assert!(logged.starts_with("line "), "{logged}");
    let stats: serde_json::Value = serde_json::from_str(&cri.ok(&["stats", "-o", "json"])).unwrap();
    let cpu = &stats["stats"][0]["cpu"]["usageCoreNanoSeconds"]["value"];
    assert!(
        cpu.as_str()
            .map(|v| v != "0")
            .unwrap_or(cpu.as_u64().unwrap_or(0) > 0),
        "CPU time of a running container: {stats}"
    );
    // The pod's stats: its pause process and container added up, and the
    // container's own among them.
    let number = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(v.as_u64())
            .unwrap_or(0)
    };
    let pod_stats: serde_json::Value =
        serde_json::from_str(&cri.ok(&["statsp", "-o", "json", &pod_id])).unwrap();
    let pod_stats = &pod_stats["stats"][0];
    assert_eq!(
        pod_stats["attributes"]["id"],
        pod_id.as_str(),
        "{pod_stats}"
    );
    let linux = &pod_stats["linux"];
    assert!(
        number(&linux["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
            && number(&linux["memory"]["workingSetBytes"]["value"]) > 0,
        "the pod's CPU and memory: {pod_stats}"
    );
    assert!(
        number(&linux["process"]["processCount"]["value"]) >= 2,
        "the pause process and the container's: {pod_stats}"
    );
    assert!(
        linux["containers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["attributes"]["id"] == ctr_id.as_str())),
        "the container's stats in the pod's: {pod_stats}"
    );

    // crid dies with the pod running and the container writing.
    let before = counted_lines(&log).last().copied().unwrap();
    let first_events = cri.events_until(events, &[(&ctr_id, "CONTAINER_STARTED_EVENT")]);
    cri.crid.kill();
    std::thread::sleep(Duration::from_secs(1));
    cri.crid.restart();
    assert_eq!(
        cri.inspect("inspectp", &pod_id)["status"]["state"],
        "SANDBOX_READY"
    );
    assert_eq!(
        cri.inspect("inspect", &ctr_id)["status"]["state"],
        "CONTAINER_RUNNING"
    );
    wait_for(
        "the log going on after the restart",
        Duration::from_secs(30),
        || counted_lines(&log).last().is_some_and(|n| *n > before + 20),
    );
    let lines = counted_lines(&log);
    let expected: Vec<u64> = (0..lines.len() as u64).collect();
    assert_eq!(
        lines, expected,
        "every line once, in order, across the restart"
    );
    assert_eq!(
        cri.ok(&["exec", "-s", &ctr_id, "/bin/echo", "after restart"]),
        "after restart"
    );

    let events = cri.spawn_events();
    // Stopped with its stop signal (TERM: the trap's status), in time.
    cri.ok(&["stop", "-t", "10", &ctr_id]);
    let status = cri.inspect("inspect", &ctr_id);
    assert_eq!(status["status"]["state"], "CONTAINER_EXITED", "{status}");
    assert_eq!(status["status"]["exitCode"], 42, "{status}");
    assert_eq!(status["status"]["reason"], "Error", "{status}");
    cri.ok(&["rm", &ctr_id]);
    cri.ok(&["stopp", &pod_id]);
    cri.ok(&["stopp", &pod_id]);
    cri.ok(&["rmp", &pod_id]);
    assert_eq!(cri.ok(&["pods", "-q"]), "");
    assert_eq!(cri.ok(&["ps", "-aq"]), "");
    // GetContainerEvents (the kubelet's evented PLEG): each step once, in
    // order, for the pod and the container.
    let later_events = cri.events_until(events, &[(&pod_id, "CONTAINER_DELETED_EVENT")]);
    let all: Vec<(String, String)> = first_events.into_iter().chain(later_events).collect();
    let of = |id: &str| -> Vec<&str> {
        all.iter()
            .filter(|(i, _)| i == id)
            .map(|(_, kind)| kind.as_str())
            .collect()
    };
    let life = [
        "CONTAINER_CREATED_EVENT",
        "CONTAINER_STARTED_EVENT",
        "CONTAINER_STOPPED_EVENT",
        "CONTAINER_DELETED_EVENT",
    ];
    assert_eq!(of(&ctr_id), life, "{all:?}");
    assert_eq!(of(&pod_id), life, "{all:?}");

    // Nothing left in the daemons or on disk.
    let tasks = cri.stack.berth(&["-n", "k8s.io", "tasks", "ls", "-q"]).1;
    assert_eq!(tasks.trim(), "", "tasks left");
    let records = cri
        .stack
        .berth(&["-n", "k8s.io", "containers", "ls", "-q"])
        .1;
    assert_eq!(records.trim(), "", "container records left");
    let snapshots = cri
        .stack
        .berth(&["-n", "k8s.io", "snapshots", "ls", "-q"])
        .1;
    assert!(
        !snapshots.contains(&pod_id) && !snapshots.contains(&ctr_id),
        "snapshots left: {snapshots}"
    );
    for sub in ["sandboxes", "containers"] {
        let left: Vec<_> = std::fs::read_dir(cri.crid.root.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "crid state left: {left:?}");
    }
}

/// CVE-2022-1708 / CVE-2022-31030 / CVE-2022-23471: ExecSync keeps a
/// bounded part of a flood of output (and crid's memory stays bounded), and
/// execs that fail to start, through ExecSync and through the streaming
/// server with a terminal and without, leave no process, file descriptor
/// or fifo behind in crid.
#[test]
fn exec_sync_output_is_bounded_and_failed_execs_leak_nothing() {
    let Some(tmp) = crictl_test_dir() else {
        return;
    };
    if !berth_e2e::require(berth_e2e::on_path("script"), "needs script (bsdutils)") {
        return;
    }
    let cri = Cri::start(tmp.path());
    let pod = cri.write_config(
        "pod.json",
        json!({
            "metadata": {"name": "bounds", "namespace": "test", "uid": "pod-uid-2", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let container = cri.write_config(
        "container.json",
        json!({
            "metadata": {"name": "idle"},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/sleep", "1000000"],
        }),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    let ctr_id = cri.ok(&["create", &pod_id, &container, &pod]);
    cri.ok(&["start", &ctr_id]);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let exec_dirs = || {
        std::fs::read_dir(cri.crid.root.join("containers").join(&ctr_id))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
            .count()
    };
    // Warm up, then count.
    let _ = cri.crictl(&["exec", "-s", &ctr_id, "/bin/echo", "warm"]);
    let before = fds(cri.crid.pid());
    for _ in 0..100 {
        let (ok, _, _) = cri.crictl(&["exec", "-s", &ctr_id, "/no/such/program"]);
        assert!(!ok, "an exec of a missing program fails");
    }
    // The same through the streaming server, with a terminal and without
    // (CVE-2022-23471: a failed TTY exec leaked in containerd's).
    // (crictl wants a terminal of its own for -t: `script` gives it one.)
    let endpoint = format!("unix://{}", cri.crid.socket.display());
    let streamed = format!(
        "{} -r {endpoint} -i {endpoint} --timeout 60s exec --transport websocket",
        crictl_path().display()
    );
    for tty in [true, false] {
        for _ in 0..20 {
            let (ok, said) = if tty {
                let command = format!("{streamed} -t -i {ctr_id} /no/such/program");
                let out = Command::new("script")
                    .args(["-q", "-e", "-c", &command, "/dev/null"])
                    .env("HOME", tmp.path())
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            } else {
                let (ok, _, err) = cri.crictl(&[
                    "exec",
                    "--transport",
                    "websocket",
                    &ctr_id,
                    "/no/such/program",
                ]);
                (ok, err)
            };
            assert!(!ok, "a streamed exec of a missing program fails: {said}");
            // The failure is the server's (the exec was made), not crictl's.
            assert!(
                said.contains("no such file") || said.contains("exit code"),
                "tty {tty}: {said}"
            );
        }
    }
    // Connections to the other daemons close a moment after each call: a
    // few descriptors come and go, a leak would be a hundred and forty.
    wait_for(
        "crid's descriptors back near where they were",
        Duration::from_secs(30),
        || fds(cri.crid.pid()) <= before + 6,
    );
    assert_eq!(exec_dirs(), 0, "exec fifos left");
    let tasks = cri.stack.berth(&["-n", "k8s.io", "tasks", "ps", &ctr_id]).1;
    assert_eq!(
        tasks.lines().count(),
        2,
        "only the container's process: {tasks}"
    );

    // 64 MB of output: what comes back is the bound, and crid did not
    // hold the flood.
    let peak_before = cri.crid.peak_rss_kib();
    let endpoint = format!("unix://{}", cri.crid.socket.display());
    let out = Command::new(crictl_path())
        .args(["-r", &endpoint, "-i", &endpoint, "--timeout", "120s"])
        .args([
            "exec",
            "-s",
            &ctr_id,
            "/bin/sh",
            "-c",
            "yes abcdefghijklmnop | head -c 64000000",
        ])
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bound, and nothing of the rest (crictl ends what it prints with
    // a line ending of its own).
    let bound = 16 * 1024 * 1024 - 64 * 1024;
    assert!(
        (bound..=bound + 2).contains(&out.stdout.len()),
        "{} bytes came back",
        out.stdout.len()
    );
    assert!(out
        .stdout
        .starts_with(b"abcdefghijklmnop\nabcdefghijklmnop\n"));
    let grown_mib = cri.crid.peak_rss_kib().saturating_sub(peak_before) / 1024;
    assert!(
        grown_mib < 160,
        "crid's peak RSS grew by {grown_mib} MiB for 64 MB of output"
    );
    cri.ok(&["rmp", "-f", &pod_id]);
}

/// An image's `Volumes`, as containerd gives them: each path no CRI mount
/// covers is a host directory of the container's own, filled from the
/// image and gone with the container. The copy-up resolves every path
/// inside the image: a volume named with `..` or through a symlink to a
/// host directory gets the image's content, never the host's
/// (CVE-2022-23648).
#[test]
fn image_volumes_are_copied_up_from_inside_the_image() {
    let Some(tmp) = crictl_test_dir() else {
        return;
    };
    let cri = Cri::start(tmp.path());
    // A host directory with a canary the image reaches for.
    let host = tmp.path().join("host-secrets");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("canary"), b"host").unwrap();
    let image_dir = tmp.path().join("volumes-image");
    let rootfs = busybox_rootfs(
        &image_dir.join("rootfs"),
        &[("data/seed", b"from-image"), ("kept/seed", b"mounted over")],
    );
    for applet in ["sleep", "cat", "ls", "grep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(&host, rootfs.join("escape")).unwrap();
    std::os::unix::fs::symlink("/", rootfs.join("rootlink")).unwrap();
    let dotdot = format!("/../../../..{}", host.display());
    let mut layout = Layout::new(&image_dir.join("layout"));
    let layer = layout.add_layer(&rootfs);
    let image = "berth.test/cri:volumes";
    let mut volumes = serde_json::Map::new();
    for v in ["/data", "/escape", dotdot.as_str(), "/kept", "/rootlink"] {
        volumes.insert(v.to_string(), json!({}));
    }
    let manifest = layout.add_image_with_config(
        &[layer],
        host_architecture(),
        json!({"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"], "Volumes": volumes}),
    );
    layout.tag(image, &manifest);
    let archive = layout.archive(&image_dir.join("image.tar"));
    let (ok, _, err) = cri
        .stack
        .berth(&["-n", "k8s.io", "import", archive.to_str().unwrap()]);
    assert!(ok, "import: {err}");

    let kept = tmp.path().join("kept-host");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("mine"), b"host mount").unwrap();
    let pod = cri.write_config(
        "volumes-pod.json",
        json!({
            "metadata": {"name": "volumes", "namespace": "test", "uid": "pod-uid-vol", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let container = cri.write_config(
        "volumes-container.json",
        json!({
            "metadata": {"name": "vol"},
            "image": {"image": image},
            "mounts": [{"container_path": "/kept", "host_path": kept.display().to_string()}],
        }),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    let ctr_id = cri.ok(&["create", &pod_id, &container, &pod]);
    cri.ok(&["start", &ctr_id]);
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-s", ctr_id.as_str()];
        all.extend(args);
        cri.crictl(&all)
    };
    // The image's content, on a mount of its own, writable.
    let (ok, out, err) = exec(&["cat", "/data/seed"]);
    assert!(ok && out.trim() == "from-image", "/data/seed: {out} {err}");
    let (_, mounts, _) = exec(&["cat", "/proc/self/mountinfo"]);
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(4) == Some("/data")),
        "/data is not a mount: {mounts}"
    );
    let (ok, _, err) = exec(&["sh", "-c", "echo written > /data/new"]);
    assert!(ok, "writing to the volume: {err}");
    let volumes_dir = cri
        .crid
        .root
        .join("containers")
        .join(&ctr_id)
        .join("volumes");
    let written = std::fs::read_dir(&volumes_dir)
        .unwrap()
        .flatten()
        .any(|d| std::fs::read(d.path().join("new")).is_ok_and(|b| b == b"written\n"));
    assert!(
        written,
        "the write is not in a volume under {volumes_dir:?}"
    );
    // Nothing of the host's, through the symlink or through `..`.
    for path in ["/escape/canary", &format!("{}/canary", host.display())] {
        let (ok, out, _) = exec(&["cat", path]);
        assert!(
            !(ok || out.contains("host")),
            "{path} shows the host's canary"
        );
    }
    // A volume that is a symlink to `/` gets the image's root, not the
    // host's.
    let (ok, _, err) = exec(&["ls", "/rootlink/bin/busybox"]);
    assert!(ok, "the image's root under /rootlink: {err}");
    let (ok, _, _) = exec(&["cat", &format!("/rootlink{}/canary", host.display())]);
    assert!(!ok, "the host's canary under /rootlink");
    // A CRI mount over a volume path wins: no volume is made for it.
    let (ok, out, err) = exec(&["cat", "/kept/mine"]);
    assert!(ok && out.trim() == "host mount", "/kept: {out} {err}");
    let (ok, _, _) = exec(&["cat", "/kept/seed"]);
    assert!(!ok, "the image's /kept was copied over the CRI mount");
    assert_eq!(std::fs::read(host.join("canary")).unwrap(), b"host");

    cri.ok(&["stop", &ctr_id]);
    cri.ok(&["rm", &ctr_id]);
    assert!(
        !cri.crid.root.join("containers").join(&ctr_id).exists(),
        "the container's volumes outlived it"
    );
    cri.ok(&["rmp", "-f", &pod_id]);
}

/// A port on loopback nothing listens on now (the pod below shares the
/// host's network).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `crictl --transport websocket`: exec over the v5 channel protocol
/// (stdin in, its end as v5's half-close, stdout out, the exit status on
/// the error channel), attach, and port-forward as SPDY tunnelled through
/// WebSocket, against the same streaming server and handlers as SPDY.
#[test]
fn exec_attach_and_port_forward_work_over_websocket() {
    let Some(tmp) = crictl_test_dir() else {
        return;
    };
    let dir = tmp.path();
    let cri = Cri::start(dir);
    let pod = cri.write_config(
        "pod.json",
        json!({
            "metadata": {"name": "ws", "namespace": "test", "uid": "pod-uid-ws", "attempt": 0},
            "log_directory": dir.join("pod-logs").display().to_string(),
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
        }),
    );
    let port = free_port();
    let container = cri.write_config(
        "container.json",
        json!({
            "metadata": {"name": "server"},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/sh", "-c", format!(
                "mkdir -p /tmp/www && echo over-the-tunnel > /tmp/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h /tmp/www"
            )],
            "log_path": "server.log",
        }),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    let ctr_id = cri.ok(&["create", &pod_id, &container, &pod]);
    cri.ok(&["start", &ctr_id]);

    let streamed = cri.crictl_with_input(
        &[
            "exec",
            "--transport",
            "websocket",
            "-i",
            &ctr_id,
            "/bin/sh",
            "-c",
            "read line; echo got $line; cat; echo stdin-closed >&2; exit 4",
        ],
        b"hello\nmore\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout),
        "got hello\nmore\n",
        "{}",
        String::from_utf8_lossy(&streamed.stderr)
    );
    let said = String::from_utf8_lossy(&streamed.stderr);
    assert!(said.contains("stdin-closed"), "stderr channel: {said}");
    assert!(
        !streamed.status.success() && said.contains("exit code 4"),
        "{said}"
    );
    let (ok, out, err) = cri.crictl(&[
        "exec",
        "--transport",
        "websocket",
        &ctr_id,
        "/bin/echo",
        "quiet",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "quiet");

    // Attach with stdin_once: the end of crictl's stdin closes the
    // container's, and what the container writes after that still
    // arrives, until it exits (as containerd streams it).
    let attachable = cri.write_config(
        "attachable.json",
        json!({
            "metadata": {"name": "reader"},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/sh", "-c", "cat; echo after-stdin"],
            "stdin": true,
            "stdin_once": true,
            "log_path": "reader.log",
        }),
    );
    let reader_id = cri.ok(&["create", &pod_id, &attachable, &pod]);
    cri.ok(&["start", &reader_id]);
    let attached = cri.crictl_with_input(
        &["attach", "--transport", "websocket", "-i", &reader_id],
        b"hello\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&attached.stdout),
        "hello\nafter-stdin\n",
        "{}",
        String::from_utf8_lossy(&attached.stderr)
    );

    let local = free_port();
    let endpoint = format!("unix://{}", cri.crid.socket.display());
    let mut forwarder = Command::new(crictl_path())
        .args([
            "-r",
            &endpoint,
            "-i",
            &endpoint,
            "port-forward",
            "--transport",
            "websocket",
        ])
        .arg(&pod_id)
        .arg(format!("{local}:{port}"))
        .env("HOME", dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running crictl port-forward");
    let mut answer = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() {
                answer.clear();
                let _ = stream.read_to_string(&mut answer);
                if answer.contains("over-the-tunnel") {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    assert!(
        answer.contains("over-the-tunnel"),
        "through the tunnel: {answer:?}"
    );
    cri.ok(&["rmp", "-f", &pod_id]);
}

/// Every file called `name` under `dir` (symlinks not followed).
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(files_named(&path, name)),
            Ok(_) if entry.file_name() == name => found.push(path),
            _ => {}
        }
    }
    found
}

/// A pod whose `userns_options` ask for a user namespace of its own
/// (Kubernetes' `hostUsers: false`): the pause process and the containers
/// share one user namespace with the pod's mappings, root inside is 420000
/// outside, the image's root-owned files are root's inside (the layers are
/// id-mapped, not copied), what root writes lands as 420000 on the host,
/// and the pod's network namespace belongs to it (CNI's bridge set up
/// inside, sysfs mounted). Every request the CRI or runc cannot honour is
/// refused with nothing made, and removing the pod unpins its namespaces.
#[test]
fn a_pod_in_a_user_namespace_of_its_own_maps_every_file_and_process() {
    let Some(tmp) = berth_e2e::cri::crictl_cni_test_dir() else {
        return;
    };
    // runc reaches the bundle from inside the user namespace, so the path
    // to taskd's state must be passable by others, as /run is (a temp
    // directory is not).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // A network namespace of this test's own: the bridge is made in it,
    // never on the host.
    berth_e2e::cri::enter_private_network();
    let dir = tmp.path();
    berth_e2e::cri::write_bridge_network(dir, "userns-test", "userns0", "10.88.78.0/24", &[]);
    let mut cri = Cri::start(dir);
    let info: serde_json::Value = serde_json::from_str(&cri.ok(&["info"])).unwrap();
    let handlers = info["runtimeHandlers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !handlers.is_empty()
            && handlers
                .iter()
                .all(|h| h["features"]["user_namespaces"] == true
                    || h["features"]["userNamespaces"] == true),
        "every handler says it has user namespaces: {info}"
    );

    let userns = |mode: i32, uids: serde_json::Value, gids: serde_json::Value| json!({"mode": mode, "uids": uids, "gids": gids});
    let mapping = |host: u32| json!([{"container_id": 0, "host_id": host, "length": 65536}]);
    let pod_config = |name: &str, network: i32, options: serde_json::Value| {
        json!({
            "metadata": {"name": name, "namespace": "test", "uid": format!("uid-{name}"), "attempt": 0},
            "linux": {"security_context": {"namespace_options": {
                "network": network, "userns_options": options,
            }}},
        })
    };
    let state = cri.crid.state.clone();
    let pinned = |kind: &str| -> Vec<String> {
        std::fs::read_dir(state.join(kind))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    // What cannot be honoured: refused, nothing made.
    let refused = [
        (
            "two-mappings",
            userns(
                0,
                json!([
            {"container_id": 0, "host_id": 420000, "length": 1000},
            {"container_id": 1000, "host_id": 520000, "length": 1000}]),
                mapping(430000),
            ),
        ),
        (
            "root-unmapped",
            userns(
                0,
                json!([{"container_id": 1, "host_id": 420000, "length": 65536}]),
                mapping(430000),
            ),
        ),
        ("host-root", userns(0, mapping(0), mapping(0))),
        (
            "past-the-end",
            userns(
                0,
                json!([{"container_id": 0, "host_id": 4294967000u32, "length": 65536}]),
                mapping(430000),
            ),
        ),
        ("no-gids", userns(0, mapping(420000), json!([]))),
        ("container-mode", userns(1, json!([]), json!([]))),
        ("target-mode", userns(3, json!([]), json!([]))),
    ];
    for (name, options) in refused {
        let config = cri.write_config(&format!("{name}.json"), pod_config(name, 0, options));
        let (ok, out, err) = cri.crictl(&["runp", &config]);
        assert!(!ok, "{name}: a pod was made: {out}");
        assert!(
            err.contains("user namespace") || err.contains("mapping"),
            "{name}: {err}"
        );
    }
    assert_eq!(
        cri.ok(&["pods", "-q"]).trim(),
        "",
        "a refused pod is listed"
    );
    assert!(pinned("userns").is_empty() && pinned("netns").is_empty());

    let pod = cri.write_config(
        "userns-pod.json",
        pod_config("userns", 0, userns(0, mapping(420000), mapping(430000))),
    );
    // Two host directories as volumes: one id-mapped as the kubelet asks
    // for a pod in a user namespace, one as is.
    let (mapped_vol, plain_vol) = (dir.join("mapped-volume"), dir.join("plain-volume"));
    for vol in [&mapped_vol, &plain_vol] {
        std::fs::create_dir(vol).unwrap();
        std::fs::write(vol.join("seed"), "host").unwrap();
    }
    let container = cri.write_config(
        "userns-container.json",
        json!({
            "metadata": {"name": "mapped"},
            "image": {"image": POD_IMAGE},
            "mounts": [{
                "container_path": "/mapped",
                "host_path": mapped_vol.display().to_string(),
                "uidMappings": mapping(420000),
                "gidMappings": mapping(430000),
            }, {
                "container_path": "/plain",
                "host_path": plain_vol.display().to_string(),
            }],
            "linux": {"security_context": {"namespace_options": {
                "userns_options": userns(0, mapping(420000), mapping(430000)),
            }}},
        }),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    assert_eq!(pinned("userns"), std::slice::from_ref(&pod_id));
    assert_eq!(pinned("netns"), std::slice::from_ref(&pod_id));
    let ctr_id = cri.ok(&["create", &pod_id, &container, &pod]);
    cri.ok(&["start", &ctr_id]);
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-s", ctr_id.as_str()];
        all.extend(args);
        let (ok, out, err) = cri.crictl(&all);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let words = |text: String| {
        text.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(exec(&["cat", "/proc/self/uid_map"])),
        ["0", "420000", "65536"]
    );
    assert_eq!(
        words(exec(&["cat", "/proc/self/gid_map"])),
        ["0", "430000", "65536"]
    );
    assert_eq!(exec(&["id", "-u"]).trim(), "0");
    // The image's files are root's inside, through the id-mapped layers.
    assert_eq!(
        exec(&["busybox", "stat", "-c", "%u:%g", "/bin/busybox"]).trim(),
        "0:0"
    );
    // Root writes its root filesystem and the pod's files.
    exec(&[
        "sh",
        "-c",
        "echo mine > /written && echo 10.0.0.1 extra >> /etc/hosts",
    ]);
    assert_eq!(
        exec(&["busybox", "stat", "-c", "%u:%g", "/written"]).trim(),
        "0:0"
    );
    // The id-mapped volume is root's inside, and what root writes there
    // is the host's root's on the disk; the other one is nobody's inside
    // (65534, the kernel's overflow id) and cannot be written.
    assert_eq!(
        exec(&["busybox", "stat", "-c", "%u:%g", "/mapped/seed"]).trim(),
        "0:0"
    );
    exec(&["sh", "-c", "echo from-pod > /mapped/new"]);
    let new_file = std::fs::metadata(mapped_vol.join("new")).unwrap();
    assert_eq!((new_file.uid(), new_file.gid()), (0, 0));
    assert_eq!(
        exec(&["busybox", "stat", "-c", "%u:%g", "/plain/seed"]).trim(),
        "65534:65534"
    );
    let (ok, _, _) = cri.crictl(&["exec", "-s", &ctr_id, "sh", "-c", "echo x > /plain/new"]);
    assert!(
        !ok && !plain_vol.join("new").exists(),
        "root inside wrote a host root's directory"
    );
    // The pod's network is its own: CNI's interface, and sysfs shows it.
    let net = exec(&["cat", "/proc/net/dev"]);
    assert!(net.contains("eth0"), "{net}");
    let sys = exec(&["busybox", "ls", "/sys/class/net"]);
    assert!(sys.contains("eth0"), "{sys}");

    // From the host: both processes in one user namespace, with the pod's
    // mappings, and the written file owned by the mapped root.
    let ctr_pid = cri.inspect("inspect", &ctr_id)["info"]["pid"]
        .as_u64()
        .unwrap();
    let pause_pid = cri.inspect("inspectp", &pod_id)["info"]["pid"]
        .as_u64()
        .unwrap();
    let ns = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_eq!(ns(ctr_pid), ns(pause_pid));
    assert_ne!(
        ns(ctr_pid),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    let written = std::fs::metadata(format!("/proc/{ctr_pid}/root/written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (420000, 430000));
    // The overlay shows the image's files as the mapped root's to anyone;
    // the layer itself, which other containers share, is untouched.
    let through = std::fs::metadata(format!("/proc/{ctr_pid}/root/bin/busybox")).unwrap();
    assert_eq!((through.uid(), through.gid()), (420000, 430000));
    let layers: Vec<_> = files_named(&cri.stack.snapd.root, "busybox");
    assert!(!layers.is_empty(), "no layer holds bin/busybox");
    for layer in layers {
        assert_eq!(
            std::fs::symlink_metadata(&layer).unwrap().uid(),
            0,
            "{layer:?}"
        );
    }

    // crid SIGKILLed and restarted: the pod and its container go on as
    // they were. A creation cut short by the kill left an id-mapped clone
    // behind (made here by hand, of a directory with a canary): the restart
    // detaches and unlinks it, and the canary stays.
    let canary_dir = dir.join("canary-volume");
    std::fs::create_dir(&canary_dir).unwrap();
    std::fs::write(canary_dir.join("canary"), "keep").unwrap();
    let leftover = state.join("idmapped").join("no-such-container");
    std::fs::create_dir_all(leftover.join("0")).unwrap();
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&canary_dir)
        .arg(leftover.join("0"))
        .status()
        .unwrap();
    assert!(bound.success());
    cri.crid.kill();
    cri.crid.restart();
    let (ok, out, err) = cri.crictl(&["exec", "-s", &ctr_id, "cat", "/proc/self/uid_map"]);
    assert!(ok, "exec after the restart: {err}");
    assert_eq!(words(out), ["0", "420000", "65536"]);
    let status = cri.inspect("inspectp", &pod_id);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    assert!(
        !leftover.exists(),
        "the leftover clone outlived the restart"
    );
    assert_eq!(std::fs::read(canary_dir.join("canary")).unwrap(), b"keep");

    // A pod on the host's network with a user namespace: sysfs cannot be
    // mounted there, the host's /sys is bound read-only instead.
    let host_pod = cri.write_config(
        "userns-host-pod.json",
        pod_config(
            "userns-host",
            2,
            userns(0, mapping(440000), mapping(440000)),
        ),
    );
    let host_ctr = cri.write_config(
        "userns-host-container.json",
        json!({
            "metadata": {"name": "mapped-host"},
            "image": {"image": POD_IMAGE},
            "linux": {"security_context": {"namespace_options": {
                "network": 2,
                "userns_options": userns(0, mapping(440000), mapping(440000)),
            }}},
        }),
    );
    let host_pod_id = cri.ok(&["runp", &host_pod]);
    let host_ctr_id = cri.ok(&["create", &host_pod_id, &host_ctr, &host_pod]);
    cri.ok(&["start", &host_ctr_id]);
    let (ok, out, err) = cri.crictl(&["exec", "-s", &host_ctr_id, "cat", "/proc/self/uid_map"]);
    assert!(ok, "{err}");
    assert_eq!(words(out), ["0", "440000", "65536"]);
    let (ok, out, _) = cri.crictl(&[
        "exec",
        "-s",
        &host_ctr_id,
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert!(ok && out.contains("lo"), "{out}");
    // A container whose user namespace is not its pod's is refused.
    let other = cri.write_config(
        "userns-other.json",
        json!({
            "metadata": {"name": "other"},
            "image": {"image": POD_IMAGE},
            "linux": {"security_context": {"namespace_options": {
                "userns_options": userns(0, mapping(450000), mapping(450000)),
            }}},
        }),
    );
    let (ok, _, err) = cri.crictl(&["create", &pod_id, &other, &pod]);
    assert!(!ok && err.contains("user namespace"), "{err}");

    // An id-mapped mount in a pod without a user namespace is refused.
    let plain_pod = cri.write_config("plain-pod.json", pod_config("plain", 2, json!(null)));
    let plain_pod_id = cri.ok(&["runp", &plain_pod]);
    let (ok, _, err) = cri.crictl(&["create", &plain_pod_id, &container, &plain_pod]);
    assert!(!ok && err.contains("user namespace"), "{err}");
    cri.ok(&["rmp", "-f", &plain_pod_id]);

    cri.ok(&["rmp", "-f", &pod_id]);
    cri.ok(&["rmp", "-f", &host_pod_id]);
    assert!(pinned("userns").is_empty(), "{:?}", pinned("userns"));
    assert!(pinned("idmapped").is_empty(), "{:?}", pinned("idmapped"));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&state.display().to_string()),
        "mounts left under crid's state: {mountinfo}"
    );
    assert_eq!(
        std::fs::read(mapped_vol.join("seed")).unwrap(),
        b"host",
        "the volume outlived its clone"
    );
    assert!(pinned("netns").is_empty(), "{:?}", pinned("netns"));
}

/// The kubelet's default pod (each container its own PID namespace) gets
/// no pause process: crid pins the pod's network, IPC and UTS namespaces
/// itself, sets the pod's hostname and sysctls in them, and its containers
/// join them. A pod that shares one PID namespace still gets a pause
/// process as that namespace's first process.
#[test]
fn a_pod_whose_containers_share_no_pid_namespace_runs_without_a_pause_process() {
    use std::os::unix::fs::MetadataExt;
    let Some(tmp) = berth_e2e::cri::crictl_cni_test_dir() else {
        return;
    };
    berth_e2e::cri::enter_private_network();
    let dir = tmp.path();
    berth_e2e::cri::write_bridge_network(dir, "nopause-test", "nopause0", "10.88.79.0/24", &[]);
    let mut cri = Cri::start(dir);
    let state = cri.crid.state.clone();
    let pinned = |kind: &str, id: &str| state.join(kind).join(id);
    // CRI's NamespaceMode: POD 0, CONTAINER 1, NODE 2.
    let namespaces = |pid: i32| json!({"network": 0, "pid": pid, "ipc": 0});
    let pod_config = |name: &str, pid: i32, sysctls: serde_json::Value| {
        json!({
            "metadata": {"name": name, "namespace": "test", "uid": format!("uid-{name}"), "attempt": 0},
            "hostname": format!("{name}-host"),
            "linux": {
                "sysctls": sysctls,
                "security_context": {"namespace_options": namespaces(pid)},
            },
        })
    };
    let container_config = |name: &str, pid: i32| {
        json!({
            "metadata": {"name": name},
            "image": {"image": POD_IMAGE},
            "command": ["/bin/sleep", "1000"],
            "linux": {"security_context": {"namespace_options": namespaces(pid)}},
        })
    };
    let pod = cri.write_config(
        "nopause-pod.json",
        pod_config(
            "nopause",
            1,
            json!({"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"}),
        ),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    let info = cri.inspect("inspectp", &pod_id);
    assert_eq!(info["info"]["pid"], 0, "{info}");
    assert_eq!(info["info"]["pauseProcess"], false, "{info}");
    assert_eq!(info["status"]["state"], "SANDBOX_READY", "{info}");
    assert!(
        !info["status"]["network"]["ip"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "CNI gave the pod an address: {info}"
    );
    for kind in ["netns", "ipcns", "utsns", "shm"] {
        assert!(pinned(kind, &pod_id).exists(), "{kind} pinned");
    }
    // Read from inside the pinned namespaces before any container runs:
    // crid set the hostname and the sysctls there itself.
    let inside = |dir: &str, id: &str, file: &'static str| {
        let (path, flag) = (
            pinned(dir, id),
            match dir {
                "utsns" => nix::sched::CloneFlags::CLONE_NEWUTS,
                "ipcns" => nix::sched::CloneFlags::CLONE_NEWIPC,
                _ => nix::sched::CloneFlags::CLONE_NEWNET,
            },
        );
        std::thread::spawn(move || {
            nix::sched::setns(std::fs::File::open(path).unwrap(), flag).unwrap();
            std::fs::read_to_string(file).unwrap().trim().to_string()
        })
        .join()
        .unwrap()
    };
    assert_eq!(
        inside("utsns", &pod_id, "/proc/sys/kernel/hostname"),
        "nopause-host"
    );
    assert_eq!(
        inside("ipcns", &pod_id, "/proc/sys/kernel/shm_rmid_forced"),
        "1"
    );
    assert_eq!(
        inside(
            "netns",
            &pod_id,
            "/proc/sys/net/ipv4/ip_unprivileged_port_start"
        ),
        "80"
    );
    // No task of the pod's own: nothing but its containers will run. The
    // pod is a record in metad all the same, with its namespaces.
    let (ok, tasks, err) = cri.stack.berth(&["-n", "k8s.io", "tasks", "ls"]);
    assert!(ok, "{err}");
    assert!(!tasks.contains(&pod_id), "{tasks}");
    let (ok, record, err) = cri
        .stack
        .berth(&["-n", "k8s.io", "containers", "info", &pod_id]);
    assert!(ok, "{err}");
    assert!(
        record.contains("io.cri-containerd.kind") && record.contains(&format!("utsns/{pod_id}")),
        "{record}"
    );

    let mut pids = Vec::new();
    for name in ["first", "second"] {
        let ctr = cri.write_config(&format!("nopause-{name}.json"), container_config(name, 1));
        let id = cri.ok(&["create", &pod_id, &ctr, &pod]);
        cri.ok(&["start", &id]);
        let exec = |args: &[&str]| {
            let mut all = vec!["exec", "-s", id.as_str()];
            all.extend_from_slice(args);
            cri.ok(&all)
        };
        // The pod's name, in its namespace, its /etc/hostname and the
        // container's HOSTNAME (as containerd sets it; read from the
        // process's environment: a shell would set one itself).
        assert_eq!(
            exec(&["sh", "-c", "hostname; cat /etc/hostname"]).trim(),
            "nopause-host\nnopause-host"
        );
        let environment = exec(&["cat", "/proc/1/environ"]);
        assert!(
            environment
                .split('\0')
                .any(|e| e == "HOSTNAME=nopause-host"),
            "{environment:?}"
        );
        assert_eq!(
            exec(&["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).trim(),
            "80"
        );
        assert_eq!(
            exec(&["cat", "/proc/sys/kernel/shm_rmid_forced"]).trim(),
            "1"
        );
        assert!(exec(&["cat", "/proc/net/dev"]).contains("eth0"));
        // Its own PID namespace: its sleep is PID 1 there.
        assert!(exec(&["cat", "/proc/1/cmdline"]).starts_with("/bin/sleep"));
        // The pod's /dev/shm: what the first wrote, the second reads.
        if name == "first" {
            exec(&["sh", "-c", "echo shared > /dev/shm/from-first"]);
        } else {
            assert_eq!(exec(&["cat", "/dev/shm/from-first"]).trim(), "shared");
        }
        pids.push(cri.inspect("inspect", &id)["info"]["pid"].as_u64().unwrap());
    }
    // Both in the pinned namespaces; each in a PID namespace of its own.
    let ns_ino = |pid: u64, kind: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .ino()
    };
    for (kind, dir) in [("net", "netns"), ("ipc", "ipcns"), ("uts", "utsns")] {
        let pinned_ino = std::fs::metadata(pinned(dir, &pod_id)).unwrap().ino();
        for pid in &pids {
            assert_eq!(ns_ino(*pid, kind), pinned_ino, "{kind} of {pid}");
        }
        assert_ne!(
            pinned_ino,
            std::fs::metadata(format!("/proc/self/ns/{kind}"))
                .unwrap()
                .ino()
        );
    }
    assert_ne!(ns_ino(pids[0], "pid"), ns_ino(pids[1], "pid"));
    // The node's own are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "nopause-host"
    );

    // A container asking for its pod's shared PID namespace: there is none.
    let shared = cri.write_config("nopause-shared.json", container_config("shared", 0));
    let (ok, _, err) = cri.crictl(&["create", &pod_id, &shared, &pod]);
    assert!(!ok && err.contains("PID namespace"), "{err}");

    // A sysctl of the node's, or one that names no file under /proc/sys:
    // refused before anything is made.
    let pods_before = cri.ok(&["pods", "-q"]);
    for (n, sysctls) in [
        json!({"kernel.pid_max": "4194304"}),
        json!({"net.ipv4..ip_forward": "1"}),
        json!({"net/../../../etc/hostname": "x"}),
    ]
    .into_iter()
    .enumerate()
    {
        let bad = cri.write_config(
            &format!("nopause-bad-{n}.json"),
            pod_config(&format!("bad{n}"), 1, sysctls),
        );
        let (ok, _, err) = cri.crictl(&["runp", &bad]);
        assert!(!ok && err.contains("sysctl"), "{err}");
    }
    assert_eq!(cri.ok(&["pods", "-q"]), pods_before);
    for kind in ["netns", "ipcns", "utsns"] {
        let names: Vec<_> = std::fs::read_dir(state.join(kind))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(&pod_id)], "{kind}");
    }

    // crid restarts: the pod is still ready (it has no process to ask), its
    // containers still run in its namespaces. A pod whose namespaces went
    // while crid was down (as a reboot takes /run) is not ready any more.
    let lost = cri.write_config("lost-pod.json", pod_config("lost", 1, json!({})));
    let lost_id = cri.ok(&["runp", &lost]);
    // A container created, not started: its user (in its status) is known
    // after the restart too, though only the start writes it.
    let mut unstarted = container_config("unstarted", 1);
    unstarted["linux"]["security_context"]["run_as_user"] = json!({"value": 1234});
    let unstarted = cri.write_config("nopause-unstarted.json", unstarted);
    let unstarted_id = cri.ok(&["create", &pod_id, &unstarted, &pod]);
    let uid_of = |cri: &Cri, id: &str| {
        let status = cri.inspect("inspect", id);
        let uid = &status["status"]["user"]["linux"]["uid"];
        uid.as_str()
            .map(str::to_string)
            .or(uid.as_u64().map(|u| u.to_string()))
            .unwrap_or_else(|| panic!("no user in {status}"))
    };
    assert_eq!(uid_of(&cri, &unstarted_id), "1234");
    cri.crid.kill();
    nix::mount::umount2(&pinned("utsns", &lost_id), nix::mount::MntFlags::MNT_DETACH).unwrap();
    cri.crid.restart();
    let info = cri.inspect("inspectp", &pod_id);
    assert_eq!(info["status"]["state"], "SANDBOX_READY", "{info}");
    let info = cri.inspect("inspectp", &lost_id);
    assert_eq!(info["status"]["state"], "SANDBOX_NOTREADY", "{info}");
    cri.ok(&["rmp", &lost_id]);
    assert_eq!(uid_of(&cri, &unstarted_id), "1234");
    cri.ok(&["rm", &unstarted_id]);
    let running = cri.ok(&["ps", "-q", "--state", "running", "-p", &pod_id]);
    assert_eq!(running.lines().count(), 2, "{running}");

    // A pod whose containers share one PID namespace has a pause process,
    // in the namespaces crid pinned, as that namespace's first process.
    let shared_pod = cri.write_config("shared-pod.json", pod_config("shared", 0, json!({})));
    let shared_pod_id = cri.ok(&["runp", &shared_pod]);
    let pause = cri.inspect("inspectp", &shared_pod_id)["info"]["pid"]
        .as_u64()
        .unwrap();
    assert!(pause > 0);
    // The pause process kept the pod's hostname.
    assert_eq!(
        inside("utsns", &shared_pod_id, "/proc/sys/kernel/hostname"),
        "shared-host"
    );
    let ctr = cri.write_config("shared-ctr.json", container_config("sharer", 0));
    let ctr_id = cri.ok(&["create", &shared_pod_id, &ctr, &shared_pod]);
    cri.ok(&["start", &ctr_id]);
    let first = cri.ok(&["exec", "-s", &ctr_id, "cat", "/proc/1/cmdline"]);
    assert!(first.contains("pause"), "{first}");
    assert_eq!(
        cri.ok(&["exec", "-s", &ctr_id, "hostname"]).trim(),
        "shared-host"
    );
    let uts = std::fs::metadata(pinned("utsns", &shared_pod_id))
        .unwrap()
        .ino();
    assert_eq!(ns_ino(pause, "uts"), uts);

    // A pod config without a hostname: the pod has the node's, as with
    // containerd, and keeps it whatever containers start in it (none
    // names it after itself).
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut nameless = pod_config("nameless", 1, json!({}));
    nameless.as_object_mut().unwrap().remove("hostname");
    let nameless = cri.write_config("nameless-pod.json", nameless);
    let nameless_id = cri.ok(&["runp", &nameless]);
    let mut nameless_containers = Vec::new();
    for name in ["one", "two"] {
        let ctr = cri.write_config(&format!("nameless-{name}.json"), container_config(name, 1));
        let id = cri.ok(&["create", &nameless_id, &ctr, &nameless]);
        nameless_containers.push(id.clone());
        cri.ok(&["start", &id]);
        let seen = cri.ok(&["exec", "-s", &id, "sh", "-c", "hostname; cat /etc/hostname"]);
        assert_eq!(seen.trim(), format!("{node}\n{node}"), "in {name}");
        let environment = cri.ok(&["exec", "-s", &id, "cat", "/proc/1/environ"]);
        assert!(
            environment
                .split('\0')
                .any(|e| e == format!("HOSTNAME={node}")),
            "{environment:?}"
        );
    }
    assert_eq!(
        inside("utsns", &nameless_id, "/proc/sys/kernel/hostname"),
        node
    );
    // A pod that shares one PID namespace: its pause process does not
    // rename it either.
    let mut nameless_shared = pod_config("nameless-shared", 0, json!({}));
    nameless_shared.as_object_mut().unwrap().remove("hostname");
    let nameless_shared = cri.write_config("nameless-shared-pod.json", nameless_shared);
    let nameless_shared_id = cri.ok(&["runp", &nameless_shared]);
    assert!(cri.inspect("inspectp", &nameless_shared_id)["info"]["pid"].as_u64() > Some(0));
    assert_eq!(
        inside("utsns", &nameless_shared_id, "/proc/sys/kernel/hostname"),
        node
    );
    // Stopped without a grace period: crid's own SIGKILL, not the OOM
    // killer's.
    cri.ok(&["stop", "-t", "0", &nameless_containers[0]]);
    let status = cri.inspect("inspect", &nameless_containers[0]);
    assert_eq!(status["status"]["state"], "CONTAINER_EXITED", "{status}");
    assert_eq!(status["status"]["exitCode"], 137, "{status}");
    assert_eq!(status["status"]["reason"], "Error", "{status}");

    // Stopping unpins all; removing leaves nothing mounted under crid's state.
    for id in [&pod_id, &shared_pod_id, &nameless_id, &nameless_shared_id] {
        cri.ok(&["stopp", id]);
        for kind in ["netns", "ipcns", "utsns", "shm"] {
            assert!(!pinned(kind, id).exists(), "{kind} of {id} after stopp");
        }
        cri.ok(&["rmp", id]);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&state.display().to_string()),
        "mounts left under crid's state: {mountinfo}"
    );
    let (ok, records, err) = cri.stack.berth(&["-n", "k8s.io", "containers", "ls", "-q"]);
    assert!(ok, "{err}");
    assert!(!records.contains(&pod_id), "{records}");
}

/// A pod without a pause process outlives its first container, whose
/// bundle the pod's shim was started in: after that container is removed
/// (the kubelet removes dead containers while their pod runs on), the
/// shim serves the others and new ones, its working directory is a
/// bundle that still exists, and what it logs still reaches taskd's log
/// (it moved to another container's log fifo; before, it went into the
/// removed bundle's, which no one read any more).
#[test]
fn a_pod_outlives_the_container_its_shim_was_started_for() {
    let Some(tmp) = berth_e2e::cri::crictl_cni_test_dir() else {
        return;
    };
    berth_e2e::cri::enter_private_network();
    let dir = tmp.path();
    berth_e2e::cri::write_bridge_network(dir, "outlive-test", "outlive0", "10.88.78.0/24", &[]);
    let cri = Cri::start(dir);
    // The kubelet's default pod: network and IPC per pod, PID per container.
    let namespaces = json!({"network": 0, "pid": 1, "ipc": 0});
    let pod = cri.write_config(
        "outlive-pod.json",
        json!({
            "metadata": {"name": "outlive", "namespace": "test", "uid": "uid-outlive", "attempt": 0},
            "linux": {"security_context": {"namespace_options": namespaces}},
        }),
    );
    let pod_id = cri.ok(&["runp", &pod]);
    assert_eq!(
        cri.inspect("inspectp", &pod_id)["info"]["pauseProcess"],
        false
    );
    let container = |name: &str, command: &[&str]| {
        let config = cri.write_config(
            &format!("outlive-{name}.json"),
            json!({
                "metadata": {"name": name},
                "image": {"image": POD_IMAGE},
                "command": command,
                "linux": {"security_context": {"namespace_options": namespaces}},
            }),
        );
        cri.ok(&["create", &pod_id, &config, &pod])
            .trim()
            .to_string()
    };
    let parent_of = |pid: u64| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command's closing parenthesis: state, ppid.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let pid_of = |id: &str| cri.inspect("inspect", id)["info"]["pid"].as_u64().unwrap();
    let first = container("first", &["/bin/sleep", "1000"]);
    cri.ok(&["start", &first]);
    let second = container("second", &["/bin/sleep", "1000"]);
    cri.ok(&["start", &second]);
    let shim = parent_of(pid_of(&first));
    assert_eq!(parent_of(pid_of(&second)), shim, "one shim serves the pod");
    let cwd = || std::fs::read_link(format!("/proc/{shim}/cwd")).unwrap();
    assert!(cwd().ends_with(&first), "{:?}", cwd());

    cri.ok(&["stop", "-t", "0", &first]);
    cri.ok(&["rm", &first]);
    let now = cwd();
    assert!(
        now.ends_with(&second) && now.exists(),
        "the shim's working directory after its first container went: {now:?}"
    );

    // A container whose start fails in the shim: the shim's own line about
    // it reaches taskd's log.
    let broken = container("broken", &["/no/such/program"]);
    let (ok, _, err) = cri.crictl(&["start", &broken]);
    assert!(!ok, "{err}");
    // taskd copies the fifo into its log on a task of its own.
    let line = format!("create of {broken}");
    wait_for(
        "the shim's log line about the failed create in taskd's log",
        Duration::from_secs(30),
        || cri.stack.taskd.log_text().contains(&line),
    );
    cri.ok(&["rm", &broken]);

    // The shim serves the pod on: a new container in it, an exec into it,
    // the second still running.
    let third = container("third", &["/bin/sleep", "1000"]);
    cri.ok(&["start", &third]);
    assert_eq!(parent_of(pid_of(&third)), shim);
    assert_eq!(
        cri.ok(&["exec", "-s", &third, "echo", "still-served"])
            .trim(),
        "still-served"
    );
    let running = cri.ok(&["ps", "-q", "--state", "running", "-p", &pod_id]);
    let mut running: Vec<&str> = running.lines().collect();
    running.sort();
    let mut want = vec![second.as_str(), third.as_str()];
    want.sort();
    assert_eq!(running, want);
    // Its last containers gone, the shim goes too.
    cri.ok(&["stopp", &pod_id]);
    cri.ok(&["rmp", &pod_id]);
    let gone = Instant::now();
    while Path::new(&format!("/proc/{shim}")).exists() && gone.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = std::fs::read_to_string(format!("/proc/{shim}/cmdline")).unwrap_or_default();
    assert!(
        !left.contains("containerd-shim-berth-v2"),
        "the pod's shim is still there after the pod went"
    );
}

/// crid's own tests again, in a virtual machine whose kernel has only the
/// cgroup v2 hierarchy (this host's controllers are on v1): pods and
/// containers with their cgroups, device rules, stats, exec and restart
/// recovery on v2. The pods share the guest's network (the guest has no
/// bridge module).
#[test]
fn the_cri_tests_pass_again_on_a_cgroup_v2_kernel() {
    if crictl_test_dir().is_none() {
        return;
    }
    let guest = berth_e2e::guest::Guest::find();
    if !berth_e2e::require(
        guest.is_ok(),
        guest.as_ref().err().map_or("", String::as_str),
    ) {
        return;
    }
    let tests = [
        "a_pod_lives_through_crictl_and_a_crid_restart",
        "exec_sync_output_is_bounded_and_failed_execs_leak_nothing",
        "image_volumes_are_copied_up_from_inside_the_image",
    ];
    let dir = tempfile::Builder::new()
        .prefix("berth-guest-")
        .tempdir_in("/var/tmp")
        .unwrap();
    guest
        .unwrap()
        .run_tests(dir.path(), &tests, "cgroup_no_v1=all")
        .assert_all_passed_on_cgroup_v2(&tests);
}

/// critest (cri-tools 1.34, ../shared/critest) against a fresh berth stack:
/// every spec listed in tests/cri/critest-pass.txt must pass. The list
/// grows as berth-crid does; containerd 2.2.7 passes 92 here.
#[test]
fn critest_passes_every_spec_berth_is_known_to_pass() {
    let runner = shared().join("critest/run.sh");
    if !berth_e2e::require(berth_e2e::is_root(), "needs root")
        || !berth_e2e::require(runner.exists(), "../shared/critest/run.sh")
        || !berth_e2e::require(berth_e2e::on_path("docker-registry"), "docker-registry")
        || !berth_e2e::require(
            Path::new("/usr/lib/cni/bridge").exists(),
            "containernetworking-plugins",
        )
    {
        return;
    }
    let images = Command::new(shared().join("critest/mkimages.py"))
        .output()
        .expect("running mkimages.py");
    assert!(
        images.status.success(),
        "mkimages.py: {}",
        String::from_utf8_lossy(&images.stderr)
    );
    let out = tempfile::Builder::new()
        .prefix("berth-critest-")
        .tempdir_in("/tmp")
        .unwrap();
    let bin = binary("berth-crid").parent().unwrap().to_path_buf();
    let stack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cri-stack.sh");
    let result = Command::new(&runner)
        .arg(out.path().join("berth"))
        .env("CRI_ENDPOINT", "unix://@RUN@/berth/run/cri.sock")
        .env(
            "CRI_SERVER_CMD",
            format!("exec {} \"$CRI_ORACLE_RUN/berth\"", stack.display()),
        )
        .env("BERTH_BIN", &bin)
        .output()
        .expect("running critest");
    let summary =
        std::fs::read_to_string(out.path().join("berth/summary.txt")).unwrap_or_else(|e| {
            panic!(
                "no summary ({e}); runner said: {}\n{}",
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            )
        });
    let passed: std::collections::HashSet<&str> = summary
        .lines()
        .filter_map(|l| l.strip_prefix("PASS  "))
        .collect();
    let expected = include_str!("../cri/critest-pass.txt");
    let missing: Vec<&str> = expected
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|spec| !passed.contains(spec))
        .collect();
    let failures =
        std::fs::read_to_string(out.path().join("berth/failures.txt")).unwrap_or_default();
    assert!(
        missing.is_empty(),
        "{} specs berth passed before fail now:\n{}\n\n{failures}",
        missing.len(),
        missing.join("\n")
    );
    let footer = summary
        .lines()
        .rev()
        .find(|l| l.starts_with("# specs"))
        .unwrap_or("");
    eprintln!("critest: {footer}");
}
