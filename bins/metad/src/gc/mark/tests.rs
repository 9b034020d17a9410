#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use berth_ids::Digest;
use berth_metadata::{Labels, Resource};

use super::*;
use crate::gc::roots::{LeaseRoots, NamespaceRoots, Roots};

const NS: &str = "default";
const OVERLAY: &str = "overlayfs";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A digest named for a test object.
fn d(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn content_ref(name: &str, target: &str) -> (String, String) {
    (
        format!("containerd.io/gc.ref.content.{name}"),
        d(target).to_string(),
    )
}

/// What the daemons listed, built up object by object.
#[derive(Default)]
struct World {
    listing: Listing,
    tick: u64,
}

impl World {
    fn stamp(&mut self) -> SystemTime {
        self.tick += 1;
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + self.tick)
    }

    fn blob(&mut self, ns: &str, name: &str, labels: Vec<(String, String)>) -> &mut World {
        let at = self.stamp();
        self.listing
            .content
            .entry(ns.to_string())
            .or_default()
            .push(berth_content::Info {
                digest: d(name),
                size: 1,
                created_at: at,
                updated_at: at,
                labels: labels.into_iter().collect(),
            });
        self
    }

    fn snapshot(
        &mut self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        parent: Option<&str>,
        labels: Vec<(String, String)>,
    ) -> &mut World {
        let at = self.stamp();
        self.listing
            .snapshots
            .entry((ns.to_string(), snapshotter.to_string()))
            .or_default()
            .push(berth_snapshot::Info {
                kind: berth_snapshot::Kind::Committed,
                name: key.to_string(),
                parent: parent.map(str::to_string),
                labels: labels.into_iter().collect(),
                created_at: at,
                updated_at: at,
            });
        self
    }

    /// An unpacked image in `ns`: manifest `{p}m` → config `{p}c` and
    /// layers `{p}l0`, `{p}l1`; the config names the top snapshot `{p}s1`
    /// (on `{p}s0`).
    fn image(&mut self, ns: &str, p: &str) -> &mut World {
        let layers = [format!("{p}l0"), format!("{p}l1")];
        self.image_with_layers(ns, p, &[layers[0].as_str(), layers[1].as_str()], None)
    }

    fn image_with_layers(
        &mut self,
        ns: &str,
        p: &str,
        layers: &[&str],
        base: Option<&str>,
    ) -> &mut World {
        let mut manifest = vec![content_ref("config", &format!("{p}c"))];
        for (i, layer) in layers.iter().enumerate() {
            manifest.push(content_ref(&format!("l.{i}"), layer));
            if !self.has_blob(ns, layer) {
                self.blob(ns, layer, vec![]);
            }
        }
        self.blob(ns, &format!("{p}m"), manifest);
        self.blob(
            ns,
            &format!("{p}c"),
            vec![(
                format!("containerd.io/gc.ref.snapshot.{OVERLAY}"),
                format!("{p}s1"),
            )],
        );
        let bottom = match base {
            Some(base) => base.to_string(),
            None => {
                self.snapshot(ns, OVERLAY, &format!("{p}s0"), None, vec![]);
                format!("{p}s0")
            }
        };
        self.snapshot(ns, OVERLAY, &format!("{p}s1"), Some(&bottom), vec![]);
        self
    }

    fn has_blob(&self, ns: &str, name: &str) -> bool {
        self.listing
            .content
            .get(ns)
            .is_some_and(|infos| infos.iter().any(|i| i.digest == d(name)))
    }

    fn plan(&self, roots: &Roots) -> Plan {
        plan(roots, &self.listing, now())
    }
}

fn ns_roots(ns: &str) -> NamespaceRoots {
    NamespaceRoots {
        namespace: ns.to_string(),
        ..Default::default()
    }
}

fn roots(namespaces: Vec<NamespaceRoots>) -> Roots {
    Roots { namespaces }
}

fn with_images(ns: &str, images: &[&str]) -> NamespaceRoots {
    NamespaceRoots {
        images: images.iter().map(|name| d(name)).collect(),
        ..ns_roots(ns)
    }
}

fn lease(id: &str, label_pairs: &[(&str, &str)], resources: &[(&str, &str)]) -> LeaseRoots {
    LeaseRoots {
        id: id.to_string(),
        created_at: now(),
        labels: labels(label_pairs),
        resources: resources
            .iter()
            .map(|(kind, id)| Resource {
                kind: kind.to_string(),
                id: id.to_string(),
            })
            .collect(),
    }
}

/// The garbage blobs as (namespace, name) for names in `names`.
fn garbage_blobs(plan: &Plan) -> BTreeSet<(String, Digest)> {
    plan.content
        .iter()
        .map(|g| (g.namespace.clone(), g.digest.clone()))
        .collect()
}

