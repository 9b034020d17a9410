//! The gRPC edge: the CRI's RuntimeService and ImageService, each method a
//! thin call into [`Crid`] and [`images`], with berth's errors mapped to
//! gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::error::{reply, status, GrpcResult};
use crate::images;
use crate::runtime::Crid;
use crate::state::ContainerPhase;
use crate::streaming::{StreamRequest, Streams};

/// The CRI version crid speaks.
const RUNTIME_API_VERSION: &str = "v1";

#[derive(Debug, Clone)]
pub struct CriService {
    pub crid: Arc<Crid>,
    pub streams: Arc<Streams>,
}

impl CriService {
    /// Runs a call that changes pods or containers to its end on a task of
    /// its own: hyper drops a request's future when its caller hangs up
    /// (the kubelet's deadline, a crictl killed), and a StartContainer
    /// dropped between taskd's Create and Start left a task crid did not
    /// record, which the kubelet's next StartContainer then ran into.
    async fn to_completion<T, F, Fut>(&self, call: F) -> berth_errdefs::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Crid>) -> Fut,
        Fut: std::future::Future<Output = berth_errdefs::Result<T>> + Send + 'static,
    {
        tokio::spawn(call(self.crid.clone()))
            .await
            .map_err(|e| berth_errdefs::Error::internal(format!("CRI call ended early: {e}")))?
    }

    fn running(&self, id: &str) -> berth_errdefs::Result<()> {
        match self.crid.store.find_container(id) {
            Some(c) if c.phase == ContainerPhase::Running => Ok(()),
            Some(c) => Err(berth_errdefs::Error::failed_precondition(format!(
                "container {} is not running",
                c.id
            ))),
            None => Err(berth_errdefs::Error::not_found(format!(
                "container {id:?} not found"
            ))),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, _: Request<cri::VersionRequest>) -> GrpcResult<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> GrpcResult<cri::RunPodSandboxResponse> {
        let r = request.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("no sandbox config"))?;
        let handler = r.runtime_handler;
        reply(
            self.to_completion(|crid| async move { crid.run_pod_sandbox(config, &handler).await })
                .await
                .map(|pod_sandbox_id| cri::RunPodSandboxResponse { pod_sandbox_id }),
        )
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> GrpcResult<cri::StopPodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        reply(
            self.to_completion(|crid| async move { crid.stop_pod_sandbox(&id).await })
                .await
                .map(|()| cri::StopPodSandboxResponse {}),
        )
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> GrpcResult<cri::RemovePodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        reply(
            self.to_completion(|crid| async move { crid.remove_pod_sandbox(&id).await })
                .await
                .map(|()| cri::RemovePodSandboxResponse {}),
        )
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> GrpcResult<cri::PodSandboxStatusResponse> {
        let request = request.into_inner();
        let id = request.pod_sandbox_id;
        reply(self.crid.pod_sandbox_status(&id).and_then(|status| {
            Ok(cri::PodSandboxStatusResponse {
                info: if request.verbose {
                    self.crid.pod_sandbox_info(&status.id)?
                } else {
                    Default::default()
                },
                status: Some(status),
                ..Default::default()
            })
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> GrpcResult<cri::ListPodSandboxResponse> {
        let items = self.crid.list_pod_sandbox(request.into_inner().filter);
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> GrpcResult<cri::CreateContainerResponse> {
        let r = request.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("no container config"))?;
        let sandbox = r.pod_sandbox_id;
        reply(
            self.to_completion(|crid| async move { crid.create_container(&sandbox, config).await })
                .await
                .map(|container_id| cri::CreateContainerResponse { container_id }),
        )
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> GrpcResult<cri::StartContainerResponse> {
        let id = request.into_inner().container_id;
        reply(
            self.to_completion(|crid| async move { crid.start_container(&id).await })
                .await
                .map(|()| cri::StartContainerResponse {}),
        )
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> GrpcResult<cri::StopContainerResponse> {
        let r = request.into_inner();
        let (id, timeout) = (r.container_id, r.timeout);
        reply(
            self.to_completion(|crid| async move { crid.stop_container(&id, timeout).await })
                .await
                .map(|()| cri::StopContainerResponse {}),
        )
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> GrpcResult<cri::RemoveContainerResponse> {
        let id = request.into_inner().container_id;
        reply(
            self.to_completion(|crid| async move { crid.remove_container(&id).await })
                .await
                .map(|()| cri::RemoveContainerResponse {}),
        )
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> GrpcResult<cri::ListContainersResponse> {
        let containers = self.crid.list_containers(request.into_inner().filter);
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> GrpcResult<cri::ContainerStatusResponse> {
        let request = request.into_inner();
        let id = request.container_id;
        reply(self.crid.container_status(&id).and_then(|status| {
            Ok(cri::ContainerStatusResponse {
                info: if request.verbose {
                    self.crid.container_info(&status.id)?
                } else {
                    Default::default()
                },
                status: Some(status),
            })
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> GrpcResult<cri::UpdateContainerResourcesResponse> {
        let r = request.into_inner();
        let (id, linux) = (r.container_id, r.linux);
        reply(
            self.to_completion(
                |crid| async move { crid.update_container_resources(&id, linux).await },
            )
            .await
            .map(|()| cri::UpdateContainerResourcesResponse {}),
        )
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> GrpcResult<cri::ReopenContainerLogResponse> {
        let id = request.into_inner().container_id;
        reply(
            self.crid
                .reopen_container_log(&id)
                .map(|()| cri::ReopenContainerLogResponse {}),
        )
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> GrpcResult<cri::ExecSyncResponse> {
        let r = request.into_inner();
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        match self.crid.exec_sync(&r.container_id, r.cmd, timeout).await {
            Ok(Some((stdout, stderr, exit_code))) => Ok(Response::new(cri::ExecSyncResponse {
                stdout,
                stderr,
                exit_code,
            })),
            Ok(None) => Err(Status::deadline_exceeded(format!(
                "command timed out after {} s",
                r.timeout
            ))),
            Err(e) => Err(status(e)),
        }
    }

    async fn exec(&self, request: Request<cri::ExecRequest>) -> GrpcResult<cri::ExecResponse> {
        let r = request.into_inner();
        let checked = self.running(&r.container_id).and_then(|()| {
            if r.cmd.is_empty() {
                return Err(berth_errdefs::Error::invalid_argument("no command to run"));
            }
            if r.tty && r.stderr {
                return Err(berth_errdefs::Error::invalid_argument(
                    "tty and stderr cannot both be true",
                ));
            }
            if !(r.stdin || r.stdout || r.stderr) {
                return Err(berth_errdefs::Error::invalid_argument(
                    "one of stdin, stdout and stderr must be true",
                ));
            }
            Ok(())
        });
        reply(checked.and_then(|()| {
            self.streams
                .url(StreamRequest::Exec(r))
                .map(|url| cri::ExecResponse { url })
        }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> GrpcResult<cri::AttachResponse> {
        let r = request.into_inner();
        reply(self.running(&r.container_id).and_then(|()| {
            self.streams
                .url(StreamRequest::Attach(r))
                .map(|url| cri::AttachResponse { url })
        }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> GrpcResult<cri::PortForwardResponse> {
        let r = request.into_inner();
        let found = self
            .crid
            .store
            .find_sandbox(&r.pod_sandbox_id)
            .map(|_| ())
            .ok_or_else(|| {
                berth_errdefs::Error::not_found(format!("sandbox {:?} not found", r.pod_sandbox_id))
            });
        reply(found.and_then(|()| {
            self.streams
                .url(StreamRequest::PortForward(r))
                .map(|url| cri::PortForwardResponse { url })
        }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> GrpcResult<cri::ContainerStatsResponse> {
        let id = request.into_inner().container_id;
        reply(
            self.crid
                .one_container_stats(&id)
                .await
                .map(|stats| cri::ContainerStatsResponse { stats: Some(stats) }),
        )
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> GrpcResult<cri::ListContainerStatsResponse> {
        let filter = request.into_inner().filter;
        reply(
            self.crid
                .container_stats(filter)
                .await
                .map(|stats| cri::ListContainerStatsResponse { stats }),
        )
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> GrpcResult<cri::PodSandboxStatsResponse> {
        let id = request.into_inner().pod_sandbox_id;
        reply(
            self.crid
                .one_pod_sandbox_stats(&id)
                .await
                .map(|stats| cri::PodSandboxStatsResponse { stats: Some(stats) }),
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> GrpcResult<cri::ListPodSandboxStatsResponse> {
        let filter = request.into_inner().filter;
        reply(
            self.crid
                .pod_sandbox_stats(filter)
                .await
                .map(|stats| cri::ListPodSandboxStatsResponse { stats }),
        )
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> GrpcResult<cri::UpdateRuntimeConfigResponse> {
        // The pod CIDR belongs to the CNI configuration, which crid reads.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> GrpcResult<cri::StatusResponse> {
        let (network_ready, message) = self.crid.network_condition();
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network_ready,
                reason: if network_ready {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message,
            },
        ];
        let handlers = self
            .crid
            .settings
            .runtimes
            .keys()
            .map(|name| cri::RuntimeHandler {
                name: name.clone(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: self.crid.settings.host.recursive_read_only,
                    user_namespaces: self.crid.settings.host.id_mapped_mounts,
                }),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info: Default::default(),
            runtime_handlers: handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> GrpcResult<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "checkpointing needs CRIU, which does not work on this kernel",
        ))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> GrpcResult<Self::GetContainerEventsStream> {
        let events = self.crid.subscribe();
        // The kubelet's evented PLEG holds one such stream (and opens it
        // again after a restart): rare enough to log each.
        tracing::info!("a client subscribed to container events");
        let stream = futures::stream::unfold(events, |mut events| async move {
            loop {
                match events.recv().await {
                    Ok(event) => return Some((Ok(event), events)),
                    // A subscriber too slow for the queue misses events, as
                    // containerd's does; the kubelet relists then.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> GrpcResult<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::pod_metrics::descriptors(),
        }))
    }

    /// The ready pods' stats (as `ListPodSandboxStats` gathers them), as
    /// metrics.
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> GrpcResult<cri::ListPodSandboxMetricsResponse> {
        reply(self.crid.pod_sandbox_stats(None).await.map(|stats| {
            cri::ListPodSandboxMetricsResponse {
                pod_metrics: stats.iter().map(crate::pod_metrics::pod_metrics).collect(),
            }
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> GrpcResult<cri::RuntimeConfigResponse> {
        let driver = if self.crid.settings.host.systemd_cgroup {
            cri::CgroupDriver::Systemd
        } else {
            cri::CgroupDriver::Cgroupfs
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> GrpcResult<cri::ListImagesResponse> {
        let wanted = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let result = async {
            let all = images::list(&self.crid.daemons).await?;
            let images = match wanted {
                None => all.iter().map(|i| i.to_cri()).collect(),
                Some(name) => images::find(&self.crid.daemons, &name)
                    .await?
                    .map(|i| vec![i.to_cri()])
                    .unwrap_or_default(),
            };
            Ok(cri::ListImagesResponse { images })
        }
        .await;
        reply(result)
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> GrpcResult<cri::ImageStatusResponse> {
        let image = request.into_inner().image.unwrap_or_default().image;
        reply(images::find(&self.crid.daemons, &image).await.map(|found| {
            cri::ImageStatusResponse {
                image: found.map(|i| i.to_cri()),
                info: Default::default(),
            }
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> GrpcResult<cri::PullImageResponse> {
        let r = request.into_inner();
        let image = r.image.unwrap_or_default().image;
        reply(
            images::pull(&self.crid.daemons, &image, r.auth.as_ref())
                .await
                .map(|id| cri::PullImageResponse {
                    image_ref: id.to_string(),
                }),
        )
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> GrpcResult<cri::RemoveImageResponse> {
        let image = request.into_inner().image.unwrap_or_default().image;
        reply(
            images::remove(&self.crid.daemons, &image)
                .await
                .map(|()| cri::RemoveImageResponse {}),
        )
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> GrpcResult<cri::ImageFsInfoResponse> {
        // The snapshots are where images take space; crid does not see
        // snapd's root, so it reports the filesystem of its own root's
        // parent, where a default install keeps every berth root.
        let root = self
            .crid
            .settings
            .root
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        let usage = filesystem_usage(&root);
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}

fn filesystem_usage(path: &std::path::Path) -> cri::FilesystemUsage {
    let (used, inodes) = nix::sys::statvfs::statvfs(path)
        .map(|s| {
            let used = (s.blocks() - s.blocks_free()) * s.fragment_size();
            let inodes = s.files() - s.files_free();
            (used, inodes)
        })
        .unwrap_or((0, 0));
    cri::FilesystemUsage {
        timestamp: crate::state::now_nanos(),
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: path.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value { value: used }),
        inodes_used: Some(cri::UInt64Value { value: inodes }),
    }
}
