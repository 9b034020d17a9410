//! A content store seen through a lease.

use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::Digest;

use crate::{
    set_label, CommitOptions, ContentStore, ContentWriter, Info, Labels, Status, WriterOptions,
};

/// A content store under a lease: every blob committed through it, or that
/// a write finds already stored, is tied to the lease (labelled
/// [`berth_api::labels::lease`]), so metad's collector keeps it while the
/// lease lives. Without a lease it is the store itself. This is the one
/// place the lease label is joined to content.
#[derive(Debug, Clone)]
pub struct Leased<S> {
    inner: S,
    lease: Option<String>,
}

impl<S: ContentStore + Clone + 'static> Leased<S> {
    pub fn new(inner: S, lease: Option<String>) -> Leased<S> {
        Leased { inner, lease }
    }

    pub fn lease(&self) -> Option<&str> {
        self.lease.as_deref()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Ties a blob already in the namespace to the lease (bumping its
    /// `updated_at`); nothing without a lease.
    pub async fn hold(&self, namespace: &str, digest: &Digest) -> Result<()> {
        match self.lease.as_deref() {
            Some(lease) => hold_for_lease(&self.inner, namespace, digest, lease).await,
            None => Ok(()),
        }
    }
}

/// Ties a blob the namespace has to `lease`: sets its lease label (and so
/// bumps its `updated_at`), leaving its other labels alone.
pub async fn hold_for_lease(
    store: &dyn ContentStore,
    namespace: &str,
    digest: &Digest,
    lease: &str,
) -> Result<()> {
    let key = berth_api::labels::lease(lease);
    let value = Some(berth_api::labels::lease_value());
    set_label(store, namespace, digest, &key, value).await
}

#[async_trait]
impl<S: ContentStore + Clone + 'static> ContentStore for Leased<S> {
    async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info> {
        self.inner.info(namespace, digest).await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        self.inner.update(namespace, info, paths).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        self.inner.list(namespace, filters).await
    }

    async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        self.inner.delete(namespace, digest).await
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()> {
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
    ) -> Result<Vec<u8>> {
        self.inner.read_at(namespace, digest, offset, len).await
    }

    async fn status(&self, namespace: &str, reference: &str) -> Result<Status> {
        self.inner.status(namespace, reference).await
    }

    async fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>> {
        self.inner.list_statuses(namespace, filters).await
    }

    async fn abort(&self, namespace: &str, reference: &str) -> Result<()> {
        self.inner.abort(namespace, reference).await
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        self.inner.release_lease(namespace, lease).await
    }

    /// Opening a writer for a blob the namespace has is AlreadyExists, as
    /// ever; under a lease the blob joins the lease first, as in containerd.
    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> Result<Box<dyn ContentWriter>> {
        let expected = options.expected.clone();
        let mut tries = 0;
        loop {
            tries += 1;
            let err = match self.inner.writer(namespace, options.clone()).await {
                Ok(mut writer) => {
                    // With no digest given, a commit that finds the blob
                    // stored can only join it to the lease if the bytes were
                    // hashed here: from the start, so not for a resumed
                    // ingest.
                    let hasher = match (&self.lease, &expected) {
                        (Some(_), None) if writer.status().await?.offset == 0 => {
                            Some(berth_ids::Sha256Hasher::new())
                        }
                        _ => None,
                    };
                    return Ok(Box::new(LeasedWriter {
                        writer,
                        store: self.clone(),
                        namespace: namespace.to_string(),
                        expected,
                        hasher,
                    }));
                }
                Err(e) => e,
            };
            let (true, Some(digest)) = (err.is(ErrorKind::AlreadyExists), &expected) else {
                return Err(err);
            };
            match self.hold(namespace, digest).await {
                Ok(()) => return Err(err),
                // Collected between the two calls (its last holder had
                // just let go): it is to be written after all.
                Err(e) if e.is(ErrorKind::NotFound) && tries < COLLECTED_RETRIES => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// How often a writer is opened again for a blob that was collected
/// between being found and being held.
const COLLECTED_RETRIES: u32 = 3;

/// A writer whose commit ties the blob to the lease.
struct LeasedWriter<S> {
    writer: Box<dyn ContentWriter>,
    store: Leased<S>,
    namespace: String,
    /// The digest the writer was opened with, if any.
    expected: Option<Digest>,
    /// Without one: the hash of what was written, when it is all of it.
    hasher: Option<berth_ids::Sha256Hasher>,
}

#[async_trait]
impl<S: ContentStore + Clone + 'static> ContentWriter for LeasedWriter<S> {
    async fn status(&mut self) -> Result<Status> {
        self.writer.status().await
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&data);
        }
        self.writer.write(data).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.writer.restart().await?;
        if self.store.lease().is_some() && self.expected.is_none() {
            self.hasher = Some(berth_ids::Sha256Hasher::new());
        }
        Ok(())
    }

    async fn commit(self: Box<Self>, mut options: CommitOptions) -> Result<Digest> {
        let LeasedWriter {
            writer,
            store,
            namespace,
            expected,
            hasher,
        } = *self;
        let digest = options
            .expected
            .clone()
            .or(expected)
            .or_else(|| hasher.map(|h| h.finalize()));
        if let Some(lease) = store.lease() {
            let mut labels: Labels = std::mem::take(&mut options.labels);
            labels.insert(
                berth_api::labels::lease(lease),
                berth_api::labels::lease_value(),
            );
            options.labels = labels;
        }
        match writer.commit(options).await {
            Ok(digest) => Ok(digest),
            Err(e) => {
                // Committing what the namespace has is a no-op, but under a
                // lease it still joins the lease.
                if let (true, Some(digest)) = (e.is(ErrorKind::AlreadyExists), &digest) {
                    match store.hold(&namespace, digest).await {
                        Ok(()) => {}
                        // Collected between the commit and the hold: the
                        // bytes went with the ingest, so the caller writes
                        // them again (Unavailable: try again).
                        Err(held) if held.is(ErrorKind::NotFound) => {
                            return Err(Error::unavailable(format!(
                                "{digest} was collected while it was being committed: write it again"
                            )))
                        }
                        Err(held) => return Err(held),
                    }
                }
                Err(e)
            }
        }
    }
}

/// A shared store is a store: daemons hold theirs as `Arc<dyn ContentStore>`.
#[async_trait]
impl<T: ContentStore + ?Sized> ContentStore for std::sync::Arc<T> {
    async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info> {
        (**self).info(namespace, digest).await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        (**self).update(namespace, info, paths).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        (**self).list(namespace, filters).await
    }

    async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        (**self).delete(namespace, digest).await
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()> {
        (**self).delete_if_unchanged(namespace, digest, seen).await
    }

    async fn read_at(
        &self,
        namespace: &str,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        (**self).read_at(namespace, digest, offset, len).await
    }

    async fn status(&self, namespace: &str, reference: &str) -> Result<Status> {
        (**self).status(namespace, reference).await
    }

    async fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>> {
        (**self).list_statuses(namespace, filters).await
    }

    async fn abort(&self, namespace: &str, reference: &str) -> Result<()> {
        (**self).abort(namespace, reference).await
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        (**self).release_lease(namespace, lease).await
    }

    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> Result<Box<dyn ContentWriter>> {
        (**self).writer(namespace, options).await
    }
}