fn blobs(ns: &str, names: &[&str]) -> BTreeSet<(String, Digest)> {
    names.iter().map(|n| (ns.to_string(), d(n))).collect()
}

fn garbage_snapshots(plan: &Plan) -> BTreeSet<(String, String, String)> {
    plan.snapshots
        .iter()
        .map(|g| (g.namespace.clone(), g.snapshotter.clone(), g.key.clone()))
        .collect()
}

fn snaps(ns: &str, snapshotter: &str, keys: &[&str]) -> BTreeSet<(String, String, String)> {
    keys.iter()
        .map(|k| (ns.to_string(), snapshotter.to_string(), k.to_string()))
        .collect()
}

fn expired(ns: &str, id: &str) -> Vec<(String, String)> {
    vec![(ns.to_string(), id.to_string())]
}

#[test]
fn an_image_keeps_its_manifest_config_layers_and_snapshots() {
    let mut world = World::default();
    world.image(NS, "a");
    let plan = world.plan(&roots(vec![with_images(NS, &["am"])]));
    assert_eq!(plan, Plan::default());
}

#[test]
fn without_its_image_everything_of_it_is_garbage() {
    let mut world = World::default();
    world.image(NS, "a");
    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["am", "ac", "al0", "al1"]));
    let order: Vec<&str> = plan.snapshots.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(order, ["as1", "as0"]);
    assert!(plan.expired_leases.is_empty());
}

#[test]
fn garbage_carries_the_time_it_was_listed_at() {
    let mut world = World::default();
    world.blob(NS, "x", vec![]);
    world.snapshot(NS, OVERLAY, "k", None, vec![]);
    let plan = world.plan(&roots(vec![]));
    assert_eq!(
        plan.content[0].seen,
        world.listing.content[NS][0].updated_at
    );
    let listed = &world.listing.snapshots[&(NS.to_string(), OVERLAY.to_string())][0];
    assert_eq!(plan.snapshots[0].seen, listed.updated_at);
}

#[test]
fn deleting_one_of_two_images_keeps_what_they_share() {
    let mut world = World::default();
    // Both images' top snapshots sit on one base.
    world.snapshot(NS, OVERLAY, "base", None, vec![]);
    world.image_with_layers(NS, "a", &["shared", "only-a"], Some("base"));
    world.image_with_layers(NS, "b", &["shared", "only-b"], Some("base"));

    let plan = world.plan(&roots(vec![with_images(NS, &["bm"])]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["am", "ac", "only-a"]));
    assert_eq!(garbage_snapshots(&plan), snaps(NS, OVERLAY, &["as1"]));

    let both = world.plan(&roots(vec![with_images(NS, &["am", "bm"])]));
    assert_eq!(both, Plan::default());
}

#[test]
fn a_lease_holds_its_resources_and_what_they_reference() {
    let mut world = World::default();
    world.image(NS, "a");
    world.blob(NS, "loose", vec![]);
    let mut ns = ns_roots(NS);
    ns.leases = vec![lease(
        "pull",
        &[],
        &[
            ("content", d("am").as_str()),
            ("snapshots/overlayfs", "as1"),
        ],
    )];
    // The image's blobs and snapshots are held through the manifest and
    // the snapshot resource; the loose blob is not.
    let plan = world.plan(&roots(vec![ns]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["loose"]));
    assert!(plan.snapshots.is_empty());
}

#[test]
fn a_lease_holds_what_carries_its_label() {
    let mut world = World::default();
    world.blob(
        NS,
        "held",
        vec![(berth_api::lease_label("pull"), "1".into())],
    );
    world.blob(
        NS,
        "stale",
        vec![(berth_api::lease_label("gone"), "1".into())],
    );
    world.blob(NS, "layer", vec![]);
    // A leased manifest keeps what it references, too.
    world.blob(
        NS,
        "manifest",
        vec![
            (berth_api::lease_label("pull"), "1".into()),
            content_ref("l.0", "layer"),
        ],
    );
    world.snapshot(NS, OVERLAY, "parent", None, vec![]);
    world.snapshot(
        NS,
        OVERLAY,
        "child",
        Some("parent"),
        vec![(berth_api::lease_label("pull"), "1".into())],
    );
    let mut ns = ns_roots(NS);
    ns.leases = vec![lease("pull", &[], &[])];
    let plan = world.plan(&roots(vec![ns]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["stale"]));
    assert!(plan.snapshots.is_empty());
}

