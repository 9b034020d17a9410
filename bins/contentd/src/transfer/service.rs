//! `berth.transfer.v1.Transfer` over ttrpc.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::transfer as pb;
use berth_daemon::{peer_hung_up, request_lease, request_namespace};
use berth_errdefs::{Error, Result};
use berth_reference::Reference;
use tokio::sync::mpsc;
use ttrpc::r#async::{ServerStreamSender, TtrpcContext};

use super::auth::Credentials;
use super::fetch::{FetchOptions, Fetcher};
use super::push::{PushOptions, Pusher};
use berth_image::{Descriptor, Platform, Progress};

/// Most platforms one request may name.
const MAX_PLATFORMS: usize = 32;

#[derive(Debug, Clone)]
pub struct TransferService {
    fetcher: Fetcher,
    pusher: Pusher,
}

impl TransferService {
    pub fn new(fetcher: Fetcher, pusher: Pusher) -> TransferService {
        TransferService { fetcher, pusher }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_transfer(Arc::new(self))
    }
}

fn credentials(c: Option<&pb::Credentials>) -> Option<Credentials> {
    c.and_then(|c| {
        (!c.username.is_empty() || !c.secret.is_empty()).then(|| Credentials {
            username: c.username.clone(),
            secret: c.secret.clone(),
        })
    })
}

/// Streams a transfer's progress to the caller while it runs; gives up if
/// the caller hangs up.
async fn relay<F>(
    ctx: &TtrpcContext,
    sender: &ServerStreamSender<pb::Progress>,
    work: F,
    rx: &mut mpsc::Receiver<Progress>,
) -> Result<Descriptor>
where
    F: std::future::Future<Output = Result<Descriptor>>,
{
    tokio::pin!(work);
    let root = loop {
        tokio::select! {
            result = &mut work => break result?,
            Some(progress) = rx.recv() => {
                sender.send(&progress.to_pb()).await?;
            }
            () = peer_hung_up(ctx) => {
                return Err(Error::unavailable("the client hung up"));
            }
        }
    };
    while let Ok(progress) = rx.try_recv() {
        sender.send(&progress.to_pb()).await?;
    }
    sender.send(&Progress::Done(root.clone()).to_pb()).await?;
    Ok(root)
}

fn fetch_options(req: &pb::FetchRequest, lease: Option<String>) -> Result<FetchOptions> {
    if req.platforms.len() > MAX_PLATFORMS {
        return Err(Error::invalid_argument(format!(
            "at most {MAX_PLATFORMS} platforms per fetch"
        )));
    }
    let platforms = req
        .platforms
        .iter()
        .map(|p| Platform::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let credentials = credentials(req.credentials.as_ref());
    Ok(FetchOptions {
        platforms,
        all_platforms: req.all_platforms,
        max_concurrent: (req.max_concurrent as usize).min(32),
        plain_http: req.plain_http,
        credentials,
        allow_foreign_layers: req.allow_foreign_layers,
        lease,
    })
}

#[async_trait]
impl pb::Transfer for TransferService {
    async fn fetch(
        &self,
        ctx: &TtrpcContext,
        req: pb::FetchRequest,
        sender: ServerStreamSender<pb::Progress>,
    ) -> ttrpc::Result<()> {
        let result: Result<()> = async {
            let namespace = request_namespace(ctx)?;
            let reference = Reference::parse(&req.reference)?;
            let options = fetch_options(&req, request_lease(ctx)?)?;
            let (tx, mut rx) = mpsc::channel(64);
            let fetch = self.fetcher.fetch(&namespace, &reference, &options, &tx);
            let root = relay(ctx, &sender, fetch, &mut rx).await?;
            tracing::info!(%namespace, %reference, digest = %root.digest, "fetched");
            Ok(())
        }
        .await;
        berth_daemon::memory::release_soon();
        result.map_err(|e| {
            tracing::info!(reference = %req.reference, error = %e, "fetch failed");
            e.into_ttrpc()
        })
    }

    async fn push(
        &self,
        ctx: &TtrpcContext,
        req: pb::PushRequest,
        sender: ServerStreamSender<pb::Progress>,
    ) -> ttrpc::Result<()> {
        let result: Result<()> = async {
            let namespace = request_namespace(ctx)?;
            let target = Reference::parse(&req.reference)?;
            let root = berth_ids::Digest::parse(&req.digest)?;
            let options = PushOptions {
                max_concurrent: (req.max_concurrent as usize).clamp(1, 32),
                plain_http: req.plain_http,
                credentials: credentials(req.credentials.as_ref()),
            };
            let (tx, mut rx) = mpsc::channel(64);
            let push = self.pusher.push(&namespace, &target, &root, &options, &tx);
            relay(ctx, &sender, push, &mut rx).await?;
            tracing::info!(%namespace, %target, %root, "pushed");
            Ok(())
        }
        .await;
        berth_daemon::memory::release_soon();
        result.map_err(|e| {
            tracing::info!(reference = %req.reference, error = %e, "push failed");
            e.into_ttrpc()
        })
    }
}
