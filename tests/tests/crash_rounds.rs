#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash-consistency rounds (issue 15): work against real daemons through
//! the CLI (pull, pull then unpack, import, tag, remove, gc, ingest) while
//! a random one of contentd, snapd and metad is SIGKILLed at a random
//! moment in the work and restarted; after every round the invariants
//! below are checked on what the daemons keep.
//!
//! - The work the kill interrupted succeeds when done again at once (a
//!   pull, an import, an ingest), and a second pull of an image does no
//!   work.
//! - Every stored blob's bytes match its digest.
//! - Every image record's manifest and everything it names are in the
//!   store.
//! - Every committed snapshot has exactly the tree a clean unpack gave its
//!   chain ID (taken in round 0, before any kill).
//! - After a collection: a second one removes nothing, every active
//!   snapshot belongs to a live lease, no ingest is left without one, and
//!   every lease left behind expires within minutes.
//! - No CLI call hangs.
//!
//! Two more harnesses below kill taskd while containers are run, exec'd
//! and removed, and berth-crid while the kubelet's calls (through crictl)
//! run, stop and remove pods and containers.
//!
//! `BERTH_CRASH_ROUNDS` (default 16) and `BERTH_CRASH_SEED` (default: the
//! clock; printed either way, so a failing sequence can be replayed) steer
//! it; `BERTH_CRASH_REPORT=FILE` writes the figures as JSON (bench/crash.sh
//! runs the long version and prints them).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_e2e::images::{busybox_rootfs, files_rootfs, Layout};
use berth_e2e::registry::Registry;
use berth_e2e::rng::Rng;
use berth_e2e::stack::Stack;
use berth_e2e::tree::{own_dir_of_view, tree_of, Tree};
use berth_e2e::BlockSource;
use berth_ids::Digest;

/// The daemons a round may kill.
const VICTIMS: [&str; 3] = ["contentd", "snapd", "metad"];

#[derive(Debug, Clone)]
enum Work {
    Pull(usize),
    PullThenUnpack(usize),
    Tag(usize),
    Remove(usize),
    Collect,
    Ingest,
    Import,
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Pull(_) => "pull",
            Work::PullThenUnpack(_) => "pull+unpack",
            Work::Tag(_) => "tag",
            Work::Remove(_) => "remove",
            Work::Collect => "gc",
            Work::Ingest => "ingest",
            Work::Import => "import",
        }
    }
}

struct Harness {
    stack: Stack,
    content: RemoteContentStore,
    images: Vec<String>,
    /// Chain ID → the tree of that snapshot's own directory, from a clean
    /// unpack.
    reference: BTreeMap<String, Tree>,
    /// Blob data for ingests, and its digest.
    ingest_data: Vec<u8>,
    ingest_digest: Digest,
    /// Both images as an OCI archive, for `berth import`.
    archive: PathBuf,
    scratch: PathBuf,
    violations: Vec<String>,
    kills: BTreeMap<&'static str, u64>,
    /// Rounds in which the killed daemon's death failed the work.
    interrupted: u64,
    /// The work's usual duration, from round 0: kills land within it.
    window: BTreeMap<&'static str, Duration>,
}

