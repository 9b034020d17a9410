//! The nerdctl-shaped container commands over the whole stack: `berth
//! create`, `berth ps`, `berth logs`, `berth rm`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_client::{RemoteContainers, RemoteTasks};
use berth_errdefs::ErrorKind;
use berth_metadata::ContainerStore;
use berth_tasks::{Status, Tasks};
use serde::Serialize;

use super::run::{recorded_log, Clients, ContainerArgs};
use crate::global::Global;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub container: ContainerArgs,
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Also containers without a running task.
    #[arg(short, long)]
    pub all: bool,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    pub id: String,
    /// Keep printing what the container writes until its task ends.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print one table (two samples a second apart, for the CPU figure)
    /// and exit, instead of a new one every second.
    #[arg(long)]
    pub no_stream: bool,
    /// The containers to show; without, every one with a task.
    pub ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Kill a running task first.
    #[arg(short, long)]
    pub force: bool,
}

/// `berth create`: the container (record, snapshot, spec) without a task;
/// prints its id. `berth tasks start ID` runs it.
pub async fn create(global: &Global, args: CreateArgs) -> Result<()> {
    let clients = Clients::connect(global, &args.container.snapshotter.snapshotter).await?;
    let id = super::run::create(global, &args.container, &clients, HashMap::new()).await?;
    println!("{id}");
    Ok(())
}

#[derive(Serialize)]
struct PsRow {
    id: String,
    image: String,
    command: String,
    status: String,
    pid: u32,
    runtime: String,
    /// Published ports, docker's way: `127.0.0.1:8080->80/tcp`.
    ports: Vec<String>,
    /// Addresses on its CNI network while it is attached.
    addresses: Vec<String>,
}

/// A container's published ports from its record's label.
fn ports_of(labels: &HashMap<String, String>) -> Vec<String> {
    labels
        .get(super::network::PORTS_ANNOTATION)
        .and_then(|text| serde_json::from_str::<Vec<berth_network::PortMapping>>(text).ok())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let host = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &p.host_ip
            };
            format!(
                "{host}:{}->{}/{}",
                p.host_port, p.container_port, p.protocol
            )
        })
        .collect()
}

