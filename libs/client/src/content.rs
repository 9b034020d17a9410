use std::collections::VecDeque;
use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_api::content as pb;
use berth_content::wire::{info_from_pb, info_to_pb, status_from_pb, system_time};
use berth_content::{
    write_file_in_chunks, CommitOptions, ContentStore, ContentWriter, Info, Status, WriterOptions,
    MAX_READ,
};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::Digest;
use ttrpc::r#async::{CSReceiver, CSSender};

use crate::connection::{connect_passing_files, request_context_leased, FileOutbox};

/// How many writes may be in flight before the writer waits for the daemon
/// to acknowledge one: enough to keep the pipe full, few enough to bound
/// memory at both ends.
const WRITE_WINDOW: usize = 8;

/// berth-contentd, across its socket.
#[derive(Clone)]
pub struct RemoteContentStore {
    lease: Option<String>,
    client: pb::ContentClient,
    /// Files for contentd to read itself (see [`ContentWriter::write_file`]);
    /// only on a connection this client opened.
    outbox: Option<FileOutbox>,
}

impl std::fmt::Debug for RemoteContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteContentStore").finish_non_exhaustive()
    }
}

impl RemoteContentStore {
    pub async fn connect(socket: &Path) -> Result<RemoteContentStore> {
        let (client, outbox) = connect_passing_files(socket).await?;
        let mut store = RemoteContentStore::new(client);
        store.outbox = Some(outbox);
        Ok(store)
    }

    /// A store over a connection opened elsewhere: it passes no files, and
    /// `write_file` sends their bytes.
    pub fn new(client: ttrpc::r#async::Client) -> RemoteContentStore {
        RemoteContentStore {
            lease: None,
            client: pb::ContentClient::new(client),
            outbox: None,
        }
    }

    /// The same client, sending every request under `lease` (metadata key
    /// `containerd-lease`): what the daemon creates for it is held by that
    /// lease.
    pub fn with_lease(mut self, lease: impl Into<String>) -> Self {
        self.lease = Some(lease.into());
        self
    }

    fn context(&self, namespace: &str) -> ttrpc::context::Context {
        request_context_leased(namespace, self.lease.as_deref())
    }

    /// The raw generated client, for callers that need the wire as it is.
    pub fn raw(&self) -> &pb::ContentClient {
        &self.client
    }
}

