#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What metad's records give the garbage collector: every namespace's
//! roots, and the deletion of expired leases.

use berth_metad::gc::RootSource;
use berth_metad::store::MetaStore;
use berth_metadata::testsuite::{container, image};
use berth_metadata::{ContainerStore, ImageStore, Labels, LeaseManager, NamespaceStore, Resource};

fn resource(kind: &str, id: &str) -> Resource {
    Resource {
        kind: kind.into(),
        id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_cover_every_namespace_and_expired_leases_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open_standalone(dir.path()).unwrap();
    let manifest = "application/vnd.oci.image.manifest.v1+json";
    let a = ImageStore::create(&store, "ns-a", image("app:1", "target-a", manifest, &[]))
        .await
        .unwrap();
    let b = ImageStore::create(&store, "ns-b", image("app:1", "target-b", manifest, &[]))
        .await
        .unwrap();
    ContainerStore::create(&store, "ns-a", container("with-snapshot"))
        .await
        .unwrap();
    let mut bare = container("bare");
    bare.snapshotter.clear();
    bare.snapshot_key.clear();
    ContainerStore::create(&store, "ns-a", bare).await.unwrap();
    let mut labels = Labels::new();
    labels.insert(
        berth_metadata::LABEL_GC_EXPIRE.into(),
        "2000-01-01T00:00:00Z".into(),
    );
    LeaseManager::create(&store, "ns-b", "old", labels.clone())
        .await
        .unwrap();
    LeaseManager::create(&store, "ns-b", "kept", Labels::new())
        .await
        .unwrap();
    store
        .add_resource("ns-b", "old", resource("ingests", "partial"))
        .await
        .unwrap();
    store
        .add_resource("ns-b", "kept", resource("snapshots/native", "k"))
        .await
        .unwrap();
    NamespaceStore::create(
        &store,
        berth_metadata::Namespace {
            name: "empty".into(),
            labels: Labels::new(),
        },
    )
    .await
    .unwrap();

    let records = store.records().clone();
    let roots = tokio::task::spawn_blocking(move || records.roots())
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = roots
        .namespaces
        .iter()
        .map(|n| n.namespace.as_str())
        .collect();
    assert_eq!(names, vec!["empty", "ns-a", "ns-b"]);
    assert_eq!(
        store.records().namespaces().unwrap(),
        vec!["empty", "ns-a", "ns-b"]
    );
    let ns_a = &roots.namespaces[1];
    assert_eq!(ns_a.images, vec![a.target.digest.clone()]);
    assert_eq!(
        ns_a.containers,
        vec![("overlayfs".to_string(), "with-snapshot".to_string())]
    );
    assert!(ns_a.leases.is_empty());
    let ns_b = &roots.namespaces[2];
    assert_eq!(ns_b.images, vec![b.target.digest.clone()]);
    let leases: Vec<(&str, &[Resource])> = ns_b
        .leases
        .iter()
        .map(|l| (l.id.as_str(), l.resources.as_slice()))
        .collect();
    assert_eq!(
        leases,
        vec![
            ("kept", &[resource("snapshots/native", "k")][..]),
            ("old", &[resource("ingests", "partial")][..]),
        ]
    );
    assert_eq!(ns_b.leases[1].labels, labels);

    // The collector deletes expired leases (and skips ones already gone).
    store
        .records()
        .delete_leases(&[
            ("ns-b".to_string(), "old".to_string()),
            ("ns-b".to_string(), "gone-already".to_string()),
        ])
        .unwrap();
    let left: Vec<String> = LeaseManager::list(&store, "ns-b", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(left, vec!["kept"]);
    LeaseManager::create(&store, "ns-b", "old", Labels::new())
        .await
        .unwrap();
    assert!(store
        .list_resources("ns-b", "old")
        .await
        .unwrap()
        .is_empty());
}

/// A lease deleted while a collection lists contentd and snapd (after
/// `begin_collection`, before `roots`) still holds its resources in that
/// collection's roots, and in no later one; a lease deleted outside a
/// collection holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_deleted_while_a_collection_lists_still_holds_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open_standalone(dir.path()).unwrap();
    let roots_now = |store: &MetaStore| {
        let records = store.records().clone();
        async move {
            tokio::task::spawn_blocking(move || records.roots())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let leases_of = |roots: &berth_metad::gc::Roots| -> Vec<(String, Vec<Resource>)> {
        roots
            .namespaces
            .iter()
            .filter(|n| n.namespace == "ns")
            .flat_map(|n| n.leases.iter())
            .map(|l| (l.id.clone(), l.resources.clone()))
            .collect()
    };
    for id in ["handed-over", "before"] {
        LeaseManager::create(&store, "ns", id, Labels::new())
            .await
            .unwrap();
        store
            .add_resource("ns", id, resource("snapshots/overlayfs", "top"))
            .await
            .unwrap();
    }
    // Deleted before the collection began: nothing.
    LeaseManager::delete(&store, "ns", "before", false)
        .await
        .unwrap();

    store.records().begin_collection();
    LeaseManager::delete(&store, "ns", "handed-over", false)
        .await
        .unwrap();
    let roots = roots_now(&store).await;
    assert_eq!(
        leases_of(&roots),
        vec![(
            "handed-over".to_string(),
            vec![resource("snapshots/overlayfs", "top")]
        )]
    );
    // The keeping ended with that read.
    assert!(leases_of(&roots_now(&store).await).is_empty());
}
