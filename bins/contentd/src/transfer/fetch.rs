//! Fetching an image's blobs from a registry into the content store.
//!
//! The root manifest (or index) is resolved, then the tree is walked:
//! indexes and manifests are small and fetched one by one, then the
//! selected manifests' configs and layers are fetched concurrently (at most
//! `max_concurrent` at once). Each blob streams from the socket through the
//! ingest writer, which hashes as it writes, and is committed only if its
//! digest and size match. An ingest left by an interrupted fetch resumes
//! with a Range request from its stored offset.
//!
//! Blobs get containerd's garbage-collection labels (a parent points at its
//! children with `containerd.io/gc.ref.content.*`) and a
//! `containerd.io/distribution.source.<host>` label.

use std::sync::Arc;

use berth_content::{
    read_blob, CommitOptions, ContentStore, Labels, Leased, WriterOptions, MAX_READ,
};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_reference::Reference;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use super::auth::Credentials;
use super::hosts;
use super::registry::RegistryClient;
use berth_image::document::{index_gc_labels, parse_index, parse_manifest};
use berth_image::media;
use berth_image::{BlobState, Descriptor, Matcher, Platform, Progress, MAX_DOCUMENT_SIZE};

/// Most manifests one fetch walks (an index and its platforms), and most
/// bytes of them held until the blobs are in.
pub const MAX_MANIFESTS: usize = 1024;
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// How long a fetch waits for a concurrent fetch of the same blob.
const WAIT_FOR_OTHER_FETCH: std::time::Duration = std::time::Duration::from_secs(600);

/// Attempts to fetch one blob when the connection breaks mid-body.
const BLOB_ATTEMPTS: u32 = 3;

/// Chunks of a blob received from the registry and not yet written.
const WRITE_AHEAD: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Platforms to fetch; empty means the host's.
    pub platforms: Vec<Platform>,
    pub all_platforms: bool,
    /// Blobs fetched at once (0: the default, 3).
    pub max_concurrent: usize,
    /// Talk plain HTTP to the reference's registry.
    pub plain_http: bool,
    pub credentials: Option<Credentials>,
    /// Fetch layers a manifest marks as foreign (they may come from URLs
    /// outside the registry; credentials are never sent there).
    pub allow_foreign_layers: bool,
    /// The lease the fetch works under: every blob it stores or finds
    /// already stored is tied to it.
    pub lease: Option<String>,
}

/// Fetches images into a content store.
#[derive(Clone)]
pub struct Fetcher {
    store: Arc<dyn ContentStore>,
    hosts_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("hosts_dir", &self.hosts_dir)
            .finish_non_exhaustive()
    }
}

struct Job<'a> {
    namespace: &'a str,
    client: &'a RegistryClient,
    source_label: (String, String),
    /// The store under the fetch's lease: every blob the fetch stores or
    /// finds stored joins it.
    store: Leased<Arc<dyn ContentStore>>,
    progress: &'a mpsc::Sender<Progress>,
}

/// Reports a blob's state; a caller that stopped listening is no reason to
/// stop the transfer.
pub(super) async fn report_blob(
    progress: &mpsc::Sender<Progress>,
    descriptor: &Descriptor,
    state: BlobState,
    offset: u64,
) {
    let _ = progress
        .send(Progress::Blob {
            descriptor: descriptor.clone(),
            state,
            offset,
        })
        .await;
}

impl Job<'_> {
    async fn report(&self, descriptor: &Descriptor, state: BlobState, offset: u64) {
        report_blob(self.progress, descriptor, state, offset).await;
    }

    fn labels(&self, mut labels: Labels) -> Labels {
        labels.insert(self.source_label.0.clone(), self.source_label.1.clone());
        labels
    }
}

fn ingest_ref(descriptor: &Descriptor) -> String {
    format!(
        "{}-{}",
        media::ingest_kind(&descriptor.media_type),
        descriptor.digest
    )
}

impl Fetcher {
    pub fn new(store: Arc<dyn ContentStore>, hosts_dir: Option<std::path::PathBuf>) -> Fetcher {
        Fetcher { store, hosts_dir }
    }

