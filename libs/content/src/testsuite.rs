#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

//! The content store conformance suite, after containerd's content
//! testsuite. Each case is a plain async function over `&dyn ContentStore`;
//! [`content_suite!`](crate::content_suite) turns them into `#[tokio::test]`s
//! for one implementation.

use std::collections::HashMap;

use berth_errdefs::{error_kind as kind, ErrorKind};
use berth_ids::Digest;

use crate::{read_blob, write_blob, CommitOptions, ContentStore, Labels, WriterOptions};

fn lease_keys(labels: &Labels) -> Vec<String> {
    let mut keys: Vec<String> = labels
        .keys()
        .filter(|k| k.starts_with(berth_api::labels::LEASE_PREFIX))
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Deterministic, incompressible-looking test data.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const NS: &str = "suite";

pub async fn write_commit_and_read(store: &dyn ContentStore) {
    let data = test_data(3 * 1024 * 1024 + 17, 1);
    let digest = Digest::of(&data);
    let mut writer = store
        .writer(NS, WriterOptions::new("blob-1").total(data.len() as u64))
        .await
        .unwrap();
    for piece in data.chunks(700_001) {
        writer.write(piece.to_vec()).await.unwrap();
    }
    let status = writer.status().await.unwrap();
    assert_eq!(status.offset, data.len() as u64);
    assert_eq!(status.total, data.len() as u64);
    let committed = writer
        .commit(CommitOptions {
            expected: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(committed, digest);
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.digest, digest);
    assert_eq!(read_blob(store, NS, &digest, u64::MAX).await.unwrap(), data);
    // Reads at an arbitrary offset, and at the end.
    let middle = store.read_at(NS, &digest, 1000, 10).await.unwrap();
    assert_eq!(middle, &data[1000..1010]);
    let end = store
        .read_at(NS, &digest, data.len() as u64, 10)
        .await
        .unwrap();
    assert!(end.is_empty());
    assert_eq!(
        kind(store.read_at(NS, &digest, data.len() as u64 + 1, 10).await),
        ErrorKind::InvalidArgument
    );
    // The ingest is gone once committed.
    assert_eq!(kind(store.status(NS, "blob-1").await), ErrorKind::NotFound);
}

pub async fn empty_and_small_blobs(store: &dyn ContentStore) {
    for data in [
        Vec::new(),
        b"x".to_vec(),
        test_data(63, 2),
        test_data(65, 3),
    ] {
        let digest = Digest::of(&data);
        let got = write_blob(
            store,
            NS,
            "small",
            &data,
            Some(digest.clone()),
            Labels::new(),
        )
        .await
        .unwrap();
        assert_eq!(got, digest);
        assert_eq!(read_blob(store, NS, &digest, 1024).await.unwrap(), data);
    }
}

pub async fn wrong_digest_is_refused_and_nothing_becomes_visible(store: &dyn ContentStore) {
    let data = test_data(100_000, 4);
    let wrong = Digest::of(b"something else");
    let mut writer = store
        .writer(NS, WriterOptions::new("bad-digest"))
        .await
        .unwrap();
    writer.write(data.clone()).await.unwrap();
    let err = writer
        .commit(CommitOptions {
            expected: Some(wrong.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(kind(store.info(NS, &wrong).await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.info(NS, &Digest::of(&data)).await),
        ErrorKind::NotFound
    );
    assert!(store
        .list(NS, &[])
        .await
        .unwrap()
        .iter()
        .all(|i| i.digest != wrong));

    // The expected digest given at open is checked as well.
    let mut writer = store
        .writer(
            NS,
            WriterOptions::new("bad-digest-2").expected(wrong.clone()),
        )
        .await
        .unwrap();
    writer.write(data.clone()).await.unwrap();
    let err = writer.commit(CommitOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        kind(store.info(NS, &Digest::of(&data)).await),
        ErrorKind::NotFound
    );
}

pub async fn wrong_size_is_refused_and_nothing_becomes_visible(store: &dyn ContentStore) {
    let data = test_data(5000, 5);
    let digest = Digest::of(&data);
    let mut writer = store
        .writer(NS, WriterOptions::new("bad-size"))
        .await
        .unwrap();
    writer.write(data.clone()).await.unwrap();
    let err = writer
        .commit(CommitOptions {
            size: Some(4999),
            expected: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(kind(store.info(NS, &digest).await), ErrorKind::NotFound);

    // Writing past the declared total is refused too.
    let mut writer = store
        .writer(NS, WriterOptions::new("past-total").total(10))
        .await
        .unwrap();
    let err = writer.write(data.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

pub async fn commit_of_existing_blob_is_already_exists(store: &dyn ContentStore) {
    let data = test_data(2048, 6);
    let digest = Digest::of(&data);
    write_blob(store, NS, "exists-1", &data, None, Labels::new())
        .await
        .unwrap();
    let err = write_blob(store, NS, "exists-2", &data, None, Labels::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        kind(store.status(NS, "exists-2").await),
        ErrorKind::NotFound
    );
    // Opening a writer for a digest already present is AlreadyExists at once.
    let err = store
        .writer(NS, WriterOptions::new("exists-3").expected(digest))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

pub async fn second_writer_on_a_ref_is_refused(store: &dyn ContentStore) {
    let mut first = store
        .writer(NS, WriterOptions::new("locked"))
        .await
        .unwrap();
    first.write(b"hello ".to_vec()).await.unwrap();
    let err = store
        .writer(NS, WriterOptions::new("locked"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        kind(store.abort(NS, "locked").await),
        ErrorKind::Unavailable
    );
    // Another ref is not affected.
    let other = store
        .writer(NS, WriterOptions::new("unlocked"))
        .await
        .unwrap();
    drop(other);
    drop(first);
    // Once the first writer is gone the ref can be taken again, and resumes.
    let mut again = retry_writer(store, "locked").await;
    assert_eq!(again.status().await.unwrap().offset, 6);
    again.write(b"world".to_vec()).await.unwrap();
    let digest = again.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(digest, Digest::of(b"hello world"));
}

/// A dropped remote writer frees its ref when the server sees the stream end,
/// which may be a moment after the drop.
async fn retry_writer(store: &dyn ContentStore, reference: &str) -> Box<dyn crate::ContentWriter> {
    for _ in 0..200 {
        match store.writer(NS, WriterOptions::new(reference)).await {
            Ok(w) => return w,
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("ref {reference} stayed locked after its writer was dropped");
}

/// Opens a writer, waiting while a dropped writer still holds the ref;
/// any other answer is returned.
async fn retry_open(
    store: &dyn ContentStore,
    options: WriterOptions,
) -> berth_errdefs::Result<Box<dyn crate::ContentWriter>> {
    for _ in 0..200 {
        match store.writer(NS, options.clone()).await {
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            answer => return answer,
        }
    }
    panic!("ref {} stayed locked", options.reference);
}

pub async fn a_resumed_ingest_keeps_and_checks_what_it_was_opened_with(store: &dyn ContentStore) {
    let data = test_data(1000, 41);
    let digest = Digest::of(&data);
    let reference = "resume-options";
    let mut writer = store
        .writer(NS, WriterOptions::new(reference))
        .await
        .unwrap();
    writer.write(data[..500].to_vec()).await.unwrap();
    drop(writer);
    retry_status(store, reference, 500).await;

    // A size, then a digest, first given on resuming are kept: the writer
    // works to them, and the ingest's record has them after it (each on
    // its own, so neither is kept only because the other changed).
    let mut writer = retry_open(store, WriterOptions::new(reference).total(1000))
        .await
        .unwrap();
    let status = writer.status().await.unwrap();
    assert_eq!((status.offset, status.total), (500, 1000));
    drop(writer);
    let recorded = retry_status(store, reference, 500).await;
    assert_eq!(recorded.total, 1000);
    assert_eq!(recorded.expected, None);
    let options = WriterOptions::new(reference).expected(digest.clone());
    drop(retry_open(store, options).await.unwrap());
    let recorded = store.status(NS, reference).await.unwrap();
    assert_eq!((recorded.offset, recorded.total), (500, 1000));
    assert_eq!(recorded.expected.as_ref(), Some(&digest));
    // (A writer opened without them still works to them.)
    let mut writer = retry_open(store, WriterOptions::new(reference))
        .await
        .unwrap();
    let status = writer.status().await.unwrap();
    assert_eq!((status.offset, status.total), (500, 1000));
    drop(writer);

    // A different size or digest is refused, and the ingest is untouched.
    let refused = |answer: berth_errdefs::Result<Box<dyn crate::ContentWriter>>| match answer {
        Ok(_) => panic!("a resume with a different size or digest was accepted"),
        Err(e) => e.kind(),
    };
    let other_size = WriterOptions::new(reference).total(999);
    assert_eq!(
        refused(retry_open(store, other_size).await),
        ErrorKind::InvalidArgument
    );
    let other_digest = WriterOptions::new(reference).expected(Digest::of(b"other"));
    assert_eq!(
        refused(retry_open(store, other_digest).await),
        ErrorKind::InvalidArgument
    );
    // The same ones again are fine, and the blob completes.
    let same = WriterOptions::new(reference)
        .total(1000)
        .expected(digest.clone());
    let mut writer = retry_open(store, same).await.unwrap();
    assert_eq!(writer.status().await.unwrap().offset, 500);
    writer.write(data[500..].to_vec()).await.unwrap();
    let got = writer.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(got, digest);
}

pub async fn resume_continues_from_the_stored_offset(store: &dyn ContentStore) {
    let data = test_data(1_000_003, 7);
    let digest = Digest::of(&data);
    let cut = 600_007;
    let mut writer = store
        .writer(NS, WriterOptions::new("resume").total(data.len() as u64))
        .await
        .unwrap();
    writer.write(data[..cut].to_vec()).await.unwrap();
    drop(writer);
    let status = retry_status(store, "resume", cut as u64).await;
    assert_eq!(status.total, data.len() as u64);
    let mut writer = retry_writer(store, "resume").await;
    assert_eq!(writer.status().await.unwrap().offset, cut as u64);
    writer.write(data[cut..].to_vec()).await.unwrap();
    let got = writer
        .commit(CommitOptions {
            expected: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got, digest);
    assert_eq!(read_blob(store, NS, &digest, u64::MAX).await.unwrap(), data);
}

/// `write_file` takes a file from its position to its end, after what the
/// writer already holds, consumes what it takes, and keeps to the expected
/// size; a stream's bytes come to its end of input.
pub async fn a_file_is_written_from_its_position(store: &dyn ContentStore) {
    use std::io::{Seek, SeekFrom, Write};
    let data = test_data(3_000_017, 11);
    let digest = Digest::of(&data);
    let (head, skipped) = (1_000, 5_000);
    // The file holds bytes the caller has read past, then the rest of the
    // blob after what the writer already holds.
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&test_data(skipped, 12)).unwrap();
    file.write_all(&data[head..]).unwrap();
    file.seek(SeekFrom::Start(skipped as u64)).unwrap();
    let mut writer = store
        .writer(NS, WriterOptions::new("from-file").total(data.len() as u64))
        .await
        .unwrap();
    writer.write(data[..head].to_vec()).await.unwrap();
    let written = writer.write_file(file.try_clone().unwrap()).await.unwrap();
    assert_eq!(written, (data.len() - head) as u64);
    assert_eq!(writer.status().await.unwrap().offset, data.len() as u64);
    assert_eq!(
        file.stream_position().unwrap(),
        (skipped + data.len() - head) as u64,
        "what was written was consumed from the file"
    );
    let got = writer
        .commit(CommitOptions {
            expected: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got, digest);
    assert_eq!(read_blob(store, NS, &digest, u64::MAX).await.unwrap(), data);

    // More than the expected size: refused.
    let mut writer = store
        .writer(NS, WriterOptions::new("file-too-long").total(10))
        .await
        .unwrap();
    let mut long = tempfile::tempfile().unwrap();
    long.write_all(&test_data(11, 13)).unwrap();
    long.seek(SeekFrom::Start(0)).unwrap();
    let err = writer.write_file(long).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    drop(writer);

    // A stream (a socket here), read to its end.
    let small = test_data(70_001, 14);
    let (reader, writer_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let feeder = {
        let small = small.clone();
        std::thread::spawn(move || {
            let mut writer_end = writer_end;
            writer_end.write_all(&small).unwrap();
            // Its end of input.
            drop(writer_end);
        })
    };
    let mut writer = store
        .writer(NS, WriterOptions::new("from-pipe"))
        .await
        .unwrap();
    let fd: std::os::fd::OwnedFd = reader.into();
    assert_eq!(
        writer.write_file(fd.into()).await.unwrap(),
        small.len() as u64
    );
    feeder.join().unwrap();
    let got = writer.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(got, Digest::of(&small));
}

async fn retry_status(store: &dyn ContentStore, reference: &str, offset: u64) -> crate::Status {
    for _ in 0..200 {
        let status = store.status(NS, reference).await.unwrap();
        if status.offset == offset {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("ingest {reference} never reached offset {offset}");
}

pub async fn restart_discards_what_was_written(store: &dyn ContentStore) {
    let mut writer = store
        .writer(NS, WriterOptions::new("restart"))
        .await
        .unwrap();
    writer
        .write(b"garbage that must go".to_vec())
        .await
        .unwrap();
    writer.restart().await.unwrap();
    assert_eq!(writer.status().await.unwrap().offset, 0);
    writer.write(b"clean".to_vec()).await.unwrap();
    let digest = writer.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(digest, Digest::of(b"clean"));
}

pub async fn abort_drops_the_ingest(store: &dyn ContentStore) {
    let mut writer = store
        .writer(NS, WriterOptions::new("abort-me"))
        .await
        .unwrap();
    writer.write(b"partial".to_vec()).await.unwrap();
    drop(writer);
    retry_status(store, "abort-me", 7).await;
    crate::abort_released(store, NS, "abort-me").await.unwrap();
    assert_eq!(
        kind(store.status(NS, "abort-me").await),
        ErrorKind::NotFound
    );
    assert_eq!(kind(store.abort(NS, "abort-me").await), ErrorKind::NotFound);
    // A new writer on the ref starts from nothing.
    let mut writer = store
        .writer(NS, WriterOptions::new("abort-me"))
        .await
        .unwrap();
    assert_eq!(writer.status().await.unwrap().offset, 0);
}

pub async fn list_statuses_filters_by_ref(store: &dyn ContentStore) {
    let mut a = store
        .writer(NS, WriterOptions::new("layer-a"))
        .await
        .unwrap();
    let mut b = store
        .writer(NS, WriterOptions::new("config-b"))
        .await
        .unwrap();
    a.write(b"a".to_vec()).await.unwrap();
    b.write(b"bb".to_vec()).await.unwrap();
    let all = store.list_statuses(NS, &[]).await.unwrap();
    let mut refs: Vec<_> = all.iter().map(|s| s.reference.as_str()).collect();
    refs.sort_unstable();
    assert_eq!(refs, ["config-b", "layer-a"]);
    let layers = store
        .list_statuses(NS, &["ref~=^layer-".to_string()])
        .await
        .unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].reference, "layer-a");
    assert_eq!(layers[0].offset, 1);
    assert_eq!(
        kind(store.list_statuses(NS, &["ref~=(".to_string()]).await),
        ErrorKind::InvalidArgument
    );
}

pub async fn labels_update_and_filter(store: &dyn ContentStore) {
    let data = test_data(10, 8);
    let digest = write_blob(
        store,
        NS,
        "labelled",
        &data,
        None,
        labels(&[("a", "1"), ("b", "2"), ("containerd.io/gc.root", "x")]),
    )
    .await
    .unwrap();
    let other = write_blob(store, NS, "other", b"other", None, labels(&[("a", "9")]))
        .await
        .unwrap();
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(info.labels.get("b").map(String::as_str), Some("2"));

    // A path names one label: only it changes; a missing value removes it.
    let mut change = info.clone();
    change.labels = labels(&[("a", "10"), ("c", "3")]);
    let updated = store
        .update(
            NS,
            change.clone(),
            &["labels.a".to_string(), "labels.b".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        updated.labels,
        labels(&[("a", "10"), ("containerd.io/gc.root", "x")])
    );
    assert!(updated.updated_at >= info.updated_at);
    assert_eq!(
        store.info(NS, &digest).await.unwrap().labels,
        updated.labels
    );
    // No paths: the labels are replaced.
    let replaced = store.update(NS, change, &[]).await.unwrap();
    assert_eq!(replaced.labels, labels(&[("a", "10"), ("c", "3")]));
    // Only labels can change.
    let mut bogus = replaced.clone();
    bogus.size = 1;
    assert_eq!(
        kind(store.update(NS, bogus, &["size".to_string()]).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(store.info(NS, &digest).await.unwrap().size, 10);

    let by_label = store.list(NS, &["labels.a==10".to_string()]).await.unwrap();
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].digest, digest);
    let either = store
        .list(NS, &["labels.a==10".to_string(), "labels.a==9".to_string()])
        .await
        .unwrap();
    assert_eq!(either.len(), 2);
    let by_digest = store.list(NS, &[format!("digest=={other}")]).await.unwrap();
    assert_eq!(by_digest.len(), 1);
    assert_eq!(
        kind(store.list(NS, &["labels.a=".to_string()]).await),
        ErrorKind::InvalidArgument
    );
}

pub async fn bad_labels_are_refused_and_change_nothing(store: &dyn ContentStore) {
    let data = test_data(33, 9);
    let digest = Digest::of(&data);
    let huge = labels(&[("big", &"v".repeat(10_000))]);
    let err = write_blob(store, NS, "bad-labels", &data, None, huge.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(kind(store.info(NS, &digest).await), ErrorKind::NotFound);

    write_blob(store, NS, "good-labels", &data, None, labels(&[("k", "v")]))
        .await
        .unwrap();
    let mut info = store.info(NS, &digest).await.unwrap();
    info.labels = huge;
    assert_eq!(
        kind(store.update(NS, info, &[]).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        store.info(NS, &digest).await.unwrap().labels,
        labels(&[("k", "v")])
    );
}

pub async fn bad_names_are_invalid_argument(store: &dyn ContentStore) {
    for reference in ["../../x", "a/b", "", "..", "has space"] {
        let err = store
            .writer(NS, WriterOptions::new(reference))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{reference:?}");
        assert_eq!(
            kind(store.status(NS, reference).await),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(store.abort(NS, reference).await),
            ErrorKind::InvalidArgument
        );
    }
    for namespace in ["../etc", "a/b", "", "-x"] {
        assert_eq!(
            kind(store.list(namespace, &[]).await),
            ErrorKind::InvalidArgument,
            "{namespace:?}"
        );
    }
    assert!(store.list_statuses(NS, &[]).await.unwrap().is_empty());
}

pub async fn namespaces_are_isolated_but_blobs_are_shared(store: &dyn ContentStore) {
    let data = test_data(4096, 10);
    let digest = write_blob(store, "ns-a", "shared", &data, None, labels(&[("in", "a")]))
        .await
        .unwrap();
    assert_eq!(kind(store.info("ns-b", &digest).await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.read_at("ns-b", &digest, 0, 10).await),
        ErrorKind::NotFound
    );
    assert!(store.list("ns-b", &[]).await.unwrap().is_empty());
    assert_eq!(
        kind(store.delete("ns-b", &digest).await),
        ErrorKind::NotFound
    );
    // Ingests are per namespace too.
    let mut writer = store
        .writer("ns-a", WriterOptions::new("pending"))
        .await
        .unwrap();
    writer.write(b"x".to_vec()).await.unwrap();
    assert_eq!(
        kind(store.status("ns-b", "pending").await),
        ErrorKind::NotFound
    );
    assert!(store.list_statuses("ns-b", &[]).await.unwrap().is_empty());
    drop(writer);

    // Written in B too, it becomes visible there with B's own labels.
    write_blob(store, "ns-b", "shared", &data, None, labels(&[("in", "b")]))
        .await
        .unwrap();
    assert_eq!(
        store.info("ns-b", &digest).await.unwrap().labels,
        labels(&[("in", "b")])
    );
    assert_eq!(
        store.info("ns-a", &digest).await.unwrap().labels,
        labels(&[("in", "a")])
    );
    // Deleting in A leaves B's copy readable.
    store.delete("ns-a", &digest).await.unwrap();
    assert_eq!(kind(store.info("ns-a", &digest).await), ErrorKind::NotFound);
    assert_eq!(
        read_blob(store, "ns-b", &digest, 1 << 20).await.unwrap(),
        data
    );
    store.delete("ns-b", &digest).await.unwrap();
    assert_eq!(kind(store.info("ns-b", &digest).await), ErrorKind::NotFound);
}

pub async fn delete_removes_the_blob(store: &dyn ContentStore) {
    let data = test_data(1234, 11);
    let digest = write_blob(store, NS, "delete-me", &data, None, Labels::new())
        .await
        .unwrap();
    store.delete(NS, &digest).await.unwrap();
    assert_eq!(kind(store.info(NS, &digest).await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.read_at(NS, &digest, 0, 1).await),
        ErrorKind::NotFound
    );
    assert_eq!(kind(store.delete(NS, &digest).await), ErrorKind::NotFound);
    // And it can be written again.
    write_blob(store, NS, "delete-me", &data, None, Labels::new())
        .await
        .unwrap();
    assert_eq!(store.info(NS, &digest).await.unwrap().size, 1234);
}

pub async fn delete_if_unchanged_spares_a_touched_blob(store: &dyn ContentStore) {
    let data = test_data(777, 12);
    let digest = write_blob(store, NS, "conditional", &data, None, Labels::new())
        .await
        .unwrap();
    let seen = store.info(NS, &digest).await.unwrap().updated_at;
    // Touched after it was read (as a lease or a reference label does).
    crate::set_label(
        store,
        NS,
        &digest,
        &berth_api::labels::lease("pull-1"),
        Some(crate::lease_label_value()),
    )
    .await
    .unwrap();
    let touched = store.info(NS, &digest).await.unwrap();
    assert!(touched
        .labels
        .contains_key(&berth_api::lease_label("pull-1")));
    assert_ne!(touched.updated_at, seen);
    assert_eq!(
        kind(store.delete_if_unchanged(NS, &digest, seen).await),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(store.info(NS, &digest).await.unwrap().size, 777);
    // What was last seen is what goes.
    store
        .delete_if_unchanged(NS, &digest, touched.updated_at)
        .await
        .unwrap();
    assert_eq!(kind(store.info(NS, &digest).await), ErrorKind::NotFound);
    assert_eq!(
        kind(
            store
                .delete_if_unchanged(NS, &digest, touched.updated_at)
                .await
        ),
        ErrorKind::NotFound
    );
}

pub async fn concurrent_writers_on_different_refs(store: &dyn ContentStore) {
    let blobs: Vec<Vec<u8>> = (0..8)
        .map(|i| test_data(300_000 + i * 1000, 100 + i as u64))
        .collect();
    let results = futures_join(store, &blobs).await;
    for (data, digest) in blobs.iter().zip(results) {
        assert_eq!(digest, Digest::of(data));
        assert_eq!(
            read_blob(store, NS, &digest, u64::MAX).await.unwrap(),
            *data
        );
    }
}

async fn futures_join(store: &dyn ContentStore, blobs: &[Vec<u8>]) -> Vec<Digest> {
    // Interleave the writes by hand: open all, write in rounds, commit all.
    let mut writers = Vec::new();
    for i in 0..blobs.len() {
        writers.push(
            store
                .writer(NS, WriterOptions::new(format!("parallel-{i}")))
                .await
                .unwrap(),
        );
    }
    let mut offset = 0;
    while blobs.iter().any(|b| offset < b.len()) {
        for (writer, data) in writers.iter_mut().zip(blobs) {
            if offset < data.len() {
                let end = (offset + 65_536).min(data.len());
                writer.write(data[offset..end].to_vec()).await.unwrap();
            }
        }
        offset += 65_536;
    }
    let mut digests = Vec::new();
    for writer in writers {
        digests.push(writer.commit(CommitOptions::default()).await.unwrap());
    }
    digests
}

pub async fn concurrent_commits_of_the_same_blob(store: &dyn ContentStore) {
    let data = test_data(200_000, 12);
    let digest = Digest::of(&data);
    let mut writers = Vec::new();
    for i in 0..4 {
        let mut w = store
            .writer(NS, WriterOptions::new(format!("same-{i}")))
            .await
            .unwrap();
        w.write(data.clone()).await.unwrap();
        writers.push(w);
    }
    let mut outcomes = HashMap::new();
    for w in writers {
        let outcome = match w.commit(CommitOptions::default()).await {
            Ok(d) => {
                assert_eq!(d, digest);
                "ok"
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => "exists",
            Err(e) => panic!("{e}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(outcomes.get("ok"), Some(&1));
    assert_eq!(outcomes.get("exists"), Some(&3));
    assert_eq!(read_blob(store, NS, &digest, u64::MAX).await.unwrap(), data);
}

/// A store whose blobs are collected at the worst moment: right after a
/// writer (or a commit) found one already stored, before the caller could
/// tie it to its lease, as a collection racing a second pull of what a
/// failed pull left would.
#[derive(Clone)]
struct CollectedWhenFound<S> {
    inner: S,
    /// How many more finds get their blob collected.
    collections: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl<S: ContentStore> CollectedWhenFound<S> {
    async fn collect_if_due(&self, namespace: &str, digest: &Digest) {
        use std::sync::atomic::Ordering;
        let due = self
            .collections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if due {
            self.inner.delete(namespace, digest).await.unwrap();
        }
    }
}

struct CollectedOnCommit<S> {
    writer: Box<dyn crate::ContentWriter>,
    store: CollectedWhenFound<S>,
    namespace: String,
    /// What was written (the tests' blobs are small): its digest names
    /// the blob the commit found.
    written: Vec<u8>,
}

#[async_trait::async_trait]
impl<S: ContentStore + Clone + 'static> crate::ContentWriter for CollectedOnCommit<S> {
    async fn status(&mut self) -> berth_errdefs::Result<crate::Status> {
        self.writer.status().await
    }
    async fn write(&mut self, data: Vec<u8>) -> berth_errdefs::Result<()> {
        self.written.extend_from_slice(&data);
        self.writer.write(data).await
    }
    async fn restart(&mut self) -> berth_errdefs::Result<()> {
        self.written.clear();
        self.writer.restart().await
    }
    async fn commit(self: Box<Self>, options: CommitOptions) -> berth_errdefs::Result<Digest> {
        let committed = self.writer.commit(options).await;
        if matches!(&committed, Err(e) if e.is(ErrorKind::AlreadyExists)) {
            let digest = Digest::of(&self.written);
            self.store.collect_if_due(&self.namespace, &digest).await;
        }
        committed
    }
}

#[async_trait::async_trait]
impl<S: ContentStore + Clone + 'static> ContentStore for CollectedWhenFound<S> {
    async fn info(&self, namespace: &str, digest: &Digest) -> berth_errdefs::Result<crate::Info> {
        self.inner.info(namespace, digest).await
    }
    async fn update(
        &self,
        namespace: &str,
        info: crate::Info,
        paths: &[String],
    ) -> berth_errdefs::Result<crate::Info> {
        self.inner.update(namespace, info, paths).await
    }
    async fn list(
        &self,
        namespace: &str,
        filters: &[String],
    ) -> berth_errdefs::Result<Vec<crate::Info>> {
        self.inner.list(namespace, filters).await
    }
    async fn delete(&self, namespace: &str, digest: &Digest) -> berth_errdefs::Result<()> {
        self.inner.delete(namespace, digest).await
    }
    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: std::time::SystemTime,
    ) -> berth_errdefs::Result<()> {
        self.inner
            .delete_if_unchanged(namespace, digest, seen)
            .await
    }
    async fn read_at(
        &self,
        namespace: &str,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> berth_errdefs::Result<Vec<u8>> {
        self.inner.read_at(namespace, digest, offset, len).await
    }
    async fn status(
        &self,
        namespace: &str,
        reference: &str,
    ) -> berth_errdefs::Result<crate::Status> {
        self.inner.status(namespace, reference).await
    }
    async fn list_statuses(
        &self,
        namespace: &str,
        filters: &[String],
    ) -> berth_errdefs::Result<Vec<crate::Status>> {
        self.inner.list_statuses(namespace, filters).await
    }
    async fn abort(&self, namespace: &str, reference: &str) -> berth_errdefs::Result<()> {
        self.inner.abort(namespace, reference).await
    }
    async fn release_lease(&self, namespace: &str, lease: &str) -> berth_errdefs::Result<u64> {
        self.inner.release_lease(namespace, lease).await
    }
    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> berth_errdefs::Result<Box<dyn crate::ContentWriter>> {
        let digest = options.expected.clone();
        match self.inner.writer(namespace, options).await {
            Ok(writer) => Ok(Box::new(CollectedOnCommit {
                writer,
                store: self.clone(),
                namespace: namespace.to_string(),
                written: Vec::new(),
            })),
            Err(e) => {
                if let (ErrorKind::AlreadyExists, Some(digest)) = (e.kind(), &digest) {
                    self.collect_if_due(namespace, digest).await;
                }
                Err(e)
            }
        }
    }
}

/// A blob found stored but collected before the lease could take it is
/// written again, never reported as there (it is not) or lost: when the
/// writer is opened, the lease's writer opens again and the bytes go in;
/// when the commit finds it, the write fails as Unavailable, to be tried
/// again (the bytes went with the ingest).
pub async fn a_blob_collected_before_the_lease_holds_it_is_written_again<
    S: ContentStore + Clone + 'static,
>(
    store: &S,
) {
    let data = test_data(500, 31);
    let digest = write_blob(store, NS, "first", &data, None, Labels::new())
        .await
        .unwrap();
    let racing = CollectedWhenFound {
        inner: store.clone(),
        collections: std::sync::Arc::new(1.into()),
    };
    let leased = crate::Leased::new(racing.clone(), Some("second-pull".into()));
    let written = write_blob(
        &leased,
        NS,
        "again",
        &data,
        Some(digest.clone()),
        Labels::new(),
    )
    .await
    .unwrap();
    assert_eq!(written, digest);
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(
        lease_keys(&info.labels),
        vec![berth_api::labels::lease("second-pull")]
    );
    assert_eq!(read_blob(store, NS, &digest, u64::MAX).await.unwrap(), data);

    // Found at commit (the digest was not known when the writer opened).
    racing
        .collections
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let mut writer = leased
        .writer(NS, WriterOptions::new("unnamed").total(data.len() as u64))
        .await
        .unwrap();
    writer.write(data.clone()).await.unwrap();
    let committed = writer.commit(CommitOptions::default()).await;
    assert_eq!(kind(committed), ErrorKind::Unavailable);
    assert_eq!(kind(store.info(NS, &digest).await), ErrorKind::NotFound);
    // Tried again, as a fetch does: written and held.
    write_blob(&leased, NS, "unnamed", &data, None, Labels::new())
        .await
        .unwrap();
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(
        lease_keys(&info.labels),
        vec![berth_api::labels::lease("second-pull")]
    );
}

/// Generates one `#[tokio::test]` per conformance case for the store made by
/// `$setup`, an async fn returning `(store, guard)`; the guard (temp dir,
/// daemon process) lives until the case ends.
pub async fn writes_under_a_lease_join_it<S: ContentStore + Clone + 'static>(store: &S) {
    let under = |lease: Option<&str>| crate::Leased::new(store.clone(), lease.map(str::to_string));
    let l1 = berth_api::labels::lease("l1");
    let l2 = berth_api::labels::lease("l2");
    let data = test_data(300, 21);
    let digest = write_blob(
        &under(Some("l1")),
        NS,
        "leased",
        &data,
        None,
        labels(&[("a", "b")]),
    )
    .await
    .unwrap();
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(lease_keys(&info.labels), vec![l1.clone()]);
    assert_eq!(info.labels.get("a").map(String::as_str), Some("b"));

    // Writing it again under another lease is AlreadyExists, as ever, but
    // the blob joins that lease too: whether the writer is refused at open
    // (digest known) or at commit (digest learnt from the bytes).
    let again = write_blob(
        &under(Some("l2")),
        NS,
        "leased-again",
        &data,
        Some(digest.clone()),
        Labels::new(),
    )
    .await;
    assert_eq!(kind(again), ErrorKind::AlreadyExists);
    let info = store.info(NS, &digest).await.unwrap();
    assert_eq!(lease_keys(&info.labels), vec![l1.clone(), l2.clone()]);
    let l3 = berth_api::labels::lease("l3");
    let unnamed = write_blob(
        &under(Some("l3")),
        NS,
        "leased-unnamed",
        &data,
        None,
        Labels::new(),
    )
    .await;
    assert_eq!(kind(unnamed), ErrorKind::AlreadyExists);
    let info = store.info(NS, &digest).await.unwrap();
    assert!(info.labels.contains_key(&l3), "{:?}", info.labels);

    // Without a lease it is the store itself.
    let plain = write_blob(
        &under(None),
        NS,
        "plain",
        &test_data(10, 22),
        None,
        Labels::new(),
    )
    .await
    .unwrap();
    assert!(lease_keys(&store.info(NS, &plain).await.unwrap().labels).is_empty());
}

pub async fn release_lease_unties_only_that_lease(store: &dyn ContentStore) {
    let l1 = berth_api::labels::lease("l1");
    let l2 = berth_api::labels::lease("l2");
    let only_l1 = write_blob(
        store,
        NS,
        "r1",
        &test_data(11, 31),
        None,
        labels(&[(&l1, "1"), ("keep", "me")]),
    )
    .await
    .unwrap();
    let both = write_blob(
        store,
        NS,
        "r2",
        &test_data(12, 32),
        None,
        labels(&[(&l1, "1"), (&l2, "1")]),
    )
    .await
    .unwrap();
    let neither = write_blob(
        store,
        NS,
        "r3",
        &test_data(13, 33),
        None,
        labels(&[("other", "x")]),
    )
    .await
    .unwrap();
    // Another namespace's blob under the same lease id is not this one's.
    let elsewhere = write_blob(
        store,
        "suite-other",
        "r4",
        &test_data(14, 34),
        None,
        labels(&[(&l1, "1")]),
    )
    .await
    .unwrap();

    assert_eq!(store.release_lease(NS, "l1").await.unwrap(), 2);
    let info = store.info(NS, &only_l1).await.unwrap();
    assert!(lease_keys(&info.labels).is_empty());
    assert_eq!(info.labels.get("keep").map(String::as_str), Some("me"));
    assert_eq!(
        lease_keys(&store.info(NS, &both).await.unwrap().labels),
        vec![l2]
    );
    assert_eq!(
        store.info(NS, &neither).await.unwrap().labels,
        labels(&[("other", "x")])
    );
    assert_eq!(
        lease_keys(&store.info("suite-other", &elsewhere).await.unwrap().labels),
        vec![l1]
    );
    // Nothing left to untie.
    assert_eq!(store.release_lease(NS, "l1").await.unwrap(), 0);
    assert_eq!(
        kind(store.release_lease("../bad", "l1").await),
        ErrorKind::InvalidArgument
    );
}

#[macro_export]
macro_rules! content_suite {
    ($setup:path) => {
        $crate::content_suite!(@cases $setup;
            write_commit_and_read,
            empty_and_small_blobs,
            wrong_digest_is_refused_and_nothing_becomes_visible,
            wrong_size_is_refused_and_nothing_becomes_visible,
            commit_of_existing_blob_is_already_exists,
            second_writer_on_a_ref_is_refused,
            resume_continues_from_the_stored_offset,
            a_file_is_written_from_its_position,
            a_resumed_ingest_keeps_and_checks_what_it_was_opened_with,
            restart_discards_what_was_written,
            abort_drops_the_ingest,
            list_statuses_filters_by_ref,
            labels_update_and_filter,
            bad_labels_are_refused_and_change_nothing,
            bad_names_are_invalid_argument,
            namespaces_are_isolated_but_blobs_are_shared,
            delete_removes_the_blob,
            delete_if_unchanged_spares_a_touched_blob,
            concurrent_writers_on_different_refs,
            concurrent_commits_of_the_same_blob,
            writes_under_a_lease_join_it,
            a_blob_collected_before_the_lease_holds_it_is_written_again,
            release_lease_unties_only_that_lease,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $setup().await;
                $crate::testsuite::$case(&store).await;
            }
        )*
    };
}
