//! The `containerd.task.v2.Task` service: the ttrpc edge of [`Tasks`].
//! Each method checks what is purely the wire's business (ids), calls
//! [`Tasks`], and builds the response; a [`crate::error::ShimError`]
//! crosses as the status code of its kind.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::shim_async::Task;
use ttrpc::r#async::TtrpcContext;

use crate::error::{Result, ShimError};
use crate::events::timestamp;
use crate::tasks::Tasks;

/// The ttrpc face of [`Tasks`].
#[derive(Debug, Clone)]
pub struct TaskService(pub Arc<Tasks>);

/// Runs a request that changes state on a task of its own. ttrpc drops a
/// request's future when its caller hangs up, and a caller may die at any
/// moment (taskd SIGKILLed mid-Create): a create dropped between `runc
/// create` and its bookkeeping left a container that runc ran and this
/// shim did not know ("container not found"), holding its mount and
/// cgroup until someone killed it by hand. Run to its end, the request's
/// outcome is what a Get, a Wait or a Delete after a restart sees.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| ShimError::io("the request's task", std::io::Error::other(e)))?
}

fn validate_exec_id(exec_id: &str) -> Result<()> {
    if !exec_id.is_empty() {
        berth_ids::validate_id(exec_id)?;
    }
    Ok(())
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        Ok(self.0.state(&req)?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let tasks = self.0.clone();
        let id = req.id.clone();
        let pid = to_completion(async move { tasks.create(req).await })
            .await
            .inspect_err(|e| crate::log_error!("create of {id}: {e}"))?;
        let mut response = api::CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        validate_exec_id(&req.exec_id)?;
        let tasks = self.0.clone();
        let id = format!("{} {}", req.id, req.exec_id);
        let pid = to_completion(async move { tasks.start(&req.id, &req.exec_id).await })
            .await
            .inspect_err(|e| crate::log_error!("start of {}: {e}", id.trim_end()))?;
        let mut response = api::StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let tasks = self.0.clone();
        Ok(to_completion(async move { tasks.delete(&req.id, &req.exec_id).await }).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        Ok(self.0.pids(&req.id).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        let tasks = self.0.clone();
        to_completion(async move { tasks.set_paused(&req.id, true).await }).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        let tasks = self.0.clone();
        to_completion(async move { tasks.set_paused(&req.id, false).await }).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        self.0.checkpoint(&req).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let tasks = self.0.clone();
        to_completion(async move { tasks.kill(&req).await }).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        berth_ids::validate_id(&req.exec_id).map_err(ShimError::from)?;
        self.0.add_exec(&req)?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        self.0.resize_pty(&req)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        self.0.close_io(&req)?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let tasks = self.0.clone();
        to_completion(async move { tasks.update(&req).await }).await?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let exit = self.0.wait(&req.id, &req.exec_id).await?;
        let mut response = api::WaitResponse::new();
        if let Some(exit) = exit {
            response.exit_status = exit.status;
            response.exited_at = Some(timestamp(exit.at)).into();
        }
        Ok(response)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        Ok(self.0.stats(&req.id)?)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut response = api::ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = self.0.task_pid(&req.id);
        Ok(response)
    }

    async fn shutdown(&self, _: &TtrpcContext, _req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        self.0.shutdown();
        Ok(Empty::new())
    }
}