#[async_trait]
impl ContentStore for RemoteContentStore {
    async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info> {
        let req = pb::InfoRequest {
            digest: digest.to_string(),
            ..Default::default()
        };
        let resp = self.client.info(self.context(namespace), &req).await?;
        info_from_pb(resp.info.get_or_default())
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        let req = pb::UpdateRequest {
            info: Some(info_to_pb(&info)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        let resp = self.client.update(self.context(namespace), &req).await?;
        info_from_pb(resp.info.get_or_default())
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        let req = pb::ListRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let mut stream = self.client.list(self.context(namespace), &req).await?;
        let mut infos = Vec::new();
        while let Some(batch) = stream.recv().await? {
            for info in &batch.infos {
                infos.push(info_from_pb(info)?);
            }
        }
        Ok(infos)
    }

    async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        let req = pb::DeleteRequest {
            digest: digest.to_string(),
            ..Default::default()
        };
        self.client.delete(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: std::time::SystemTime,
    ) -> Result<()> {
        let req = pb::DeleteRequest {
            digest: digest.to_string(),
            if_updated_at: berth_api::time::timestamp(seen),
            ..Default::default()
        };
        self.client.delete(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn read_at(
        &self,
        namespace: &str,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let req = pb::ReadAtRequest {
            digest: digest.to_string(),
            offset: offset as i64,
            size: len.min(MAX_READ) as i64,
            ..Default::default()
        };
        let resp = self.client.read_at(self.context(namespace), &req).await?;
        Ok(resp.data)
    }

    async fn status(&self, namespace: &str, reference: &str) -> Result<Status> {
        let req = pb::StatusRequest {
            ref_: reference.to_string(),
            ..Default::default()
        };
        let resp = self.client.status(self.context(namespace), &req).await?;
        status_from_pb(resp.status.get_or_default())
    }

    async fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>> {
        let req = pb::ListStatusesRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let resp = self
            .client
            .list_statuses(self.context(namespace), &req)
            .await?;
        resp.statuses.iter().map(status_from_pb).collect()
    }

    async fn abort(&self, namespace: &str, reference: &str) -> Result<()> {
        let req = pb::AbortRequest {
            ref_: reference.to_string(),
            ..Default::default()
        };
        self.client.abort(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        let req = pb::ReleaseLeaseRequest {
            lease: lease.to_string(),
            ..Default::default()
        };
        let resp = self
            .client
            .release_lease(self.context(namespace), &req)
            .await?;
        Ok(resp.released)
    }

    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> Result<Box<dyn ContentWriter>> {
        let stream = self.client.write(self.context(namespace)).await?;
        let (sender, receiver) = stream.split();
        let mut writer = RemoteWriter {
            sender: Some(sender),
            receiver,
            reference: options.reference.clone(),
            in_flight: VecDeque::new(),
            offset: 0,
            total: options.total.unwrap_or(0),
            started_at: SystemTime::UNIX_EPOCH,
            expected: options.expected.clone(),
            outbox: self.outbox.clone(),
            reads_files: false,
        };
        // The first request opens the ingest (and takes its ref); its answer
        // says where it stands.
        let open = pb::WriteRequest {
            action: pb::WriteAction::STAT.into(),
            ref_: options.reference,
            total: options.total.unwrap_or(0) as i64,
            expected: options.expected.map(|d| d.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        let response = writer.round_trip(open).await?;
        writer.offset = response.offset as u64;
        writer.total = response.total as u64;
        writer.started_at = system_time(&response.started_at);
        writer.reads_files = response.reads_files;
        Ok(Box::new(writer))
    }
}

/// The error a write stream's reply reports (its last, when a request
/// failed), if any.
fn failure(response: &pb::WriteResponse) -> Option<Error> {
    use berth_api::protobuf::Enum;
    if response.error_code == 0 {
        return None;
    }
    let code = ttrpc::Code::from_i32(response.error_code).unwrap_or(ttrpc::Code::UNKNOWN);
    Some(Error::from_ttrpc(ttrpc::Error::RpcStatus(
        ttrpc::get_status(code, &response.error_message),
    )))
}

/// Clears a [`FileOutbox`] when dropped.
struct ClearOnDrop<'a>(&'a FileOutbox);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// How long a failed send waits for the daemon's reason.
const REASON_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A write stream to contentd, with up to [`WRITE_WINDOW`] writes in flight.
struct RemoteWriter {
    sender: Option<CSSender<pb::WriteRequest>>,
    receiver: CSReceiver<pb::WriteResponse>,
    reference: String,
    /// Offsets the daemon will report for the writes it has not answered.
    in_flight: VecDeque<u64>,
    offset: u64,
    total: u64,
    started_at: SystemTime,
    expected: Option<Digest>,
    outbox: Option<FileOutbox>,
    /// Whether this contentd reads passed files (an older one does not
    /// know the request).
    reads_files: bool,
}

impl RemoteWriter {
    /// Asks contentd to read `file` itself: Ok(None) when it would not (the
    /// reason is logged), and the ingest is as it was.
    async fn pass_file(
        &mut self,
        outbox: &FileOutbox,
        file: &std::fs::File,
        meta: &std::fs::Metadata,
    ) -> Result<Option<u64>> {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let _turn = outbox.turn().await;
        self.drain().await?;
        // Whatever happens to this call (an error, or the caller dropping
        // it), a file not sent goes: it must not go with other requests.
        let _cleared = ClearOnDrop(outbox);
        outbox.pass(file.as_fd())?;
        let answered = self
            .round_trip(pb::WriteRequest {
                action: pb::WriteAction::WRITE_FILE.into(),
                offset: self.offset as i64,
                source: Some(pb::FileSource {
                    device: meta.dev(),
                    inode: meta.ino(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .await;
        let response = answered?;
        if !response.source_refused.is_empty() {
            tracing::debug!(reason = %response.source_refused, "contentd did not read the file; sending its bytes");
            return Ok(None);
        }
        let now = response.offset as u64;
        let written = now.checked_sub(self.offset).ok_or_else(|| {
            Error::internal(format!(
                "contentd answered a file write at offset {} with offset {now}",
                self.offset
            ))
        })?;
        self.offset = now;
        Ok(Some(written))
    }

    fn sender(&self) -> Result<&CSSender<pb::WriteRequest>> {
        self.sender
            .as_ref()
            .ok_or_else(|| Error::failed_precondition("the write stream is closed"))
    }

    async fn send(&mut self, request: pb::WriteRequest) -> Result<()> {
        let Err(sent) = self.sender()?.send(&request).await else {
            return Ok(());
        };
        // The daemon ended the stream; its reason (a full disk, a bad
        // digest) is among the replies not read yet, and says more than
        // "Stream is no longer active".
        let sent = Error::from(sent);
        loop {
            match tokio::time::timeout(REASON_WAIT, self.receiver.recv()).await {
                Ok(Ok(response)) => match failure(&response) {
                    Some(reason) => return Err(reason),
                    None => continue,
                },
                Ok(Err(e)) => {
                    let reason = Error::from(e);
                    return Err(if reason.kind() == ErrorKind::Unavailable {
                        sent
                    } else {
                        reason
                    });
                }
                Err(_) => return Err(sent),
            }
        }
    }

    /// The next reply, or the error the daemon reported in it.
    async fn receive(&mut self) -> Result<pb::WriteResponse> {
        let response = self.receiver.recv().await?;
        match failure(&response) {
            Some(reason) => Err(reason),
            None => Ok(response),
        }
    }

    async fn receive_one(&mut self) -> Result<pb::WriteResponse> {
        let response = self.receive().await?;
        if let Some(expected) = self.in_flight.pop_front() {
            if response.offset as u64 != expected {
                return Err(Error::internal(format!(
                    "contentd acknowledged offset {}, expected {expected}",
                    response.offset
                )));
            }
        }
        Ok(response)
    }

    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.receive_one().await?;
        }
        Ok(())
    }

    /// Sends one chunk without waiting for its answer, unless the window is
    /// full.
    async fn send_write(&mut self, data: Vec<u8>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.in_flight.len() >= WRITE_WINDOW {
            self.receive_one().await?;
        }
        let end = self.offset + data.len() as u64;
        self.send(pb::WriteRequest {
            action: pb::WriteAction::WRITE.into(),
            offset: self.offset as i64,
            data,
            ..Default::default()
        })
        .await?;
        self.offset = end;
        self.in_flight.push_back(end);
        Ok(())
    }

    /// Sends a request once every earlier one is answered, and waits for
    /// its answer.
    async fn round_trip(&mut self, request: pb::WriteRequest) -> Result<pb::WriteResponse> {
        self.drain().await?;
        self.send(request).await?;
        self.receive().await
    }
}

#[async_trait]
impl ContentWriter for RemoteWriter {
    async fn status(&mut self) -> Result<Status> {
        let response = self
            .round_trip(pb::WriteRequest {
                action: pb::WriteAction::STAT.into(),
                ..Default::default()
            })
            .await?;
        Ok(Status {
            reference: self.reference.clone(),
            offset: response.offset as u64,
            total: response.total as u64,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: system_time(&response.updated_at),
        })
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        if self.total != 0 && self.offset + data.len() as u64 > self.total {
            return Err(Error::invalid_argument(format!(
                "writing {} bytes at offset {} would pass the expected size {}",
                data.len(),
                self.offset,
                self.total
            )));
        }
        if data.len() <= MAX_READ {
            return self.send_write(data).await;
        }
        for chunk in data.chunks(MAX_READ) {
            self.send_write(chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn write_file(&mut self, file: std::fs::File) -> Result<u64> {
        // contentd reads only regular files; it reads through the same open
        // file, so the bytes it takes are consumed here too.
        let regular = file
            .metadata()
            .ok()
            .filter(|m| m.is_file() && self.reads_files);
        if let (Some(outbox), Some(meta)) = (self.outbox.clone(), regular) {
            if let Some(written) = self.pass_file(&outbox, &file, &meta).await? {
                return Ok(written);
            }
        }
        write_file_in_chunks(self, file).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.round_trip(pb::WriteRequest {
            action: pb::WriteAction::WRITE.into(),
            offset: 0,
            ..Default::default()
        })
        .await?;
        self.offset = 0;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, options: CommitOptions) -> Result<Digest> {
        let response = self
            .round_trip(pb::WriteRequest {
                action: pb::WriteAction::COMMIT.into(),
                offset: self.offset as i64,
                total: options.size.unwrap_or(0) as i64,
                expected: options.expected.map(|d| d.to_string()).unwrap_or_default(),
                labels: options.labels,
                ..Default::default()
            })
            .await?;
        Ok(Digest::parse(&response.digest)?)
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        // Tell contentd this writer is done so it frees the ref; the data
        // written stays for a later writer to resume.
        if let (Some(sender), Ok(handle)) =
            (self.sender.take(), tokio::runtime::Handle::try_current())
        {
            handle.spawn(async move {
                let _ = sender.close_send().await;
            });
        }
    }
}