fn rounds() -> usize {
    std::env::var("BERTH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

fn seed() -> u64 {
    std::env::var("BERTH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Two images sharing their busybox layer: one with a layer of many small
/// files and a 6 MiB one, one with a 3 MiB layer; pushed to a registry of
/// the test's own, and written as an OCI archive (`dir/images.tar`).
fn push_images(dir: &Path, registry: &Registry) -> Vec<String> {
    let mut layout = Layout::new(&dir.join("layout"));
    let base = busybox_rootfs(&dir.join("rootfs-base"), &[("etc/motd", b"crash rounds\n")]);
    let base_layer = layout.add_layer(&base);
    let many: Vec<(String, Vec<u8>)> = (0..1500)
        .map(|i| {
            (
                format!("srv/files/{:02}/f{i}", i % 40),
                format!("file {i}\n").repeat(1 + i % 7).into_bytes(),
            )
        })
        .collect();
    let many: Vec<(&str, Vec<u8>)> = many.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let small_files = layout.add_layer(&files_rootfs(&dir.join("rootfs-many"), &many));
    let big = layout.add_layer(&files_rootfs(
        &dir.join("rootfs-big"),
        &[("data/big", BlockSource::new(6 << 20).block(1))],
    ));
    let other = layout.add_layer(&files_rootfs(
        &dir.join("rootfs-other"),
        &[("data/other", BlockSource::new(3 << 20).block(2))],
    ));
    let first = layout.add_image(&[base_layer.clone(), small_files, big], "amd64", false);
    let second = layout.add_image(&[base_layer, other], "amd64", false);
    layout.tag("one", &first);
    layout.tag("two", &second);
    let mut references = Vec::new();
    for (tag, repo) in [("one", "crash/one:v1"), ("two", "crash/two:v1")] {
        let reference = format!("{}/{repo}", registry.host);
        layout.push(tag, &reference, None, false);
        references.push(reference);
    }
    layout.archive(&dir.join("images.tar"));
    references
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Harness {
    fn berth(&self, args: &[&str]) -> (bool, String, String) {
        run_bounded(self.stack.command(args), args)
    }

    fn berth_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.berth(&all);
        assert!(ok, "berth {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("berth {args:?}: {e}: {out}"))
    }

    /// `berth ARGS` in the background, its output in `scratch/NAME.out`
    /// and `.err`.
    fn spawn(&self, args: &[&str], name: &str) -> Child {
        let out = File::create(self.scratch.join(format!("{name}.out"))).unwrap();
        let err = File::create(self.scratch.join(format!("{name}.err"))).unwrap();
        let mut command = self.stack.command(args);
        if args.contains(&"ingest") {
            command.stdin(Stdio::piped());
        }
        let mut child = command.stdout(out).stderr(err).spawn().unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            let data = self.ingest_data.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&data);
            });
        }
        child
    }

    fn work_args(&self, work: &Work) -> Vec<String> {
        let ingest_digest = self.ingest_digest.to_string();
        let args: Vec<&str> = match work {
            Work::Pull(i) => vec!["--format", "json", "pull", &self.images[*i]],
            Work::PullThenUnpack(i) => vec!["pull", "--quiet", "--skip-unpack", &self.images[*i]],
            Work::Tag(i) => vec![
                "images",
                "tag",
                "--force",
                &self.images[*i],
                "crash/tagged:v1",
            ],
            Work::Remove(i) => vec!["images", "rm", &self.images[*i]],
            Work::Collect => vec!["gc"],
            // A root of the collection, as a user who keeps a blob by hand
            // labels it: unreferenced content is garbage (as in
            // containerd, whose `ctr content ingest` takes no lease), and
            // metad may collect at any moment.
            Work::Ingest => vec![
                "content",
                "ingest",
                "--expected",
                &ingest_digest,
                "--label",
                "containerd.io/gc.root=crash-rounds",
                "crash-ingest",
            ],
            Work::Import => vec!["import", self.archive.to_str().unwrap()],
        };
        args.into_iter().map(String::from).collect()
    }

    /// Does `work`; true if it succeeded. A pull-then-unpack unpacks too.
    fn do_work(&self, work: &Work, name: &str) -> (bool, String) {
        let args = self.work_args(work);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self.spawn(&args, name);
        let ok = wait_bounded(&mut child, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("berth {args:?} hung for 120 s"));
        let err = std::fs::read_to_string(self.scratch.join(format!("{name}.err"))).unwrap();
        if !ok {
            return (false, err);
        }
        if let Work::PullThenUnpack(i) = work {
            let (ok, _, err) = self.berth(&["unpack", &self.images[*i]]);
            return (ok, err);
        }
        (true, err)
    }

    /// Makes `work` do all of its work: a pull or an import starts from
    /// nothing (every image removed and collected), an ingest from no
    /// blob.
    fn prepare(&self, work: &Work) {
        match work {
            Work::Pull(_) | Work::PullThenUnpack(_) | Work::Import => {
                let images = self.berth_json(&["images", "ls"]);
                let names = images
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["name"].as_str().unwrap().to_string());
                for name in names {
                    let _ = self.berth(&["images", "rm", &name]);
                }
                let (ok, _, err) = self.berth(&["gc"]);
                assert!(ok, "{err}");
            }
            Work::Ingest => {
                let _ = self.berth(&["content", "rm", &self.ingest_digest.to_string()]);
            }
            _ => {}
        }
    }

    /// Round 0: every kind of work once, undisturbed, to time it; and a
    /// clean pull of each image, whose snapshots are the reference.
    fn calibrate(&mut self) {
        for (i, _) in self.images.clone().iter().enumerate() {
            let started = Instant::now();
            // From nothing, so the pull does all its work.
            let (ok, err) = self.do_work(&Work::Pull(i), "work");
            assert!(ok, "clean pull failed: {err}");
            let took = started.elapsed();
            let longest = self.window.entry("pull").or_default();
            *longest = took.max(*longest);
        }
        for name in self.committed() {
            let tree = self.snapshot_tree(&name).unwrap();
            self.reference.insert(name, tree);
        }
        assert_eq!(self.reference.len(), 4, "{:?}", self.reference.keys());
        self.prepare(&Work::Import);
        let started = Instant::now();
        let (ok, err) = self.do_work(&Work::Import, "work");
        assert!(ok, "import failed: {err}");
        self.window.insert("import", started.elapsed());
        for i in 0..self.images.len() {
            let (ok, err) = self.do_work(&Work::Pull(i), "work");
            assert!(ok, "pull after the import failed: {err}");
        }
        for work in [Work::Tag(0), Work::Ingest, Work::Remove(1), Work::Collect] {
            let started = Instant::now();
            let (ok, err) = self.do_work(&work, "work");
            assert!(ok, "{work:?} failed: {err}");
            self.window.insert(work.name(), started.elapsed());
        }
        self.prepare(&Work::PullThenUnpack(0));
        let started = Instant::now();
        let (ok, err) = self.do_work(&Work::PullThenUnpack(0), "work");
        assert!(ok, "pull then unpack failed: {err}");
        self.window.insert("pull+unpack", started.elapsed());
        eprintln!("round 0 took: {:?}", self.window);
    }

    fn committed(&self) -> Vec<String> {
        self.berth_json(&["snapshots", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "committed")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The tree of committed snapshot `name`'s own directory, found
    /// through the mounts of a view of it; none if it is gone.
    fn snapshot_tree(&self, name: &str) -> Option<Tree> {
        let key = "crash-check-view";
        // A root of the collection: one may run meanwhile.
        let (ok, out, err) = self.berth(&[
            "--format",
            "json",
            "snapshots",
            "view",
            "--label",
            "containerd.io/gc.root=crash-check",
            key,
            name,
        ]);
        if !ok && err.contains("not found") {
            return None;
        }
        assert!(ok, "view of {name}: {err}");
        let mounts: serde_json::Value = serde_json::from_str(&out).unwrap();
        let tree = tree_of(&own_dir_of_view(&mounts));
        let (ok, _, err) = self.berth(&["snapshots", "rm", key]);
        assert!(ok, "removing the check's view: {err}");
        Some(tree)
    }

    /// Each snapshot's name, kind, parent and creation time (not its
    /// labels: a pull ties what it finds to its lease for a while).
    fn snapshot_names(&self) -> Vec<String> {
        let list = self.berth_json(&["snapshots", "ls"]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} {}",
                    s["name"], s["kind"], s["parent"], s["created_at"]
                )
            })
            .collect()
    }

    fn violation(&mut self, round: usize, mut what: String) {
        if what.len() > 600 {
            let mut end = 600;
            while !what.is_char_boundary(end) {
                end -= 1;
            }
            what.truncate(end);
            what.push('…');
        }
        eprintln!("round {round}: VIOLATION: {what}");
        self.violations.push(format!("round {round}: {what}"));
    }

    async fn check(&mut self, round: usize) {
        // A collection first, so that what the round left unreferenced is
        // gone before the snapshots are looked at (metad may also run one
        // of its own at any time).
        let _ = self.berth_json(&["gc"]);
        // Every stored blob's bytes match its name.
        let blobs = self.stack.contentd.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).into_iter().flatten() {
            let entry = entry.unwrap();
            let data = std::fs::read(entry.path()).unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if Digest::of(&data).hex() != name {
                self.violation(round, format!("blob {name} does not match its digest"));
            }
        }
        // Every image's documents and layers are there; an unpacked one's
        // chain too.
        let images = self.berth_json(&["images", "ls"]);
        for image in images.as_array().unwrap() {
            let name = image["name"].as_str().unwrap().to_string();
            let target = Digest::parse(image["target"]["digest"].as_str().unwrap()).unwrap();
            for missing in self.missing_children(&target).await {
                self.violation(round, format!("image {name}: {missing}"));
            }
        }
        // Every committed snapshot is a clean unpack's.
        for snapshot in self.committed() {
            match self.reference.get(&snapshot) {
                None => self.violation(round, format!("unknown committed snapshot {snapshot}")),
                Some(want) => {
                    // Collected since the listing: nothing to compare.
                    let Some(got) = self.snapshot_tree(&snapshot) else {
                        continue;
                    };
                    if &got != want {
                        let differ: Vec<_> = want
                            .iter()
                            .filter(|(p, w)| got.get(*p) != Some(w))
                            .map(|(p, _)| p.clone())
                            .chain(got.keys().filter(|p| !want.contains_key(*p)).cloned())
                            .take(5)
                            .collect();
                        self.violation(
                            round,
                            format!("snapshot {snapshot} differs from a clean unpack: {differ:?}"),
                        );
                    }
                }
            }
        }
        // A collection, then another that finds nothing; after it, what is
        // in progress belongs to a live lease.
        let _ = self.berth_json(&["gc"]);
        // Unless a lease expires between the two (an interrupted client's,
        // minutes after the kill): then the second rightly takes it.
        let expiring = {
            let soon = std::time::SystemTime::now() + Duration::from_secs(30);
            self.berth_json(&["leases", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .any(|lease| {
                    lease["labels"][berth_metadata::LABEL_GC_EXPIRE]
                        .as_str()
                        .and_then(|at| berth_metadata::parse_rfc3339(at).ok())
                        .is_some_and(|at| at <= soon)
                })
        };
        let again = self.berth_json(&["gc"]);
        if !expiring && !again["removed"].as_array().unwrap().is_empty() {
            self.violation(
                round,
                format!("a second collection removed {}", again["removed"]),
            );
        }
        let listed = self.berth_json(&["leases", "ls"]);
        let leases: BTreeSet<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect();
        // A lease left by work a kill interrupted expires minutes later, not
        // a day later.
        let latest = std::time::SystemTime::now()
            + berth_metadata::CLIENT_LEASE_TTL
            + Duration::from_secs(60);
        for lease in listed.as_array().unwrap() {
            let expires = lease["labels"][berth_metadata::LABEL_GC_EXPIRE]
                .as_str()
                .and_then(|at| berth_metadata::parse_rfc3339(at).ok());
            if expires.is_none_or(|at| at > latest) {
                self.violation(round, format!("a lease that does not expire soon: {lease}"));
            }
        }
        for snapshot in self.berth_json(&["snapshots", "ls"]).as_array().unwrap() {
            if snapshot["kind"] == "committed" {
                continue;
            }
            let owned = snapshot["labels"].as_object().is_some_and(|labels| {
                labels.keys().any(|k| {
                    k.strip_prefix(berth_api::LEASE_LABEL_PREFIX)
                        .is_some_and(|id| leases.contains(id))
                })
            });
            if !owned {
                self.violation(
                    round,
                    format!("active snapshot without a live lease: {snapshot}"),
                );
            }
        }
        let ingests = self.content.list_statuses("default", &[]).await.unwrap();
        if !ingests.is_empty() && leases.is_empty() {
            self.violation(
                round,
                format!(
                    "ingests without a lease: {:?}",
                    ingests.iter().map(|s| &s.reference).collect::<Vec<_>>()
                ),
            );
        }
    }

    /// What `root` names (index → manifests → config and layers) that is
    /// not in the store.
    async fn missing_children(&self, root: &Digest) -> Vec<String> {
        let mut missing = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(digest) = pending.pop() {
            if let Err(e) = self.content.info("default", &digest).await {
                missing.push(format!("{digest}: {e}"));
                continue;
            }
            let Ok(data) = std::fs::read(
                self.stack
                    .contentd
                    .root
                    .join("blobs/sha256")
                    .join(digest.hex()),
            ) else {
                missing.push(format!("{digest}: no blob file"));
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&data) else {
                continue; // a layer
            };
            let named = doc["manifests"]
                .as_array()
                .into_iter()
                .chain(doc["layers"].as_array())
                .flatten()
                .chain(std::iter::once(&doc["config"]))
                .filter_map(|d| d["digest"].as_str())
                .map(|d| Digest::parse(d).unwrap());
            pending.extend(named);
        }
        missing
    }

    /// A pull of an image that is all there fetches and unpacks nothing.
    fn second_pull_does_nothing(&mut self, round: usize, image: usize) {
        let before = self.snapshot_names();
        let (ok, out, err) = self.berth(&["--format", "json", "pull", &self.images[image]]);
        if !ok {
            self.violation(round, format!("second pull failed: {err}"));
            return;
        }
        let fetched: Vec<_> = json_lines(&out)
            .into_iter()
            .filter(|e| {
                let state = e["state"].as_str().unwrap_or("");
                !["", "exists", "waiting", "skipped"].contains(&state)
            })
            .map(|e| format!("{} {}", e["digest"], e["state"]))
            .collect();
        if !fetched.is_empty() {
            self.violation(round, format!("second pull fetched: {fetched:?}"));
        }
        let after = self.snapshot_names();
        if before != after {
            self.violation(
                round,
                format!("second pull changed snapshots: {before:?} → {after:?}"),
            );
        }
    }

    async fn round(&mut self, round: usize, rng: &mut Rng) {
        let image = rng.below(self.images.len() as u64) as usize;
        let work = rng
            .pick(&[
                Work::Pull(image),
                Work::Pull(image),
                Work::Pull(image),
                Work::PullThenUnpack(image),
                Work::Import,
                Work::Tag(image),
                Work::Remove(image),
                Work::Collect,
                Work::Ingest,
            ])
            .clone();
        let victim = *rng.pick(&VICTIMS);
        let window = self.window[work.name()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(window.max(1) + window / 5));
        self.prepare(&work);
        let args = self.work_args(&work);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self.spawn(&args, "work");
        std::thread::sleep(delay);
        let daemon = match victim {
            "contentd" => &mut self.stack.contentd,
            "snapd" => &mut self.stack.snapd,
            _ => &mut self.stack.metad,
        };
        daemon.kill();
        *self.kills.entry(victim).or_default() += 1;
        daemon.restart();
        if victim == "contentd" {
            self.content = RemoteContentStore::connect(&self.stack.contentd.socket)
                .await
                .unwrap();
        }
        let Some(ok) = wait_bounded(&mut child, Duration::from_secs(120)) else {
            let _ = child.kill();
            self.violation(round, format!("{work:?} hung after {victim} was killed"));
            return;
        };
        if !ok {
            self.interrupted += 1;
        }
        let outcome = if ok {
            "completed".to_string()
        } else {
            let err = std::fs::read_to_string(self.scratch.join("work.err")).unwrap_or_default();
            format!("interrupted: {}", err.trim())
        };
        eprintln!("round {round}: {work:?}, {victim} killed after {delay:?}: {outcome}");
        // What was interrupted works when done again at once (a pull is
        // done again anyway: it must find everything there).
        match work {
            Work::Ingest if ok => {}
            Work::Pull(_) | Work::PullThenUnpack(_) | Work::Ingest | Work::Import => {
                let (ok, err) = self.do_work(&work, "redo");
                if !ok {
                    self.violation(
                        round,
                        format!("{work:?} again after the kill failed: {err}"),
                    );
                }
            }
            _ => {}
        }
        if let Work::Ingest = work {
            if let Err(e) = self.content.info("default", &self.ingest_digest).await {
                self.violation(round, format!("ingested blob missing: {e}"));
            }
            let _ = self.berth(&["content", "rm", &self.ingest_digest.to_string()]);
        }
        self.check(round).await;
        if let Work::Pull(i) | Work::PullThenUnpack(i) = work {
            self.second_pull_does_nothing(round, i);
        }
    }
}

