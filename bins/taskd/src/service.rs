//! `berth.tasks.v1.Tasks` over ttrpc: thin over the [`Tasks`] contract.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_api::tasks as pb;
use berth_daemon::{reply, request_namespace};
use berth_errdefs::Error;
use berth_tasks::wire::{
    create_from_pb, deleted_to_pb, exec_from_pb, kill_from_pb, metric_to_pb, pid_to_pb,
    process_to_pb, timestamp, update_from_pb,
};
use berth_tasks::Tasks;
use ttrpc::r#async::TtrpcContext;

#[derive(Clone)]
pub struct TasksService {
    tasks: Arc<dyn Tasks>,
}

impl std::fmt::Debug for TasksService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TasksService").finish_non_exhaustive()
    }
}

impl TasksService {
    pub fn new(tasks: Arc<dyn Tasks>) -> TasksService {
        TasksService { tasks }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_tasks(Arc::new(self))
    }
}

#[async_trait]
impl pb::Tasks for TasksService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: pb::CreateTaskRequest,
    ) -> ttrpc::Result<pb::CreateTaskResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let pid = self.tasks.create(&namespace, create_from_pb(&req)).await?;
            Ok(pb::CreateTaskResponse {
                container_id: req.container_id.clone(),
                pid,
                ..Default::default()
            })
        }
        .await;
        reply("tasks.create", result)
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: pb::StartRequest,
    ) -> ttrpc::Result<pb::StartResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let pid = self
                .tasks
                .start(&namespace, &req.container_id, &req.exec_id)
                .await?;
            Ok(pb::StartResponse {
                pid,
                ..Default::default()
            })
        }
        .await;
        reply("tasks.start", result)
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteTaskRequest,
    ) -> ttrpc::Result<pb::DeleteResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let deleted = self.tasks.delete(&namespace, &req.container_id).await?;
            Ok(deleted_to_pb(&deleted))
        }
        .await;
        reply("tasks.delete", result)
    }

    async fn delete_process(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteProcessRequest,
    ) -> ttrpc::Result<pb::DeleteResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let deleted = self
                .tasks
                .delete_process(&namespace, &req.container_id, &req.exec_id)
                .await?;
            Ok(deleted_to_pb(&deleted))
        }
        .await;
        reply("tasks.delete_process", result)
    }

    async fn get(&self, ctx: &TtrpcContext, req: pb::GetRequest) -> ttrpc::Result<pb::GetResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let process = self
                .tasks
                .get(&namespace, &req.container_id, &req.exec_id)
                .await?;
            Ok(pb::GetResponse {
                process: berth_api::protobuf::MessageField::some(process_to_pb(&process)),
                ..Default::default()
            })
        }
        .await;
        reply("tasks.get", result)
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListTasksRequest,
    ) -> ttrpc::Result<pb::ListTasksResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let processes = self.tasks.list(&namespace, &req.filters).await?;
            Ok(pb::ListTasksResponse {
                tasks: processes.iter().map(process_to_pb).collect(),
                ..Default::default()
            })
        }
        .await;
        reply("tasks.list", result)
    }

    async fn kill(&self, ctx: &TtrpcContext, req: pb::KillRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks.kill(&namespace, kill_from_pb(&req)).await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.kill", result)
    }

    async fn exec(&self, ctx: &TtrpcContext, req: pb::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks.exec(&namespace, exec_from_pb(&req)).await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.exec", result)
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: pb::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks
                .resize_pty(
                    &namespace,
                    &req.container_id,
                    &req.exec_id,
                    req.width,
                    req.height,
                )
                .await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.resize_pty", result)
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: pb::CloseIORequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            if req.stdin {
                self.tasks
                    .close_stdin(&namespace, &req.container_id, &req.exec_id)
                    .await?;
            }
            Ok(Empty::new())
        }
        .await;
        reply("tasks.close_io", result)
    }

    async fn pause(&self, ctx: &TtrpcContext, req: pb::PauseTaskRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks.pause(&namespace, &req.container_id).await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.pause", result)
    }

    async fn resume(&self, ctx: &TtrpcContext, req: pb::ResumeTaskRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks.resume(&namespace, &req.container_id).await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.resume", result)
    }

    async fn list_pids(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListPidsRequest,
    ) -> ttrpc::Result<pb::ListPidsResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let pids = self.tasks.pids(&namespace, &req.container_id).await?;
            Ok(pb::ListPidsResponse {
                processes: pids.iter().map(pid_to_pb).collect(),
                ..Default::default()
            })
        }
        .await;
        reply("tasks.list_pids", result)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::CheckpointTaskRequest,
    ) -> ttrpc::Result<pb::CheckpointTaskResponse> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            "checkpoint: not supported (berth does not ship criu support)",
        )))
    }

    async fn update(&self, ctx: &TtrpcContext, req: pb::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            self.tasks.update(&namespace, update_from_pb(&req)).await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.update", result)
    }

    async fn metrics(
        &self,
        ctx: &TtrpcContext,
        req: pb::MetricsRequest,
    ) -> ttrpc::Result<pb::MetricsResponse> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let metrics = self.tasks.metrics(&namespace, &req.filters).await?;
            Ok(pb::MetricsResponse {
                metrics: metrics.iter().map(metric_to_pb).collect(),
                ..Default::default()
            })
        }
        .await;
        reply("tasks.metrics", result)
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: pb::WaitRequest,
    ) -> ttrpc::Result<pb::WaitResponse> {
        let result: Result<pb::WaitResponse, Error> = async {
            let namespace = request_namespace(ctx)?;
            let exit = self
                .tasks
                .wait(&namespace, &req.container_id, &req.exec_id)
                .await?;
            Ok(pb::WaitResponse {
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            })
        }
        .await;
        reply("tasks.wait", result)
    }
}
