#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

//! The metadata conformance suite, after containerd's metadata tests. Each
//! case is a plain async function over [`Stores`] (the four traits, which
//! one implementation provides); [`metadata_suite!`](crate::metadata_suite)
//! turns them into `#[tokio::test]`s for that implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_errdefs::{error_kind as kind, ErrorKind};
use berth_ids::Digest;

use crate::{
    Any, Container, ContainerStore, Descriptor, Image, ImageStore, Labels, Lease, LeaseManager,
    Namespace, NamespaceStore, Resource, Runtime, LABEL_GC_EXPIRE,
};

/// The implementation under test: one value per trait (often the same
/// store four times).
pub struct Stores {
    pub namespaces: Box<dyn NamespaceStore>,
    pub images: Box<dyn ImageStore>,
    pub containers: Box<dyn ContainerStore>,
    pub leases: Box<dyn LeaseManager>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// The same store for all four traits.
    pub fn of<S>(store: S) -> Stores
    where
        S: NamespaceStore + ImageStore + ContainerStore + LeaseManager + Clone + 'static,
    {
        Stores {
            namespaces: Box::new(store.clone()),
            images: Box::new(store.clone()),
            containers: Box::new(store.clone()),
            leases: Box::new(store),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn paths(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| p.to_string()).collect()
}

const NS: &str = "suite";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A time no store would stamp a record with today.
fn long_ago() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(5)
}

fn digest(seed: &str) -> Digest {
    Digest::of(seed.as_bytes())
}

pub fn image(name: &str, target: &str, media_type: &str, l: &[(&str, &str)]) -> Image {
    Image {
        name: name.to_string(),
        labels: labels(l),
        target: Descriptor {
            urls: Vec::new(),
            platform: None,
            media_type: media_type.to_string(),
            digest: digest(target),
            size: 100 + target.len() as u64,
            annotations: Labels::new(),
        },
        created_at: long_ago(),
        updated_at: long_ago(),
    }
}

fn spec(text: &str) -> Option<Any> {
    Some(Any {
        type_url: SPEC_TYPE.to_string(),
        value: text.as_bytes().to_vec(),
    })
}

pub fn container(id: &str) -> Container {
    Container {
        id: id.to_string(),
        labels: Labels::new(),
        image: "docker.io/library/busybox:1.36".to_string(),
        runtime: Runtime {
            name: "io.containerd.berth.v2".to_string(),
            options: None,
        },
        spec: spec("{\"ociVersion\":\"1.1.0\"}"),
        snapshotter: "overlayfs".to_string(),
        snapshot_key: id.to_string(),
        created_at: long_ago(),
        updated_at: long_ago(),
        extensions: BTreeMap::new(),
        sandbox: String::new(),
    }
}

fn names(images: &[Image]) -> BTreeSet<String> {
    images.iter().map(|i| i.name.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn namespace_names(s: &Stores) -> BTreeSet<String> {
    s.namespaces
        .list(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect()
}

pub async fn namespaces_round_trip(s: &Stores) {
    let ns = Namespace {
        name: "suite-ns".into(),
        labels: labels(&[("a", "1")]),
    };
    assert_eq!(s.namespaces.create(ns.clone()).await.unwrap(), ns);
    assert_eq!(s.namespaces.get("suite-ns").await.unwrap(), ns);
    assert_eq!(
        kind(s.namespaces.create(ns.clone()).await),
        ErrorKind::AlreadyExists
    );
    assert!(namespace_names(s).await.contains("suite-ns"));
    let found = s
        .namespaces
        .list(&["name==suite-ns".to_string()])
        .await
        .unwrap();
    assert_eq!(found, vec![ns.clone()]);
    let found = s.namespaces.list(&["labels.a==2".into()]).await.unwrap();
    assert!(found.iter().all(|n| n.name != "suite-ns"));

    // One label by path, then all of them without paths.
    let new = Namespace {
        name: "suite-ns".into(),
        labels: labels(&[("b", "2"), ("ignored", "x")]),
    };
    let updated = s
        .namespaces
        .update(new.clone(), &paths(&["labels.b"]))
        .await
        .unwrap();
    assert_eq!(updated.labels, labels(&[("a", "1"), ("b", "2")]));
    let updated = s.namespaces.update(new.clone(), &[]).await.unwrap();
    assert_eq!(updated.labels, new.labels);
    assert_eq!(
        kind(s.namespaces.update(new.clone(), &paths(&["name"])).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.namespaces.get("suite-ns").await.unwrap(), updated);
    let missing = Namespace {
        name: "suite-missing".into(),
        labels: Labels::new(),
    };
    assert_eq!(
        kind(s.namespaces.update(missing, &[]).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.namespaces.get("suite-missing").await),
        ErrorKind::NotFound
    );

    s.namespaces.delete("suite-ns").await.unwrap();
    assert_eq!(
        kind(s.namespaces.get("suite-ns").await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.namespaces.delete("suite-ns").await),
        ErrorKind::NotFound
    );
    assert!(!namespace_names(s).await.contains("suite-ns"));
}

pub async fn namespaces_are_created_on_first_use_and_kept_while_used(s: &Stores) {
    let before = namespace_names(s).await;
    assert!(!before.contains("used-by-image"));

    s.images
        .create("used-by-image", image("busybox", "t", INDEX, &[]))
        .await
        .unwrap();
    s.containers
        .create("used-by-container", container("c1"))
        .await
        .unwrap();
    s.leases
        .create("used-by-lease", "l1", Labels::new())
        .await
        .unwrap();
    let after = namespace_names(s).await;
    for ns in ["used-by-image", "used-by-container", "used-by-lease"] {
        assert!(after.contains(ns), "{ns} was not created: {after:?}");
        assert_eq!(
            kind(s.namespaces.delete(ns).await),
            ErrorKind::FailedPrecondition,
            "{ns}"
        );
        assert!(s.namespaces.get(ns).await.is_ok());
    }
    // Creating it explicitly now finds it there.
    assert_eq!(
        kind(
            s.namespaces
                .create(Namespace {
                    name: "used-by-image".into(),
                    labels: Labels::new(),
                })
                .await
        ),
        ErrorKind::AlreadyExists
    );

    s.images
        .delete("used-by-image", "busybox", false)
        .await
        .unwrap();
    s.containers
        .delete("used-by-container", "c1")
        .await
        .unwrap();
    s.leases.delete("used-by-lease", "l1", false).await.unwrap();
    for ns in ["used-by-image", "used-by-container", "used-by-lease"] {
        s.namespaces.delete(ns).await.unwrap();
    }
    assert_eq!(namespace_names(s).await, before);
}

pub async fn images_round_trip(s: &Stores) {
    let mut want = image(
        "docker.io/library/busybox:1.36",
        "busybox",
        INDEX,
        &[("a", "1")],
    );
    want.target.annotations = labels(&[("org.opencontainers.image.ref.name", "1.36")]);
    let created = s.images.create(NS, want.clone()).await.unwrap();
    assert_eq!(created.name, want.name);
    assert_eq!(created.target, want.target);
    assert_eq!(created.labels, want.labels);
    // The store stamps the times; what the caller sent is ignored.
    assert!(created.created_at > long_ago());
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(s.images.get(NS, &want.name).await.unwrap(), created);

    let mut other = want.clone();
    other.target.digest = digest("other");
    assert_eq!(
        kind(s.images.create(NS, other.clone()).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(s.images.get(NS, &want.name).await.unwrap(), created);
    assert_eq!(s.images.list(NS, &[]).await.unwrap(), vec![created.clone()]);

    s.images.delete(NS, &want.name, false).await.unwrap();
    assert_eq!(
        kind(s.images.get(NS, &want.name).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.images.delete(NS, &want.name, false).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.images.update(NS, other, &[]).await),
        ErrorKind::NotFound
    );
    assert!(s.images.list(NS, &[]).await.unwrap().is_empty());
    // Deleting with sync runs a collection first; the record goes alike.
    s.images.create(NS, want.clone()).await.unwrap();
    s.images.delete(NS, &want.name, true).await.unwrap();
    assert_eq!(
        kind(s.images.get(NS, &want.name).await),
        ErrorKind::NotFound
    );
}

pub async fn image_updates_touch_only_the_named_fields(s: &Stores) {
    let name = "registry.local/app:v1";
    let mut first = image(
        name,
        "first",
        MANIFEST,
        &[("keep", "1"), ("change", "1"), ("drop", "1")],
    );
    first.target.annotations = labels(&[("x", "1")]);
    let created = s.images.create(NS, first.clone()).await.unwrap();

    let mut second = image(name, "second", INDEX, &[("change", "2"), ("new", "3")]);
    second.target.annotations = labels(&[("y", "2")]);

    let updated = s
        .images
        .update(
            NS,
            second.clone(),
            &paths(&["labels.change", "labels.drop"]),
        )
        .await
        .unwrap();
    assert_eq!(updated.labels, labels(&[("keep", "1"), ("change", "2")]));
    assert_eq!(updated.target, first.target);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(s.images.get(NS, name).await.unwrap(), updated);

    let updated = s
        .images
        .update(NS, second.clone(), &paths(&["annotations.y"]))
        .await
        .unwrap();
    assert_eq!(
        updated.target.annotations,
        labels(&[("x", "1"), ("y", "2")])
    );
    assert_eq!(updated.target.digest, first.target.digest);

    let updated = s
        .images
        .update(NS, second.clone(), &paths(&["target"]))
        .await
        .unwrap();
    assert_eq!(updated.target, second.target);
    assert_eq!(updated.labels, labels(&[("keep", "1"), ("change", "2")]));

    // Without paths, labels and target are replaced.
    let mut third = image(name, "third", MANIFEST, &[("only", "this")]);
    third.created_at = long_ago();
    let updated = s.images.update(NS, third.clone(), &[]).await.unwrap();
    assert_eq!(updated.labels, third.labels);
    assert_eq!(updated.target, third.target);
    assert_eq!(updated.created_at, created.created_at);

    // Refused updates change nothing.
    let before = s.images.get(NS, name).await.unwrap();
    for bad_paths in [
        paths(&["name"]),
        paths(&["labels.only", "created_at"]),
        paths(&["labels."]),
    ] {
        assert_eq!(
            kind(s.images.update(NS, second.clone(), &bad_paths).await),
            ErrorKind::InvalidArgument,
            "{bad_paths:?}"
        );
    }
    let mut no_size = second.clone();
    no_size.target.size = 0;
    assert_eq!(
        kind(s.images.update(NS, no_size, &paths(&["target"])).await),
        ErrorKind::InvalidArgument
    );
    let mut bad_label = second.clone();
    bad_label.labels = labels(&[("k", "a\u{7}bell")]);
    assert_eq!(
        kind(s.images.update(NS, bad_label, &paths(&["labels.k"])).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.images.get(NS, name).await.unwrap(), before);
}

pub async fn image_filters_match_like_containerd(s: &Stores) {
    let busybox = "docker.io/library/busybox:1.36";
    let alpine = "docker.io/library/alpine:3";
    let app = "registry.local/team/app:v1";
    s.images
        .create(
            NS,
            image(busybox, "d1", INDEX, &[("env", "prod"), ("a.b", "c")]),
        )
        .await
        .unwrap();
    s.images
        .create(NS, image(alpine, "d2", MANIFEST, &[("env", "dev")]))
        .await
        .unwrap();
    s.images
        .create(NS, image(app, "d1", MANIFEST, &[]))
        .await
        .unwrap();
    let d1 = digest("d1");
    let cases: Vec<(Vec<String>, BTreeSet<String>)> = vec![
        (vec![], set(&[busybox, alpine, app])),
        (vec![format!("name=={alpine}")], set(&[alpine])),
        (vec!["name~=^docker\\.io/".into()], set(&[busybox, alpine])),
        (vec![format!("target.digest=={d1}")], set(&[busybox, app])),
        (
            vec![format!("target.mediatype=={MANIFEST}")],
            set(&[alpine, app]),
        ),
        (vec!["labels.env==prod".into()], set(&[busybox])),
        (vec!["labels.env".into()], set(&[busybox, alpine])),
        (vec!["labels.env!=prod".into()], set(&[alpine, app])),
        (vec!["labels.\"a.b\"==c".into()], set(&[busybox])),
        (vec!["labels.a.b==c".into()], set(&[busybox])),
        (
            vec!["labels.env==dev".into(), "labels.env==prod".into()],
            set(&[busybox, alpine]),
        ),
        (
            vec!["labels.env==dev|name~=app".into()],
            set(&[alpine, app]),
        ),
        (
            vec![format!("labels.env==prod,target.digest=={}", digest("d2"))],
            set(&[]),
        ),
        (vec!["nosuchfield".into()], set(&[])),
    ];
    for (filters, want) in cases {
        let got = s.images.list(NS, &filters).await.unwrap();
        assert_eq!(names(&got), want, "{filters:?}");
    }
    for bad in ["name==", "labels.", "name~=("] {
        assert_eq!(
            kind(s.images.list(NS, &[bad.to_string()]).await),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
    }
}

pub async fn containers_round_trip(s: &Stores) {
    let mut want = container("web-1");
    want.labels = labels(&[("tier", "web")]);
    want.runtime.options = Some(Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0x0a, 0x00, 0xff],
    });
    want.spec = Some(Any {
        type_url: SPEC_TYPE.into(),
        value: vec![0, 159, 146, 150, 255],
    });
    want.extensions.insert(
        "berth.io/ext".into(),
        Any {
            type_url: "ext".into(),
            value: b"e".to_vec(),
        },
    );
    want.sandbox = "pod-1".into();
    let created = s.containers.create(NS, want.clone()).await.unwrap();
    assert!(created.created_at > long_ago());
    assert_eq!(created.created_at, created.updated_at);
    let mut expected = want.clone();
    expected.created_at = created.created_at;
    expected.updated_at = created.updated_at;
    assert_eq!(created, expected);
    assert_eq!(s.containers.get(NS, "web-1").await.unwrap(), created);
    assert_eq!(
        kind(s.containers.create(NS, container("web-1")).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(s.containers.get(NS, "web-1").await.unwrap(), created);
    assert_eq!(
        s.containers.list(NS, &[]).await.unwrap(),
        vec![created.clone()]
    );
    s.containers.delete(NS, "web-1").await.unwrap();
    assert_eq!(
        kind(s.containers.get(NS, "web-1").await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.containers.delete(NS, "web-1").await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.containers.update(NS, want, &[]).await),
        ErrorKind::NotFound
    );
    // A container needs no image or snapshot.
    let mut bare = container("bare");
    bare.image.clear();
    bare.snapshotter.clear();
    bare.snapshot_key.clear();
    let created = s.containers.create(NS, bare).await.unwrap();
    assert_eq!(s.containers.get(NS, "bare").await.unwrap(), created);
}

pub async fn container_updates_touch_only_the_named_fields(s: &Stores) {
    let mut first = container("upd");
    first.labels = labels(&[("keep", "1"), ("change", "1")]);
    first.extensions.insert(
        "one".into(),
        Any {
            type_url: "t".into(),
            value: b"1".to_vec(),
        },
    );
    let created = s.containers.create(NS, first.clone()).await.unwrap();

    let mut second = container("upd");
    second.labels = labels(&[("change", "2")]);
    second.image = "docker.io/library/alpine:3".into();
    second.spec = spec("{\"ociVersion\":\"1.2.0\"}");
    second.snapshot_key = "other-key".into();
    second.runtime = Runtime {
        name: "io.containerd.runc.v2".into(),
        options: Some(Any {
            type_url: "o".into(),
            value: b"x".to_vec(),
        }),
    };
    second.extensions.insert(
        "two".into(),
        Any {
            type_url: "t".into(),
            value: b"2".to_vec(),
        },
    );

    let updated = s
        .containers
        .update(NS, second.clone(), &paths(&["labels.change"]))
        .await
        .unwrap();
    assert_eq!(updated.labels, labels(&[("keep", "1"), ("change", "2")]));
    assert_eq!(updated.image, first.image);
    assert_eq!(updated.spec, first.spec);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);

    let updated = s
        .containers
        .update(NS, second.clone(), &paths(&["image", "spec"]))
        .await
        .unwrap();
    assert_eq!(updated.image, second.image);
    assert_eq!(updated.spec, second.spec);
    assert_eq!(updated.snapshot_key, first.snapshot_key);
    assert_eq!(updated.runtime, first.runtime);

    let updated = s
        .containers
        .update(NS, second.clone(), &paths(&["snapshotkey"]))
        .await
        .unwrap();
    assert_eq!(updated.snapshot_key, "other-key");
    let mut back = second.clone();
    back.snapshot_key = "upd".into();
    let updated = s
        .containers
        .update(NS, back, &paths(&["snapshot_key"]))
        .await
        .unwrap();
    assert_eq!(updated.snapshot_key, "upd");

    let updated = s
        .containers
        .update(
            NS,
            second.clone(),
            &paths(&["extensions.two", "extensions.one"]),
        )
        .await
        .unwrap();
    assert_eq!(
        updated.extensions.keys().collect::<Vec<_>>(),
        vec!["two"],
        "extensions.one is not in the new record, so it goes"
    );

    let updated = s
        .containers
        .update(NS, second.clone(), &paths(&["runtime"]))
        .await
        .unwrap();
    assert_eq!(updated.runtime, second.runtime);

    // The snapshotter never changes, by path or by full replace.
    let before = s.containers.get(NS, "upd").await.unwrap();
    let mut moved = second.clone();
    moved.snapshotter = "native".into();
    for bad_paths in [
        vec![],
        paths(&["snapshotter"]),
        paths(&["id"]),
        paths(&["created_at"]),
        paths(&["labels.change", "nosuchfield"]),
    ] {
        assert_eq!(
            kind(s.containers.update(NS, moved.clone(), &bad_paths).await),
            ErrorKind::InvalidArgument,
            "{bad_paths:?}"
        );
    }
    let mut no_spec = second.clone();
    no_spec.spec = None;
    assert_eq!(
        kind(s.containers.update(NS, no_spec, &paths(&["spec"])).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.containers.get(NS, "upd").await.unwrap(), before);

    // A full replace changes every updatable field (same snapshotter and
    // runtime name).
    let mut full = second.clone();
    full.runtime.name = before.runtime.name.clone();
    full.labels = labels(&[("only", "this")]);
    let updated = s.containers.update(NS, full.clone(), &[]).await.unwrap();
    assert_eq!(updated.labels, full.labels);
    assert_eq!(updated.image, full.image);
    assert_eq!(updated.spec, full.spec);
    assert_eq!(updated.snapshot_key, full.snapshot_key);
    assert_eq!(updated.extensions, full.extensions);
    assert_eq!(updated.snapshotter, "overlayfs");
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(s.containers.get(NS, "upd").await.unwrap(), updated);
}

pub async fn container_filters_match_like_containerd(s: &Stores) {
    let mut one = container("c-one");
    one.labels = labels(&[("tier", "web")]);
    let mut two = container("c-two");
    two.labels = labels(&[("tier", "db")]);
    two.image = "docker.io/library/alpine:3".into();
    two.runtime.name = "io.containerd.runc.v2".into();
    two.snapshotter = "native".into();
    two.snapshot_key = "k2".into();
    let mut three = container("c-three");
    three.image.clear();
    three.snapshotter.clear();
    three.snapshot_key.clear();
    for c in [one, two, three] {
        s.containers.create(NS, c).await.unwrap();
    }
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["c-one", "c-two", "c-three"]),
        (&["id==c-two"], &["c-two"]),
        (&["image==docker.io/library/busybox:1.36"], &["c-one"]),
        (&["image"], &["c-one", "c-two"]),
        (&["runtime.name==io.containerd.runc.v2"], &["c-two"]),
        (&["snapshotter==overlayfs"], &["c-one"]),
        (&["snapshot_key==k2"], &["c-two"]),
        (&["snapshotkey==k2"], &["c-two"]),
        (&["labels.tier==web|labels.tier==db"], &["c-one", "c-two"]),
        (&["labels.tier!=web"], &["c-two", "c-three"]),
        (&["id~=^c-t"], &["c-two", "c-three"]),
        (&["id~=^c-t,labels.tier"], &["c-two"]),
    ];
    for (filters, want) in cases {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let got: BTreeSet<String> = s
            .containers
            .list(NS, &filters)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(got, set(want), "{filters:?}");
    }
    assert_eq!(
        kind(s.containers.list(NS, &["id==".into()]).await),
        ErrorKind::InvalidArgument
    );
}

pub async fn leases_round_trip(s: &Stores) {
    let lease = s
        .leases
        .create(NS, "pull-1", labels(&[("purpose", "pull")]))
        .await
        .unwrap();
    assert_eq!(lease.id, "pull-1");
    assert_eq!(lease.labels, labels(&[("purpose", "pull")]));
    assert!(lease.created_at > long_ago());
    assert_eq!(
        kind(s.leases.create(NS, "pull-1", Labels::new()).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(s.leases.list(NS, &[]).await.unwrap(), vec![lease.clone()]);

    // Generated ids are valid and distinct.
    let a = s.leases.create(NS, "", Labels::new()).await.unwrap();
    let b = s.leases.create(NS, "", Labels::new()).await.unwrap();
    assert_ne!(a.id, b.id);
    for id in [&a.id, &b.id] {
        assert!(berth_ids::validate_id(id).is_ok(), "{id}");
    }
    let all: BTreeSet<String> = s
        .leases
        .list(NS, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(all, set(&["pull-1", &a.id, &b.id]));
    let found = s
        .leases
        .list(NS, &["labels.purpose==pull".into()])
        .await
        .unwrap();
    assert_eq!(found, vec![lease.clone()]);
    let found = s.leases.list(NS, &[format!("id=={}", a.id)]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, a.id);

    // The expiry label must be an RFC 3339 time.
    assert_eq!(
        kind(
            s.leases
                .create(NS, "bad-expiry", labels(&[(LABEL_GC_EXPIRE, "in an hour")]))
                .await
        ),
        ErrorKind::InvalidArgument
    );
    let expiring = s
        .leases
        .create(
            NS,
            "expiring",
            labels(&[(LABEL_GC_EXPIRE, "2099-01-01T00:00:00Z")]),
        )
        .await
        .unwrap();
    assert_eq!(expiring.labels[LABEL_GC_EXPIRE], "2099-01-01T00:00:00Z");

    for id in ["pull-1", &a.id, &b.id, "expiring"] {
        s.leases.delete(NS, id, false).await.unwrap();
    }
    assert!(s.leases.list(NS, &[]).await.unwrap().is_empty());
    assert_eq!(
        kind(s.leases.delete(NS, "pull-1", false).await),
        ErrorKind::NotFound
    );
    // With sync the record goes alike (a collection runs too).
    s.leases.create(NS, "synced", Labels::new()).await.unwrap();
    s.leases.delete(NS, "synced", true).await.unwrap();
    assert!(s.leases.list(NS, &[]).await.unwrap().is_empty());
}

pub async fn lease_updates_touch_only_labels(s: &Stores) {
    let created = s
        .leases
        .create(
            NS,
            "renewed",
            labels(&[
                (LABEL_GC_EXPIRE, "2099-01-01T00:00:00Z"),
                ("purpose", "pull"),
            ]),
        )
        .await
        .unwrap();
    // One label, by path: the other stays, id and creation time too.
    let mut renewal = Lease {
        id: "renewed".into(),
        created_at: long_ago(),
        labels: labels(&[(LABEL_GC_EXPIRE, "2099-06-01T00:00:00Z")]),
    };
    let updated = s
        .leases
        .update(
            NS,
            renewal.clone(),
            &paths(&["labels.containerd.io/gc.expire"]),
        )
        .await
        .unwrap();
    assert_eq!(
        updated.labels,
        labels(&[
            (LABEL_GC_EXPIRE, "2099-06-01T00:00:00Z"),
            ("purpose", "pull")
        ])
    );
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(s.leases.list(NS, &[]).await.unwrap(), vec![updated.clone()]);
    // Without paths the labels are replaced.
    renewal.labels = labels(&[("purpose", "unpack")]);
    let replaced = s.leases.update(NS, renewal.clone(), &[]).await.unwrap();
    assert_eq!(replaced.labels, labels(&[("purpose", "unpack")]));
    // Refused, and nothing changes: a bad expiry, another path, a lease
    // that is not there, a bad id.
    let mut bad = renewal.clone();
    bad.labels = labels(&[(LABEL_GC_EXPIRE, "tomorrow")]);
    assert_eq!(
        kind(s.leases.update(NS, bad, &paths(&["labels"])).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(s.leases.update(NS, renewal.clone(), &paths(&["id"])).await),
        ErrorKind::InvalidArgument
    );
    let mut missing = renewal.clone();
    missing.id = "missing".into();
    assert_eq!(
        kind(s.leases.update(NS, missing, &[]).await),
        ErrorKind::NotFound
    );
    let mut bad_id = renewal.clone();
    bad_id.id = "../x".into();
    assert_eq!(
        kind(s.leases.update(NS, bad_id, &[]).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.leases.list(NS, &[]).await.unwrap(), vec![replaced]);
    s.leases.delete(NS, "renewed", false).await.unwrap();
}

fn resource(kind: &str, id: &str) -> Resource {
    Resource {
        kind: kind.to_string(),
        id: id.to_string(),
    }
}

async fn sorted_resources(s: &Stores, lease: &str) -> Vec<Resource> {
    let mut got = s.leases.list_resources(NS, lease).await.unwrap();
    got.sort();
    got
}

pub async fn lease_resources(s: &Stores) {
    s.leases.create(NS, "hold", Labels::new()).await.unwrap();
    let blob = digest("blob").to_string();
    let mut want = vec![
        resource("content", &blob),
        resource("ingests", "layer-sha256:abc"),
        resource("snapshots/overlayfs", "sha256:chain"),
        resource("snapshots/native", "active-1"),
    ];
    for r in &want {
        s.leases.add_resource(NS, "hold", r.clone()).await.unwrap();
        // Adding twice holds it once.
        s.leases.add_resource(NS, "hold", r.clone()).await.unwrap();
    }
    want.sort();
    assert_eq!(sorted_resources(s, "hold").await, want);

    s.leases
        .delete_resource(NS, "hold", resource("content", &blob))
        .await
        .unwrap();
    // Removing what is not held is not an error.
    s.leases
        .delete_resource(NS, "hold", resource("content", &blob))
        .await
        .unwrap();
    want.retain(|r| r.kind != "content");
    assert_eq!(sorted_resources(s, "hold").await, want);

    for bad in [
        resource("images", "busybox"),
        resource("snapshots/zfs", "k"),
        resource("snapshots", "k"),
        resource("content", "sha256:nothex"),
        resource("ingests", "../escape"),
        resource("snapshots/overlayfs", "a/b"),
        resource("", "x"),
    ] {
        assert_eq!(
            kind(s.leases.add_resource(NS, "hold", bad.clone()).await),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    assert_eq!(sorted_resources(s, "hold").await, want);

    let ok = resource("content", &blob);
    assert_eq!(
        kind(s.leases.add_resource(NS, "nope", ok.clone()).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.leases.delete_resource(NS, "nope", ok.clone()).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(s.leases.list_resources(NS, "nope").await),
        ErrorKind::NotFound
    );

    // A deleted lease's resources go with it.
    s.leases.delete(NS, "hold", false).await.unwrap();
    s.leases.create(NS, "hold", Labels::new()).await.unwrap();
    assert!(s
        .leases
        .list_resources(NS, "hold")
        .await
        .unwrap()
        .is_empty());
}

pub async fn namespaces_are_isolated(s: &Stores) {
    let name = "docker.io/library/busybox:1.36";
    let in_a = s
        .images
        .create("iso-a", image(name, "a", INDEX, &[]))
        .await
        .unwrap();
    let in_b = s
        .images
        .create("iso-b", image(name, "b", INDEX, &[]))
        .await
        .unwrap();
    assert_eq!(s.images.get("iso-a", name).await.unwrap(), in_a);
    assert_eq!(s.images.get("iso-b", name).await.unwrap(), in_b);
    assert_eq!(s.images.list("iso-a", &[]).await.unwrap(), vec![in_a]);
    s.containers
        .create("iso-a", container("same"))
        .await
        .unwrap();
    s.leases
        .create("iso-a", "same", Labels::new())
        .await
        .unwrap();
    s.leases
        .add_resource("iso-a", "same", resource("ingests", "x"))
        .await
        .unwrap();
    assert_eq!(
        kind(s.containers.get("iso-b", "same").await),
        ErrorKind::NotFound
    );
    assert!(s.leases.list("iso-b", &[]).await.unwrap().is_empty());
    assert_eq!(
        kind(s.leases.list_resources("iso-b", "same").await),
        ErrorKind::NotFound
    );
    // The same ids in another namespace are independent records.
    s.containers
        .create("iso-b", container("same"))
        .await
        .unwrap();
    s.leases
        .create("iso-b", "same", Labels::new())
        .await
        .unwrap();
    assert!(s
        .leases
        .list_resources("iso-b", "same")
        .await
        .unwrap()
        .is_empty());

    s.images.delete("iso-a", name, false).await.unwrap();
    s.containers.delete("iso-a", "same").await.unwrap();
    assert_eq!(s.images.get("iso-b", name).await.unwrap(), in_b);
    assert!(s.containers.get("iso-b", "same").await.is_ok());
    assert_eq!(
        s.leases.list_resources("iso-a", "same").await.unwrap(),
        vec![resource("ingests", "x")]
    );
}

pub async fn bad_input_is_invalid_argument_and_changes_nothing(s: &Stores) {
    let namespaces_before = namespace_names(s).await;
    let invalid = ErrorKind::InvalidArgument;

    for ns in [
        "",
        "../x",
        "a/b",
        "-a",
        "has space",
        "x".repeat(100).as_str(),
    ] {
        assert_eq!(
            kind(s.images.create(ns, image("busybox", "t", INDEX, &[])).await),
            invalid,
            "{ns:?}"
        );
        assert_eq!(kind(s.images.list(ns, &[]).await), invalid, "{ns:?}");
        assert_eq!(
            kind(s.containers.create(ns, container("c")).await),
            invalid,
            "{ns:?}"
        );
        assert_eq!(
            kind(s.leases.create(ns, "l", Labels::new()).await),
            invalid,
            "{ns:?}"
        );
        assert_eq!(
            kind(
                s.namespaces
                    .create(Namespace {
                        name: ns.to_string(),
                        labels: Labels::new(),
                    })
                    .await
            ),
            invalid,
            "{ns:?}"
        );
        assert_eq!(kind(s.namespaces.delete(ns).await), invalid, "{ns:?}");
    }

    for name in ["", "/abs", "a//b", "with space", "../up", "a\nb"] {
        assert_eq!(
            kind(s.images.create(NS, image(name, "t", INDEX, &[])).await),
            invalid,
            "{name:?}"
        );
        assert_eq!(kind(s.images.get(NS, name).await), invalid, "{name:?}");
        assert_eq!(
            kind(s.images.delete(NS, name, false).await),
            invalid,
            "{name:?}"
        );
    }
    let mut no_media_type = image("busybox", "t", "", &[]);
    assert_eq!(
        kind(s.images.create(NS, no_media_type.clone()).await),
        invalid
    );
    no_media_type.target.media_type = INDEX.into();
    no_media_type.target.size = 0;
    assert_eq!(kind(s.images.create(NS, no_media_type).await), invalid);
    let huge_label = labels(&[("big", &"v".repeat(5000))]);
    let spaced_key = labels(&[("a key", "v")]);
    for bad in [&huge_label, &spaced_key] {
        let mut i = image("busybox", "t", INDEX, &[]);
        i.labels = bad.clone();
        assert_eq!(kind(s.images.create(NS, i).await), invalid);
        let mut c = container("c");
        c.labels = bad.clone();
        assert_eq!(kind(s.containers.create(NS, c).await), invalid);
        assert_eq!(kind(s.leases.create(NS, "l", bad.clone()).await), invalid);
        assert_eq!(
            kind(
                s.namespaces
                    .create(Namespace {
                        name: "labelled".into(),
                        labels: bad.clone(),
                    })
                    .await
            ),
            invalid
        );
    }

    let mut bad_containers = Vec::new();
    for id in ["", "../x", "a/b", "x y"] {
        bad_containers.push(container(id));
    }
    let mut c = container("c");
    c.runtime.name.clear();
    bad_containers.push(c);
    let mut c = container("c");
    c.spec = None;
    bad_containers.push(c);
    let mut c = container("c");
    c.snapshotter.clear();
    bad_containers.push(c);
    let mut c = container("c");
    c.snapshotter = "zfs".into();
    bad_containers.push(c);
    let mut c = container("c");
    c.snapshot_key = "../escape".into();
    bad_containers.push(c);
    let mut c = container("c");
    c.sandbox = "../s".into();
    bad_containers.push(c);
    let mut c = container("c");
    c.image = "not an image".into();
    bad_containers.push(c);
    let mut c = container("c");
    c.extensions.insert(
        String::new(),
        Any {
            type_url: "t".into(),
            value: vec![],
        },
    );
    bad_containers.push(c);
    for c in bad_containers {
        assert_eq!(
            kind(s.containers.create(NS, c.clone()).await),
            invalid,
            "{c:?}"
        );
    }
    for id in ["", "../x", "x/y"] {
        assert_eq!(kind(s.containers.get(NS, id).await), invalid, "{id:?}");
        assert_eq!(kind(s.containers.delete(NS, id).await), invalid, "{id:?}");
        assert_eq!(
            kind(s.leases.delete(NS, id, false).await),
            invalid,
            "{id:?}"
        );
    }
    for id in ["../x", "x/y", "-x"] {
        assert_eq!(
            kind(s.leases.create(NS, id, Labels::new()).await),
            invalid,
            "{id:?}"
        );
    }

    // Nothing was stored, and no namespace was created on the way.
    assert_eq!(namespace_names(s).await, namespaces_before);
    assert!(s.images.list(NS, &[]).await.unwrap().is_empty());
    assert!(s.containers.list(NS, &[]).await.unwrap().is_empty());
    assert!(s.leases.list(NS, &[]).await.unwrap().is_empty());
}

/// Lists larger than one ttrpc frame (4 MiB) arrive whole.
pub async fn large_lists_arrive_whole(s: &Stores) {
    let big = "x".repeat(256 * 1024);
    for i in 0..24 {
        let mut c = container(&format!("big-{i:02}"));
        c.spec = spec(&format!("{i:02}{big}"));
        s.containers.create(NS, c).await.unwrap();
    }
    for i in 0..600 {
        s.images
            .create(
                NS,
                image(
                    &format!("registry.local/many:{i}"),
                    &i.to_string(),
                    MANIFEST,
                    &[],
                ),
            )
            .await
            .unwrap();
    }
    let containers = s.containers.list(NS, &[]).await.unwrap();
    assert_eq!(containers.len(), 24);
    for c in &containers {
        let value = &c.spec.as_ref().unwrap().value;
        assert_eq!(value.len(), big.len() + 2);
        assert_eq!(&value[..2], &c.id.as_bytes()[4..6]);
    }
    assert_eq!(s.images.list(NS, &[]).await.unwrap().len(), 600);
}

/// Generates one `#[tokio::test]` per conformance case for the stores made
/// by `$setup`, an async fn returning `(Stores, guard)`; the guard (temp
/// dir, daemon processes) lives until the case ends.
#[macro_export]
macro_rules! metadata_suite {
    ($setup:path) => {
        $crate::metadata_suite!(@cases $setup;
            namespaces_round_trip,
            namespaces_are_created_on_first_use_and_kept_while_used,
            images_round_trip,
            image_updates_touch_only_the_named_fields,
            image_filters_match_like_containerd,
            containers_round_trip,
            container_updates_touch_only_the_named_fields,
            container_filters_match_like_containerd,
            leases_round_trip,
            lease_updates_touch_only_labels,
            lease_resources,
            namespaces_are_isolated,
            bad_input_is_invalid_argument_and_changes_nothing,
            large_lists_arrive_whole,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (stores, _guard) = $setup().await;
                $crate::testsuite::$case(&stores).await;
            }
        )*
    };
}
