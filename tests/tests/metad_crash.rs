#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-metad killed with SIGKILL in the middle of a burst of writes: every
//! create it acknowledged is there after a restart, and the store opens and
//! serves as before.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::containers as containers_pb;
use berth_api::images as images_pb;
use berth_api::protobuf::well_known_types::any::Any;
use berth_api::protobuf::MessageField;
use berth_client::{connect, request_context};
use berth_e2e::Daemon;
use berth_errdefs::ErrorKind;

const NS: &str = "crash";
const WRITERS: usize = 6;
/// Acknowledged creates to wait for before the kill; the writers keep
/// going, so the kill lands mid-burst.
const BEFORE_KILL: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Acked {
    Container(String),
    Image(String),
}

fn container(id: &str) -> containers_pb::Container {
    containers_pb::Container {
        id: id.to_string(),
        image: "docker.io/library/busybox:1.36".into(),
        runtime: MessageField::some(containers_pb::Runtime {
            name: "io.containerd.berth.v2".into(),
            ..Default::default()
        }),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: format!("{{\"ociVersion\":\"1.1.0\",\"hostname\":\"{id}\"}}").into_bytes(),
            ..Default::default()
        }),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.to_string(),
        ..Default::default()
    }
}

fn image(name: &str) -> images_pb::Image {
    images_pb::Image {
        name: name.to_string(),
        target: MessageField::some(images_pb::Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: berth_ids::Digest::of(name.as_bytes()).to_string(),
            size: 1234,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates records until the daemon goes away; records each one it
/// acknowledged.
async fn writer(socket: std::path::PathBuf, n: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let client = connect(&socket).await.unwrap();
    let containers = containers_pb::ContainersClient::new(client.clone());
    let images = images_pb::ImagesClient::new(client);
    for i in 0.. {
        let id = format!("w{n}-{i}");
        let result = if i % 3 == 2 {
            let name = format!("registry.local/crash/{id}:v1");
            images
                .create(request_context(NS), &image(&name))
                .await
                .map(|_| Acked::Image(name))
        } else {
            containers
                .create(request_context(NS), &container(&id))
                .await
                .map(|_| Acked::Container(id))
        };
        match result {
            Ok(record) => acked.lock().unwrap().push(record),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut metad = Daemon::metad_alone(&dir.path().join("metad"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| tokio::spawn(writer(metad.socket.clone(), n, acked.clone())))
        .collect();

    // A liveness guard only: the kill waits for progress, not for time.
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.lock().unwrap().len() < BEFORE_KILL {
        assert!(Instant::now() < deadline, "metad made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    metad.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= BEFORE_KILL);

    metad.restart();
    let client = connect(&metad.socket).await.unwrap();
    let containers = containers_pb::ContainersClient::new(client.clone());
    let images = images_pb::ImagesClient::new(client);
    for record in &acked {
        match record {
            Acked::Container(id) => {
                let req = containers_pb::GetContainerRequest {
                    id: id.clone(),
                    ..Default::default()
                };
                let got = containers
                    .get(request_context(NS), &req)
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged container {id} is gone: {e}"));
                assert_eq!(got.snapshot_key, *id);
                assert_eq!(got.spec.value, container(id).spec.value);
            }
            Acked::Image(name) => {
                let req = images_pb::GetImageRequest {
                    name: name.clone(),
                    ..Default::default()
                };
                let got = images
                    .get(request_context(NS), &req)
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged image {name} is gone: {e}"));
                assert_eq!(got.target.digest, image(name).target.digest);
            }
        }
    }

    // Every stored record reads back whole, acknowledged or not.
    let mut stream = containers
        .list(request_context(NS), &Default::default())
        .await
        .unwrap();
    let mut listed = 0;
    while let Some(batch) = stream.recv().await.unwrap() {
        for c in &batch.containers {
            assert_eq!(c.spec.value, container(&c.id).spec.value);
            listed += 1;
        }
    }
    let acked_containers = acked
        .iter()
        .filter(|r| matches!(r, Acked::Container(_)))
        .count();
    assert!(listed >= acked_containers, "{listed} < {acked_containers}");

    // And the store takes writes again; one acknowledged before is still
    // taken.
    containers
        .create(request_context(NS), &container("after-restart"))
        .await
        .unwrap();
    let Some(Acked::Container(first)) = acked
        .iter()
        .find(|r| matches!(r, Acked::Container(_)))
        .cloned()
    else {
        panic!("no container was acknowledged");
    };
    let err = containers
        .create(request_context(NS), &container(&first))
        .await
        .unwrap_err();
    assert_eq!(
        berth_errdefs::Error::from(err).kind(),
        ErrorKind::AlreadyExists
    );
}