/// Prints a run's figures, writes them where `report_variable` says (for
/// bench/crash.sh), and fails the test on any violation.
fn report_and_judge(report: &serde_json::Value, report_variable: &str) {
    eprintln!("{report}");
    if let Ok(path) = std::env::var(report_variable) {
        std::fs::write(path, report.to_string()).unwrap();
    }
    let violations = report["violations"].as_array().unwrap();
    assert!(
        violations.is_empty(),
        "seed {}: {violations:#?}",
        report["seed"]
    );
}

/// Runs `command` (a `berth` call, `args` naming it) to its end, its
/// output kept in unnamed files (a pipe could fill and stall it); panics
/// if it runs for 120 s. Returns (exit ok, stdout, stderr).
fn run_bounded(mut command: std::process::Command, args: &[&str]) -> (bool, String, String) {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut child = command
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let ok = wait_bounded(&mut child, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("berth {args:?} hung for 120 s"));
    let read = |file: &mut File| {
        let mut text = String::new();
        file.rewind().unwrap();
        let _ = file.read_to_string(&mut text);
        text
    };
    (ok, read(&mut out), read(&mut err))
}

/// Waits up to `limit` for `child`; None if it is still running.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `command` (its output dropped), SIGKILLs `daemon` after `delay`
/// and starts it again; then waits up to 120 s for the command. Some(its
/// success), or None if it hung.
fn kill_during(
    mut command: std::process::Command,
    delay: Duration,
    daemon: &mut berth_e2e::Daemon,
) -> Option<bool> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    daemon.kill();
    daemon.restart();
    wait_bounded(&mut child, Duration::from_secs(120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_lose_nothing_acknowledged() {
    if !berth_e2e::pull_prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), None);
    let images = push_images(dir.path(), &registry);
    let stack = Stack::start(&dir.path().join("stack"));
    let content = RemoteContentStore::connect(&stack.contentd.socket)
        .await
        .unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let ingest_data = BlockSource::new(8 << 20).block(3);
    let ingest_digest = Digest::of(&ingest_data);
    let archive = dir.path().join("images.tar");
    let mut harness = Harness {
        archive,
        stack,
        content,
        images,
        reference: BTreeMap::new(),
        ingest_data,
        ingest_digest,
        scratch,
        violations: Vec::new(),
        kills: BTreeMap::new(),
        interrupted: 0,
        window: BTreeMap::new(),
    };
    harness.calibrate();
    harness.check(0).await;
    assert!(harness.violations.is_empty(), "{:?}", harness.violations);

    let seed = seed();
    let rounds = rounds();
    eprintln!("crash rounds: {rounds}, seed {seed} (BERTH_CRASH_SEED replays it)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    for round in 1..=rounds {
        harness.round(round, &mut rng).await;
    }
    let report = serde_json::json!({
        "seed": seed,
        "rounds": rounds,
        "kills": harness.kills,
        "interrupted": harness.interrupted,
        "violations": harness.violations,
        "seconds": started.elapsed().as_secs_f64(),
    });
    report_and_judge(&report, "BERTH_CRASH_REPORT");
}

