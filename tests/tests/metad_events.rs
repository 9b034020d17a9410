#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-metad publishes its own record changes on its exchange, with
//! containerd's topics and payload types, so `ctr events`-style consumers
//! can decode them.

use std::time::SystemTime;

use berth_api::protobuf::Message;
use berth_client::events::RemoteEvents;
use berth_client::{RemoteContainers, RemoteImages};
use berth_e2e::Daemon;
use berth_ids::Digest;
use berth_metadata::{Any, Container, ContainerStore, Descriptor, Image, ImageStore, Runtime};
use containerd_shim_protos::events::container::ContainerCreate;
use containerd_shim_protos::events::image::{ImageCreate, ImageDelete};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_changes_are_published_as_containerd_events() {
    let dir = tempfile::tempdir().unwrap();
    let metad = Daemon::metad_alone(dir.path());
    let events = RemoteEvents::connect(&metad.socket).await.unwrap();
    let mut subscription = events
        .subscribe(&[r#"topic~="^/(images|containers)/""#.to_string()])
        .await
        .unwrap();
    // The stream is open before metad has registered it: until a probe
    // comes back, what is published could be missed (under load it was).
    loop {
        let probe = Any {
            type_url: "berth.test.Probe".into(),
            value: Vec::new(),
        };
        events
            .publish("probe", "/images/probe", probe)
            .await
            .unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_millis(200), subscription.next());
        if let Ok(Ok(Some(event))) = next.await {
            assert_eq!(event.topic, "/images/probe");
            break;
        }
    }
    let images = RemoteImages::connect(&metad.socket).await.unwrap();
    let target = Descriptor {
        urls: Vec::new(),
        platform: None,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: Digest::of(b"manifest"),
        size: 8,
        annotations: Default::default(),
    };
    images
        .create(
            "team-a",
            Image {
                name: "example.com/app:v1".into(),
                labels: [("k".to_string(), "v".to_string())].into(),
                target,
                created_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
            },
        )
        .await
        .unwrap();
    let containers = RemoteContainers::connect(&metad.socket).await.unwrap();
    containers
        .create(
            "team-a",
            Container {
                id: "web".into(),
                labels: Default::default(),
                image: "example.com/app:v1".into(),
                runtime: Runtime {
                    name: "io.containerd.berth.v2".into(),
                    options: None,
                },
                spec: Some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: br#"{"ociVersion":"1.1.0"}"#.to_vec(),
                }),
                snapshotter: "overlayfs".into(),
                snapshot_key: "web".into(),
                created_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
                extensions: Default::default(),
                sandbox: String::new(),
            },
        )
        .await
        .unwrap();
    images
        .delete("team-a", "example.com/app:v1", false)
        .await
        .unwrap();

    // Probes sent before the first one arrived may still come; they are
    // not record changes.
    let mut created = subscription.next().await.unwrap().unwrap();
    while created.topic == "/images/probe" {
        created = subscription.next().await.unwrap().unwrap();
    }
    assert_eq!(created.namespace, "team-a");
    assert_eq!(created.topic, "/images/create");
    assert_eq!(
        created.event.type_url,
        "containerd.services.images.v1.ImageCreate"
    );
    let payload = ImageCreate::parse_from_bytes(&created.event.value).unwrap();
    assert_eq!(payload.name, "example.com/app:v1");
    assert_eq!(payload.labels.get("k").map(String::as_str), Some("v"));

    let container = subscription.next().await.unwrap().unwrap();
    assert_eq!(container.topic, "/containers/create");
    assert_eq!(
        container.event.type_url,
        "containerd.events.ContainerCreate"
    );
    let payload = ContainerCreate::parse_from_bytes(&container.event.value).unwrap();
    assert_eq!(payload.id, "web");
    assert_eq!(payload.image, "example.com/app:v1");

    let deleted = subscription.next().await.unwrap().unwrap();
    assert_eq!(deleted.topic, "/images/delete");
    assert_eq!(
        deleted.event.type_url,
        "containerd.services.images.v1.ImageDelete"
    );
    let payload = ImageDelete::parse_from_bytes(&deleted.event.value).unwrap();
    assert_eq!(payload.name, "example.com/app:v1");
}
