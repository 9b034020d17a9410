#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What start-up recovery cleans after a crash, and what it keeps.

use berth_content::{read_blob, write_blob, ContentStore, WriterOptions};
use berth_contentd::store::{LocalStore, Recovery};

/// Reopens a store once the previous instance (and any checkpoint its
/// dropped writers were still saving) has let go of the environment.
fn reopen(root: &std::path::Path) -> (LocalStore, Recovery) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        match LocalStore::open(root) {
            Ok(opened) => return opened,
            Err(e) if e.message().contains("already open") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the store stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_removes_orphans_and_keeps_everything_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, recovery) = LocalStore::open(root).unwrap();
    assert_eq!(recovery, Recovery::default());
    let kept = write_blob(&store, "default", "kept", b"kept", None, Default::default())
        .await
        .unwrap();
    let mut writer = store
        .writer("default", WriterOptions::new("pending"))
        .await
        .unwrap();
    writer.write(b"half".to_vec()).await.unwrap();
    drop(writer);
    // Let the dropped writer's checkpoint land.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        if store
            .writer("default", WriterOptions::new("pending"))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(store);

    // What a crash can leave: a blob renamed into place whose transaction
    // never committed, and an ingest directory never recorded.
    let orphan_blob = root.join("blobs/sha256").join("ab".repeat(32));
    std::fs::write(&orphan_blob, b"orphan").unwrap();
    let orphan_ingest = root.join("ingest").join("cd".repeat(32));
    std::fs::create_dir(&orphan_ingest).unwrap();
    std::fs::write(orphan_ingest.join("data"), b"junk").unwrap();

    let (store, recovery) = reopen(root);
    assert_eq!(
        recovery,
        Recovery {
            orphan_blobs: 1,
            orphan_ingest_dirs: 1,
            ingests_without_data: 0,
        }
    );
    assert!(!orphan_blob.exists());
    assert!(!orphan_ingest.exists());
    assert_eq!(
        read_blob(&store, "default", &kept, 100).await.unwrap(),
        b"kept"
    );
    assert_eq!(store.status("default", "pending").await.unwrap().offset, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_whose_data_vanished_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = LocalStore::open(root).unwrap();
    let mut writer = store
        .writer("default", WriterOptions::new("vanishing"))
        .await
        .unwrap();
    writer.write(b"data".to_vec()).await.unwrap();
    drop(writer);
    drop(store);
    for entry in std::fs::read_dir(root.join("ingest")).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let (store, recovery) = reopen(root);
    assert_eq!(recovery.ingests_without_data, 1);
    assert!(store
        .list_statuses("default", &[])
        .await
        .unwrap()
        .is_empty());
}

/// A writer dropped mid-ingest saves a checkpoint of its hash, and the next
/// writer resumes from it without reading those bytes again: shown by
/// changing a byte on disk before the checkpoint, which a re-read would
/// notice and the checkpoint does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_leaves_a_checkpoint_that_the_next_writer_resumes_from() {
    use berth_content::testsuite::test_data;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = LocalStore::open(root).unwrap();
    let data = test_data(3 << 20, 51);
    let digest = berth_ids::Digest::of(&data);
    let cut = 2 << 20;
    let options = WriterOptions::new("checkpointed").total(data.len() as u64);
    let mut writer = store.writer("default", options.clone()).await.unwrap();
    writer.write(data[..cut].to_vec()).await.unwrap();
    drop(writer);

    // The ingest's only data file, one byte of it changed behind the store.
    change_ingest_byte(root, 0, !data[0]);
    let mut writer = writer_when_free(&store, &options).await;
    assert_eq!(writer.status().await.unwrap().offset, cut as u64);
    writer.write(data[cut..].to_vec()).await.unwrap();
    assert_eq!(commit_expecting(writer, &digest).await, digest);
}

/// Committed blobs are read-only on disk (as containerd leaves them), and
/// one whose file vanished behind the store reads as NotFound, not as an
/// internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_blobs_are_read_only_and_a_vanished_file_is_not_found() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = LocalStore::open(root).unwrap();
    let digest = write_blob(
        &store,
        "default",
        "ro",
        b"read only",
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let path = root.join("blobs/sha256").join(digest.hex());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "{mode:o}");

    std::fs::remove_file(&path).unwrap();
    let err = store.read_at("default", &digest, 0, 10).await.unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotFound, "{err}");
}