/// What a round does with containers while taskd may die.
#[derive(Debug, Clone)]
enum TaskWork {
    /// `run -d NAME sleep`: create and start.
    RunDetached(String),
    /// `run --rm NAME true`: create, start, wait, delete.
    RunRemoved(String),
    /// `tasks exec` into a running container.
    Exec(String),
    /// `rm --force` of a container.
    Remove(String),
}

impl TaskWork {
    fn name(&self) -> &'static str {
        match self {
            TaskWork::RunDetached(_) => "run -d",
            TaskWork::RunRemoved(_) => "run --rm",
            TaskWork::Exec(_) => "exec",
            TaskWork::Remove(_) => "rm",
        }
    }

    fn args(&self, round: usize) -> Vec<String> {
        let image = berth_e2e::images::RUN_IMAGE;
        let args: Vec<String> = match self {
            TaskWork::RunDetached(id) => vec!["run", "-d", "--name", id, image, "sleep", "1000"]
                .into_iter()
                .map(String::from)
                .collect(),
            TaskWork::RunRemoved(id) => vec!["run", "--rm", "--name", id, image, "true"]
                .into_iter()
                .map(String::from)
                .collect(),
            TaskWork::Exec(id) => vec![
                "tasks".into(),
                "exec".into(),
                "--exec-id".into(),
                format!("exec{round}"),
                id.clone(),
                "true".into(),
            ],
            TaskWork::Remove(id) => vec!["rm".into(), "--force".into(), id.clone()],
        };
        args
    }
}

/// A stack running containers of a namespace of its own, whose taskd is
/// killed at random moments.
struct TaskHarness {
    stack: Stack,
    namespace: String,
    violations: Vec<String>,
    window: BTreeMap<&'static str, Duration>,
    /// Rounds per kind of work, and those whose work the kill interrupted.
    done: BTreeMap<&'static str, u64>,
    interrupted: u64,
}

/// A test that fails half-way must not leave containers running: every
/// task of the harness's namespace goes (killed), with its container.
impl Drop for TaskHarness {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        let Ok(out) = self
            .stack
            .command(&["-n", &namespace, "tasks", "ls", "-q"])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self
                .stack
                .command(&["-n", &namespace, "rm", "--force", id])
                .output();
        }
        // runc leaves the namespace's parent cgroup, empty, in each
        // hierarchy; the namespace is this test's own.
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
        for hierarchy in hierarchies {
            let _ = std::fs::remove_dir(hierarchy.join("berth").join(&namespace));
        }
    }
}

