//! `berth tasks ...` and `berth ps`: containers' running processes in
//! berth-taskd.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_client::{RemoteContainers, RemoteTasks};
use berth_metadata::ContainerStore;
use berth_tasks::{ExecProcess, KillProcess, Tasks};
use serde::Serialize;

use crate::global::Global;
use crate::output::{self, Format};
use crate::stdio::Fifos;

#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// List tasks, optionally matching filters (e.g. 'status==running').
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create and start the task of a recorded container; its output goes
    /// to this terminal until it exits (with -d: to nowhere, and berth
    /// returns at once).
    Start {
        id: String,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Attach this terminal to a running task started with fifos (`berth
    /// run -d -t` or `-d -i`): its output here, our input to it (raw under
    /// -t, resized with this terminal); returns with its exit status when
    /// it ends. The detach keys (ctrl-p ctrl-q) leave it running and return
    /// 0; so does ^C without a terminal.
    Attach {
        id: String,
        /// The key sequence that detaches: comma-separated characters or
        /// ctrl-X, as docker's; "" turns detaching off.
        #[arg(long, value_name = "KEYS", default_value = crate::detach::DEFAULT_DETACH_KEYS)]
        detach_keys: String,
    },
    /// Send a signal (default SIGTERM) to a task's init process, one exec,
    /// or with --all every process of the task.
    Kill {
        id: String,
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        exec_id: Option<String>,
    },
    /// Run another process in a running task and wait for it.
    Exec(ExecArgs),
    /// The processes of a task.
    Ps {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Delete stopped tasks (with --force, kill them first).
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// The cgroup metrics of tasks, as the shim reports them.
    Metrics {
        ids: Vec<String>,
    },
    /// Wait for a task's init process (or an exec) to exit; print its
    /// status and exit with it.
    Wait {
        id: String,
        #[arg(long)]
        exec_id: Option<String>,
    },
}

/// `berth tasks exec` and `berth exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    id: String,
    #[arg(long)]
    exec_id: Option<String>,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// USER[:GROUP], names or ids; names are looked up in the
    /// container's /etc/passwd and /etc/group (default: the
    /// container's user).
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(short = 'w', long = "workdir", visible_alias = "cwd")]
    workdir: Option<String>,
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Runs a process in a running task (`berth exec`, `berth tasks exec`);
/// returns its exit status.
pub async fn exec_in(global: &Global, args: ExecArgs) -> Result<u8> {
    let ns = global.namespace()?.to_string();
    let tasks = connect(global).await?;
    let ExecArgs {
        id,
        exec_id,
        interactive,
        tty,
        user,
        workdir,
        env,
        args,
    } = args;
    let exec_id = match exec_id {
        Some(e) => e,
        None => format!("exec-{}", crate::stdio::new_id()?),
    };
    let process = exec_process(global, &ns, &id, tty, user, workdir, env, args).await?;
    exec(global, &id, &exec_id, interactive, tty, process, &tasks).await
}

#[derive(Serialize)]
struct TaskJson {
    id: String,
    pid: u32,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_status: Option<u32>,
}

/// A signal by name (SIGTERM, TERM, term) or number.
pub fn parse_signal(value: &str) -> Result<u32> {
    Ok(berth_tasks::signal_number(value)?)
}

pub async fn connect(global: &Global) -> Result<RemoteTasks> {
    RemoteTasks::connect(global.taskd_socket())
        .await
        .context("berth-taskd")
}

/// Runs a `tasks` subcommand; returns the exit status to leave with.
pub async fn run(global: &Global, command: TasksCommand) -> Result<u8> {
    let ns = global.namespace()?.to_string();
    let ns = ns.as_str();
    let tasks = connect(global).await?;
    match command {
        TasksCommand::Ls { quiet, filters } => {
            let list = tasks.list(ns, &filters).await.context("tasks ls")?;
            if quiet {
                for task in &list {
                    println!("{}", task.container_id);
                }
                return Ok(0);
            }
            let rows: Vec<TaskJson> = list
                .iter()
                .map(|p| TaskJson {
                    id: p.container_id.clone(),
                    pid: p.pid,
                    status: p.status.as_str().to_uppercase(),
                    exit_status: p.exit.map(|e| e.status),
                })
                .collect();
            match global.format {
                Format::Json => output::json(&rows)?,
                Format::Table => output::table(
                    &["TASK", "PID", "STATUS"],
                    &rows
                        .iter()
                        .map(|r| vec![r.id.clone(), r.pid.to_string(), r.status.clone()])
                        .collect::<Vec<_>>(),
                )?,
            }
            Ok(0)
        }
        TasksCommand::Start { id, detach } => {
            start(&global.fifo_root(), ns, &id, detach, &tasks).await
        }
        TasksCommand::Kill {
            id,
            signal,
            all,
            exec_id,
        } => {
            tasks
                .kill(
                    ns,
                    KillProcess {
                        container_id: id.clone(),
                        exec_id: exec_id.unwrap_or_default(),
                        signal: parse_signal(&signal)?,
                        all,
                    },
                )
                .await
                .with_context(|| format!("killing {id}"))?;
            Ok(0)
        }
        TasksCommand::Exec(args) => exec_in(global, args).await,
        TasksCommand::Ps { id } => {
            let pids = tasks
                .pids(ns, &id)
                .await
                .with_context(|| format!("ps {id}"))?;
            match global.format {
                Format::Json => output::json(
                    &pids
                        .iter()
                        .map(|p| serde_json::json!({"pid": p.pid, "exec_id": p.exec_id}))
                        .collect::<Vec<_>>(),
                )?,
                Format::Table => output::table(
                    &["PID", "EXEC"],
                    &pids
                        .iter()
                        .map(|p| vec![p.pid.to_string(), or_dash(&p.exec_id)])
                        .collect::<Vec<_>>(),
                )?,
            }
            Ok(0)
        }
        TasksCommand::Pause { id } => {
            tasks
                .pause(ns, &id)
                .await
                .with_context(|| format!("pausing {id}"))?;
            Ok(0)
        }
        TasksCommand::Resume { id } => {
            tasks
                .resume(ns, &id)
                .await
                .with_context(|| format!("resuming {id}"))?;
            Ok(0)
        }
        TasksCommand::Attach { id, detach_keys } => {
            let keys = crate::detach::parse(&detach_keys)?;
            attach(ns, &id, &tasks, keys).await
        }
        TasksCommand::Rm { ids, force } => {
            for id in ids {
                if force {
                    berth_tasks::kill_all_and_wait(&tasks, ns, &id, Duration::from_secs(10)).await;
                }
                let stdio = tasks.get(ns, &id, "").await.map(|t| t.stdio).ok();
                let deleted = tasks
                    .delete(ns, &id)
                    .await
                    .with_context(|| format!("deleting the task of {id}"))?;
                if let Some(stdio) = stdio {
                    crate::stdio::remove_kept(&global.fifo_root(), &stdio);
                }
                println!("{id}\t{}", deleted.exit.status);
            }
            Ok(0)
        }
        TasksCommand::Metrics { ids } => {
            let filters: Vec<String> = ids.iter().map(|id| format!("id=={id}")).collect();
            let metrics = tasks.metrics(ns, &filters).await.context("metrics")?;
            let rows: Vec<serde_json::Value> = metrics
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.container_id,
                        "type": m.data.type_url,
                        "metrics": berth_metadata::KnownEvent::decode(&m.data.type_url, &m.data.value)
                            .map(|known| known.to_json()),
                        "bytes": m.data.value.len(),
                    })
                })
                .collect();
            output::json(&rows)?;
            Ok(0)
        }
        TasksCommand::Wait { id, exec_id } => {
            let exit = tasks
                .wait(ns, &id, exec_id.as_deref().unwrap_or(""))
                .await
                .with_context(|| format!("waiting for {id}"))?;
            println!("{}", exit.status);
            Ok(u8::try_from(exit.status).unwrap_or(255))
        }
    }
}

fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value.to_string()
    }
}

pub async fn start(
    fifo_root: &Path,
    ns: &str,
    id: &str,
    detach: bool,
    tasks: &RemoteTasks,
) -> Result<u8> {
    if detach {
        tasks
            .create(
                ns,
                berth_tasks::CreateTask {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the task of {id}"))?;
        tasks
            .start(ns, id, "")
            .await
            .with_context(|| format!("starting {id}"))?;
        return Ok(0);
    }
    let fifos = Fifos::new(fifo_root, id, false, false)?;
    let mut attached = fifos.attach()?;
    tasks
        .create(
            ns,
            berth_tasks::CreateTask {
                container_id: id.to_string(),
                stdio: fifos.stdio.clone(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the task of {id}"))?;
    let waiter = tasks.clone();
    let (n, i) = (ns.to_string(), id.to_string());
    let waiting = tokio::spawn(async move { waiter.wait(&n, &i, "").await });
    tasks
        .start(ns, id, "")
        .await
        .with_context(|| format!("starting {id}"))?;
    let exit = waiting.await.context("waiting")??;
    attached.drain(Duration::from_secs(2)).await;
    Ok(u8::try_from(exit.status).unwrap_or(255))
}

/// The OCI process of an exec: the container's own (its user, env,
/// capabilities, working directory), with the command and what the flags
/// change.
#[allow(clippy::too_many_arguments)]
async fn exec_process(
    global: &Global,
    ns: &str,
    id: &str,
    tty: bool,
    user: Option<String>,
    workdir: Option<String>,
    env: Vec<String>,
    args: Vec<String>,
) -> Result<Vec<u8>> {
    let containers = RemoteContainers::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let container = containers
        .get(ns, id)
        .await
        .with_context(|| format!("container {id}"))?;
    let spec: serde_json::Value = container
        .spec
        .as_ref()
        .and_then(|any| serde_json::from_slice(&any.value).ok())
        .with_context(|| format!("container {id} has no OCI spec"))?;
    let mut process = spec
        .get("process")
        .cloned()
        .with_context(|| format!("container {id}: its spec has no process"))?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    process.as_object_mut().map(|p| p.remove("consoleSize"));
    if let Some(dir) = workdir {
        if !dir.starts_with('/') {
            bail!("--workdir {dir:?}: an absolute path");
        }
        process["cwd"] = serde_json::json!(dir);
    }
    if let Some(user) = user {
        let resolved = if berth_tasks::container::needs_image_files(&user) {
            // Users are looked up in the running container's own files,
            // through its init process's root (read inside that root,
            // symlinks and all, as when the container was made).
            let tasks = RemoteTasks::connect(global.taskd_socket())
                .await
                .context("berth-taskd")?;
            let init = tasks
                .get(ns, id, "")
                .await
                .with_context(|| format!("the task of {id}"))?;
            let root = berth_oci::HostRootfs::new(format!("/proc/{}/root", init.pid));
            berth_oci::resolve_user(&user, &root)
        } else {
            berth_oci::resolve_user(&user, &berth_oci::NoRootfsFiles)
        }
        .with_context(|| format!("--user {user:?}"))?;
        process["user"] = serde_json::to_value(resolved).context("encoding the user")?;
    }
    if !env.is_empty() {
        let mut merged: Vec<String> = process["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for entry in env {
            let Some((key, _)) = entry.split_once('=') else {
                bail!("--env {entry:?}: KEY=VALUE");
            };
            merged.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
            merged.push(entry);
        }
        process["env"] = serde_json::json!(merged);
    }
    serde_json::to_vec(&process).context("encoding the process")
}

/// `tasks attach`: the task's own fifos, opened from this side.
async fn attach(ns: &str, id: &str, tasks: &RemoteTasks, detach_keys: Vec<u8>) -> Result<u8> {
    let task = tasks
        .get(ns, id, "")
        .await
        .with_context(|| format!("the task of {id}"))?;
    let stdio = &task.stdio;
    let is_fifo = |path: &str| {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    };
    if stdio.stdout.is_empty() || !is_fifo(&stdio.stdout) {
        let output = if stdio.stdout.is_empty() {
            "nowhere".to_string()
        } else {
            stdio.stdout.clone()
        };
        bail!(
            "{id}'s output goes to {output}, not to fifos: attach works on tasks started with `berth run -d -t` or `-d -i` (`berth logs -f {id}` follows a log)"
        );
    }
    if task.status != berth_tasks::Status::Running {
        bail!("{id} is {}, not running", task.status);
    }
    let mut attached = crate::stdio::attach(stdio)?;
    let waiter = tasks.clone();
    let (n, i) = (ns.to_string(), id.to_string());
    let waiting = tokio::spawn(async move { waiter.wait(&n, &i, "").await });
    let (detach_tx, detach_rx) = tokio::sync::oneshot::channel();
    let _stdin = attached.forward_stdin_until_detached(detach_keys, Some(detach_tx));
    let (raw, resizing) = if stdio.terminal {
        (
            crate::stdio::RawMode::enter(),
            Some(super::run::follow_terminal_size(ns, id, "", tasks.clone())),
        )
    } else {
        (None, None)
    };
    let detached = async {
        match detach_rx.await {
            Ok(()) => (),
            // No stdin to watch (or it ended): only the exit ends this.
            Err(_) => std::future::pending().await,
        }
    };
    let exit = tokio::select! {
        exit = waiting => Some(exit.context("waiting")??),
        () = detached => None,
    };
    if let Some(resizing) = resizing {
        resizing.abort();
    }
    drop(raw);
    let Some(exit) = exit else {
        eprintln!("detached from {id}; it keeps running");
        return Ok(0);
    };
    attached.drain(Duration::from_secs(2)).await;
    Ok(u8::try_from(exit.status).unwrap_or(255))
}

async fn exec(
    global: &Global,
    id: &str,
    exec_id: &str,
    interactive: bool,
    tty: bool,
    process: Vec<u8>,
    tasks: &RemoteTasks,
) -> Result<u8> {
    let ns = global.namespace()?;
    let fifos = Fifos::new(&global.fifo_root(), exec_id, interactive, tty)?;
    let mut attached = fifos.attach()?;
    tasks
        .exec(
            ns,
            ExecProcess {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdio: fifos.stdio.clone(),
                spec: process,
            },
        )
        .await
        .with_context(|| format!("exec in {id}"))?;
    let stdin = if interactive {
        attached.forward_stdin()
    } else {
        None
    };
    let waiter = tasks.clone();
    let (n, i, e) = (ns.to_string(), id.to_string(), exec_id.to_string());
    let waiting = tokio::spawn(async move { waiter.wait(&n, &i, &e).await });
    if let Err(e) = tasks.start(ns, id, exec_id).await {
        let _ = tasks.delete_process(ns, id, exec_id).await;
        return Err(anyhow::Error::from(e).context(format!("starting exec {exec_id}")));
    }
    // An exec's terminal exists once it has started: sized then, and
    // resized with ours.
    let (raw, resizing) = if tty {
        (
            crate::stdio::RawMode::enter(),
            Some(super::run::follow_terminal_size(
                ns,
                id,
                exec_id,
                tasks.clone(),
            )),
        )
    } else {
        (None, None)
    };
    if let Some(stdin) = stdin {
        let closer = tasks.clone();
        let (n, i, e) = (ns.to_string(), id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            let _ = stdin.await;
            let _ = closer.close_stdin(&n, &i, &e).await;
        });
    }
    let exit = waiting.await.context("waiting")??;
    if let Some(resizing) = resizing {
        resizing.abort();
    }
    drop(raw);
    attached.drain(Duration::from_secs(2)).await;
    let _ = tasks.delete_process(ns, id, exec_id).await;
    Ok(u8::try_from(exit.status).unwrap_or(255))
}
