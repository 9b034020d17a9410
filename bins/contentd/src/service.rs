//! `berth.content.v1.Content` over ttrpc: a thin edge over a
//! [`ContentStore`]. Requests are parsed and validated here; every error
//! leaves as the ttrpc status of its kind.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::content as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_content::wire::{
    info_from_pb, info_to_pb, parse_digest, parse_optional_digest, status_to_pb, timestamp,
    unsigned,
};
use berth_content::{CommitOptions, ContentStore, Leased, WriterOptions, MAX_READ};
use berth_daemon::{peer_hung_up, reply, request_lease, request_namespace, take_passed_file};
use berth_errdefs::{Error, Result};

use crate::reorder::InOrder;
use ttrpc::r#async::{ServerStream, ServerStreamSender, TtrpcContext};

/// How many pipelined writes may wait for an earlier one that they
/// overtook (berth's client keeps at most 8 in flight).
const MAX_WRITES_AHEAD: usize = 64;
/// And at most this many bytes of them.
const MAX_BYTES_AHEAD: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct ContentService {
    store: Arc<dyn ContentStore>,
}

impl std::fmt::Debug for ContentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentService").finish_non_exhaustive()
    }
}

impl ContentService {
    pub fn new(store: Arc<dyn ContentStore>) -> ContentService {
        ContentService { store }
    }

    /// The ttrpc service table to register with the server.
    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_content(Arc::new(self))
    }

    async fn write_stream(
        &self,
        ctx: &TtrpcContext,
        namespace: String,
        lease: Option<String>,
        stream: &mut ServerStream<pb::WriteResponse, pb::WriteRequest>,
    ) -> Result<()> {
        let Some(first) = next_request(ctx, stream).await? else {
            return Ok(());
        };
        if first.ref_.is_empty() {
            return Err(Error::invalid_argument(
                "the first write request must name a ref",
            ));
        }
        let reference = first.ref_.clone();
        let mut options = WriterOptions::new(reference.clone());
        let total = unsigned("total", first.total)?;
        if total > 0 {
            options.total = Some(total);
        }
        options.expected = parse_optional_digest(&first.expected)?;
        // Under a lease, what the stream commits (or finds committed)
        // joins the lease.
        let store = Leased::new(self.store.clone(), lease);
        let mut writer = store.writer(&namespace, options).await?;
        let status = writer.status().await?;
        let mut offset = status.offset;
        let mut total = status.total;
        let started_at = status.started_at;

        let mut ahead = InOrder::new(MAX_WRITES_AHEAD, MAX_BYTES_AHEAD);
        let mut first = Some(first);
        loop {
            let request = if let Some(request) = ahead.take(offset) {
                request
            } else if let Some(request) = first.take() {
                request
            } else if let Some(request) = next_request(ctx, stream).await? {
                request
            } else {
                break;
            };
            if !request.ref_.is_empty() && request.ref_ != reference {
                return Err(Error::invalid_argument(format!(
                    "write stream for {reference} got a request for {}",
                    request.ref_
                )));
            }
            let action = request
                .action
                .enum_value()
                .map_err(|v| Error::invalid_argument(format!("unknown write action {v}")))?;
            // On WRITE and STAT, total is the ingest's expected size; on
            // COMMIT, the size the blob must have.
            let request_total = unsigned("total", request.total)?;
            if action != pb::WriteAction::COMMIT && request_total > 0 {
                if total > 0 && request_total != total {
                    return Err(Error::invalid_argument(format!(
                        "ingest {reference} expects {total} bytes, not {request_total}"
                    )));
                }
                total = request_total;
            }
            let mut source_refused = String::new();
            if action == pb::WriteAction::WRITE_FILE {
                let at = unsigned("offset", request.offset)?;
                if at != offset {
                    return Err(Error::failed_precondition(format!(
                        "file write at offset {at}, but ingest {reference} is at {offset}"
                    )));
                }
                let source = request.source.as_ref().ok_or_else(|| {
                    Error::invalid_argument("a file write must name its source file")
                })?;
                match passed_source(ctx, source) {
                    Ok((file, size)) => {
                        if total > 0 && offset + size > total {
                            return Err(Error::invalid_argument(format!(
                                "writing {size} bytes at offset {offset} would pass the expected size {total}"
                            )));
                        }
                        let read = writer.write_file(file).await?;
                        crate::metrics::PASSED_FILE_BYTES.inc_by(read);
                        offset += read;
                    }
                    Err(reason) => {
                        tracing::debug!(%reason, "not reading a caller's file");
                        source_refused = reason;
                    }
                }
            }
            if matches!(action, pb::WriteAction::WRITE | pb::WriteAction::COMMIT) {
                let at = unsigned("offset", request.offset)?;
                if action == pb::WriteAction::WRITE && !request.data.is_empty() && at > offset {
                    // Overtook an earlier write on the way in.
                    let len = request.data.len();
                    ahead.hold(at, request, len)?;
                    continue;
                }
                if at != offset {
                    if at != 0 {
                        return Err(Error::failed_precondition(format!(
                            "write at offset {at}, but ingest {reference} is at {offset}"
                        )));
                    }
                    writer.restart().await?;
                    offset = 0;
                }
                if total > 0
                    && !request.data.is_empty()
                    && offset + request.data.len() as u64 > total
                {
                    return Err(Error::invalid_argument(format!(
                        "writing {} bytes at offset {offset} would pass the expected size {total}",
                        request.data.len()
                    )));
                }
                offset += request.data.len() as u64;
                writer.write(request.data).await?;
            }
            let mut response = pb::WriteResponse {
                action: action.into(),
                started_at: timestamp(started_at),
                updated_at: timestamp(std::time::SystemTime::now()),
                offset: offset as i64,
                total: total as i64,
                source_refused,
                reads_files: true,
                ..Default::default()
            };
            if action == pb::WriteAction::COMMIT {
                let expected = parse_optional_digest(&request.expected)?;
                let digest = writer
                    .commit(CommitOptions {
                        size: (request_total > 0).then_some(request_total),
                        expected,
                        labels: request.labels,
                    })
                    .await?;
                response.digest = digest.to_string();
                stream.send(&response).await?;
                return Ok(());
            }
            stream.send(&response).await?;
        }
        Ok(())
    }
}

