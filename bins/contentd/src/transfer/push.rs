//! Pushing an image from the content store to a registry.
//!
//! Blobs go first, each checked with a HEAD (the registry may have it),
//! mounted from another repository of the same registry when the blob came
//! from there (its distribution-source label says so), otherwise uploaded:
//! in one PUT when small, in PATCH chunks when large. Manifests go last,
//! children before parents, the root under the tag.

use std::sync::Arc;

use berth_content::{read_blob, ContentStore, MAX_READ};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::Digest;
use berth_reference::Reference;
use futures::stream::{FuturesUnordered, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tokio::sync::{mpsc, Semaphore};

use super::auth::Credentials;
use super::fetch::{report_blob, MAX_MANIFESTS, MAX_MANIFEST_BYTES};
use super::hosts;
use super::registry::{check_status, RegistryClient};
use berth_image::document::{parse_index, parse_manifest};
use berth_image::{media, sniff_media_type, BlobState, Descriptor, Progress, MAX_DOCUMENT_SIZE};

/// Blobs up to this size go up in one request; larger ones in chunks of it.
pub const UPLOAD_CHUNK: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub max_concurrent: usize,
    pub plain_http: bool,
    pub credentials: Option<Credentials>,
}

/// Pushes images from a content store.
#[derive(Clone)]
pub struct Pusher {
    store: Arc<dyn ContentStore>,
    hosts_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").finish_non_exhaustive()
    }
}

fn header(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|e| Error::internal(e.to_string()))
}

struct Job<'a> {
    namespace: &'a str,
    client: &'a RegistryClient,
    registry_host: &'a str,
    progress: &'a mpsc::Sender<Progress>,
}

impl Job<'_> {
    async fn report(&self, descriptor: &Descriptor, state: BlobState, offset: u64) {
        report_blob(self.progress, descriptor, state, offset).await;
    }
}

impl Pusher {
    pub fn new(store: Arc<dyn ContentStore>, hosts_dir: Option<std::path::PathBuf>) -> Pusher {
        Pusher { store, hosts_dir }
    }

    /// Pushes the image rooted at `root` to `target`; returns the root's
    /// descriptor.
    pub async fn push(
        &self,
        namespace: &str,
        target: &Reference,
        root: &Digest,
        options: &PushOptions,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<Descriptor> {
        let endpoint = hosts::endpoints(
            self.hosts_dir.as_deref(),
            target.domain(),
            options.plain_http,
        )?
        .into_iter()
        .rev()
        .find(|e| e.capabilities.push)
        .ok_or_else(|| {
            Error::failed_precondition(format!("{}: no endpoint accepts pushes", target.domain()))
        })?;
        let client = RegistryClient::new(
            endpoint,
            target.domain(),
            target.path(),
            options.credentials.clone(),
        )?
        .for_push();
        let job = Job {
            namespace,
            client: &client,
            registry_host: target.domain(),
            progress,
        };

        // The tree, from the store: manifests (children after parents) and
        // the blobs they name.
        let root_data = read_blob(self.store.as_ref(), namespace, root, MAX_DOCUMENT_SIZE).await?;
        let root_type = sniff_media_type(&root_data).ok_or_else(|| {
            Error::invalid_argument(format!("{root} is not an image index or manifest"))
        })?;
        let root_descriptor = Descriptor {
            media_type: root_type,
            digest: root.clone(),
            size: root_data.len() as u64,
            urls: Vec::new(),
            platform: None,
            annotations: Default::default(),
        };
        let _ = progress
            .send(Progress::Resolved(root_descriptor.clone()))
            .await;
        let mut manifests: Vec<(Descriptor, Vec<u8>)> = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut held_bytes = root_data.len() as u64;
        let mut visited = std::collections::HashSet::new();
        visited.insert(root.clone());
        let mut pending = vec![(root_descriptor.clone(), root_data)];
        while let Some((descriptor, data)) = pending.pop() {
            if manifests.len() >= MAX_MANIFESTS {
                return Err(Error::resource_exhausted(format!(
                    "{root} names more than {MAX_MANIFESTS} manifests"
                )));
            }
            if media::is_index(&descriptor.media_type) {
                for child in parse_index(&data)?.manifests {
                    if !visited.insert(child.digest.clone()) {
                        continue;
                    }
                    held_bytes += child.size;
                    if held_bytes > MAX_MANIFEST_BYTES {
                        return Err(Error::resource_exhausted(format!(
                            "{root} names more than {MAX_MANIFEST_BYTES} bytes of manifests"
                        )));
                    }
                    let bytes = read_blob(self.store.as_ref(), namespace, &child.digest, MAX_DOCUMENT_SIZE)
                        .await
                        .map_err(|e| {
                            if e.is(ErrorKind::NotFound) {
                                Error::not_found(format!(
                                    "manifest {} of index {} is not in the content store (fetch all its platforms first, or push one platform's manifest)",
                                    child.digest, descriptor.digest
                                ))
                            } else {
                                e
                            }
                        })?;
                    pending.push((child, bytes));
                }
            } else if media::is_manifest(&descriptor.media_type) {
                let manifest = parse_manifest(&data)?;
                blobs.push(manifest.config);
                blobs.extend(
                    manifest
                        .layers
                        .into_iter()
                        .filter(|l| !media::is_foreign_layer(&l.media_type)),
                );
            } else {
                return Err(Error::invalid_argument(format!(
                    "{} has media type {:?}, not a manifest or index",
                    descriptor.digest, descriptor.media_type
                )));
            }
            manifests.push((descriptor, data));
        }
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        for blob in &blobs {
            job.report(blob, BlobState::Waiting, 0).await;
        }
        let limit = Arc::new(Semaphore::new(options.max_concurrent.clamp(1, 32)));
        let mut running = FuturesUnordered::new();
        for blob in &blobs {
            let limit = limit.clone();
            let job = &job;
            running.push(async move {
                let _permit = limit
                    .acquire()
                    .await
                    .map_err(|_| Error::internal("push cancelled"))?;
                self.push_blob(job, blob)
                    .await
                    .map_err(|e| e.context(format!("pushing {}", blob.digest)))
            });
        }
        while let Some(result) = running.next().await {
            result?;
        }
        drop(running);
        for (descriptor, data) in manifests.iter().rev() {
            let name = if descriptor.digest == *root {
                target
                    .tag()
                    .map(str::to_string)
                    .unwrap_or_else(|| root.to_string())
            } else {
                descriptor.digest.to_string()
            };
            self.put_manifest(&job, descriptor, data, &name).await?;
        }
        Ok(root_descriptor)
    }

    async fn put_manifest(
        &self,
        job: &Job<'_>,
        descriptor: &Descriptor,
        data: &[u8],
        name: &str,
    ) -> Result<()> {
        let url = job.client.repo_url(&format!("manifests/{name}"));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header(&descriptor.media_type)?);
        let response = job
            .client
            .send_body(Method::PUT, &url, headers, Some(data))
            .await?;
        check_status(&response, &url)?;
        job.report(descriptor, BlobState::Done, descriptor.size)
            .await;
        Ok(())
    }

