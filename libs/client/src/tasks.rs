//! berth-taskd's `Tasks` service as the [`Tasks`] contract.

use std::path::Path;

use async_trait::async_trait;
use berth_api::tasks as pb;
use berth_errdefs::Result;
use berth_tasks::wire::{
    create_to_pb, deleted_from_pb, exec_to_pb, exit_from_pb, kill_to_pb, metric_from_pb,
    pid_from_pb, process_from_pb, update_to_pb,
};
use berth_tasks::{
    CreateTask, Deleted, ExecProcess, Exit, KillProcess, Metric, Process, ProcessPid, Tasks,
    UpdateTask,
};

use crate::connection::{connect, request_context};

#[derive(Clone)]
pub struct RemoteTasks {
    client: pb::TasksClient,
}

impl std::fmt::Debug for RemoteTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTasks").finish_non_exhaustive()
    }
}

impl RemoteTasks {
    pub async fn connect(socket: &Path) -> Result<RemoteTasks> {
        Ok(RemoteTasks::new(connect(socket).await?))
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteTasks {
        RemoteTasks {
            client: pb::TasksClient::new(client),
        }
    }
}

#[async_trait]
impl Tasks for RemoteTasks {
    async fn create(&self, namespace: &str, request: CreateTask) -> Result<u32> {
        let reply = self
            .client
            .create(request_context(namespace), &create_to_pb(&request))
            .await?;
        Ok(reply.pid)
    }

    async fn start(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<u32> {
        let request = pb::StartRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        Ok(self
            .client
            .start(request_context(namespace), &request)
            .await?
            .pid)
    }

    async fn delete(&self, namespace: &str, container_id: &str) -> Result<Deleted> {
        let request = pb::DeleteTaskRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let reply = self
            .client
            .delete(request_context(namespace), &request)
            .await?;
        Ok(deleted_from_pb(&reply))
    }

    async fn delete_process(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
    ) -> Result<Deleted> {
        let request = pb::DeleteProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let reply = self
            .client
            .delete_process(request_context(namespace), &request)
            .await?;
        Ok(deleted_from_pb(&reply))
    }

    async fn get(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Process> {
        let request = pb::GetRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let reply = self
            .client
            .get(request_context(namespace), &request)
            .await?;
        Ok(reply
            .process
            .as_ref()
            .map(process_from_pb)
            .ok_or_else(|| berth_errdefs::Error::internal("taskd replied without a process"))?)
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Process>> {
        let request = pb::ListTasksRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let reply = self
            .client
            .list(request_context(namespace), &request)
            .await?;
        Ok(reply.tasks.iter().map(process_from_pb).collect())
    }

    async fn kill(&self, namespace: &str, request: KillProcess) -> Result<()> {
        self.client
            .kill(request_context(namespace), &kill_to_pb(&request))
            .await?;
        Ok(())
    }

    async fn exec(&self, namespace: &str, request: ExecProcess) -> Result<()> {
        self.client
            .exec(request_context(namespace), &exec_to_pb(&request))
            .await?;
        Ok(())
    }

    async fn resize_pty(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let request = pb::ResizePtyRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.client
            .resize_pty(request_context(namespace), &request)
            .await?;
        Ok(())
    }

    async fn close_stdin(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<()> {
        let request = pb::CloseIORequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        self.client
            .close_io(request_context(namespace), &request)
            .await?;
        Ok(())
    }

    async fn pause(&self, namespace: &str, container_id: &str) -> Result<()> {
        let request = pb::PauseTaskRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .pause(request_context(namespace), &request)
            .await?;
        Ok(())
    }

    async fn resume(&self, namespace: &str, container_id: &str) -> Result<()> {
        let request = pb::ResumeTaskRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .resume(request_context(namespace), &request)
            .await?;
        Ok(())
    }

    async fn pids(&self, namespace: &str, container_id: &str) -> Result<Vec<ProcessPid>> {
        let request = pb::ListPidsRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let reply = self
            .client
            .list_pids(request_context(namespace), &request)
            .await?;
        Ok(reply.processes.iter().map(pid_from_pb).collect())
    }

    async fn update(&self, namespace: &str, request: UpdateTask) -> Result<()> {
        self.client
            .update(request_context(namespace), &update_to_pb(&request))
            .await?;
        Ok(())
    }

    async fn metrics(&self, namespace: &str, filters: &[String]) -> Result<Vec<Metric>> {
        let request = pb::MetricsRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let reply = self
            .client
            .metrics(request_context(namespace), &request)
            .await?;
        Ok(reply.metrics.iter().map(metric_from_pb).collect())
    }

    async fn wait(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Exit> {
        let request = pb::WaitRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let reply = self
            .client
            .wait(request_context(namespace), &request)
            .await?;
        Ok(exit_from_pb(reply.exit_status, &reply.exited_at))
    }
}