/// The filesystems whose regular files contentd reads for a caller: disk
/// and memory filesystems, where a read is a read. Not procfs, sysfs and
/// their kin, whose "regular files" answer by who reads them; not FUSE,
/// whose reads another process may never answer; not overlayfs, whose
/// reads go to a lower filesystem that may be either.
const READABLE_FILESYSTEMS: &[u32] = &[
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58F6, // ramfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
];

/// How far a passed file's allocated blocks may fall short of its size
/// before it counts as sparse (a filesystem's last partial block, or data
/// not yet allocated).
const SPARSE_SLACK: u64 = 1 << 20;

/// The file a caller passed for a WRITE_FILE naming `source`, and how many
/// bytes it has from its position; Err says why contentd will not read it.
fn passed_source(
    ctx: &TtrpcContext,
    source: &pb::FileSource,
) -> std::result::Result<(std::fs::File, u64), String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::sys::stat::{fstat, SFlag};
    let is_source = |fd: &std::os::fd::OwnedFd| {
        fstat(fd).is_ok_and(|st| st.st_dev == source.device && st.st_ino == source.inode)
    };
    let fd = take_passed_file(ctx, is_source)
        .ok_or("no descriptor of that file came with the request")?;
    let st = fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err("not a regular file".into());
    }
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| format!("fcntl: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags);
    if flags.contains(OFlag::O_PATH) || flags & OFlag::O_ACCMODE == OFlag::O_WRONLY {
        return Err("not open for reading".into());
    }
    let fs = nix::sys::statfs::fstatfs(&fd).map_err(|e| format!("fstatfs: {e}"))?;
    // The magic numbers are 32 bits; the type is a C long.
    let kind = fs.filesystem_type().0 as u32;
    if !READABLE_FILESYSTEMS.contains(&kind) {
        return Err(format!(
            "on a filesystem (type {kind:#x}) contentd does not read for callers"
        ));
    }
    // A sparse file would have contentd write (and hash) what its holes
    // read as, at no cost to the caller: the caller sends those bytes.
    let size = st.st_size as u64;
    let allocated = (st.st_blocks as u64).saturating_mul(512);
    if allocated.saturating_add(SPARSE_SLACK) < size {
        return Err(format!(
            "a sparse file ({allocated} of its {size} bytes allocated)"
        ));
    }
    let mut file = std::fs::File::from(fd);
    let at = std::io::Seek::stream_position(&mut file).map_err(|e| format!("lseek: {e}"))?;
    let size = size.saturating_sub(at);
    Ok((file, size))
}

/// The next request of a write stream; None when the client closed it. A
/// client that hangs up without closing (it crashed) ends the stream too,
/// so it does not hold its ingest's ref.
async fn next_request(
    ctx: &TtrpcContext,
    stream: &mut ServerStream<pb::WriteResponse, pb::WriteRequest>,
) -> Result<Option<pb::WriteRequest>> {
    tokio::select! {
        request = stream.recv() => Ok(request?),
        () = peer_hung_up(ctx) => {
            tracing::debug!("writer hung up mid-stream");
            Err(Error::unavailable("the client hung up"))
        }
    }
}

