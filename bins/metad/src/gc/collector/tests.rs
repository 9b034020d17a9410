#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use berth_ids::Digest;
use berth_metadata::Labels;

use super::*;
use crate::gc::roots::{LeaseRoots, NamespaceRoots, Roots};

const NS: &str = "default";

fn d(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

fn time(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + n)
}

fn labels(pairs: &[(String, String)]) -> Labels {
    pairs.iter().cloned().collect()
}

/// metad's store: roots that a test can change between the calls a
/// collection makes.
#[derive(Default)]
struct FakeRoots {
    roots: Mutex<Roots>,
    deleted_leases: Mutex<Vec<(String, String)>>,
    broken: bool,
}

impl RootSource for FakeRoots {
    fn roots(&self) -> Result<Roots> {
        if self.broken {
            return Err(Error::internal("the store is broken"));
        }
        Ok(self.roots.lock().unwrap().clone())
    }

    fn delete_leases(&self, leases: &[(String, String)]) -> Result<()> {
        self.deleted_leases
            .lock()
            .unwrap()
            .extend_from_slice(leases);
        let mut roots = self.roots.lock().unwrap();
        for ns in &mut roots.namespaces {
            ns.leases
                .retain(|l| !leases.contains(&(ns.namespace.clone(), l.id.clone())));
        }
        Ok(())
    }
}

type AfterList = Box<dyn Fn() + Send + Sync>;

/// contentd: blobs with conditional deletes, as the real one does them.
#[derive(Default)]
struct FakeContent {
    blobs: Mutex<BTreeMap<(String, Digest), berth_content::Info>>,
    /// Runs after each list (a change that races the collection).
    after_list: Mutex<Option<AfterList>>,
    /// Deletes fail with Unavailable after this many.
    fail_after: Option<usize>,
    deletes: Mutex<usize>,
    /// metad's gate, to check deletes happen while it is held.
    gate: Option<Arc<RwLock<()>>>,
}

impl FakeContent {
    fn add(&self, name: &str, label_pairs: &[(String, String)]) {
        self.blobs.lock().unwrap().insert(
            (NS.to_string(), d(name)),
            berth_content::Info {
                digest: d(name),
                size: 1,
                created_at: time(0),
                updated_at: time(0),
                labels: labels(label_pairs),
            },
        );
    }

    fn touch(&self, name: &str) {
        let mut blobs = self.blobs.lock().unwrap();
        let info = blobs.get_mut(&(NS.to_string(), d(name))).unwrap();
        info.updated_at = time(1);
    }

    fn has(&self, name: &str) -> bool {
        self.blobs
            .lock()
            .unwrap()
            .contains_key(&(NS.to_string(), d(name)))
    }
}

#[async_trait]
impl ContentDaemon for FakeContent {
    async fn list(&self, namespace: &str) -> Result<Vec<berth_content::Info>> {
        if let Some(gate) = &self.gate {
            assert!(
                gate.try_read().is_ok(),
                "listing holds metad's writers back"
            );
        }
        let infos = self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, info)| info.clone())
            .collect();
        if let Some(after) = self.after_list.lock().unwrap().as_ref() {
            after();
        }
        Ok(infos)
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()> {
        if let Some(gate) = &self.gate {
            assert!(gate.try_read().is_err(), "deleting while writers run");
        }
        {
            let mut deletes = self.deletes.lock().unwrap();
            if self.fail_after.is_some_and(|n| *deletes >= n) {
                return Err(Error::unavailable("contentd went away"));
            }
            *deletes += 1;
        }
        let mut blobs = self.blobs.lock().unwrap();
        let key = (namespace.to_string(), digest.clone());
        match blobs.get(&key) {
            None => Err(Error::not_found("no such blob")),
            Some(info) if info.updated_at != seen => Err(Error::failed_precondition("changed")),
            Some(_) => {
                blobs.remove(&key);
                Ok(())
            }
        }
    }
}

/// One snapshotter: refuses to remove a parent before its children.
#[derive(Default)]
struct FakeSnapshots {
    snapshots: Mutex<BTreeMap<(String, String), berth_snapshot::Info>>,
}