impl TaskHarness {
    fn berth(&self, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        run_bounded(self.stack.command(&all), &all)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.berth(&all);
        assert!(ok, "berth {args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    }

    fn violation(&mut self, round: usize, what: String) {
        eprintln!("round {round}: VIOLATION: {what}");
        self.violations.push(format!("round {round}: {what}"));
    }

    /// Task id → (pid, status).
    fn tasks(&self) -> BTreeMap<String, (u32, String)> {
        self.json(&["tasks", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    (
                        t["pid"].as_u64().unwrap_or(0) as u32,
                        t["status"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    fn containers(&self) -> BTreeMap<String, String> {
        self.json(&["containers", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["snapshot_key"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn running(&self) -> Vec<String> {
        self.tasks()
            .into_iter()
            .filter(|(_, (_, status))| status.eq_ignore_ascii_case("running"))
            .map(|(id, _)| id)
            .collect()
    }

    /// The container ids that anything on the host still carries: bundle
    /// directories, processes (shims, container processes) working in a
    /// bundle, rootfs mounts and cgroups.
    fn traces(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let bundles = self
            .stack
            .taskd
            .state
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let marker = format!("io.containerd.runtime.v2.task/{}/", self.namespace);
        let id_after = |text: &str| -> Option<String> {
            let rest = &text[text.find(&marker)? + marker.len()..];
            Some(rest.split('/').next()?.to_string())
        };
        let mut traces = BTreeMap::new();
        traces.insert(
            "bundle",
            std::fs::read_dir(&bundles)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
        );
        traces.insert(
            "process",
            berth_e2e::processes_under(&self.stack.dir)
                .iter()
                .filter_map(|(_, cwd)| id_after(&cwd.display().to_string()))
                .collect(),
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        traces.insert(
            "mount",
            mounts
                .lines()
                .filter(|l| l.contains("rootfs"))
                .filter_map(id_after)
                .collect(),
        );
        let mut cgroups = BTreeSet::new();
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
        for hierarchy in hierarchies {
            let dir = hierarchy.join("berth").join(&self.namespace);
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    cgroups.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        traces.insert("cgroup", cgroups);
        traces
    }

    /// After the round's work settled: records, tasks and what is on the
    /// host agree, and every task's state is true.
    fn check(&mut self, round: usize) {
        // Shims exit just after their task is deleted: let them.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (tasks, traces) = loop {
            let tasks = self.tasks();
            let traces = self.traces();
            let known: BTreeSet<String> = tasks.keys().cloned().collect();
            if traces.values().all(|ids| ids.is_subset(&known)) || Instant::now() > deadline {
                break (tasks, traces);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let known: BTreeSet<String> = tasks.keys().cloned().collect();
        for (what, ids) in &traces {
            let leaked: Vec<_> = ids.difference(&known).collect();
            if !leaked.is_empty() {
                // What taskd said of them, for whoever reads the failure.
                let log = self.stack.taskd.log_text();
                let said: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        leaked.iter().any(|id| {
                            l.contains(&format!("\"{id}\""))
                                || l.contains(&format!("={id} "))
                                || l.contains(&format!("/{id}"))
                        })
                    })
                    .filter(|l| !l.contains("DEBUG"))
                    .collect();
                self.violation(
                    round,
                    format!("{what} of no task: {leaked:?}; taskd said: {said:#?}"),
                );
            }
        }
        if traces["bundle"] != known {
            self.violation(
                round,
                format!("tasks {known:?} but bundles {:?}", traces["bundle"]),
            );
        }
        for (id, (pid, status)) in &tasks {
            // Created (runc's init waiting to exec), running and paused
            // tasks have a live process; stopped ones none.
            let alive = *pid > 0 && berth_e2e::alive(*pid);
            if status.eq_ignore_ascii_case("stopped") == alive {
                self.violation(
                    round,
                    format!("task {id} is {status} but its process (pid {pid}) alive: {alive}"),
                );
            }
        }
        let containers = self.containers();
        let records: BTreeSet<String> = containers.keys().cloned().collect();
        if records != known {
            self.violation(round, format!("records {records:?} but tasks {known:?}"));
        }
        let keys: BTreeSet<String> = containers.values().cloned().collect();
        let active: BTreeSet<String> = self
            .json(&["snapshots", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "active")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        if active != keys {
            self.violation(
                round,
                format!("active snapshots {active:?} but containers' {keys:?}"),
            );
        }
    }

    fn round(&mut self, round: usize, rng: &mut Rng) {
        let running = self.running();
        let fresh = format!("c{round}");
        let work = match (running.is_empty(), rng.below(4)) {
            (_, 0) => TaskWork::RunRemoved(fresh),
            (true, _) => TaskWork::RunDetached(fresh),
            (false, 1) if running.len() < 4 => TaskWork::RunDetached(fresh),
            (false, 1) | (false, 2) => TaskWork::Remove(rng.pick(&running).clone()),
            (false, _) => TaskWork::Exec(rng.pick(&running).clone()),
        };
        let window = self.window[work.name()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(window.max(1) + window / 5));
        let args = work.args(round);
        let mut all = vec!["-n".to_string(), self.namespace.clone()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let command = self.stack.command(&all);
        let Some(ok) = kill_during(command, delay, &mut self.stack.taskd) else {
            self.violation(round, format!("{work:?} hung after taskd was killed"));
            return;
        };
        eprintln!(
            "round {round}: {work:?}, taskd killed after {delay:?}: {}",
            if ok { "completed" } else { "interrupted" }
        );
        *self.done.entry(work.name()).or_default() += 1;
        if !ok {
            self.interrupted += 1;
        }
        // The operator's follow-up: what was interrupted is removed (or
        // removed again); an exec's container runs on.
        match &work {
            TaskWork::RunDetached(id) | TaskWork::RunRemoved(id) | TaskWork::Remove(id) if !ok => {
                let (removed, _, err) = self.berth(&["rm", "--force", id]);
                if !removed && !err.contains("not found") {
                    self.violation(round, format!("rm --force {id} after the kill: {err}"));
                }
            }
            TaskWork::Exec(id) => {
                let status = self.tasks().get(id).map(|(_, s)| s.clone());
                if !status
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("running"))
                {
                    self.violation(round, format!("exec's container {id} is {status:?}"));
                }
            }
            _ => {}
        }
        self.check(round);
    }

    /// Round 0: each kind of work once, undisturbed, timed.
    fn calibrate(&mut self) {
        for work in [
            TaskWork::RunDetached("calibrate".into()),
            TaskWork::Exec("calibrate".into()),
            TaskWork::Remove("calibrate".into()),
            TaskWork::RunRemoved("calibrate-rm".into()),
        ] {
            let args = work.args(0);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let started = Instant::now();
            let (ok, _, err) = self.berth(&args);
            assert!(ok, "{work:?}: {err}");
            self.window.insert(work.name(), started.elapsed());
        }
        eprintln!("round 0 took: {:?}", self.window);
    }
}

#[test]
fn random_taskd_kills_leak_nothing_and_keep_every_state_true() {
    if !berth_e2e::run_prerequisites() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-crash-tasks-")
        .tempdir_in("/tmp")
        .unwrap();
    let archive = berth_e2e::images::run_image_archive(dir.path());
    let stack = Stack::start(&dir.path().join("stack"));
    let namespace = format!("crash-{}", std::process::id());
    let (ok, _, err) = stack.berth(&["-n", &namespace, "import", archive.to_str().unwrap()]);
    assert!(ok, "import: {err}");
    let mut harness = TaskHarness {
        stack,
        namespace,
        violations: Vec::new(),
        window: BTreeMap::new(),
        done: BTreeMap::new(),
        interrupted: 0,
    };
    harness.calibrate();
    harness.check(0);
    assert!(harness.violations.is_empty(), "{:?}", harness.violations);

    let seed = seed();
    let rounds = rounds();
    eprintln!("taskd crash rounds: {rounds}, seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    for round in 1..=rounds {
        harness.round(round, &mut rng);
    }
    // Everything goes, and nothing is left.
    for id in harness.tasks().keys() {
        let (ok, _, err) = harness.berth(&["rm", "--force", id]);
        assert!(ok, "{err}");
    }
    harness.check(rounds + 1);
    let namespace = harness.namespace.clone();
    let left = harness.traces();
    assert!(
        left.values().all(BTreeSet::is_empty),
        "left in {namespace}: {left:?}"
    );
    let report = serde_json::json!({
        "seed": seed,
        "rounds": rounds,
        "kills": {"taskd": rounds},
        "work": harness.done,
        "interrupted": harness.interrupted,
        "violations": harness.violations,
        "seconds": started.elapsed().as_secs_f64(),
    });
    report_and_judge(&report, "BERTH_CRASH_TASKS_REPORT");
}

/// What a round asks of berth-crid, as the kubelet would, while crid may
/// die.
#[derive(Debug, Clone)]
enum PodWork {
    /// RunPodSandbox of a new pod.
    RunPod(String),
    /// CreateContainer in a ready pod.
    Create(String),
    /// StartContainer of a created container.
    Start(String),
    /// StopContainer of a running container.
    StopContainer(String),
    /// RemoveContainer (forced).
    RemoveContainer(String),
    /// StopPodSandbox.
    StopPod(String),
    /// RemovePodSandbox (forced).
    RemovePod(String),
}

impl PodWork {
    fn name(&self) -> &'static str {
        match self {
            PodWork::RunPod(_) => "runp",
            PodWork::Create(_) => "create",
            PodWork::Start(_) => "start",
            PodWork::StopContainer(_) => "stop",
            PodWork::RemoveContainer(_) => "rm",
            PodWork::StopPod(_) => "stopp",
            PodWork::RemovePod(_) => "rmp",
        }
    }
}

/// The CNI network of the crid rounds' pods.
const CRASH_NETWORK: &str = "crash";

/// berth-crid on a stack, SIGKILLed at random moments of the kubelet's
/// calls and restarted.
struct PodHarness {
    cri: berth_e2e::cri::Cri,
    /// The cgroups under crid's default parent before the test began
    /// (another run's leftovers are not this one's leaks).
    cgroups_before: BTreeSet<String>,
    /// Every container's pod, as crid listed it (also after it is gone): a
    /// pod without a pause process has its first container's shim, whose
    /// working directory is that container's bundle, for as long as any of
    /// its containers is there.
    pod_of: std::cell::RefCell<BTreeMap<String, String>>,
    violations: Vec<String>,
    window: BTreeMap<&'static str, Duration>,
    done: BTreeMap<&'static str, u64>,
    interrupted: u64,
}

/// crid's default cgroup parent for pods and their containers, in every
/// hierarchy: (hierarchy, child name) of each cgroup there.
fn cri_cgroups() -> BTreeSet<String> {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
    let mut found = BTreeSet::new();
    for hierarchy in hierarchies {
        let dir = hierarchy.join("berth").join("k8s.io");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                found.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// The host port pod `name` publishes: its own, so that no two pods
/// share a rule (pods are `p<round>`; the calibration's is `calibrate`).
/// Every other pod has a user namespace of its own (Kubernetes'
/// `hostUsers: false`): the odd-numbered ones.
fn in_user_namespace(pod_name: &str) -> bool {
    pod_name
        .trim_start_matches('p')
        .parse::<u32>()
        .is_ok_and(|n| n % 2 == 1)
}

/// Whether a pod's containers share one PID namespace (and so the pod has
/// a pause process): pods 0 and 1 of every four, so that each kind comes
/// with and without a user namespace. The others are the kubelet's default
/// pod, which berth-crid runs without a pause process.
fn shares_pid(pod_name: &str) -> bool {
    pod_name
        .trim_start_matches('p')
        .parse::<u32>()
        .is_ok_and(|n| n / 2 % 2 == 0)
}

/// The namespace options of a pod and its containers.
fn crash_namespaces(pod_name: &str) -> serde_json::Value {
    let mut options = serde_json::json!({
        // POD (0) shares one, CONTAINER (1) gives each its own.
        "pid": if shares_pid(pod_name) { 0 } else { 1 },
    });
    if in_user_namespace(pod_name) {
        options["userns_options"] = crash_userns();
    }
    serde_json::json!({"security_context": {"namespace_options": options}})
}

/// The user namespace options of those pods and their containers.
fn crash_userns() -> serde_json::Value {
    let mapping = serde_json::json!([{"container_id": 0, "host_id": 600000, "length": 65536}]);
    serde_json::json!({"mode": 0, "uids": mapping, "gids": mapping})
}

fn host_port_of(name: &str) -> u32 {
    20_000 + name.trim_start_matches('p').parse::<u32>().unwrap_or(0) % 40_000
}

/// The pods CNI's portmap holds NAT rules for: each DNAT rule it adds
/// carries a comment naming the network and the pod (`dnat name: "N" id:
/// "ID"`). Read from this thread's network namespace.
fn host_port_owners() -> BTreeSet<String> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables -t nat -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marker = "id: \\\"";
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dnat name:"))
        .filter_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            Some(rest[..rest.find('\\')?].to_string())
        })
        .collect()
}

impl PodHarness {
    fn crictl(&self, args: &[&str]) -> (bool, String, String) {
        let (ok, out, err) = run_bounded(self.cri.command(args), args);
        (ok, out.trim().to_string(), err)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = self.crictl(args);
        assert!(ok, "crictl {args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    }

    fn violation(&mut self, round: usize, what: String) {
        eprintln!("round {round}: VIOLATION: {what}");
        self.violations.push(format!("round {round}: {what}"));
    }

    /// Pod id → (name, state).
    fn pods(&self) -> BTreeMap<String, (String, String)> {
        self.json(&["pods", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    (
                        p["metadata"]["name"].as_str().unwrap().to_string(),
                        p["state"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// Container id → (pod id, state).
    fn containers(&self) -> BTreeMap<String, (String, String)> {
        self.json(&["ps", "-a", "-o", "json"])["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    (
                        c["podSandboxId"].as_str().unwrap().to_string(),
                        c["state"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// What berth holds for `k8s.io` below crid: task id → status (from
    /// taskd), container records (metad), and on the host the bundles,
    /// shims and container processes, rootfs mounts, cgroups and crid's
    /// own state directories.
    fn held(
        &self,
    ) -> (
        BTreeMap<String, String>,
        BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let stack = &self.cri.stack;
        let berth_json = |args: &[&str]| -> serde_json::Value {
            let mut all = vec!["-n", "k8s.io", "--format", "json"];
            all.extend_from_slice(args);
            let (ok, out, err) = run_bounded(stack.command(&all), &all);
            assert!(ok, "berth {args:?}: {err}");
            serde_json::from_str(&out).unwrap()
        };
        let tasks = berth_json(&["tasks", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["status"].as_str().unwrap().to_ascii_lowercase(),
                )
            })
            .collect();
        let mut held = BTreeMap::new();
        held.insert(
            "record",
            berth_json(&["containers", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect(),
        );
        let names_in = |dir: PathBuf| -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let bundles = stack.taskd.state.join("io.containerd.runtime.v2.task");
        held.insert("bundle", names_in(bundles.join("k8s.io")));
        let marker = "io.containerd.runtime.v2.task/k8s.io/";
        // A pod's containers share its pause container's shim, whose
        // working directory is the pause bundle: once that is deleted
        // (renamed `.ID` first) the shim's directory reads `.ID (deleted)`.
        let id_after = |text: &str| -> Option<String> {
            let rest = &text[text.find(marker)? + marker.len()..];
            let name = rest.split('/').next()?;
            Some(
                name.trim_end_matches(" (deleted)")
                    .trim_start_matches('.')
                    .to_string(),
            )
        };
        let pod_of = self.pod_of.borrow();
        let is_shim = |pid: u32| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.ends_with("containerd-shim-berth-v2"))
        };
        held.insert(
            "process",
            berth_e2e::processes_under(&stack.dir)
                .iter()
                .filter_map(|(pid, cwd)| {
                    let id = id_after(&cwd.display().to_string())?;
                    // A shim serves its pod's containers: it is the pod's.
                    Some(match pod_of.get(&id) {
                        Some(pod) if is_shim(*pid) => pod.clone(),
                        _ => id,
                    })
                })
                .collect(),
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let stack_dir = stack.dir.display().to_string();
        held.insert(
            "mount",
            mounts
                .lines()
                .filter(|l| l.contains("rootfs") && l.contains(&stack_dir))
                .filter_map(id_after)
                .collect(),
        );
        held.insert(
            "cgroup",
            cri_cgroups()
                .difference(&self.cgroups_before)
                .cloned()
                .collect(),
        );
        held.insert(
            "crid sandbox state",
            names_in(self.cri.crid.root.join("sandboxes")),
        );
        held.insert(
            "crid container state",
            names_in(self.cri.crid.root.join("containers")),
        );
        held.insert("netns", names_in(self.cri.crid.state.join("netns")));
        for kind in ["userns", "ipcns", "utsns", "shm"] {
            held.insert(kind, names_in(self.cri.crid.state.join(kind)));
        }
        held.insert(
            "id-mapped volume",
            names_in(self.cri.crid.state.join("idmapped")),
        );
        // host-local keeps one file per address, its first line the
        // container id CNI was given (the pod's).
        held.insert(
            "address",
            std::fs::read_dir(self.cri.dir.join("ipam").join(CRASH_NETWORK))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|text| text.lines().next().map(str::to_string))
                .collect(),
        );
        held.insert("host port", host_port_owners());
        (tasks, held)
    }

    /// After the round's work settled: what crid lists is what berth
    /// holds, and every state crid reports is true.
    fn check(&mut self, round: usize) {
        let pods = self.pods();
        let containers = self.containers();
        self.pod_of.borrow_mut().extend(
            containers
                .iter()
                .map(|(id, (pod, _))| (id.clone(), pod.clone())),
        );
        let listed: BTreeSet<String> = pods.keys().chain(containers.keys()).cloned().collect();
        // Shims exit just after their task is deleted: let them.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (tasks, held) = loop {
            let (tasks, held) = self.held();
            if held.values().all(|ids| ids.is_subset(&listed)) || Instant::now() > deadline {
                break (tasks, held);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        for (what, ids) in &held {
            let leaked: Vec<_> = ids.difference(&listed).collect();
            if !leaked.is_empty() {
                self.violation(round, format!("{what} of nothing crid lists: {leaked:?}"));
            }
        }
        let leaked: Vec<_> = tasks.keys().filter(|id| !listed.contains(*id)).collect();
        if !leaked.is_empty() {
            self.violation(round, format!("tasks crid does not list: {leaked:?}"));
        }
        for (id, (name, state)) in &pods {
            let task = tasks.get(id).map(String::as_str);
            let ready = state == "SANDBOX_READY";
            if shares_pid(name) && ready != (task == Some("running")) {
                self.violation(
                    round,
                    format!("pod {name} ({id}) is {state} but its pause task is {task:?}"),
                );
            }
            if !shares_pid(name) && task.is_some() {
                self.violation(
                    round,
                    format!("pod {name} ({id}) needs no pause process but has a task: {task:?}"),
                );
            }
            for kind in ["ipcns", "utsns", "shm"] {
                if ready != held[kind].contains(id) {
                    self.violation(
                        round,
                        format!(
                            "pod {name} ({id}) is {state} but its {kind} is pinned: {}",
                            !ready
                        ),
                    );
                }
            }
            if !held["record"].contains(id) || !held["crid sandbox state"].contains(id) {
                self.violation(round, format!("pod {name} ({id}) lost its record or state"));
            }
            let networked = held["netns"].contains(id) && held["address"].contains(id);
            if ready && !networked {
                self.violation(round, format!("ready pod {name} ({id}) has no network"));
            }
            if ready && !held["host port"].contains(id) {
                self.violation(round, format!("ready pod {name} ({id}) has no host port"));
            }
            if in_user_namespace(name) && ready != held["userns"].contains(id) {
                self.violation(
                    round,
                    format!(
                        "pod {name} ({id}) is {state} but its user namespace is pinned: {}",
                        !ready
                    ),
                );
            }
            if !ready
                && (held["netns"].contains(id)
                    || held["address"].contains(id)
                    || held["host port"].contains(id))
            {
                self.violation(
                    round,
                    format!("pod {name} ({id}) is {state} but keeps its network"),
                );
            }
        }
        for (id, (pod, state)) in &containers {
            let task = tasks.get(id).map(String::as_str);
            let true_state = match state.as_str() {
                "CONTAINER_RUNNING" => task == Some("running"),
                "CONTAINER_CREATED" => matches!(task, None | Some("created")),
                "CONTAINER_EXITED" => matches!(task, None | Some("stopped")),
                _ => false,
            };
            if !true_state {
                self.violation(
                    round,
                    format!("container {id} is {state} but its task is {task:?}"),
                );
            }
            if !pods.contains_key(pod) {
                self.violation(round, format!("container {id} of a pod not listed: {pod}"));
            }
            if !held["record"].contains(id) {
                self.violation(round, format!("container {id} lost its record"));
            }
        }
    }

    fn pod_config(&self, name: &str) -> String {
        let mut config = serde_json::json!({
            "metadata": {"name": name, "namespace": "crash", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": self.cri.dir.join("logs").join(name).display().to_string(),
            "port_mappings": [{"container_port": 80, "host_port": host_port_of(name)}],
        });
        config["linux"] = crash_namespaces(name);
        self.cri.write_config(&format!("pod-{name}.json"), config)
    }

    /// A container; in a pod with a user namespace, the pod's, and an
    /// id-mapped volume as the kubelet gives such a pod.
    fn container_config(&self, name: &str, pod_name: &str) -> String {
        let mut config = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": berth_e2e::cri::POD_IMAGE},
            "command": ["/bin/sleep", "1000"],
            "log_path": format!("{name}.log"),
        });
        config["linux"] = crash_namespaces(pod_name);
        if in_user_namespace(pod_name) {
            let mapping = &crash_userns()["uids"];
            config["mounts"] = serde_json::json!([{
                "container_path": "/vol",
                "host_path": self.cri.dir.join("crash-volume").display().to_string(),
                "uidMappings": mapping,
                "gidMappings": mapping,
            }]);
        }
        self.cri.write_config(&format!("ctr-{name}.json"), config)
    }

    /// The crictl arguments of a piece of work.
    fn args(&self, work: &PodWork, round: usize) -> Vec<String> {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match work {
            PodWork::RunPod(name) => strings(&["runp", &self.pod_config(name)]),
            PodWork::Create(pod) => {
                let pods = self.pods();
                let name = &pods[pod].0;
                strings(&[
                    "create",
                    pod,
                    &self.container_config(&format!("c{round}"), name),
                    &self.pod_config(name),
                ])
            }
            PodWork::Start(id) => strings(&["start", id]),
            PodWork::StopContainer(id) => strings(&["stop", "--timeout", "0", id]),
            PodWork::RemoveContainer(id) => strings(&["rm", "-f", id]),
            PodWork::StopPod(id) => strings(&["stopp", id]),
            PodWork::RemovePod(id) => strings(&["rmp", "-f", id]),
        }
    }

    /// A piece of work that fits what is there now.
    fn pick(&self, round: usize, rng: &mut Rng) -> PodWork {
        let pods = self.pods();
        let containers = self.containers();
        let ready: Vec<String> = pods
            .iter()
            .filter(|(_, (_, s))| s == "SANDBOX_READY")
            .map(|(id, _)| id.clone())
            .collect();
        let in_state = |state: &str| -> Vec<String> {
            containers
                .iter()
                .filter(|(_, (_, s))| s == state)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let (created, running) = (in_state("CONTAINER_CREATED"), in_state("CONTAINER_RUNNING"));
        let all_pods: Vec<String> = pods.keys().cloned().collect();
        let all_containers: Vec<String> = containers.keys().cloned().collect();
        // Each kind of work that fits what is there now; a container's
        // steps three times as likely as a pod's, so that containers get
        // through their whole life between pod removals.
        let mut fitting: Vec<PodWork> = Vec::new();
        if pods.len() < 4 {
            fitting.push(PodWork::RunPod(format!("p{round}")));
        }
        if !all_pods.is_empty() {
            fitting.push(PodWork::RemovePod(rng.pick(&all_pods).clone()));
        }
        if !ready.is_empty() {
            fitting.push(PodWork::StopPod(rng.pick(&ready).clone()));
        }
        for _ in 0..3 {
            if !ready.is_empty() {
                fitting.push(PodWork::Create(rng.pick(&ready).clone()));
            }
            if !created.is_empty() {
                fitting.push(PodWork::Start(rng.pick(&created).clone()));
            }
            if !running.is_empty() {
                fitting.push(PodWork::StopContainer(rng.pick(&running).clone()));
            }
            if !all_containers.is_empty() {
                fitting.push(PodWork::RemoveContainer(rng.pick(&all_containers).clone()));
            }
        }
        rng.pick(&fitting).clone()
    }

    fn round(&mut self, round: usize, rng: &mut Rng) {
        let work = self.pick(round, rng);
        let window = self.window[work.name()].as_micros() as u64;
        // Up to twice the work's usual time: about half the kills land
        // after it answered, so that pods get containers to start and stop.
        let delay = Duration::from_micros(rng.below(2 * window.max(1)));
        let args = self.args(&work, round);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = self.cri.command(&args);
        let Some(ok) = kill_during(command, delay, &mut self.cri.crid) else {
            self.violation(round, format!("{work:?} hung after crid was killed"));
            return;
        };
        eprintln!(
            "round {round}: {work:?}, crid killed after {delay:?}: {}",
            if ok { "completed" } else { "interrupted" }
        );
        *self.done.entry(work.name()).or_default() += 1;
        if !ok {
            self.interrupted += 1;
        }
        // The kubelet's follow-up: a pod that did not come up is stopped
        // and removed; a stop or removal is asked again (each must now
        // succeed, as the CRI makes them idempotent); a creation or a
        // start that failed leaves a container the kubelet removes.
        if !ok {
            let again: Vec<Vec<String>> = match &work {
                PodWork::RunPod(name) => self
                    .pods()
                    .into_iter()
                    .filter(|(_, (n, s))| n == name && s != "SANDBOX_READY")
                    .flat_map(|(id, _)| {
                        [
                            vec!["stopp".into(), id.clone()],
                            vec!["rmp".into(), "-f".into(), id],
                        ]
                    })
                    .collect(),
                // A container whose creation answered nothing: the
                // kubelet never learnt its id and removes it.
                PodWork::Create(_) => {
                    let (_, ids, _) =
                        self.crictl(&["ps", "-a", "-q", "--name", &format!("^c{round}$")]);
                    ids.lines()
                        .map(|id| vec!["rm".into(), "-f".into(), id.to_string()])
                        .collect()
                }
                // A start the kubelet retries (or not): nothing to undo.
                PodWork::Start(_) => Vec::new(),
                PodWork::StopContainer(_)
                | PodWork::RemoveContainer(_)
                | PodWork::StopPod(_)
                | PodWork::RemovePod(_) => vec![args.iter().map(|s| s.to_string()).collect()],
            };
            for call in again {
                let call: Vec<&str> = call.iter().map(String::as_str).collect();
                let (done, _, err) = self.crictl(&call);
                // crictl looks a pod or container up before removing it:
                // one the interrupted call already removed is not found.
                if !done && !err.contains("not found") {
                    self.violation(round, format!("crictl {call:?} after the kill: {err}"));
                }
            }
        }
        self.check(round);
    }

    /// Round 0: each kind of work once, undisturbed, timed.
    fn calibrate(&mut self) {
        let timed = |harness: &mut PodHarness, work: PodWork| -> String {
            let args = harness.args(&work, 0);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let started = Instant::now();
            let (ok, out, err) = harness.crictl(&args);
            assert!(ok, "{work:?}: {err}");
            harness.window.insert(work.name(), started.elapsed());
            out
        };
        let pod = timed(self, PodWork::RunPod("calibrate".into()));
        let container = timed(self, PodWork::Create(pod.clone()));
        timed(self, PodWork::Start(container.clone()));
        timed(self, PodWork::StopContainer(container.clone()));
        timed(self, PodWork::RemoveContainer(container));
        timed(self, PodWork::StopPod(pod.clone()));
        timed(self, PodWork::RemovePod(pod));
        eprintln!("round 0 took: {:?}", self.window);
    }
}

impl PodHarness {
    /// crid and the stack under it on `dir`, in a network namespace of
    /// this thread's own (every daemon started from it runs there, so the
    /// host's network is never touched), with CNI's bridge, host-local and
    /// portmap for pods. None if iptables is missing outside CI.
    fn start(dir: &Path) -> Option<PodHarness> {
        if !berth_e2e::require(berth_e2e::on_path("iptables"), "iptables (CNI's portmap)") {
            return None;
        }
        // runc reaches a user-namespaced pod's bundle from inside its
        // namespace: the way to taskd's state must be passable, as /run is.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir_all(dir.join("crash-volume")).unwrap();
        berth_e2e::cri::enter_private_network();
        // Every pod publishes a port: a kill must not leave its NAT rules
        // behind (or take them from a ready pod).
        berth_e2e::cri::write_bridge_network(
            dir,
            CRASH_NETWORK,
            "crash0",
            "10.88.77.0/24",
            &[serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})],
        );
        let cgroups_before = cri_cgroups();
        let cri = berth_e2e::cri::Cri::start(dir);
        let harness = PodHarness {
            cri,
            cgroups_before,
            pod_of: Default::default(),
            violations: Vec::new(),
            window: BTreeMap::new(),
            done: BTreeMap::new(),
            interrupted: 0,
        };
        Some(harness)
    }
}

/// berth-crid SIGKILLed at random moments of RunPodSandbox, CreateContainer,
/// StartContainer, StopContainer, RemoveContainer, StopPodSandbox and
/// RemovePodSandbox, and restarted: after every round (and the kubelet's
/// follow-up for what was interrupted) every pod and container crid lists
/// has its true state, and nothing berth holds (task, record, bundle,
/// shim, mount, cgroup, crid's state) belongs to anything it does not
/// list; at the end, removing every pod leaves nothing.
#[test]
fn random_crid_kills_leak_nothing_and_keep_every_state_true() {
    let Some(dir) = berth_e2e::cri::crictl_test_dir() else {
        return;
    };
    let Some(mut harness) = PodHarness::start(dir.path()) else {
        return;
    };
    harness.calibrate();
    harness.check(0);
    assert!(harness.violations.is_empty(), "{:?}", harness.violations);

    let seed = seed();
    let rounds = rounds();
    eprintln!("crid crash rounds: {rounds}, seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    for round in 1..=rounds {
        harness.round(round, &mut rng);
    }
    let (ok, _, err) = harness.crictl(&["rmp", "-fa"]);
    assert!(ok, "rmp -fa: {err}");
    harness.check(rounds + 1);
    let (tasks, held) = harness.held();
    assert!(
        tasks.is_empty() && held.values().all(BTreeSet::is_empty),
        "left: {tasks:?} {held:?}"
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert!(
        names.iter().all(|n| ["lo", "crash0"].contains(n)),
        "network devices left: {names:?}"
    );
    let report = serde_json::json!({
        "seed": seed,
        "rounds": rounds,
        "kills": {"crid": rounds},
        "work": harness.done,
        "interrupted": harness.interrupted,
        "violations": harness.violations,
        "seconds": started.elapsed().as_secs_f64(),
    });
    report_and_judge(&report, "BERTH_CRASH_CRI_REPORT");
}

/// RunPodSandbox cut short after it made the pod's network namespace and
/// before it recorded it (the window a random kill once hit): the
/// kubelet's StopPodSandbox and RemovePodSandbox must still find the
/// namespace (at its usual path, under the pod's id) and take it, with
/// the pod's address and host port.
#[test]
fn a_pod_namespace_made_but_not_recorded_goes_with_its_pod() {
    let Some(dir) = berth_e2e::cri::crictl_test_dir() else {
        return;
    };
    let Some(mut harness) = PodHarness::start(dir.path()) else {
        return;
    };
    let pod = harness.cri.ok(&["runp", &harness.pod_config("p1")]);
    let netns = harness.cri.crid.state.join("netns").join(&pod);
    assert!(netns.exists());
    // Pod 1 has a user namespace of its own, and an IPC, a UTS namespace
    // and a /dev/shm, all recorded with the network namespace.
    let pinned: Vec<_> = ["userns", "ipcns", "utsns", "shm"]
        .iter()
        .map(|kind| harness.cri.crid.state.join(kind).join(&pod))
        .collect();
    assert!(pinned.iter().all(|p| p.exists()), "{pinned:?}");
    // What the cut-short RunPodSandbox left: a record that names no
    // namespace.
    harness.cri.crid.kill();
    let state = harness
        .cri
        .crid
        .root
        .join("sandboxes")
        .join(&pod)
        .join("state.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    for key in ["netns", "userns", "ipcns", "utsns", "shm"] {
        assert!(record[key].is_string(), "{key}: {record}");
        record[key] = serde_json::Value::Null;
    }
    std::fs::write(&state, record.to_string()).unwrap();
    harness.cri.crid.restart();
    harness.cri.ok(&["stopp", &pod]);
    harness.cri.ok(&["rmp", &pod]);
    assert!(!netns.exists(), "the pod's namespace outlived it");
    for path in &pinned {
        assert!(!path.exists(), "{} outlived its pod", path.display());
    }
    harness.check(1);
    assert!(harness.violations.is_empty(), "{:?}", harness.violations);
}