#[async_trait]
impl pb::Content for ContentService {
    async fn info(
        &self,
        ctx: &TtrpcContext,
        req: pb::InfoRequest,
    ) -> ttrpc::Result<pb::InfoResponse> {
        reply(
            "info",
            async {
                let namespace = request_namespace(ctx)?;
                let digest = parse_digest(&req.digest)?;
                let info = self.store.info(&namespace, &digest).await?;
                Ok(pb::InfoResponse {
                    info: Some(info_to_pb(&info)).into(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: pb::UpdateRequest,
    ) -> ttrpc::Result<pb::UpdateResponse> {
        reply(
            "update",
            async {
                let namespace = request_namespace(ctx)?;
                let info = req
                    .info
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("update needs an info"))?;
                let info = info_from_pb(info)?;
                let updated = self
                    .store
                    .update(&namespace, info, &req.update_paths)
                    .await?;
                Ok(pb::UpdateResponse {
                    info: Some(info_to_pb(&updated)).into(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListRequest,
        sender: ServerStreamSender<pb::ListResponse>,
    ) -> ttrpc::Result<()> {
        reply(
            "list",
            async {
                let namespace = request_namespace(ctx)?;
                let infos = self.store.list(&namespace, &req.filters).await?;
                for batch in berth_api::list_batches(infos.iter().map(info_to_pb).collect()) {
                    let response = pb::ListResponse {
                        infos: batch,
                        ..Default::default()
                    };
                    sender.send(&response).await?;
                }
                Ok(())
            }
            .await,
        )
    }

    async fn delete(&self, ctx: &TtrpcContext, req: pb::DeleteRequest) -> ttrpc::Result<Empty> {
        reply(
            "delete",
            async {
                let namespace = request_namespace(ctx)?;
                let digest = parse_digest(&req.digest)?;
                match req.if_updated_at.as_ref() {
                    Some(_) => {
                        let seen = berth_api::time::system_time(&req.if_updated_at);
                        self.store
                            .delete_if_unchanged(&namespace, &digest, seen)
                            .await?
                    }
                    None => self.store.delete(&namespace, &digest).await?,
                }
                tracing::info!(%namespace, %digest, "deleted");
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn read_at(
        &self,
        ctx: &TtrpcContext,
        req: pb::ReadAtRequest,
    ) -> ttrpc::Result<pb::ReadAtResponse> {
        reply(
            "read_at",
            async {
                let namespace = request_namespace(ctx)?;
                let digest = parse_digest(&req.digest)?;
                let offset = unsigned("offset", req.offset)?;
                let size = unsigned("size", req.size)?;
                let len = if size == 0 {
                    MAX_READ
                } else {
                    (size as usize).min(MAX_READ)
                };
                let data = self.store.read_at(&namespace, &digest, offset, len).await?;
                Ok(pb::ReadAtResponse {
                    offset: req.offset,
                    data,
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn status(
        &self,
        ctx: &TtrpcContext,
        req: pb::StatusRequest,
    ) -> ttrpc::Result<pb::StatusResponse> {
        reply(
            "status",
            async {
                let namespace = request_namespace(ctx)?;
                let status = self.store.status(&namespace, &req.ref_).await?;
                Ok(pb::StatusResponse {
                    status: Some(status_to_pb(&status)).into(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn list_statuses(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListStatusesRequest,
    ) -> ttrpc::Result<pb::ListStatusesResponse> {
        reply(
            "list_statuses",
            async {
                let namespace = request_namespace(ctx)?;
                let statuses = self.store.list_statuses(&namespace, &req.filters).await?;
                Ok(pb::ListStatusesResponse {
                    statuses: statuses.iter().map(status_to_pb).collect(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn write(
        &self,
        ctx: &TtrpcContext,
        mut stream: ServerStream<pb::WriteResponse, pb::WriteRequest>,
    ) -> ttrpc::Result<()> {
        let written = async {
            let namespace = request_namespace(ctx)?;
            let lease = request_lease(ctx)?;
            self.write_stream(ctx, namespace, lease, &mut stream).await
        }
        .await;
        if let Err(e) = &written {
            // Ahead of the stream's final reply (see `error_code`).
            let failed = pb::WriteResponse {
                error_code: e.kind().code() as i32,
                error_message: e.message().to_string(),
                ..Default::default()
            };
            let _ = stream.send(&failed).await;
        }
        reply("write", written)
    }

    async fn abort(&self, ctx: &TtrpcContext, req: pb::AbortRequest) -> ttrpc::Result<Empty> {
        reply(
            "abort",
            async {
                let namespace = request_namespace(ctx)?;
                self.store.abort(&namespace, &req.ref_).await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn release_lease(
        &self,
        ctx: &TtrpcContext,
        req: pb::ReleaseLeaseRequest,
    ) -> ttrpc::Result<pb::ReleaseLeaseResponse> {
        reply(
            "release_lease",
            async {
                let namespace = request_namespace(ctx)?;
                berth_ids::validate_id(&req.lease)?;
                let released = self.store.release_lease(&namespace, &req.lease).await?;
                Ok(pb::ReleaseLeaseResponse {
                    released,
                    ..Default::default()
                })
            }
            .await,
        )
    }
}
