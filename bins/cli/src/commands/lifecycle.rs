//! `berth start`, `stop`, `restart` and `kill`: a recorded container's
//! task started, stopped and signalled as `nerdctl` and `docker` users
//! expect, over berth-taskd (and berth-metad for the container's labels).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_client::{RemoteContainers, RemoteTasks};
use berth_metadata::{Container, ContainerStore};
use berth_oci::Limits;
use berth_tasks::container::STOP_SIGNAL_LABEL;
use berth_tasks::{KillProcess, Status, Tasks, UpdateTask};

use super::run::{log_path, log_stdio, log_uri, recorded_log, LimitArgs, LOG_URI_LABEL};
use super::tasks::{connect, parse_signal};
use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Attach this terminal to the container's output and wait for it to
    /// exit (one container); without, its output goes to its log (`berth
    /// logs`) and berth returns at once.
    #[arg(short = 'a', long)]
    attach: bool,
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait for the container to exit before it is killed.
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        default_value_t = 10
    )]
    time: u64,
    /// The signal that asks it to stop (default: its image's StopSignal,
    /// else SIGTERM).
    #[arg(short = 's', long)]
    signal: Option<String>,
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    limits: LimitArgs,
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    #[arg(short = 's', long, default_value = "SIGKILL")]
    signal: String,
    #[arg(required = true)]
    ids: Vec<String>,
}

/// Clients of the two daemons these commands use.
struct Lifecycle {
    namespace: String,
    tasks: RemoteTasks,
    containers: RemoteContainers,
}

impl Lifecycle {
    async fn connect(global: &Global) -> Result<Lifecycle> {
        Ok(Lifecycle {
            namespace: global.namespace()?.to_string(),
            tasks: connect(global).await?,
            containers: RemoteContainers::connect(global.metad_socket())
                .await
                .context("berth-metad")?,
        })
    }

    /// The record of container `id`.
    async fn container(&self, id: &str) -> Result<Container> {
        self.containers
            .get(&self.namespace, id)
            .await
            .with_context(|| format!("container {id}"))
    }

    /// Where a started container's output goes: the log its record names,
    /// or (for one that never had one: made by `berth create`, or run
    /// attached) its log path, recorded on it so `berth logs` finds it.
    async fn log_of(&self, id: &str) -> Result<PathBuf> {
        let ns = &self.namespace;
        let mut container = self.container(id).await?;
        if let Some(path) = recorded_log(&container.labels, id)? {
            return Ok(path);
        }
        let path = log_path(ns, id);
        container
            .labels
            .insert(LOG_URI_LABEL.to_string(), log_uri(&path));
        let paths = [format!("labels.{LOG_URI_LABEL}")];
        self.containers
            .update(ns, container, &paths)
            .await
            .with_context(|| format!("recording the log of {id}"))?;
        Ok(path)
    }

    /// Deletes the task of `id` if it has one that is not running; says
    /// whether one is running.
    async fn clear_stopped_task(&self, global: &Global, id: &str) -> Result<bool> {
        let ns = &self.namespace;
        match self.tasks.get(ns, id, "").await {
            Ok(task) if matches!(task.status, Status::Stopped | Status::Created) => {
                self.tasks
                    .delete(ns, id)
                    .await
                    .with_context(|| format!("deleting the old task of {id}"))?;
                crate::stdio::remove_kept(&global.fifo_root(), &task.stdio);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(anyhow::Error::from(e).context(format!("the task of {id}"))),
        }
    }

    /// The signal that stops `id`: the flag's, else its recorded one, else
    /// SIGTERM. An unknown container is an error, as docker's "No such
    /// container", not a container already stopped.
    async fn stop_signal(&self, id: &str, flag: Option<&str>) -> Result<u32> {
        let container = self.container(id).await?;
        if let Some(signal) = flag {
            return parse_signal(signal);
        }
        match container.labels.get(STOP_SIGNAL_LABEL) {
            Some(signal) => parse_signal(signal)
                .with_context(|| format!("container {id}: its stop signal {signal:?}")),
            None => Ok(libc::SIGTERM as u32),
        }
    }

    /// Stops `id` with its stop signal (or the flag's), SIGKILL after
    /// `grace`, and deletes its task.
    async fn stop(
        &self,
        global: &Global,
        id: &str,
        signal_flag: Option<&str>,
        grace: Duration,
    ) -> Result<()> {
        let signal = self.stop_signal(id, signal_flag).await?;
        let ns = &self.namespace;
        let task = match self.tasks.get(ns, id, "").await {
            Ok(task) => task,
            // No task: nothing to stop.
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow::Error::from(e).context(format!("stopping {id}"))),
        };
        berth_tasks::stop_task(&self.tasks, ns, &task, signal, grace)
            .await
            .with_context(|| format!("stopping {id}"))?;
        crate::stdio::remove_kept(&global.fifo_root(), &task.stdio);
        Ok(())
    }

