use std::path::Path;

use berth_api::gc as pb;
use berth_errdefs::Result;

use crate::connection::{connect, request_context};

/// berth-metad's garbage collector, across its socket.
#[derive(Clone)]
pub struct RemoteGc {
    client: pb::GcClient,
}

impl std::fmt::Debug for RemoteGc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGc").finish_non_exhaustive()
    }
}

impl RemoteGc {
    pub async fn connect(socket: &Path) -> Result<RemoteGc> {
        Ok(RemoteGc {
            client: pb::GcClient::new(connect(socket).await?),
        })
    }

    /// Runs a collection now (over every namespace) and returns what it
    /// removed and skipped.
    pub async fn collect(&self) -> Result<pb::CollectResponse> {
        // A collection spans every namespace; the request's is not used.
        let ctx = request_context(berth_ids::DEFAULT_NAMESPACE);
        Ok(self
            .client
            .collect(ctx, &pb::CollectRequest::default())
            .await?)
    }
}
