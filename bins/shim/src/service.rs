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
        let pid = self
            .0
            .create(req)
            .await
            .inspect_err(|e| crate::log_error!("create: {e}"))?;
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
        let pid = self
            .0
            .start(&req.id, &req.exec_id)
            .await
            .inspect_err(|e| crate::log_error!("start: {e}"))?;
        let mut response = api::StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        Ok(self.0.delete(&req.id, &req.exec_id).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        Ok(self.0.pids(&req.id).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.0.set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.0.set_paused(&req.id, false).await?;
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
        self.0.kill(&req).await?;
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
        self.0.update(&req).await?;
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