#[test]
fn an_expired_lease_holds_nothing_and_is_deleted() {
    for (expiry, holds) in [
        ("2023-11-14T22:13:19Z", false), // one second before now()
        ("2000-01-01T00:00:00+01:00", false),
        ("2023-11-14T22:13:20Z", true), // exactly now(): not yet expired, as containerd's Before(now)
        ("2023-11-14T22:13:21Z", true), // one second after
        ("2999-01-01T00:00:00Z", true),
        ("next tuesday", true), // unreadable: ignored, as containerd does
    ] {
        let mut world = World::default();
        world.image(NS, "a");
        world.blob(
            NS,
            "labelled",
            vec![(berth_api::lease_label("l"), "1".into())],
        );
        let mut ns = ns_roots(NS);
        ns.leases = vec![lease(
            "l",
            &[("containerd.io/gc.expire", expiry)],
            &[("content", d("am").as_str())],
        )];
        let plan = world.plan(&roots(vec![ns]));
        if holds {
            assert_eq!(plan, Plan::default(), "{expiry}");
        } else {
            assert_eq!(
                garbage_blobs(&plan),
                blobs(NS, &["am", "ac", "al0", "al1", "labelled"]),
                "{expiry}"
            );
            assert_eq!(plan.snapshots.len(), 2, "{expiry}");
            assert_eq!(plan.expired_leases, expired(NS, "l"), "{expiry}");
        }
    }
}

#[test]
fn a_flat_lease_holds_only_what_it_names() {
    let mut world = World::default();
    world.image(NS, "a");
    world.blob(NS, "x", vec![]);
    world.snapshot(
        NS,
        OVERLAY,
        "top",
        Some("as1"),
        vec![content_ref("extra", "x")],
    );
    world.blob(
        NS,
        "labelled",
        vec![
            (berth_api::lease_label("flat"), "1".into()),
            content_ref("ref", "al0"),
        ],
    );
    let mut ns = ns_roots(NS);
    ns.leases = vec![lease(
        "flat",
        &[("containerd.io/gc.flat", "")],
        &[
            ("content", d("am").as_str()),
            ("snapshots/overlayfs", "top"),
        ],
    )];
    let plan = world.plan(&roots(vec![ns.clone()]));
    // The manifest but not its config or layers; the snapshot and its
    // parents (it cannot exist without them) but not what its labels
    // name; the labelled blob but not what it references.
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["ac", "al0", "al1", "x"]));
    assert!(plan.snapshots.is_empty());

    // Held flat by the lease and fully by an image: fully, whichever the
    // walk meets first.
    ns.images = vec![d("am")];
    let plan = world.plan(&roots(vec![ns]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["x"]));
}

#[test]
fn gc_root_labels_make_roots() {
    let mut world = World::default();
    world.image(NS, "a");
    world.blob(
        NS,
        "pinned",
        vec![
            ("containerd.io/gc.root".into(), "".into()),
            content_ref("config", "ac"),
        ],
    );
    world.snapshot(
        NS,
        OVERLAY,
        "pinned-snap",
        Some("as0"),
        vec![("containerd.io/gc.root".into(), "yes".into())],
    );
    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    // The config keeps as1 (its label) and so as0.
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["am", "al0", "al1"]));
    assert!(plan.snapshots.is_empty());
}

#[test]
fn a_container_holds_its_snapshot_chain() {
    let mut world = World::default();
    world.image(NS, "a");
    world.blob(NS, "x", vec![]);
    world.snapshot(
        NS,
        OVERLAY,
        "ctr-rw",
        Some("as1"),
        vec![content_ref("x", "x")],
    );
    let mut ns = ns_roots(NS);
    ns.containers = vec![(OVERLAY.to_string(), "ctr-rw".to_string())];
    let plan = world.plan(&roots(vec![ns]));
    // The snapshot chain and what the container's snapshot labels name;
    // not the image's blobs (nothing holds the image).
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["am", "ac", "al0", "al1"]));
    assert!(plan.snapshots.is_empty());

    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    let order: Vec<&str> = plan.snapshots.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(order, ["ctr-rw", "as1", "as0"]);
}

#[test]
fn namespaces_are_isolated() {
    let mut world = World::default();
    world.image("a", "i");
    world.image("b", "i");
    world.blob(
        "b",
        "leased",
        vec![(berth_api::lease_label("l"), "1".into())],
    );
    world.blob("b", "root-named", vec![]);
    let mut a = with_images("a", &["im"]);
    a.leases = vec![lease("l", &[], &[("content", d("root-named").as_str())])];
    a.containers = vec![(OVERLAY.to_string(), "is1".to_string())];
    let plan = world.plan(&roots(vec![a, ns_roots("b")]));
    // Everything in b goes, though a holds the same digests, keys and a
    // lease of the same name.
    assert_eq!(
        garbage_blobs(&plan),
        blobs("b", &["im", "ic", "il0", "il1", "leased", "root-named"])
    );
    assert_eq!(
        garbage_snapshots(&plan),
        snaps("b", OVERLAY, &["is0", "is1"])
    );
}

