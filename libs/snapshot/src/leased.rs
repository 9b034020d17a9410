//! A snapshotter seen through a lease.

use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::Result;

use crate::{set_label, Info, Labels, Mount, Snapshotter, Usage};

/// A snapshotter under a lease: every snapshot prepared, viewed or
/// committed through it is tied to the lease (labelled
/// [`berth_api::labels::lease`]), so metad's collector keeps it while the
/// lease lives. Without a lease it is the snapshotter itself. This is the
/// one place the lease label is joined to snapshots.
#[derive(Debug, Clone)]
pub struct Leased<S> {
    inner: S,
    lease: Option<String>,
}

impl<S: Snapshotter> Leased<S> {
    pub fn new(inner: S, lease: Option<String>) -> Leased<S> {
        Leased { inner, lease }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Ties an existing snapshot to the lease (bumping its `updated_at`);
    /// nothing without a lease.
    pub async fn hold(&self, namespace: &str, key: &str) -> Result<()> {
        match &self.lease {
            Some(lease) => {
                let label = berth_api::labels::lease(lease);
                let value = Some(berth_api::labels::lease_value());
                set_label(&self.inner, namespace, key, &label, value).await
            }
            None => Ok(()),
        }
    }

    /// `labels` and, under a lease, the label that ties a snapshot to it.
    pub fn with_lease(&self, mut labels: Labels) -> Labels {
        if let Some(lease) = &self.lease {
            labels.insert(
                berth_api::labels::lease(lease),
                berth_api::labels::lease_value(),
            );
        }
        labels
    }
}

#[async_trait]
impl<S: Snapshotter> Snapshotter for Leased<S> {
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        self.inner.stat(namespace, key).await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        self.inner.update(namespace, info, paths).await
    }

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        self.inner.usage(namespace, key).await
    }

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        self.inner.mounts(namespace, key).await
    }

    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.inner
            .prepare(namespace, key, parent, self.with_lease(labels))
            .await
    }

    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        self.inner
            .view(namespace, key, parent, self.with_lease(labels))
            .await
    }

    async fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.inner
            .commit(namespace, name, key, self.with_lease(labels))
            .await
    }

    async fn remove(&self, namespace: &str, key: &str) -> Result<()> {
        self.inner.remove(namespace, key).await
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: SystemTime,
    ) -> Result<()> {
        self.inner.remove_if_unchanged(namespace, key, seen).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        self.inner.list(namespace, filters).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.inner.cleanup().await
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        self.inner.release_lease(namespace, lease).await
    }
}

/// A borrowed snapshotter is a snapshotter (so [`Leased`] can wrap one for
/// the length of a request).
#[async_trait]
impl<T: Snapshotter + ?Sized> Snapshotter for &T {
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        (**self).stat(namespace, key).await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        (**self).update(namespace, info, paths).await
    }

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        (**self).usage(namespace, key).await
    }

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        (**self).mounts(namespace, key).await
    }

    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        (**self).prepare(namespace, key, parent, labels).await
    }

    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        (**self).view(namespace, key, parent, labels).await
    }

    async fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        (**self).commit(namespace, name, key, labels).await
    }

    async fn remove(&self, namespace: &str, key: &str) -> Result<()> {
        (**self).remove(namespace, key).await
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: SystemTime,
    ) -> Result<()> {
        (**self).remove_if_unchanged(namespace, key, seen).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        (**self).list(namespace, filters).await
    }

    async fn cleanup(&self) -> Result<()> {
        (**self).cleanup().await
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        (**self).release_lease(namespace, lease).await
    }
}
