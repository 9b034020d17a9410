use std::path::Path;

use async_trait::async_trait;
use berth_api::transfer as pb;
use berth_errdefs::{Error, Result};
use berth_image::{Descriptor, Progress, Transfer};
use ttrpc::r#async::ClientStreamReceiver;

use crate::connection::{connect, request_context, request_context_leased};

/// berth-contentd's transfer service, across its socket. A fetch's lease
/// is an argument of [`Transfer::fetch`].
#[derive(Clone)]
pub struct RemoteTransfer {
    client: pb::TransferClient,
}

impl std::fmt::Debug for RemoteTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTransfer").finish_non_exhaustive()
    }
}

impl RemoteTransfer {
    pub async fn connect(socket: &Path) -> Result<RemoteTransfer> {
        Ok(RemoteTransfer {
            client: pb::TransferClient::new(connect(socket).await?),
        })
    }
}

#[async_trait]
impl Transfer for RemoteTransfer {
    async fn fetch(
        &self,
        namespace: &str,
        request: &pb::FetchRequest,
        lease: Option<&str>,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Descriptor> {
        let ctx = request_context_leased(namespace, lease);
        let stream = self.client.fetch(ctx, request).await?;
        follow(stream, on_progress).await
    }

    async fn push(
        &self,
        namespace: &str,
        request: &pb::PushRequest,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Descriptor> {
        let stream = self
            .client
            .push(request_context(namespace), request)
            .await?;
        follow(stream, on_progress).await
    }
}

/// Passes progress on until the transfer's last message, which carries the
/// root.
async fn follow(
    mut stream: ClientStreamReceiver<pb::Progress>,
    on_progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Descriptor> {
    let mut root = None;
    while let Some(message) = stream.recv().await? {
        let progress = Progress::from_pb(&message)
            .map_err(|e| e.context("berth-contentd sent a malformed progress message"))?;
        if let Progress::Done(descriptor) = &progress {
            root = Some(descriptor.clone());
        }
        on_progress(progress);
    }
    root.ok_or_else(|| Error::unavailable("the transfer ended without a result"))
}