impl FakeSnapshots {
    fn add(&self, key: &str, parent: Option<&str>) {
        self.snapshots.lock().unwrap().insert(
            (NS.to_string(), key.to_string()),
            berth_snapshot::Info {
                kind: berth_snapshot::Kind::Committed,
                name: key.to_string(),
                parent: parent.map(str::to_string),
                labels: Labels::new(),
                created_at: time(0),
                updated_at: time(0),
            },
        );
    }

    fn keys(&self) -> Vec<String> {
        self.snapshots
            .lock()
            .unwrap()
            .keys()
            .map(|(_, k)| k.clone())
            .collect()
    }
}

#[async_trait]
impl SnapshotDaemon for FakeSnapshots {
    async fn list(&self, namespace: &str) -> Result<Vec<berth_snapshot::Info>> {
        Ok(self
            .snapshots
            .lock()
            .unwrap()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, info)| info.clone())
            .collect())
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: SystemTime,
    ) -> Result<()> {
        let mut snapshots = self.snapshots.lock().unwrap();
        let id = (namespace.to_string(), key.to_string());
        let Some(info) = snapshots.get(&id) else {
            return Err(Error::not_found("no such snapshot"));
        };
        if info.updated_at != seen {
            return Err(Error::failed_precondition("changed"));
        }
        if snapshots
            .iter()
            .any(|((ns, _), i)| ns == namespace && i.parent.as_deref() == Some(key))
        {
            return Err(Error::failed_precondition("has children"));
        }
        snapshots.remove(&id);
        Ok(())
    }
}

/// Both daemons, either of which may be down.
#[derive(Default)]
struct FakeDaemons {
    content: Arc<FakeContent>,
    snapshots: BTreeMap<String, Arc<FakeSnapshots>>,
    contentd_down: bool,
    snapd_down: bool,
}

#[async_trait]
impl Daemons for FakeDaemons {
    async fn contentd(&self) -> Result<Arc<dyn ContentDaemon>> {
        if self.contentd_down {
            return Err(Error::unavailable("connection refused"));
        }
        Ok(self.content.clone())
    }

    async fn snapd(&self, snapshotter: &str) -> Result<Arc<dyn SnapshotDaemon>> {
        if self.snapd_down {
            return Err(Error::unavailable("connection refused"));
        }
        match self.snapshots.get(snapshotter) {
            Some(s) => Ok(s.clone()),
            None => Err(Error::invalid_argument("no such snapshotter")),
        }
    }
}

/// A stack with one unpacked image ("m" → "c", "l"; "c" names snapshot
/// "top" on "base") and a loose blob and snapshot.
fn stack() -> FakeDaemons {
    let content = FakeContent::default();
    content.add(
        "m",
        &[
            (
                "containerd.io/gc.ref.content.config".into(),
                d("c").to_string(),
            ),
            (
                "containerd.io/gc.ref.content.l.0".into(),
                d("l").to_string(),
            ),
        ],
    );
    content.add(
        "c",
        &[(
            "containerd.io/gc.ref.snapshot.overlayfs".into(),
            "top".into(),
        )],
    );
    content.add("l", &[]);
    content.add("loose", &[]);
    let overlay = FakeSnapshots::default();
    overlay.add("base", None);
    overlay.add("top", Some("base"));
    overlay.add("loose-rw", Some("top"));
    FakeDaemons {
        content: Arc::new(content),
        snapshots: BTreeMap::from([
            ("overlayfs".to_string(), Arc::new(overlay)),
            ("native".to_string(), Arc::new(FakeSnapshots::default())),
        ]),
        ..Default::default()
    }
}

fn image_roots(images: &[&str]) -> Roots {
    Roots {
        namespaces: vec![NamespaceRoots {
            namespace: NS.to_string(),
            images: images.iter().map(|n| d(n)).collect(),
            ..Default::default()
        }],
    }
}

