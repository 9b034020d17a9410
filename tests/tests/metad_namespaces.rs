#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Deleting a namespace asks the real berth-contentd and berth-snapd: it is
//! refused while either holds anything in it, and refused as Unavailable
//! when one cannot be asked.

use std::path::Path;

use berth_api::namespaces as pb;
use berth_client::{connect, request_context, RemoteContentStore, RemoteSnapshotter};
use berth_content::{write_blob, ContentStore, WriterOptions};
use berth_e2e::Daemon;
use berth_errdefs::{Error, ErrorKind};
use berth_snapshot::Snapshotter;

struct Daemons {
    contentd: Daemon,
    snapd: Daemon,
    metad: Daemon,
}

fn start(dir: &Path) -> Daemons {
    let contentd = Daemon::contentd(&dir.join("contentd"));
    let snapd = Daemon::snapd(&dir.join("snapd"), &contentd);
    let metad = Daemon::metad(&dir.join("metad"), &contentd, &snapd);
    Daemons {
        contentd,
        snapd,
        metad,
    }
}

async fn namespaces(metad: &Daemon) -> pb::NamespacesClient {
    pb::NamespacesClient::new(connect(&metad.socket).await.unwrap())
}

async fn create(client: &pb::NamespacesClient, name: &str) {
    let req = pb::Namespace {
        name: name.to_string(),
        ..Default::default()
    };
    client
        .create(request_context("default"), &req)
        .await
        .unwrap();
}

async fn delete(client: &pb::NamespacesClient, name: &str) -> Result<(), Error> {
    let req = pb::DeleteNamespaceRequest {
        name: name.to_string(),
        ..Default::default()
    };
    client
        .delete(request_context("default"), &req)
        .await
        .map(|_| ())
        .map_err(Error::from)
}

async fn exists(client: &pb::NamespacesClient, name: &str) -> bool {
    let req = pb::GetNamespaceRequest {
        name: name.to_string(),
        ..Default::default()
    };
    client.get(request_context("default"), &req).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_contentd_holds_content_or_ingests() {
    let dir = tempfile::tempdir().unwrap();
    let daemons = start(dir.path());
    let client = namespaces(&daemons.metad).await;
    let content = RemoteContentStore::connect(&daemons.contentd.socket)
        .await
        .unwrap();
    create(&client, "held").await;

    // A root of its own, so that metad's scheduled collection (nothing
    // else refers to it) leaves it for the test to delete.
    let digest = write_blob(
        &content,
        "held",
        "blob",
        b"held data",
        None,
        [(berth_metadata::LABEL_GC_ROOT.to_string(), "1".to_string())].into(),
    )
    .await
    .unwrap();
    let err = delete(&client, "held").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.message().contains("content"), "{err}");
    assert!(exists(&client, "held").await);

    // Content in another namespace does not count.
    create(&client, "empty").await;
    delete(&client, "empty").await.unwrap();
    assert!(!exists(&client, "empty").await);

    // An ingest in progress holds the namespace too.
    content.delete("held", &digest).await.unwrap();
    let mut writer = content
        .writer("held", WriterOptions::new("half-written"))
        .await
        .unwrap();
    writer.write(b"half".to_vec()).await.unwrap();
    drop(writer);
    let err = delete(&client, "held").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.message().contains("ingest"), "{err}");

    // Once contentd holds nothing, the namespace goes.
    let mut aborted = false;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        // The dropped writer lets go of its ref asynchronously.
        match content.abort("held", "half-written").await {
            Ok(()) => {
                aborted = true;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(aborted, "the ingest stayed locked");
    delete(&client, "held").await.unwrap();
    assert!(!exists(&client, "held").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_snapd_holds_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let daemons = start(dir.path());
    let client = namespaces(&daemons.metad).await;
    create(&client, "snapped").await;
    // The native snapshotter needs no mount to prepare.
    let native = RemoteSnapshotter::connect(&daemons.snapd.socket, "native")
        .await
        .unwrap();
    native
        .prepare("snapped", "active", None, Default::default())
        .await
        .unwrap();
    let err = delete(&client, "snapped").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.message().contains("native snapshots"), "{err}");
    native.remove("snapped", "active").await.unwrap();
    delete(&client, "snapped").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_unavailable_while_a_daemon_cannot_be_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemons = start(dir.path());
    let client = namespaces(&daemons.metad).await;
    create(&client, "unknown").await;

    daemons.contentd.kill();
    let err = delete(&client, "unknown").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(exists(&client, "unknown").await);
    daemons.contentd.restart();

    daemons.snapd.kill();
    let err = delete(&client, "unknown").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(exists(&client, "unknown").await);
    daemons.snapd.restart();

    delete(&client, "unknown").await.unwrap();
    assert!(!exists(&client, "unknown").await);
}
