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

    /// Runs a call that changes what taskd and its shims hold to its end,
    /// on a task of its own: ttrpc drops a request's future when its caller
    /// hangs up, and a Create dropped between the shim's answer and taskd's
    /// table (crid SIGKILLed in the middle of a RunPodSandbox) left a
    /// running container, its bundle, mount and cgroup, that no call
    /// listed or removed.
    async fn to_completion<T, F, Fut>(&self, call: F) -> berth_errdefs::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Tasks>) -> Fut,
        Fut: std::future::Future<Output = berth_errdefs::Result<T>> + Send + 'static,
    {
        tokio::spawn(call(self.tasks.clone()))
            .await
            .map_err(|e| Error::internal(format!("task call ended early: {e}")))?
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
            let request = create_from_pb(&req);
            let pid = self
                .to_completion(|tasks| async move { tasks.create(&namespace, request).await })
                .await?;
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
            let (id, exec_id) = (req.container_id.clone(), req.exec_id.clone());
            let pid = self
                .to_completion(|tasks| async move { tasks.start(&namespace, &id, &exec_id).await })
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
            let id = req.container_id.clone();
            let deleted = self
                .to_completion(|tasks| async move { tasks.delete(&namespace, &id).await })
                .await?;
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
            let (id, exec_id) = (req.container_id.clone(), req.exec_id.clone());
            let deleted = self
                .to_completion(|tasks| async move {
                    tasks.delete_process(&namespace, &id, &exec_id).await
                })
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
            let request = kill_from_pb(&req);
            self.to_completion(|tasks| async move { tasks.kill(&namespace, request).await })
                .await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.kill", result)
    }

    async fn exec(&self, ctx: &TtrpcContext, req: pb::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let request = exec_from_pb(&req);
            self.to_completion(|tasks| async move { tasks.exec(&namespace, request).await })
                .await?;
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
            let id = req.container_id.clone();
            self.to_completion(|tasks| async move { tasks.pause(&namespace, &id).await })
                .await?;
            Ok(Empty::new())
        }
        .await;
        reply("tasks.pause", result)
    }

    async fn resume(&self, ctx: &TtrpcContext, req: pb::ResumeTaskRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let namespace = request_namespace(ctx)?;
            let id = req.container_id.clone();
            self.to_completion(|tasks| async move { tasks.resume(&namespace, &id).await })
                .await?;
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
            let request = update_from_pb(&req);
            self.to_completion(|tasks| async move { tasks.update(&namespace, request).await })
                .await?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_tasks::{
        CreateTask, Deleted, ExecProcess, Exit, KillProcess, Metric, Process, ProcessPid,
        UpdateTask,
    };
    use pb::Tasks as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    /// Tasks whose Create waits, once entered, until the test lets it go
    /// on, and then records that it finished.
    #[derive(Default)]
    struct SlowCreate {
        entered: Notify,
        go_on: Notify,
        finished: AtomicBool,
    }

    fn unused<T>() -> berth_errdefs::Result<T> {
        Err(Error::internal("not used by this test"))
    }

    #[async_trait]
    impl Tasks for SlowCreate {
        async fn create(&self, _: &str, _: CreateTask) -> berth_errdefs::Result<u32> {
            self.entered.notify_one();
            self.go_on.notified().await;
            self.finished.store(true, Ordering::SeqCst);
            Ok(42)
        }
        async fn start(&self, _: &str, _: &str, _: &str) -> berth_errdefs::Result<u32> {
            unused()
        }
        async fn delete(&self, _: &str, _: &str) -> berth_errdefs::Result<Deleted> {
            unused()
        }
        async fn delete_process(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> berth_errdefs::Result<Deleted> {
            unused()
        }
        async fn get(&self, _: &str, _: &str, _: &str) -> berth_errdefs::Result<Process> {
            unused()
        }
        async fn list(&self, _: &str, _: &[String]) -> berth_errdefs::Result<Vec<Process>> {
            unused()
        }
        async fn kill(&self, _: &str, _: KillProcess) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn exec(&self, _: &str, _: ExecProcess) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn resize_pty(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: u32,
            _: u32,
        ) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn close_stdin(&self, _: &str, _: &str, _: &str) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn pause(&self, _: &str, _: &str) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn resume(&self, _: &str, _: &str) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn pids(&self, _: &str, _: &str) -> berth_errdefs::Result<Vec<ProcessPid>> {
            unused()
        }
        async fn update(&self, _: &str, _: UpdateTask) -> berth_errdefs::Result<()> {
            unused()
        }
        async fn metrics(&self, _: &str, _: &[String]) -> berth_errdefs::Result<Vec<Metric>> {
            unused()
        }
        async fn wait(&self, _: &str, _: &str, _: &str) -> berth_errdefs::Result<Exit> {
            unused()
        }
    }

    /// ttrpc drops a request's future when its caller hangs up: the
    /// Create it was running must still finish (crid SIGKILLed in the
    /// middle of a RunPodSandbox left a running container no call knew).
    #[tokio::test]
    async fn a_create_whose_caller_hangs_up_runs_to_its_end() {
        let tasks = Arc::new(SlowCreate::default());
        let service = TasksService::new(tasks.clone());
        let ctx = TtrpcContext::default();
        let request = pb::CreateTaskRequest {
            container_id: "c1".into(),
            ..Default::default()
        };
        {
            let call = service.create(&ctx, request);
            tokio::pin!(call);
            tokio::select! {
                _ = &mut call => panic!("the create answered before it was let go on"),
                _ = tasks.entered.notified() => {}
            }
            // The caller hangs up: its future is dropped here.
        }
        tasks.go_on.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !tasks.finished.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the create was dropped with its caller");
    }
}