    /// Fetches the image `reference` names; returns its root descriptor.
    pub async fn fetch(
        &self,
        namespace: &str,
        reference: &Reference,
        options: &FetchOptions,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<Descriptor> {
        let endpoints = hosts::endpoints(
            self.hosts_dir.as_deref(),
            reference.domain(),
            options.plain_http,
        )?;
        let mut last_error = Error::unavailable(format!(
            "{}: no endpoint can resolve it",
            reference.domain()
        ));
        for endpoint in endpoints.into_iter().filter(|e| e.capabilities.resolve) {
            let client = RegistryClient::new(
                endpoint,
                reference.domain(),
                reference.path(),
                options.credentials.clone(),
            )?;
            let root = match client.resolve(&reference.object()).await {
                Ok(root) => root,
                Err(e) => {
                    tracing::debug!(endpoint = %client.endpoint().base, error = %e, "resolve failed");
                    last_error = e;
                    continue;
                }
            };
            let _ = progress.send(Progress::Resolved(root.clone())).await;
            let job = Job {
                namespace,
                client: &client,
                source_label: (
                    berth_api::labels::distribution_source(reference.domain()),
                    reference.path().to_string(),
                ),
                store: Leased::new(self.store.clone(), options.lease.clone()),
                progress,
            };
            self.fetch_tree(&job, &root, options).await?;
            return Ok(root);
        }
        Err(last_error)
    }

    async fn fetch_tree(
        &self,
        job: &Job<'_>,
        root: &Descriptor,
        options: &FetchOptions,
    ) -> Result<()> {
        let wanted = if options.platforms.is_empty() {
            Matcher::host()
        } else {
            Matcher::new(options.platforms.clone())
        };
        let mut manifests = vec![root.clone()];
        let mut blobs: Vec<Descriptor> = Vec::new();
        // Manifests and indexes are committed after everything they point
        // at, children before parents, so an image whose blobs did not all
        // arrive intact is never recorded as fetched.
        let mut to_store: Vec<(Descriptor, Vec<u8>, Labels)> = Vec::new();
        let mut visited = std::collections::HashSet::new();
        let mut held_bytes = 0u64;
        while let Some(descriptor) = manifests.pop() {
            // An index may name one manifest many times: walk it once.
            if !visited.insert(descriptor.digest.clone()) {
                continue;
            }
            held_bytes += descriptor.size;
            if held_bytes > MAX_MANIFEST_BYTES {
                return Err(Error::resource_exhausted(format!(
                    "{} names more than {MAX_MANIFEST_BYTES} bytes of manifests",
                    root.digest
                )));
            }
            if to_store.len() >= MAX_MANIFESTS {
                return Err(Error::resource_exhausted(format!(
                    "{} names more than {MAX_MANIFESTS} manifests",
                    root.digest
                )));
            }
            let data = self.manifest_bytes(job, &descriptor).await?;
            if media::is_index(&descriptor.media_type) {
                let index = parse_index(&data)?;
                let children: Vec<Descriptor> = index
                    .manifests
                    .into_iter()
                    .filter(|m| {
                        options.all_platforms
                            || m.platform.as_ref().is_none_or(|p| wanted.matches(p))
                    })
                    .collect();
                if children.is_empty() {
                    return Err(Error::not_found(format!(
                        "{} has no manifest for {}",
                        descriptor.digest,
                        wanted
                            .wanted()
                            .iter()
                            .map(Platform::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                let labels = index_gc_labels(&children).into_iter().collect();
                to_store.push((descriptor, data, labels));
                manifests.extend(children);
            } else if media::is_manifest(&descriptor.media_type) {
                let manifest = parse_manifest(&data)?;
                // (One that would not fit a progress message is left for
                // the caller to read once the fetch is done.)
                if data.len() <= berth_api::MAX_CHUNK {
                    let _ = job
                        .progress
                        .send(Progress::Manifest {
                            descriptor: descriptor.clone(),
                            platform: descriptor.platform.as_ref().map(Platform::to_string),
                            data: data.clone(),
                        })
                        .await;
                }
                let labels: Labels = manifest.gc_labels().into_iter().collect();
                to_store.push((descriptor, data, labels));
                blobs.push(manifest.config);
                blobs.extend(manifest.layers);
            } else {
                return Err(Error::invalid_argument(format!(
                    "{} has media type {:?}, not a manifest or index",
                    descriptor.digest, descriptor.media_type
                )));
            }
        }
        // Layers shared by several platforms are fetched once.
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        for blob in &blobs {
            job.report(blob, BlobState::Waiting, 0).await;
        }
        let limit = Arc::new(Semaphore::new(if options.max_concurrent == 0 {
            3
        } else {
            options.max_concurrent
        }));
        let mut running = FuturesUnordered::new();
        for blob in blobs {
            let limit = limit.clone();
            running.push(async move {
                let _permit = limit
                    .acquire()
                    .await
                    .map_err(|_| Error::internal("fetch cancelled"))?;
                if media::is_foreign_layer(&blob.media_type) && !options.allow_foreign_layers {
                    job.report(&blob, BlobState::Skipped, 0).await;
                    return Ok(());
                }
                self.fetch_blob(job, &blob).await
            });
        }
        while let Some(result) = running.next().await {
            result?;
        }
        drop(running);
        for (descriptor, data, labels) in to_store.iter().rev() {
            self.store_manifest(job, descriptor, data, labels.clone())
                .await?;
        }
        Ok(())
    }

    /// A manifest's bytes: from the store if the namespace has it, else from
    /// the registry.
    async fn manifest_bytes(&self, job: &Job<'_>, descriptor: &Descriptor) -> Result<Vec<u8>> {
        match read_blob(
            self.store.as_ref(),
            job.namespace,
            &descriptor.digest,
            MAX_DOCUMENT_SIZE,
        )
        .await
        {
            Ok(data) => return Ok(data),
            Err(e) if e.is(ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        job.client.fetch_manifest(descriptor).await
    }

    async fn store_manifest(
        &self,
        job: &Job<'_>,
        descriptor: &Descriptor,
        data: &[u8],
        labels: Labels,
    ) -> Result<()> {
        let waiting_since = std::time::Instant::now();
        loop {
            let written = berth_content::write_blob(
                &job.store,
                job.namespace,
                &ingest_ref(descriptor),
                data,
                Some(descriptor.digest.clone()),
                job.labels(labels.clone()),
            )
            .await;
            match written {
                Ok(_) => {
                    job.report(descriptor, BlobState::Done, descriptor.size)
                        .await;
                    return Ok(());
                }
                // (Held for the lease by the leased store.)
                Err(e) if e.is(ErrorKind::AlreadyExists) => {
                    job.report(descriptor, BlobState::Exists, descriptor.size)
                        .await;
                    return Ok(());
                }
                // A concurrent fetch of the same image is writing it.
                Err(e)
                    if e.is(ErrorKind::Unavailable)
                        && waiting_since.elapsed() < WAIT_FOR_OTHER_FETCH =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_blob(&self, job: &Job<'_>, descriptor: &Descriptor) -> Result<()> {
        let reference = ingest_ref(descriptor);
        let mut attempt = 0;
        let waiting_since = std::time::Instant::now();
        loop {
            match self.try_fetch_blob(job, descriptor, &reference).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.is(ErrorKind::Aborted)
                        && waiting_since.elapsed() < WAIT_FOR_OTHER_FETCH =>
                {
                    // Another fetch is writing this blob: wait for it to
                    // finish (then the blob exists) or give up the ref.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) if e.is(ErrorKind::Unavailable) && attempt + 1 < BLOB_ATTEMPTS => {
                    tracing::debug!(digest = %descriptor.digest, error = %e, "blob fetch interrupted; resuming");
                    attempt += 1;
                    // The writer is dropped: let it free the ref.
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                        .await;
                }
                Err(e) => return Err(e.context(format!("fetching {}", descriptor.digest))),
            }
        }
    }

    async fn try_fetch_blob(
        &self,
        job: &Job<'_>,
        descriptor: &Descriptor,
        reference: &str,
    ) -> Result<()> {
        let options = WriterOptions::new(reference)
            .total(descriptor.size)
            .expected(descriptor.digest.clone());
        let mut writer = match job.store.writer(job.namespace, options).await {
            Ok(w) => w,
            // (Held for the lease by the leased store.)
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                job.report(descriptor, BlobState::Exists, descriptor.size)
                    .await;
                return Ok(());
            }
            Err(e) if e.is(ErrorKind::Unavailable) => {
                // The ref is held by a concurrent fetch of the same blob.
                return Err(Error::aborted(e.message()));
            }
            Err(e) => return Err(e),
        };
        let mut offset = writer.status().await?.offset;
        if offset < descriptor.size {
            let (response, ranged) = job.client.blob(descriptor, offset).await?;
            if offset > 0 && !ranged {
                writer.restart().await?;
                offset = 0;
            }
            job.report(descriptor, BlobState::Downloading, offset).await;
            // The body is read while the chunks before are written (and
            // hashed): one side waits on the network, the other on the
            // disk and the hash.
            let (chunks, mut to_write) = mpsc::channel::<Vec<u8>>(WRITE_AHEAD);
            let started_at = offset;
            let receive = async move {
                let mut received = started_at;
                let mut body = response.bytes_stream();
                let mut buffer = Vec::with_capacity(MAX_READ);
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| {
                        Error::unavailable(format!("reading {}: {e}", descriptor.digest))
                    })?;
                    if received + (buffer.len() + chunk.len()) as u64 > descriptor.size {
                        return Err(Error::failed_precondition(format!(
                            "the registry sent more than the {} bytes of {}",
                            descriptor.size, descriptor.digest
                        )));
                    }
                    buffer.extend_from_slice(&chunk);
                    crate::metrics::FETCHED_BYTES.inc_by(chunk.len() as u64);
                    if buffer.len() >= MAX_READ {
                        received += buffer.len() as u64;
                        let full = std::mem::replace(&mut buffer, Vec::with_capacity(MAX_READ));
                        if chunks.send(full).await.is_err() {
                            // The writing side failed: its error tells.
                            return Ok(received);
                        }
                    }
                }
                if !buffer.is_empty() {
                    received += buffer.len() as u64;
                    let _ = chunks.send(buffer).await;
                }
                Ok(received)
            };
            let write = async {
                while let Some(chunk) = to_write.recv().await {
                    let len = chunk.len() as u64;
                    if let Err(e) = writer.write(chunk).await {
                        // Stop the receiving side too.
                        to_write.close();
                        return Err(e);
                    }
                    offset += len;
                    job.report(descriptor, BlobState::Downloading, offset).await;
                }
                Ok(())
            };
            let (received, written) = tokio::join!(receive, write);
            written?;
            match received {
                Ok(_) => {}
                Err(e) if e.is(ErrorKind::FailedPrecondition) => {
                    // The writer must let go of the ref before the ingest
                    // can be dropped.
                    drop(writer);
                    return Err(self.discard(job, reference, e).await);
                }
                Err(e) => return Err(e),
            }
            if offset < descriptor.size {
                return Err(Error::unavailable(format!(
                    "{} ended at {offset} of {} bytes",
                    descriptor.digest, descriptor.size
                )));
            }
        }
        let labels = job.labels(Labels::new());
        match writer
            .commit(CommitOptions {
                size: Some(descriptor.size),
                expected: Some(descriptor.digest.clone()),
                labels,
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is(ErrorKind::AlreadyExists) => {}
            Err(e) if e.is(ErrorKind::FailedPrecondition) => {
                // Bad bytes from the registry: drop them so no later fetch
                // resumes from them.
                return Err(self.discard(job, reference, e).await);
            }
            Err(e) => return Err(e),
        }
        crate::metrics::FETCHED_BLOBS.inc();
        job.report(descriptor, BlobState::Done, descriptor.size)
            .await;
        Ok(())
    }

    async fn discard(&self, job: &Job<'_>, reference: &str, error: Error) -> Error {
        let _ = berth_content::abort_released(self.store.as_ref(), job.namespace, reference).await;
        error
    }
}