    async fn push_blob(&self, job: &Job<'_>, descriptor: &Descriptor) -> Result<()> {
        let client = job.client;
        let blob_url = client.repo_url(&format!("blobs/{}", descriptor.digest));
        let head = client
            .send_body(Method::HEAD, &blob_url, HeaderMap::new(), None)
            .await?;
        if head.status().is_success() {
            job.report(descriptor, BlobState::Exists, descriptor.size)
                .await;
            return Ok(());
        }
        let info = self.store.info(job.namespace, &descriptor.digest).await?;
        // Mount from the repository it came from on the same registry.
        let source_key = format!("containerd.io/distribution.source.{}", job.registry_host);
        let mount_from = info
            .labels
            .get(&source_key)
            .and_then(|repos| repos.split(',').find(|r| *r != client.repository()))
            .filter(|r| Reference::parse(&format!("{}/{r}", job.registry_host)).is_ok());
        let start_url = match mount_from {
            Some(from) => client.repo_url(&format!(
                "blobs/uploads/?mount={}&from={from}",
                descriptor.digest
            )),
            None => client.repo_url("blobs/uploads/"),
        };
        let started = client
            .send_body(Method::POST, &start_url, HeaderMap::new(), Some(&[]))
            .await?;
        if started.status() == StatusCode::CREATED && mount_from.is_some() {
            job.report(descriptor, BlobState::Mounted, descriptor.size)
                .await;
            return Ok(());
        }
        if started.status() != StatusCode::ACCEPTED {
            check_status(&started, &start_url)?;
            return Err(Error::failed_precondition(format!(
                "{start_url}: upload not started ({})",
                started.status()
            )));
        }
        let mut location = client.location(&started)?;
        job.report(descriptor, BlobState::Uploading, 0).await;
        let digest_param = |location: &str| -> String {
            let separator = if location.contains('?') { '&' } else { '?' };
            format!("{location}{separator}digest={}", descriptor.digest)
        };
        if descriptor.size <= UPLOAD_CHUNK {
            let data = read_blob(
                self.store.as_ref(),
                job.namespace,
                &descriptor.digest,
                UPLOAD_CHUNK,
            )
            .await?;
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let url = digest_param(&location);
            let done = client
                .send_body(Method::PUT, &url, headers, Some(&data))
                .await?;
            check_status(&done, &url)?;
        } else {
            let mut offset = 0u64;
            while offset < descriptor.size {
                let end = (offset + UPLOAD_CHUNK).min(descriptor.size);
                let mut chunk = Vec::with_capacity((end - offset) as usize);
                while (offset + chunk.len() as u64) < end {
                    let want = ((end - offset) as usize - chunk.len()).min(MAX_READ);
                    let piece = self
                        .store
                        .read_at(
                            job.namespace,
                            &descriptor.digest,
                            offset + chunk.len() as u64,
                            want,
                        )
                        .await?;
                    if piece.is_empty() {
                        return Err(Error::internal(format!(
                            "{} is shorter than its size",
                            descriptor.digest
                        )));
                    }
                    chunk.extend_from_slice(&piece);
                }
                let mut headers = HeaderMap::new();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(CONTENT_RANGE, header(&format!("{offset}-{}", end - 1))?);
                headers.insert(CONTENT_LENGTH, header(&chunk.len().to_string())?);
                let patched = client
                    .send_body(Method::PATCH, &location, headers, Some(&chunk))
                    .await?;
                check_status(&patched, &location)?;
                location = client.location(&patched)?;
                offset = end;
                job.report(descriptor, BlobState::Uploading, offset).await;
            }
            let url = digest_param(&location);
            let done = client
                .send_body(Method::PUT, &url, HeaderMap::new(), Some(&[]))
                .await?;
            check_status(&done, &url)?;
        }
        job.report(descriptor, BlobState::Done, descriptor.size)
            .await;
        Ok(())
    }
}