/// Opens a writer on `options.reference`, waiting while a dropped writer
/// (or the checkpoint it is saving) still holds the ref.
async fn writer_when_free(
    store: &LocalStore,
    options: &WriterOptions,
) -> Box<dyn berth_content::ContentWriter> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        match store.writer("default", options.clone()).await {
            Ok(w) => return w,
            Err(e) if e.kind() == berth_errdefs::ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the ref stayed held");
}

/// Commits `writer` expecting `digest`; returns the digest committed.
async fn commit_expecting(
    writer: Box<dyn berth_content::ContentWriter>,
    digest: &berth_ids::Digest,
) -> berth_ids::Digest {
    writer
        .commit(berth_content::CommitOptions {
            expected: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Overwrites one byte of the only ingest's data behind the store.
fn change_ingest_byte(root: &std::path::Path, at: usize, to: u8) {
    use std::os::unix::fs::FileExt;
    let ingest = std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ingest.join("data"))
        .unwrap();
    file.write_all_at(&[to], at as u64).unwrap();
}

/// Past [`CHECKPOINT_INTERVAL`] a checkpoint is saved in the background
/// while the writes go on, and a dropped writer saves one where it
/// stopped: the next writer resumes from the furthest. A byte changed
/// between the two would be read again (and the commit refused) if the
/// resume started from the background one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_furthest_checkpoint_is_the_one_a_writer_resumes_from() {
    use berth_content::testsuite::test_data;
    use berth_contentd::ingest::CHECKPOINT_INTERVAL;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = LocalStore::open(root).unwrap();
    let interval = CHECKPOINT_INTERVAL as usize;
    let data = test_data(interval + (3 << 20), 52);
    let digest = berth_ids::Digest::of(&data);
    let stop = interval + (2 << 20);
    let options = WriterOptions::new("furthest").total(data.len() as u64);
    let mut writer = store.writer("default", options.clone()).await.unwrap();
    for chunk in data[..stop].chunks(1 << 20) {
        writer.write(chunk.to_vec()).await.unwrap();
    }
    drop(writer);
    let mut writer = writer_when_free(&store, &options).await;
    assert_eq!(writer.status().await.unwrap().offset, stop as u64);
    drop(writer);
    // Between the background checkpoint and the dropped writer's.
    change_ingest_byte(root, interval + (1 << 20), !data[interval + (1 << 20)]);

    let mut writer = writer_when_free(&store, &options).await;
    assert_eq!(writer.status().await.unwrap().offset, stop as u64);
    writer.write(data[stop..].to_vec()).await.unwrap();
    assert_eq!(commit_expecting(writer, &digest).await, digest);
}

/// A restart drops the data and every checkpoint of it, including one
/// still being saved in the background when the restart came: the next
/// writer re-reads the new data rather than trusting the old data's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_forgets_the_checkpoints_of_the_data_it_drops() {
    use berth_content::testsuite::test_data;
    use berth_contentd::ingest::CHECKPOINT_INTERVAL;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = LocalStore::open(root).unwrap();
    let interval = CHECKPOINT_INTERVAL as usize;
    // As long as the old data: a stale checkpoint would name the same
    // offset as the new data's own.
    let old = test_data(interval, 53);
    let new = test_data(interval, 54);
    let options = WriterOptions::new("restarted");
    let mut writer = store.writer("default", options.clone()).await.unwrap();
    for chunk in old.chunks(1 << 20) {
        writer.write(chunk.to_vec()).await.unwrap();
    }
    // The last write started a checkpoint of `old`; restart at once.
    writer.restart().await.unwrap();
    for chunk in new.chunks(1 << 20) {
        writer.write(chunk.to_vec()).await.unwrap();
    }
    drop(writer);

    let mut writer = writer_when_free(&store, &options).await;
    assert_eq!(writer.status().await.unwrap().offset, new.len() as u64);
    let digest = berth_ids::Digest::of(&new);
    assert_eq!(commit_expecting(writer, &digest).await, digest);
}
