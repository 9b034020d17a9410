//! `berth`: the command line for berth's daemons, in the manner of `ctr`.
//!
//! Subcommands live in `commands/`, one module per daemon concern; each
//! finds its daemon's socket through [`global::Global`].

mod commands;
mod detach;
mod global;
mod labels;
mod output;
mod stdio;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::global::Global;

/// berth: pull, store and run containers with a set of small daemons.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start berth's daemons in the background (for a machine without
    /// systemd); prints the environment that points the CLI at them.
    Up(commands::up::UpArgs),
    /// Stop the daemons `berth up` started (containers keep running unless
    /// --all).
    Down(commands::up::DownArgs),
    /// What this host has and lacks for berth (kernel, overlayfs, cgroups,
    /// runc, disk, clock, the daemons), with how to fix it.
    Check(commands::check::CheckArgs),
    /// Daemons' configuration files: `berth config default [DAEMON]`.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completion(commands::generate::CompletionArgs),
    /// Write man pages for berth and all its subcommands into a directory
    /// (or, with --markdown FILE, the whole reference as Markdown).
    Manpages(commands::generate::ManpagesArgs),
    /// Blobs in berth-contentd: list, read, write, label, remove.
    #[command(subcommand)]
    Content(commands::content::ContentCommand),
    /// Push an image from the content store to a registry.
    Push(commands::transfer::PushArgs),
    /// Import an OCI image layout or `docker save` archive into the content
    /// store.
    Import(commands::archive::ImportArgs),
    /// Export images from the content store as an OCI image layout archive
    /// (with docker's manifest.json too).
    Export(commands::archive::ExportArgs),
    /// Snapshots in berth-snapd: list, prepare, view, commit, remove, diff.
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// Pull an image from a registry: fetch its blobs, unpack its layers
    /// and record it.
    Pull(commands::pull::PullArgs),
    /// Images in berth-metad: list, inspect, tag, label, remove.
    #[command(subcommand)]
    Images(commands::images::ImagesCommand),
    /// Container records in berth-metad: list, inspect, create, label,
    /// remove.
    #[command(subcommand)]
    Containers(commands::containers::ContainersCommand),
    /// Namespaces: list, create, label, remove.
    #[command(subcommand)]
    Namespaces(commands::namespaces::NamespacesCommand),
    /// Leases: list, create, remove, and the resources they hold.
    #[command(subcommand)]
    Leases(commands::leases::LeasesCommand),
    /// Print events from berth-metad's exchange as they happen.
    Events(commands::events::EventsArgs),
    /// Run a garbage collection now and say what it removed.
    Gc(commands::gc::GcArgs),
    /// Run a container from an image: pull it if missing, make the
    /// container and its task, wire up the terminal, exit with its status.
    Run(Box<commands::run::RunArgs>),
    /// Make a container from an image (its snapshot, its spec, its record)
    /// without running it; prints its id.
    Create(Box<commands::containers_view::CreateArgs>),
    /// Containers and their tasks' status.
    Ps(commands::containers_view::PsArgs),
    /// The output of a detached container.
    Logs(commands::containers_view::LogsArgs),
    /// CPU, memory and processes of running containers, every second (or
    /// once with --no-stream).
    Stats(commands::containers_view::StatsArgs),
    /// Remove containers: task (with --force even a running one),
    /// record, snapshot and log.
    Rm(commands::containers_view::RmArgs),
    /// Start containers' tasks again (a stopped task is replaced), their
    /// output appended to their logs; with -a, attached to this terminal.
    Start(commands::lifecycle::StartArgs),
    /// Stop containers: their stop signal, then SIGKILL after --time
    /// seconds; their tasks are deleted, their records and snapshots kept.
    Stop(commands::lifecycle::StopArgs),
    /// Stop containers, then start them again detached.
    Restart(commands::lifecycle::StopArgs),
    /// Send a signal (default SIGKILL) to containers' init processes.
    Kill(commands::lifecycle::KillArgs),
    /// Change containers' memory, CPU or pids limits: a running task's
    /// cgroup at once, and the record, so that later tasks have them too.
    Update(commands::lifecycle::UpdateArgs),
    /// Run another process in a running container and wait for it (as
    /// `berth tasks exec`).
    Exec(commands::tasks::ExecArgs),
    /// Tasks in berth-taskd: list, start, kill, exec, ps, pause, resume,
    /// rm, metrics, wait.
    #[command(subcommand)]
    Tasks(commands::tasks::TasksCommand),
    /// CNI networks for `berth run --net`.
    #[command(subcommand)]
    Network(commands::network::NetworkCommand),
    /// What berth runs for itself (runc's OCI hooks); not for people.
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
    /// Unpack an image (a name recorded in berth-metad, or a manifest or
    /// index digest; blobs in the content store) into committed snapshots.
    Unpack(commands::snapshots::UnpackArgs),
}

