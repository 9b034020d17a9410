//! `berth`: the command line for berth's daemons, in the manner of `ctr`.
//!
//! Subcommands live in `commands/`, one module per daemon concern; each
//! finds its daemon's socket through [`global::Global`].

mod commands;
mod detach;
mod global;
mod labels;
mod lazy;
mod output;
mod stdio;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::global::Global;
use crate::lazy::Lazy;

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
    Up(Lazy<commands::up::UpArgs>),
    /// Stop the daemons `berth up` started (containers keep running unless
    /// --all).
    Down(Lazy<commands::up::DownArgs>),
    /// What this host has and lacks for berth (kernel, overlayfs, cgroups,
    /// runc, disk, clock, the daemons), with how to fix it.
    Check(Lazy<commands::check::CheckArgs>),
    /// Daemons' configuration files: `berth config default [DAEMON]`.
    #[command(subcommand)]
    Config(Lazy<commands::config::ConfigCommand>),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completion(Lazy<commands::generate::CompletionArgs>),
    /// Write man pages for berth and all its subcommands into a directory
    /// (or, with --markdown FILE, the whole reference as Markdown).
    Manpages(Lazy<commands::generate::ManpagesArgs>),
    /// Blobs in berth-contentd: list, read, write, label, remove.
    #[command(subcommand)]
    Content(Lazy<commands::content::ContentCommand>),
    /// Push an image from the content store to a registry.
    Push(Lazy<commands::transfer::PushArgs>),
    /// Import an OCI image layout or `docker save` archive into the content
    /// store.
    Import(Lazy<commands::archive::ImportArgs>),
    /// Export images from the content store as an OCI image layout archive
    /// (with docker's manifest.json too).
    Export(Lazy<commands::archive::ExportArgs>),
    /// Snapshots in berth-snapd: list, prepare, view, commit, remove, diff.
    Snapshots(Lazy<commands::snapshots::SnapshotsArgs>),
    /// Pull an image from a registry: fetch its blobs, unpack its layers
    /// and record it.
    Pull(Lazy<commands::pull::PullArgs>),
    /// Images in berth-metad: list, inspect, tag, label, remove.
    #[command(subcommand)]
    Images(Lazy<commands::images::ImagesCommand>),
    /// Container records in berth-metad: list, inspect, create, label,
    /// remove.
    #[command(subcommand)]
    Containers(Lazy<commands::containers::ContainersCommand>),
    /// Namespaces: list, create, label, remove.
    #[command(subcommand)]
    Namespaces(Lazy<commands::namespaces::NamespacesCommand>),
    /// Leases: list, create, remove, and the resources they hold.
    #[command(subcommand)]
    Leases(Lazy<commands::leases::LeasesCommand>),
    /// Print events from berth-metad's exchange as they happen.
    Events(Lazy<commands::events::EventsArgs>),
    /// Run a garbage collection now and say what it removed.
    Gc(Lazy<commands::gc::GcArgs>),
    /// Run a container from an image: pull it if missing, make the
    /// container and its task, wire up the terminal, exit with its status.
    Run(Lazy<Box<commands::run::RunArgs>>),
    /// Make a container from an image (its snapshot, its spec, its record)
    /// without running it; prints its id.
    Create(Lazy<Box<commands::containers_view::CreateArgs>>),
    /// Containers and their tasks' status.
    Ps(Lazy<commands::containers_view::PsArgs>),
    /// The output of a detached container.
    Logs(Lazy<commands::containers_view::LogsArgs>),
    /// CPU, memory and processes of running containers, every second (or
    /// once with --no-stream).
    Stats(Lazy<commands::containers_view::StatsArgs>),
    /// Remove containers: task (with --force even a running one),
    /// record, snapshot and log.
    Rm(Lazy<commands::containers_view::RmArgs>),
    /// Start containers' tasks again (a stopped task is replaced), their
    /// output appended to their logs; with -a, attached to this terminal.
    Start(Lazy<commands::lifecycle::StartArgs>),
    /// Stop containers: their stop signal, then SIGKILL after --time
    /// seconds; their tasks are deleted, their records and snapshots kept.
    Stop(Lazy<commands::lifecycle::StopArgs>),
    /// Stop containers, then start them again detached.
    Restart(Lazy<commands::lifecycle::StopArgs>),
    /// Send a signal (default SIGKILL) to containers' init processes.
    Kill(Lazy<commands::lifecycle::KillArgs>),
    /// Change containers' memory, CPU or pids limits: a running task's
    /// cgroup at once, and the record, so that later tasks have them too.
    Update(Lazy<commands::lifecycle::UpdateArgs>),
    /// Run another process in a running container and wait for it (as
    /// `berth tasks exec`).
    Exec(Lazy<commands::tasks::ExecArgs>),
    /// Tasks in berth-taskd: list, start, kill, exec, ps, pause, resume,
    /// rm, metrics, wait.
    #[command(subcommand)]
    Tasks(Lazy<commands::tasks::TasksCommand>),
    /// CNI networks for `berth run --net`.
    #[command(subcommand)]
    Network(Lazy<commands::network::NetworkCommand>),
    /// What berth runs for itself (runc's OCI hooks); not for people.
    #[command(subcommand, hide = true)]
    Internal(Lazy<InternalCommand>),
    /// Unpack an image (a name recorded in berth-metad, or a manifest or
    /// index digest; blobs in the content store) into committed snapshots.
    Unpack(Lazy<commands::snapshots::UnpackArgs>),
}