fn collector(roots: Arc<FakeRoots>, daemons: Arc<FakeDaemons>) -> Collector {
    Collector::new(roots, daemons, CollectorConfig::default())
}

fn removed(report: &Report) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report
        .removed
        .iter()
        .map(|r| {
            assert_eq!(r.namespace, NS);
            (r.kind.clone(), r.id.clone())
        })
        .collect();
    out.sort();
    out
}

fn entry(kind: &str, id: impl ToString) -> (String, String) {
    (kind.to_string(), id.to_string())
}

#[tokio::test]
async fn deletes_exactly_what_nothing_holds() {
    let daemons = Arc::new(stack());
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&["m"])),
        ..Default::default()
    });
    let gate = RwLock::new(());
    let report = collector(roots.clone(), daemons.clone())
        .collect(&gate)
        .await
        .unwrap();
    let mut want = vec![
        entry("content", d("loose")),
        entry("snapshots/overlayfs", "loose-rw"),
    ];
    want.sort();
    assert_eq!(removed(&report), want);
    assert!(report.skipped.is_empty());
    assert!(report.pause <= report.duration);
    assert!(daemons.content.has("m") && daemons.content.has("l"));
    assert_eq!(daemons.snapshots["overlayfs"].keys(), ["base", "top"]);

    // Without the image, the rest goes too, children before parents.
    *roots.roots.lock().unwrap() = image_roots(&[]);
    let report = collector(roots, daemons.clone())
        .collect(&gate)
        .await
        .unwrap();
    let mut want = vec![
        entry("content", d("m")),
        entry("content", d("c")),
        entry("content", d("l")),
        entry("snapshots/overlayfs", "top"),
        entry("snapshots/overlayfs", "base"),
    ];
    want.sort();
    assert_eq!(removed(&report), want);
    assert!(daemons.content.blobs.lock().unwrap().is_empty());
    assert!(daemons.snapshots["overlayfs"].keys().is_empty());
}

#[tokio::test]
async fn lists_before_holding_writers_and_deletes_while_holding_them() {
    let gate = Arc::new(RwLock::new(()));
    let mut daemons = stack();
    daemons.content = Arc::new(FakeContent {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    daemons.content.add("loose", &[]);
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&[])),
        ..Default::default()
    });
    let report = collector(roots, Arc::new(daemons))
        .collect(&gate)
        .await
        .unwrap();
    assert!(removed(&report).contains(&entry("content", d("loose"))));
    assert!(gate.try_write().is_ok(), "released at the end");
}

#[tokio::test]
async fn roots_are_read_after_listing() {
    // An image recorded while the daemons are being listed holds its blobs.
    let daemons = Arc::new(stack());
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&[])),
        ..Default::default()
    });
    let late = roots.clone();
    *daemons.content.after_list.lock().unwrap() = Some(Box::new(move || {
        *late.roots.lock().unwrap() = image_roots(&["m"]);
    }));
    let report = collector(roots, daemons.clone())
        .collect(&RwLock::new(()))
        .await
        .unwrap();
    let mut want = vec![
        entry("content", d("loose")),
        entry("snapshots/overlayfs", "loose-rw"),
    ];
    want.sort();
    assert_eq!(removed(&report), want);
}

#[tokio::test]
async fn what_changed_after_listing_survives() {
    let daemons = Arc::new(stack());
    let touched = daemons.content.clone();
    *daemons.content.after_list.lock().unwrap() = Some(Box::new(move || touched.touch("loose")));
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&["m"])),
        ..Default::default()
    });
    let report = collector(roots, daemons.clone())
        .collect(&RwLock::new(()))
        .await
        .unwrap();
    assert_eq!(removed(&report), [entry("snapshots/overlayfs", "loose-rw")]);
    assert!(daemons.content.has("loose"));
}