    /// New limits for `id`: on its task's cgroup first, if it has a task
    /// (the kernel may refuse one, such as a memory limit under what the
    /// container uses), then in its record, so that its next task has them
    /// too. Nothing changes when a limit is refused.
    async fn update(&self, id: &str, limits: &Limits) -> Result<()> {
        let ns = &self.namespace;
        let mut container = self.container(id).await?;
        let recorded = container
            .spec
            .as_mut()
            .with_context(|| format!("container {id} has no spec"))?;
        let mut spec: berth_oci::Spec =
            serde_json::from_slice(&recorded.value).with_context(|| format!("the spec of {id}"))?;
        let resources = berth_oci::update_limits(&mut spec, limits)
            .with_context(|| format!("updating {id}"))?;
        match self.tasks.get(ns, id, "").await {
            Ok(task) if task.status != Status::Stopped => {
                let update = UpdateTask {
                    container_id: id.to_string(),
                    resources: Some(serde_json::to_vec(&resources)?),
                    annotations: Default::default(),
                };
                self.tasks
                    .update(ns, update)
                    .await
                    .with_context(|| format!("updating the task of {id}"))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::from(e).context(format!("the task of {id}"))),
        }
        recorded.value = serde_json::to_vec(&spec)?;
        self.containers
            .update(ns, container, &["spec".to_string()])
            .await
            .with_context(|| format!("recording the new limits of {id}"))?;
        Ok(())
    }

    /// Starts `id` detached, its output appended to its log.
    async fn start_detached(&self, global: &Global, id: &str) -> Result<()> {
        if self.clear_stopped_task(global, id).await? {
            // Already running: as docker, nothing to do.
            return Ok(());
        }
        let stdio = log_stdio(&self.log_of(id).await?)?;
        let ns = &self.namespace;
        let started = async {
            self.tasks
                .create(
                    ns,
                    berth_tasks::CreateTask {
                        container_id: id.to_string(),
                        stdio,
                        ..Default::default()
                    },
                )
                .await?;
            self.tasks.start(ns, id, "").await
        }
        .await;
        if let Err(e) = started {
            let _ = self.tasks.delete(ns, id).await;
            return Err(anyhow::Error::from(e).context(format!("starting {id}")));
        }
        Ok(())
    }
}

/// `berth start`: returns the exit status to leave with (the container's,
/// under --attach).
pub async fn start(global: &Global, args: StartArgs) -> Result<u8> {
    let lifecycle = Lifecycle::connect(global).await?;
    if args.attach {
        let [id] = args.ids.as_slice() else {
            bail!("--attach takes one container");
        };
        if lifecycle.clear_stopped_task(global, id).await? {
            bail!("container {id} is running: `berth tasks attach` joins it");
        }
        let ns = lifecycle.namespace.clone();
        return super::tasks::start(&global.fifo_root(), &ns, id, false, &lifecycle.tasks).await;
    }
    for id in &args.ids {
        lifecycle.start_detached(global, id).await?;
        println!("{id}");
    }
    Ok(0)
}

/// `berth stop`, and with `then_start` `berth restart` (stop, then start
/// detached).
pub async fn stop(global: &Global, args: StopArgs, then_start: bool) -> Result<u8> {
    let lifecycle = Lifecycle::connect(global).await?;
    let grace = Duration::from_secs(args.time);
    for id in &args.ids {
        lifecycle
            .stop(global, id, args.signal.as_deref(), grace)
            .await?;
        if then_start {
            lifecycle.start_detached(global, id).await?;
        }
        println!("{id}");
    }
    Ok(0)
}

/// `berth kill`: a signal to each container's init process.
pub async fn kill(global: &Global, args: KillArgs) -> Result<u8> {
    let lifecycle = Lifecycle::connect(global).await?;
    let signal = parse_signal(&args.signal)?;
    for id in &args.ids {
        lifecycle
            .tasks
            .kill(
                &lifecycle.namespace,
                KillProcess {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal,
                    all: false,
                },
            )
            .await
            .with_context(|| format!("killing {id}"))?;
        println!("{id}");
    }
    Ok(0)
}

/// `berth update`: new memory, CPU or pids limits for containers, running
/// or not, as `nerdctl update` and `docker update` change them.
pub async fn update(global: &Global, args: UpdateArgs) -> Result<u8> {
    let limits = args.limits.limits()?;
    if limits.is_empty() {
        bail!("nothing to update: give --memory, --cpus or --pids-limit");
    }
    let lifecycle = Lifecycle::connect(global).await?;
    for id in &args.ids {
        lifecycle.update(id, &limits).await?;
        println!("{id}");
    }
    Ok(0)
}
