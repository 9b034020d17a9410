#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth namespaces|images|containers|leases` against real daemons.

use std::path::Path;

use berth_e2e::Daemon;
use serde_json::Value;

struct Cli {
    contentd: Daemon,
    #[allow(dead_code)] // Asked by metad before a namespace goes.
    snapd: Daemon,
    metad: Daemon,
}

impl Cli {
    fn start(dir: &Path) -> Cli {
        let contentd = Daemon::contentd(&dir.join("contentd"));
        let snapd = Daemon::snapd(&dir.join("snapd"), &contentd);
        let metad = Daemon::metad(&dir.join("metad"), &contentd, &snapd);
        Cli {
            contentd,
            snapd,
            metad,
        }
    }

    /// Runs berth against these daemons; returns (ok, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
        let metad = self.metad.socket.display().to_string();
        let snapd = self.snapd.socket.display().to_string();
        // No taskd here: a socket nobody serves.
        let taskd = self.metad.dir.join("no-taskd.sock").display().to_string();
        let mut all = vec![
            "--metad",
            metad.as_str(),
            "--snapd",
            snapd.as_str(),
            "--taskd",
            taskd.as_str(),
        ];
        all.extend_from_slice(args);
        let (ok, out, err) = berth_e2e::berth(&self.contentd.socket, &all, stdin);
        (ok, String::from_utf8(out).unwrap(), err)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(ok, "berth {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("berth {args:?}: {e}: {out}"))
    }