fn command_of(spec: Option<&berth_metadata::Any>) -> String {
    spec.and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.value).ok())
        .and_then(|v| {
            v["process"]["args"].as_array().map(|args| {
                args.iter()
                    .filter_map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .unwrap_or_default()
}

/// `berth ps`: containers with their task's status.
pub async fn ps(global: &Global, args: PsArgs) -> Result<()> {
    let ns = global.namespace()?;
    let containers = RemoteContainers::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let tasks = RemoteTasks::connect(global.taskd_socket())
        .await
        .context("berth-taskd")?;
    let records = containers
        .list(ns, &[])
        .await
        .context("listing containers")?;
    let processes: HashMap<String, berth_tasks::Process> = tasks
        .list(ns, &[])
        .await
        .context("listing tasks")?
        .into_iter()
        .map(|p| (p.container_id.clone(), p))
        .collect();
    let mut rows: Vec<PsRow> = records
        .iter()
        .filter_map(|c| {
            let task = processes.get(&c.id);
            let running = task.is_some_and(|t| t.status != Status::Stopped);
            if !args.all && !running {
                return None;
            }
            let status = match task {
                None => "created".to_string(),
                Some(t) => match t.exit {
                    Some(exit) => format!("exited ({})", exit.status),
                    None => t.status.as_str().to_string(),
                },
            };
            Some(PsRow {
                id: c.id.clone(),
                image: c.image.clone(),
                command: command_of(c.spec.as_ref()),
                status,
                pid: task.map_or(0, |t| t.pid),
                runtime: c.runtime.name.clone(),
                ports: ports_of(&c.labels),
                addresses: if running {
                    super::network::addresses(global, ns, &c.id)
                } else {
                    Vec::new()
                },
            })
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    if args.quiet {
        for row in &rows {
            println!("{}", row.id);
        }
        return Ok(());
    }
    match global.format {
        Format::Json => output::json(&rows),
        Format::Table => output::table(
            &["CONTAINER", "IMAGE", "COMMAND", "STATUS", "PID", "PORTS"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.image.clone(),
                        r.command.clone(),
                        r.status.clone(),
                        r.pid.to_string(),
                        r.ports.join(", "),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

/// `berth logs`: the log file of a detached container.
pub async fn logs(global: &Global, args: LogsArgs) -> Result<()> {
    let ns = global.namespace()?;
    let containers = RemoteContainers::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let record = containers
        .get(ns, &args.id)
        .await
        .with_context(|| format!("container {}", args.id))?;
    let path = recorded_log(&record.labels, &args.id)?.with_context(|| {
        format!(
            "container {} has no log: only detached containers (run -d) log to a file",
            args.id
        )
    })?;
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("opening the log {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buffer = vec![0u8; 64 * 1024];
    let tasks = if args.follow {
        Some(
            RemoteTasks::connect(global.taskd_socket())
                .await
                .context("berth-taskd")?,
        )
    } else {
        None
    };
    loop {
        let n = file.read(&mut buffer).context("reading the log")?;
        if n > 0 {
            out.write_all(&buffer[..n]).context("writing")?;
            continue;
        }
        out.flush().ok();
        let Some(tasks) = &tasks else {
            return Ok(());
        };
        let running = match tasks.get(ns, &args.id, "").await {
            Ok(task) => task.status != Status::Stopped,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if !running {
            // One last read: what was written before it stopped.
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).context("reading the log")?;
            out.write_all(&rest).context("writing")?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `berth rm`: task (killed with --force), container and snapshot.
pub async fn rm(global: &Global, args: RmArgs) -> Result<()> {
    let ns = global.namespace()?;
    let tasks = RemoteTasks::connect(global.taskd_socket())
        .await
        .context("berth-taskd")?;
    for id in &args.ids {
        let record = match RemoteContainers::connect(global.metad_socket())
            .await
            .context("berth-metad")?
            .get(ns, id)
            .await
        {
            Ok(record) => Some(record),
            // With --force, a task whose record is gone goes too (its run
            // was undone while taskd could not be reached).
            Err(e) if e.kind() == ErrorKind::NotFound && args.force => None,
            Err(e) => return Err(anyhow::Error::from(e).context(format!("rm {id}"))),
        };
        let had_task = match tasks.get(ns, id, "").await {
            Ok(task) => {
                if task.status != Status::Stopped {
                    if !args.force {
                        anyhow::bail!(
                            "rm {id}: it is {}; stop it first or use --force",
                            task.status
                        );
                    }
                    berth_tasks::kill_all_and_wait(&tasks, ns, id, Duration::from_secs(10)).await;
                }
                tasks
                    .delete(ns, id)
                    .await
                    .with_context(|| format!("rm {id}: deleting its task"))?;
                crate::stdio::remove_kept(&global.fifo_root(), &task.stdio);
                true
            }
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(anyhow::Error::from(e).context(format!("rm {id}"))),
        };
        let Some(record) = record else {
            if !had_task {
                anyhow::bail!("rm {id}: container {id} not found");
            }
            println!("{id}");
            continue;
        };
        let clients = Clients::connect(global, &record.snapshotter).await?;
        berth_tasks::container::remove_container(clients.services(), ns, id)
            .await
            .with_context(|| format!("rm {id}"))?;
        super::network::forget(global, ns, id)?;
        if let Ok(Some(path)) = recorded_log(&record.labels, id) {
            let _ = std::fs::remove_file(path);
        }
        println!("{id}");
    }
    Ok(())
}

/// One container's row of `berth stats`.
#[derive(Serialize)]
struct StatsRow {
    id: String,
    /// Of one CPU, over the time since the previous sample.
    cpu_percent: f64,
    /// Memory in use less inactive page cache, as docker and the kubelet
    /// count it.
    memory_bytes: u64,
    /// The container's memory limit; `null` without one (the table then
    /// shows the host's memory).
    memory_limit_bytes: Option<u64>,
    pids: u64,
    pids_limit: Option<u64>,
}

/// The usage of each task `filters` select, with when it was sampled.
async fn sample_usage(
    tasks: &RemoteTasks,
    ns: &str,
    filters: &[String],
) -> Result<HashMap<String, (berth_tasks::usage::Usage, std::time::SystemTime)>> {
    let metrics = tasks.metrics(ns, filters).await.context("metrics")?;
    Ok(metrics
        .iter()
        .filter_map(|m| {
            berth_tasks::usage::usage(m).map(|usage| (m.container_id.clone(), (usage, m.at)))
        })
        .collect())
}

/// The host's memory, from /proc/meminfo, for containers without a limit.
fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `berth stats`: CPU, memory and processes of running containers, as
/// `nerdctl stats` and `docker stats` show them, from the cgroup metrics
/// their shims report (cgroup v1 or v2).
pub async fn stats(global: &Global, args: StatsArgs) -> Result<()> {
    let ns = global.namespace()?;
    let tasks = RemoteTasks::connect(global.taskd_socket())
        .await
        .context("berth-taskd")?;
    let filters: Vec<String> = args.ids.iter().map(|id| format!("id=={id}")).collect();
    let mut previous = sample_usage(&tasks, ns, &filters).await?;
    for id in &args.ids {
        if !previous.contains_key(id) {
            anyhow::bail!("container {id} has no task running");
        }
    }
    let host_memory = host_memory_bytes();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let current = sample_usage(&tasks, ns, &filters).await?;
        let mut rows: Vec<StatsRow> = current
            .iter()
            .map(|(id, (usage, at))| {
                let cpu_percent = previous
                    .get(id)
                    .and_then(|(before, then)| {
                        let elapsed = at.duration_since(*then).ok()?.as_nanos() as f64;
                        let used = usage.cpu_nanos.checked_sub(before.cpu_nanos)? as f64;
                        (elapsed > 0.0).then(|| used / elapsed * 100.0)
                    })
                    .unwrap_or(0.0);
                StatsRow {
                    id: id.clone(),
                    cpu_percent,
                    memory_bytes: usage.working_set_bytes,
                    memory_limit_bytes: usage.memory_limit_bytes,
                    pids: usage.processes,
                    pids_limit: usage.pids_limit,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        match global.format {
            Format::Json => output::json(&rows)?,
            Format::Table => {
                if interactive && !args.no_stream {
                    // A new screen each second, as docker's.
                    print!("\x1b[2J\x1b[H");
                }
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let limit = r.memory_limit_bytes.or(host_memory);
                        let percent = limit
                            .filter(|l| *l > 0)
                            .map_or(0.0, |l| r.memory_bytes as f64 / l as f64 * 100.0);
                        vec![
                            r.id.clone(),
                            format!("{:.2}%", r.cpu_percent),
                            format!(
                                "{} / {}",
                                output::size(r.memory_bytes),
                                limit.map_or("-".to_string(), output::size)
                            ),
                            format!("{percent:.2}%"),
                            r.pids.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "CONTAINER ID",
                        "CPU %",
                        "MEM USAGE / LIMIT",
                        "MEM %",
                        "PIDS",
                    ],
                    &table,
                )?;
            }
        }
        if args.no_stream {
            return Ok(());
        }
        previous = current;
    }
}