#[derive(Debug, clap::Subcommand)]
enum InternalCommand {
    /// Attach (create-runtime) or detach (poststop) the container whose
    /// runc state is on stdin.
    OciHook(commands::network::OciHookArgs),
}

/// The whole command tree, every subcommand's arguments built (for what
/// documents it); parsing builds only the subcommand it runs.
fn full_command() -> clap::Command {
    lazy::eager(Cli::command)
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
            Command::Up(Lazy(args)) => commands::up::up(args).await,
            Command::Config(Lazy(command)) => commands::config::run(command),
            Command::Completion(Lazy(args)) => commands::generate::completion(full_command(), args),
            Command::Manpages(Lazy(args)) => commands::generate::manpages(full_command(), args),
            Command::Down(Lazy(args)) => commands::up::down(args).await,
            Command::Run(Lazy(args)) => return commands::run::run(&cli.global, *args).await,
            Command::Check(Lazy(args)) => return commands::check::run(&cli.global, args).await,
            Command::Tasks(Lazy(command)) => {
                return commands::tasks::run(&cli.global, command).await
            }
            Command::Start(Lazy(args)) => {
                return commands::lifecycle::start(&cli.global, args).await
            }
            Command::Stop(Lazy(args)) => {
                return commands::lifecycle::stop(&cli.global, args, false).await
            }
            Command::Restart(Lazy(args)) => {
                return commands::lifecycle::stop(&cli.global, args, true).await
            }
            Command::Kill(Lazy(args)) => return commands::lifecycle::kill(&cli.global, args).await,
            Command::Update(Lazy(args)) => {
                return commands::lifecycle::update(&cli.global, args).await
            }
            Command::Exec(Lazy(args)) => return commands::tasks::exec_in(&cli.global, args).await,
            Command::Content(Lazy(command)) => commands::content::run(&cli.global, command).await,
            Command::Push(Lazy(args)) => commands::transfer::push(&cli.global, args).await,
            Command::Import(Lazy(args)) => commands::archive::import(&cli.global, args).await,
            Command::Export(Lazy(args)) => commands::archive::export(&cli.global, args).await,
            Command::Snapshots(Lazy(args)) => commands::snapshots::run(&cli.global, args).await,
            Command::Unpack(Lazy(args)) => commands::snapshots::unpack(&cli.global, args).await,
            Command::Pull(Lazy(args)) => commands::pull::run(&cli.global, args).await,
            Command::Images(Lazy(command)) => commands::images::run(&cli.global, command).await,
            Command::Containers(Lazy(command)) => {
                commands::containers::run(&cli.global, command).await
            }
            Command::Namespaces(Lazy(command)) => {
                commands::namespaces::run(&cli.global, command).await
            }
            Command::Leases(Lazy(command)) => commands::leases::run(&cli.global, command).await,
            Command::Events(Lazy(args)) => commands::events::run(&cli.global, args).await,
            Command::Gc(Lazy(args)) => commands::gc::run(&cli.global, args).await,
            Command::Create(Lazy(args)) => {
                commands::containers_view::create(&cli.global, *args).await
            }
            Command::Ps(Lazy(args)) => commands::containers_view::ps(&cli.global, args).await,
            Command::Logs(Lazy(args)) => commands::containers_view::logs(&cli.global, args).await,
            Command::Stats(Lazy(args)) => commands::containers_view::stats(&cli.global, args).await,
            Command::Rm(Lazy(args)) => commands::containers_view::rm(&cli.global, args).await,
            Command::Network(Lazy(command)) => commands::network::run(&cli.global, command),
            Command::Internal(Lazy(InternalCommand::OciHook(args))) => {
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
        full_command().debug_assert();
        // ... also when each subcommand's arguments come after the global
        // ones were handed down (an argument of a subcommand that a global
        // one of the same name would shadow clashes only then).
        Cli::command().debug_assert();
    }

    /// The long help of `command` and of every subcommand under it, by
    /// path. (Not of clap's `help` subcommands: deferred, their trees are
    /// filled in when used, and what they print is the help below.)
    fn every_help(command: &mut clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        out.push((path.to_string(), command.render_long_help().to_string()));
        for sub in command
            .get_subcommands_mut()
            .filter(|sub| sub.get_name() != "help")
        {
            let path = format!("{path} {}", sub.get_name());
            every_help(sub, &path, out);
        }
    }

    #[test]
    fn deferred_subcommands_are_the_ones_built_at_once() {
        let mut lazy = Cli::command();
        lazy.build();
        let mut eager = full_command();
        eager.build();
        let (mut lazy_help, mut eager_help) = (Vec::new(), Vec::new());
        every_help(&mut lazy, "berth", &mut lazy_help);
        every_help(&mut eager, "berth", &mut eager_help);
        assert!(eager_help.len() > 80, "{}", eager_help.len());
        let paths =
            |helps: &[(String, String)]| helps.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&lazy_help), paths(&eager_help));
        for ((path, lazy), (_, eager)) in lazy_help.iter().zip(&eager_help) {
            assert_eq!(lazy, eager, "berth {path} --help");
        }
        // What a parse builds: `run` with its flags and its own summary.
        let run = lazy.find_subcommand_mut("run").unwrap();
        assert!(run.get_arguments().any(|a| a.get_long() == Some("rm")));
        assert!(run
            .render_help()
            .to_string()
            .starts_with("Run a container from an image"));
    }

    #[test]
    fn a_deferred_subcommand_parses_as_before() {
        let cli = Cli::try_parse_from([
            "berth", "-n", "ns1", "run", "--rm", "-t", "img", "sh", "-c", "x",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace, "ns1");
        let Command::Run(Lazy(args)) = cli.command else {
            panic!("not run: {:?}", cli.command);
        };
        assert!(args.rm);
        assert!(args.container.tty);
        assert_eq!(args.container.image, "img");
        let err = Cli::try_parse_from(["berth", "run", "--no-such-flag", "img"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let Command::Tasks(Lazy(_)) = Cli::try_parse_from(["berth", "tasks", "ls"])
            .unwrap()
            .command
        else {
            panic!("not tasks");
        };
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("berth-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        commands::generate::write_pages(full_command(), "berth", &dir).unwrap();
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
        let generated = commands::generate::markdown(full_command());
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
        let text = commands::generate::markdown(full_command());
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
        let mut command = full_command();
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
