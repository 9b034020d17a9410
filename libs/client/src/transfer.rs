use std::path::Path;

use berth_api::transfer as pb;
use berth_errdefs::{Error, Result};
use ttrpc::r#async::ClientStreamReceiver;

use crate::connection::{connect, request_context_leased};

/// berth-contentd's transfer service, across its socket.
#[derive(Clone)]
pub struct RemoteTransfer {
    lease: Option<String>,
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
            lease: None,
            client: pb::TransferClient::new(connect(socket).await?),
        })
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

    /// Fetches an image into the content store, calling `on_progress` for
    /// every progress message; returns the root descriptor.
    pub async fn fetch(
        &self,
        namespace: &str,
        request: &pb::FetchRequest,
        on_progress: impl FnMut(&pb::Progress),
    ) -> Result<pb::Descriptor> {
        let stream = self.client.fetch(self.context(namespace), request).await?;
        follow(stream, on_progress).await
    }

    /// Pushes an image from the content store to a registry, calling
    /// `on_progress` for every progress message; returns the root
    /// descriptor.
    pub async fn push(
        &self,
        namespace: &str,
        request: &pb::PushRequest,
        on_progress: impl FnMut(&pb::Progress),
    ) -> Result<pb::Descriptor> {
        let stream = self.client.push(self.context(namespace), request).await?;
        follow(stream, on_progress).await
    }
}

/// Passes progress on until the transfer's last message, which carries the
/// root.
async fn follow(
    mut stream: ClientStreamReceiver<pb::Progress>,
    mut on_progress: impl FnMut(&pb::Progress),
) -> Result<pb::Descriptor> {
    let mut root = None;
    while let Some(progress) = stream.recv().await? {
        on_progress(&progress);
        if progress.event == "done" {
            root = progress.descriptor.into_option();
        }
    }
    root.ok_or_else(|| Error::unavailable("the transfer ended without a result"))
}
