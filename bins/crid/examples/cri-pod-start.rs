//! Starts one pod with one container through a CRI server and prints how
//! long each call took, for bench/cri.sh: RunPodSandbox, CreateContainer
//! and StartContainer, timed around the gRPC calls alone (the connection is
//! made first, as a kubelet keeps one), so that neither a client process's
//! start nor its configuration parsing is counted, for either server.
//!
//! usage: cri-pod-start SOCKET NAME NAMESPACE UID LOG_DIR CGROUP_PARENT
//!        NETWORK(cni|host) IMAGE [COMMAND...]
//! prints: RUNP_US CREATE_US START_US POD_ID CONTAINER_ID
//! environment: CRI_POD_PID=container (the kubelet's default) or pod

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 8 {
        bail!("usage: cri-pod-start SOCKET NAME NAMESPACE UID LOG_DIR CGROUP_PARENT cni|host IMAGE [COMMAND...]");
    }
    let (socket, name, namespace, uid) = (&args[0], &args[1], &args[2], &args[3]);
    let (log_dir, cgroup_parent, network, image) = (&args[4], &args[5], &args[6], &args[7]);
    let command: Vec<String> = if args.len() > 8 {
        args[8..].to_vec()
    } else {
        vec!["sleep".into(), "3600".into()]
    };
    let host_network = match network.as_str() {
        "host" => true,
        "cni" => false,
        other => bail!("network {other:?}: cni or host"),
    };
    let channel = berth_e2e::grpc::unix_channel(Path::new(socket))
        .await
        .with_context(|| format!("connecting to {socket}"))?;
    let mut client = RuntimeServiceClient::new(channel);
    // A cheap call first, so the connection is up before anything is timed.
    client
        .version(cri::VersionRequest::default())
        .await
        .context("Version")?;

    // What the kubelet sends for a pod spec without hostNetwork, hostPID,
    // hostIPC or shareProcessNamespace: each container its own PID
    // namespace (CRI_POD_PID=pod shares one, as shareProcessNamespace).
    let pid = match std::env::var("CRI_POD_PID").as_deref() {
        Ok("pod") => cri::NamespaceMode::Pod,
        Ok("container") | Err(_) => cri::NamespaceMode::Container,
        Ok(other) => bail!("CRI_POD_PID={other:?}: pod or container"),
    };
    let namespace_options = Some(cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: pid as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            namespace: namespace.clone(),
            uid: uid.clone(),
            attempt: 0,
        }),
        log_directory: log_dir.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            security_context: namespace_options.clone().map(|options| {
                cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(options),
                    ..Default::default()
                }
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container_config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "busybox".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        command,
        log_path: "busybox.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: namespace_options.map(|options| cri::LinuxContainerSecurityContext {
                namespace_options: Some(options),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let t0 = Instant::now();
    let pod_id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let container_id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config),
            sandbox_config: Some(pod_config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    client
        .start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await
        .context("StartContainer")?;
    let t3 = Instant::now();
    let us = |from: Instant, to: Instant| to.duration_since(from).as_micros();
    println!(
        "{} {} {} {pod_id} {container_id}",
        us(t0, t1),
        us(t1, t2),
        us(t2, t3)
    );
    Ok(())
}