#[tokio::test]
async fn a_daemon_that_is_down_stops_all_deletions_of_blobs_and_snapshots() {
    for (contentd_down, snapd_down, skipped) in [
        (true, false, vec![CONTENTD]),
        (false, true, vec![SNAPD]),
        (true, true, vec![CONTENTD, SNAPD]),
    ] {
        let mut daemons = stack();
        daemons.contentd_down = contentd_down;
        daemons.snapd_down = snapd_down;
        let daemons = Arc::new(daemons);
        let mut roots = image_roots(&[]);
        roots.namespaces[0].leases = vec![LeaseRoots {
            id: "old".into(),
            created_at: time(0),
            labels: labels(&[(
                "containerd.io/gc.expire".into(),
                "2001-01-01T00:00:00Z".into(),
            )]),
            resources: vec![],
        }];
        let roots = Arc::new(FakeRoots {
            roots: Mutex::new(roots),
            ..Default::default()
        });
        let report = collector(roots.clone(), daemons.clone())
            .collect(&RwLock::new(()))
            .await
            .unwrap();
        assert_eq!(report.skipped, skipped);
        // Metad's own garbage still goes.
        assert_eq!(removed(&report), [entry("leases", "old")]);
        assert_eq!(daemons.content.blobs.lock().unwrap().len(), 4);
        assert_eq!(daemons.snapshots["overlayfs"].keys().len(), 3);
    }
}

#[tokio::test]
async fn without_snapshotters_snapd_is_not_consulted() {
    let mut daemons = stack();
    daemons.snapd_down = true;
    let daemons = Arc::new(daemons);
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&["m"])),
        ..Default::default()
    });
    let config = CollectorConfig {
        snapshotters: vec![],
        ..Default::default()
    };
    let report = Collector::new(roots, daemons, config)
        .collect(&RwLock::new(()))
        .await
        .unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(removed(&report), [entry("content", d("loose"))]);
}

#[tokio::test]
async fn a_daemon_failing_midway_is_reported_and_left_alone() {
    let mut daemons = stack();
    daemons.content = Arc::new(FakeContent {
        fail_after: Some(1),
        ..Default::default()
    });
    for name in ["a", "b", "c"] {
        daemons.content.add(name, &[]);
    }
    let daemons = Arc::new(daemons);
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(image_roots(&[])),
        ..Default::default()
    });
    let report = collector(roots, daemons.clone())
        .collect(&RwLock::new(()))
        .await
        .unwrap();
    assert_eq!(report.skipped, [CONTENTD]);
    let blobs: Vec<_> = removed(&report)
        .into_iter()
        .filter(|(kind, _)| kind == "content")
        .collect();
    assert_eq!(blobs.len(), 1);
    assert_eq!(daemons.content.blobs.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn expired_leases_are_deleted_and_reported() {
    let daemons = Arc::new(stack());
    let mut roots = image_roots(&[]);
    let lease = |id: &str, expiry: &str| LeaseRoots {
        id: id.into(),
        created_at: time(0),
        labels: labels(&[("containerd.io/gc.expire".into(), expiry.into())]),
        resources: vec![berth_metadata::Resource {
            kind: "content".into(),
            id: d("m").to_string(),
        }],
    };
    roots.namespaces[0].leases = vec![
        lease("expired", "2001-01-01T00:00:00Z"),
        lease("live", "2999-01-01T00:00:00Z"),
    ];
    let roots = Arc::new(FakeRoots {
        roots: Mutex::new(roots),
        ..Default::default()
    });
    let report = collector(roots.clone(), daemons)
        .collect(&RwLock::new(()))
        .await
        .unwrap();
    assert!(removed(&report).contains(&entry("leases", "expired")));
    assert!(!removed(&report).contains(&entry("content", d("m"))));
    assert_eq!(
        *roots.deleted_leases.lock().unwrap(),
        [(NS.to_string(), "expired".to_string())]
    );
}

#[tokio::test]
async fn a_store_error_fails_the_collection_and_deletes_nothing() {
    let daemons = Arc::new(stack());
    let roots = Arc::new(FakeRoots {
        broken: true,
        ..Default::default()
    });
    let gate = RwLock::new(());
    let err = collector(roots, daemons.clone())
        .collect(&gate)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(daemons.content.blobs.lock().unwrap().len(), 4);
    assert!(gate.try_write().is_ok());
}