    /// Runs a command that must fail; returns its one-line error.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(!ok, "berth {args:?} succeeded: {out}");
        assert!(err.starts_with("berth: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    }

    fn ingest(&self, reference: &str, data: &[u8]) -> String {
        self.ingest_labelled(reference, data, &[])
    }

    /// `berth content ingest`, with `--label` for each of `labels`.
    fn ingest_labelled(&self, reference: &str, data: &[u8], labels: &[&str]) -> String {
        let mut args = vec!["content", "ingest"];
        for label in labels {
            args.extend(["--label", label]);
        }
        args.push(reference);
        let (ok, out, err) = self.run(&args, Some(data));
        assert!(ok, "ingest failed: {err}");
        out.trim().to_string()
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn images_create_tag_label_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::start(dir.path());
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let digest = cli.ingest("index", index);

    // The media type and size come from the blob in contentd.
    cli.ok(&[
        "images",
        "create",
        "docker.io/library/busybox:1.36",
        &digest,
        "--label",
        "env=prod",
    ]);
    let image = cli.json(&["images", "inspect", "docker.io/library/busybox:1.36"]);
    assert_eq!(
        image["target"]["media_type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(image["target"]["size"], index.len());
    assert_eq!(image["target"]["digest"], digest.as_str());
    assert_eq!(image["labels"]["env"], "prod");

    cli.ok(&[
        "images",
        "tag",
        "docker.io/library/busybox:1.36",
        "busybox:latest",
        "busybox:stable",
    ]);
    assert_eq!(
        lines(&cli.ok(&["images", "ls", "-q"])),
        vec![
            "busybox:latest",
            "busybox:stable",
            "docker.io/library/busybox:1.36"
        ]
    );
    let err = cli.fails(&["images", "tag", "busybox:latest", "busybox:stable"]);
    assert!(err.contains("already exists"), "{err}");

    cli.ok(&["images", "label", "busybox:stable", "env=", "team=core"]);
    let stable = cli.json(&["images", "inspect", "busybox:stable"]);
    assert_eq!(stable["labels"], serde_json::json!({"team": "core"}));
    assert_eq!(
        lines(&cli.ok(&["images", "ls", "-q", "labels.env==prod"])),
        vec!["busybox:latest", "docker.io/library/busybox:1.36"]
    );
    let listed = cli.json(&["images", "ls", "name~=stable|labels.team==core"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let table = cli.ok(&["images", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("index"), "{table}");

    cli.ok(&["images", "rm", "busybox:latest", "busybox:stable", "--sync"]);
    let err = cli.fails(&["images", "inspect", "busybox:latest"]);
    assert!(
        err.contains("images inspect busybox:latest") && err.contains("not found"),
        "{err}"
    );

    // A blob that is no image needs its media type given; with media type
    // and size given, contentd is not asked at all.
    // A GC root: nothing else refers to it.
    let other = cli.ingest_labelled(
        "other",
        b"just some bytes",
        &["containerd.io/gc.root=cli-metad-test"],
    );
    let err = cli.fails(&["images", "create", "other:1", &other]);
    assert!(err.contains("--media-type"), "{err}");
    cli.ok(&[
        "images",
        "create",
        "unstored:1",
        &format!("sha256:{}", "ab".repeat(32)),
        "--media-type",
        "application/vnd.oci.image.manifest.v1+json",
        "--size",
        "7",
    ]);
    let err = cli.fails(&[
        "images",
        "create",
        "bad name",
        &other,
        "--size",
        "1",
        "--media-type",
        "x/y",
    ]);
    assert!(err.contains("image name"), "{err}");
}

#[test]
fn containers_create_from_an_image_with_a_spec() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::start(dir.path());
    let digest = format!("sha256:{}", "cd".repeat(32));
    cli.ok(&[
        "images",
        "create",
        "busybox:1",
        &digest,
        "--media-type",
        "application/vnd.oci.image.manifest.v1+json",
        "--size",
        "10",
    ]);
    let spec = dir.path().join("config.json");
    std::fs::write(&spec, br#"{"ociVersion":"1.1.0","hostname":"web"}"#).unwrap();
    // Flags before IMAGE ID, as with ctr: after them come the command.
    cli.ok(&[
        "containers",
        "create",
        "--snapshot-key",
        "web-rootfs",
        "--label",
        "tier=web",
        "--spec",
        spec.to_str().unwrap(),
        "busybox:1",
        "web",
    ]);
    cli.ok(&[
        "containers",
        "create",
        "--runtime",
        "io.containerd.runc.v2",
        "--snapshotter",
        "native",
        "--spec",
        spec.to_str().unwrap(),
        "busybox:1",
        "db",
    ]);
    let web = cli.json(&["containers", "info", "web"]);
    assert_eq!(web["spec"]["json"]["hostname"], "web");
    assert_eq!(web["snapshotter"], "overlayfs");
    assert_eq!(web["snapshot_key"], "web-rootfs");
    assert_eq!(web["runtime"]["name"], "io.containerd.berth.v2");
    assert_eq!(
        lines(&cli.ok(&[
            "containers",
            "ls",
            "-q",
            "runtime.name==io.containerd.runc.v2"
        ])),
        vec!["db"]
    );
    assert_eq!(
        lines(&cli.ok(&["containers", "ls", "-q", "snapshotter==overlayfs"])),
        vec!["web"]
    );

    cli.ok(&["containers", "label", "db", "tier=db"]);
    let listed = cli.json(&["containers", "ls", "labels.tier"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let spec_arg = spec.to_str().unwrap();
    let err = cli.fails(&[
        "containers",
        "create",
        "--spec",
        spec_arg,
        "nosuch:1",
        "orphan",
    ]);
    assert!(
        err.contains("containers create orphan") && err.contains("not found"),
        "{err}"
    );
    let err = cli.fails(&[
        "containers",
        "create",
        "--spec",
        spec_arg,
        "busybox:1",
        "web",
    ]);
    assert!(err.contains("already exists"), "{err}");
    let err = cli.fails(&["containers", "create", "--spec", spec_arg, "busybox:1"]);
    assert!(err.contains("IMAGE and ID"), "{err}");
    // (A usage error: clap's, several lines.)
    let (ok, _, err) = cli.run(
        &[
            "containers",
            "create",
            "--snapshot-key",
            "k",
            "busybox:1",
            "x",
        ],
        None,
    );
    assert!(!ok && err.contains("--spec"), "{err}");
    std::fs::write(&spec, b"not json").unwrap();
    let err = cli.fails(&[
        "containers",
        "create",
        "--spec",
        spec_arg,
        "busybox:1",
        "bad-spec",
    ]);
    assert!(err.contains("not JSON"), "{err}");

    cli.ok(&["containers", "rm", "web", "db"]);
    assert_eq!(cli.ok(&["containers", "ls", "-q"]), "");
}

#[test]
fn leases_hold_resources() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::start(dir.path());
    assert_eq!(
        cli.ok(&[
            "leases",
            "create",
            "--id",
            "pull-1",
            "--expires",
            "1h",
            "--label",
            "purpose=pull"
        ])
        .trim(),
        "pull-1"
    );
    let generated = cli.ok(&["leases", "create"]).trim().to_string();
    assert!(!generated.is_empty());
    let listed = cli.json(&["leases", "ls", "labels.purpose==pull"]);
    let leases = listed.as_array().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0]["id"], "pull-1");
    let expires = leases[0]["expires_at"].as_f64().unwrap();
    let created = leases[0]["created_at"].as_f64().unwrap();
    assert!(expires > created, "{expires} <= {created}");

    let blob = format!("sha256:{}", "ef".repeat(32));
    cli.ok(&["leases", "add", "pull-1", "content", &blob]);
    cli.ok(&[
        "leases",
        "add",
        "pull-1",
        "snapshots/overlayfs",
        "sha256:chain",
    ]);
    let resources = cli.json(&["leases", "resources", "pull-1"]);
    assert_eq!(
        resources,
        serde_json::json!([
            {"type": "content", "id": blob},
            {"type": "snapshots/overlayfs", "id": "sha256:chain"},
        ])
    );
    let err = cli.fails(&["leases", "add", "pull-1", "snapshots/zfs", "k"]);
    assert!(err.contains("unknown snapshotter"), "{err}");
    let err = cli.fails(&["leases", "add", "pull-1", "content", "sha256:short"]);
    assert!(err.contains("leases add pull-1"), "{err}");
    cli.ok(&["leases", "remove-resource", "pull-1", "content", &blob]);
    assert_eq!(
        cli.json(&["leases", "resources", "pull-1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    cli.ok(&["leases", "rm", "pull-1", &generated, "--sync"]);
    assert_eq!(cli.ok(&["leases", "ls", "-q"]), "");
    let err = cli.fails(&["leases", "create", "--expires", "soon"]);
    assert!(err.contains("duration"), "{err}");
}

#[test]
fn namespaces_are_removed_only_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::start(dir.path());
    cli.ok(&["namespaces", "create", "team-a", "--label", "owner=alice"]);
    cli.ok(&["namespaces", "label", "team-a", "owner=", "cost=42"]);
    let listed = cli.json(&["namespaces", "ls"]);
    assert_eq!(
        listed,
        serde_json::json!([{"name": "team-a", "labels": {"cost": "42"}}])
    );

    // Content in contentd holds the namespace.
    let (ok, out, err) = cli.run(
        &["-n", "team-a", "content", "ingest", "blob"],
        Some(b"data"),
    );
    assert!(ok, "{err}");
    let digest = out.trim().to_string();
    let err = cli.fails(&["namespaces", "rm", "team-a"]);
    assert!(
        err.contains("namespaces rm team-a") && err.contains("content"),
        "{err}"
    );
    cli.ok(&["-n", "team-a", "content", "rm", &digest]);

    // So does a lease in metad, created there on first use.
    cli.ok(&["-n", "team-b", "leases", "create", "--id", "l"]);
    assert_eq!(
        lines(&cli.ok(&["namespaces", "ls", "-q"])),
        vec!["team-a", "team-b"]
    );
    let err = cli.fails(&["namespaces", "rm", "team-b"]);
    assert!(err.contains("leases"), "{err}");
    cli.ok(&["-n", "team-b", "leases", "rm", "l"]);

    cli.ok(&["namespaces", "rm", "team-a", "team-b"]);
    assert_eq!(cli.ok(&["namespaces", "ls", "-q"]), "");
    let err = cli.fails(&["namespaces", "rm", "team-a"]);
    assert!(err.contains("not found"), "{err}");
    let err = cli.fails(&["namespaces", "create", "../escape"]);
    assert!(err.contains("namespace"), "{err}");
}