#[derive(Debug, clap::Subcommand)]
enum InternalCommand {
    /// Attach (create-runtime) or detach (poststop) the container whose
    /// runc state is on stdin.
    OciHook(commands::network::OciHookArgs),
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.global.resolve();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("berth: starting: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => commands::up::up(args).await,
            Command::Config(command) => commands::config::run(command),
            Command::Completion(args) => commands::generate::completion(Cli::command(), args),
            Command::Manpages(args) => commands::generate::manpages(Cli::command(), args),
            Command::Down(args) => commands::up::down(args).await,
            Command::Run(args) => return commands::run::run(&cli.global, *args).await,
            Command::Check(args) => return commands::check::run(&cli.global, args).await,
            Command::Tasks(command) => return commands::tasks::run(&cli.global, command).await,
            Command::Start(args) => return commands::lifecycle::start(&cli.global, args).await,
            Command::Stop(args) => {
                return commands::lifecycle::stop(&cli.global, args, false).await
            }
            Command::Restart(args) => {
                return commands::lifecycle::stop(&cli.global, args, true).await
            }
            Command::Kill(args) => return commands::lifecycle::kill(&cli.global, args).await,
            Command::Update(args) => return commands::lifecycle::update(&cli.global, args).await,
            Command::Exec(args) => return commands::tasks::exec_in(&cli.global, args).await,
            Command::Content(command) => commands::content::run(&cli.global, command).await,
            Command::Push(args) => commands::transfer::push(&cli.global, args).await,
            Command::Import(args) => commands::archive::import(&cli.global, args).await,
            Command::Export(args) => commands::archive::export(&cli.global, args).await,
            Command::Snapshots(args) => commands::snapshots::run(&cli.global, args).await,
            Command::Unpack(args) => commands::snapshots::unpack(&cli.global, args).await,
            Command::Pull(args) => commands::pull::run(&cli.global, args).await,
            Command::Images(command) => commands::images::run(&cli.global, command).await,
            Command::Containers(command) => commands::containers::run(&cli.global, command).await,
            Command::Namespaces(command) => commands::namespaces::run(&cli.global, command).await,
            Command::Leases(command) => commands::leases::run(&cli.global, command).await,
            Command::Events(args) => commands::events::run(&cli.global, args).await,
            Command::Gc(args) => commands::gc::run(&cli.global, args).await,
            Command::Create(args) => commands::containers_view::create(&cli.global, *args).await,
            Command::Ps(args) => commands::containers_view::ps(&cli.global, args).await,
            Command::Logs(args) => commands::containers_view::logs(&cli.global, args).await,
            Command::Stats(args) => commands::containers_view::stats(&cli.global, args).await,
            Command::Rm(args) => commands::containers_view::rm(&cli.global, args).await,
            Command::Network(command) => commands::network::run(&cli.global, command),
            Command::Internal(InternalCommand::OciHook(args)) => {
                commands::network::oci_hook(&cli.global, args).await
            }
        }
        .map(|()| 0u8)
    });
    match result {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            // One line: what failed, then why.
            let line = format!("{err:#}").replace('\n', " ");
            eprintln!("berth: {line}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks: no clashing flags, valid defaults, ...
        Cli::command().debug_assert();
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("berth-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        commands::generate::write_pages(Cli::command(), "berth", &dir).unwrap();
        for page in [
            "berth",
            "berth-run",
            "berth-tasks-exec",
            "berth-up",
            "berth-images-ls",
        ] {
            let text = std::fs::read_to_string(dir.join(format!("{page}.1")))
                .unwrap_or_else(|e| panic!("{page}.1: {e}"));
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}.1");
        }
        let run = std::fs::read_to_string(dir.join("berth-run.1")).unwrap();
        assert!(run.contains("\\-\\-rm"), "berth-run.1 lacks --rm");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let generated = commands::generate::markdown(Cli::command());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()))
                + 1;
            panic!(
                "docs/cli.md is stale (it differs from the CLI's definitions from line {line}): \
                 regenerate it with `{}` from the workspace root and commit it",
                commands::generate::REGENERATE_CLI_MD
            );
        }
    }

    #[test]
    fn the_markdown_reference_covers_every_subcommand_and_variable() {
        let text = commands::generate::markdown(Cli::command());
        for heading in [
            "## `berth run`",
            "## `berth tasks exec`",
            "## `berth images ls`",
            "## `berth manpages`",
        ] {
            assert!(text.contains(heading), "reference lacks {heading}");
        }
        for var in ["BERTH_RUN_DIR", "BERTH_NAMESPACE", "BERTH_SNAPSHOTTER"] {
            assert!(
                text.contains(&format!("| `{var}` |")),
                "reference lacks {var}"
            );
        }
        assert!(text.contains("`--rm`"), "reference lacks run's --rm");
    }

    #[test]
    fn completions_know_subcommands_and_flags() {
        let mut script = Vec::new();
        let mut command = Cli::command();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command,
            "berth",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for word in ["tasks", "exec", "--rm", "--run-dir", "manpages"] {
            assert!(script.contains(word), "bash completion lacks {word}");
        }
    }
}
