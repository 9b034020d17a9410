#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A newer client against an older contentd, as during an upgrade whose
//! daemons have not been restarted yet: a contentd that does not know
//! WRITE_FILE (and so does not say it reads files) is sent the file's
//! bytes; a file write would have ended its stream on the unknown action.

use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_api::content as pb;
use berth_api::protobuf::Enum;
use berth_client::RemoteContentStore;
use berth_content::{CommitOptions, ContentStore, WriterOptions};
use berth_ids::Digest;
use ttrpc::r#async::{ServerStream, TtrpcContext};

/// The write stream of a contentd from before WRITE_FILE: STAT, WRITE and
/// COMMIT, and an unknown action refused as such.
#[derive(Default)]
struct OlderContent {
    actions: Mutex<Vec<i32>>,
    data: Mutex<Vec<u8>>,
}

fn refused(message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, message))
}

#[async_trait]
impl pb::Content for OlderContent {
    async fn write(
        &self,
        _ctx: &TtrpcContext,
        mut stream: ServerStream<pb::WriteResponse, pb::WriteRequest>,
    ) -> ttrpc::Result<()> {
        while let Some(request) = stream.recv().await? {
            let action = request.action.value();
            self.actions.lock().unwrap().push(action);
            let mut response = pb::WriteResponse {
                action: request.action,
                ..Default::default()
            };
            match pb::WriteAction::from_i32(action) {
                Some(pb::WriteAction::STAT) => {}
                Some(pb::WriteAction::WRITE) => {
                    self.data.lock().unwrap().extend_from_slice(&request.data);
                }
                Some(pb::WriteAction::COMMIT) => {
                    response.digest = Digest::of(&self.data.lock().unwrap()).to_string();
                }
                _ => return Err(refused(format!("unknown write action {action}"))),
            }
            response.offset = self.data.lock().unwrap().len() as i64;
            stream.send(&response).await?;
            if action == pb::WriteAction::COMMIT.value() {
                break;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_contentd_is_sent_the_bytes_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("contentd.sock");
    let older = Arc::new(OlderContent::default());
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(ttrpc::r#async::transport::Listener::try_from(listener).unwrap())
        .register_service(pb::create_content(older.clone()));
    server.start().await.unwrap();

    let mut file = tempfile::tempfile().unwrap();
    let bytes = berth_content::testsuite::test_data(3 << 20, 7);
    file.write_all(&bytes).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();

    let store = RemoteContentStore::connect(&socket).await.unwrap();
    let mut writer = store
        .writer("default", WriterOptions::new("from-a-file"))
        .await
        .unwrap();
    let written = writer.write_file(file).await.unwrap();
    assert_eq!(written, bytes.len() as u64);
    let digest = writer.commit(CommitOptions::default()).await.unwrap();
    assert_eq!(digest, Digest::of(&bytes));
    assert_eq!(*older.data.lock().unwrap(), bytes);
    let actions = older.actions.lock().unwrap().clone();
    assert!(
        !actions.contains(&pb::WriteAction::WRITE_FILE.value()),
        "a file write went to a contentd that does not take them: {actions:?}"
    );
    assert!(
        actions.contains(&pb::WriteAction::WRITE.value()),
        "{actions:?}"
    );
    server.shutdown().await.unwrap();
}