#[test]
fn a_namespace_metad_has_no_roots_for_is_all_garbage() {
    let mut world = World::default();
    world.blob("other", "x", vec![]);
    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    assert_eq!(garbage_blobs(&plan), blobs("other", &["x"]));
}

#[test]
fn reference_cycles_terminate() {
    let mut world = World::default();
    world.blob(NS, "x", vec![content_ref("next", "y")]);
    world.blob(NS, "y", vec![content_ref("next", "x")]);
    world.snapshot(NS, OVERLAY, "p", Some("q"), vec![]);
    world.snapshot(NS, OVERLAY, "q", Some("p"), vec![]);
    let plan = world.plan(&roots(vec![with_images(NS, &["x"])]));
    assert!(plan.content.is_empty());
    assert_eq!(garbage_snapshots(&plan), snaps(NS, OVERLAY, &["p", "q"]));

    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    assert_eq!(garbage_blobs(&plan), blobs(NS, &["x", "y"]));
}

#[test]
fn snapshots_are_removed_children_first() {
    let mut world = World::default();
    // r ← a ← aa ← aaa, r ← b ← ba, r ← c; lone; one that names a parent
    // that was not listed.
    for (key, parent) in [
        ("aaa", Some("aa")),
        ("r", None),
        ("ba", Some("b")),
        ("a", Some("r")),
        ("lone", None),
        ("c", Some("r")),
        ("aa", Some("a")),
        ("b", Some("r")),
        ("orphan", Some("unlisted")),
    ] {
        world.snapshot(NS, OVERLAY, key, parent, vec![]);
    }
    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    let order: Vec<&str> = plan.snapshots.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(order.len(), 9);
    let at = |key: &str| order.iter().position(|k| *k == key).unwrap();
    for (child, parent) in [
        ("aaa", "aa"),
        ("aa", "a"),
        ("a", "r"),
        ("ba", "b"),
        ("b", "r"),
        ("c", "r"),
    ] {
        assert!(at(child) < at(parent), "{child} before {parent}: {order:?}");
    }
}

#[test]
fn back_references_keep_an_object_while_its_target_lives() {
    let mut world = World::default();
    world.image(NS, "a");
    world.blob(
        NS,
        "signature",
        vec![(
            "containerd.io/gc.bref.content.sig".into(),
            d("am").to_string(),
        )],
    );
    world.snapshot(
        NS,
        OVERLAY,
        "sidecar",
        None,
        vec![(
            "containerd.io/gc.bref.snapshot.overlayfs".into(),
            "as1".into(),
        )],
    );
    let plan = world.plan(&roots(vec![with_images(NS, &["am"])]));
    assert_eq!(plan, Plan::default());
    let plan = world.plan(&roots(vec![ns_roots(NS)]));
    assert_eq!(
        garbage_blobs(&plan),
        blobs(NS, &["am", "ac", "al0", "al1", "signature"])
    );
    assert_eq!(
        garbage_snapshots(&plan),
        snaps(NS, OVERLAY, &["as0", "as1", "sidecar"])
    );
}

#[test]
fn snapshot_references_name_their_snapshotter() {
    let mut world = World::default();
    world.blob(
        NS,
        "config",
        vec![(
            "containerd.io/gc.ref.snapshot.native".into(),
            "chain".into(),
        )],
    );
    world.snapshot(NS, OVERLAY, "chain", None, vec![]);
    world.snapshot(NS, "native", "chain", None, vec![]);
    let plan = world.plan(&roots(vec![with_images(NS, &["config"])]));
    assert_eq!(garbage_snapshots(&plan), snaps(NS, OVERLAY, &["chain"]));
}

#[test]
fn references_to_what_was_not_listed_are_harmless() {
    let mut world = World::default();
    world.blob(
        NS,
        "m",
        vec![
            content_ref("config", "missing"),
            (
                "containerd.io/gc.ref.content.bad".into(),
                "not-a-digest".into(),
            ),
            (
                "containerd.io/gc.ref.snapshot.overlayfs".into(),
                "missing".into(),
            ),
        ],
    );
    let mut ns = with_images(NS, &["m", "also-missing"]);
    ns.containers = vec![(OVERLAY.into(), "missing".into())];
    ns.leases = vec![lease("l", &[], &[("ingests", "ref-1"), ("other", "x")])];
    let plan = world.plan(&roots(vec![ns]));
    assert_eq!(plan, Plan::default());
}
