//! `berth completion SHELL`, `berth manpages DIR` and `berth manpages
//! --markdown FILE`: shell completions, man pages and the Markdown
//! reference (docs/cli.md) generated from the CLI's own definitions, so
//! they never drift from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// Where to write berth.1 and one page per subcommand
    /// (berth-run.1, berth-tasks-exec.1, ...).
    #[arg(required_unless_present = "markdown")]
    dir: Option<PathBuf>,
    /// Write the whole command-line reference as one Markdown file instead
    /// (`-` for standard output); docs/cli.md is made this way.
    #[arg(long, value_name = "FILE", conflicts_with = "dir")]
    markdown: Option<PathBuf>,
}

/// The command that regenerates docs/cli.md, from the workspace's root.
pub const REGENERATE_CLI_MD: &str = "cargo run -p berth -- manpages --markdown docs/cli.md";

/// Prints the completion script for `args.shell` to stdout.
pub fn completion(mut command: clap::Command, args: CompletionArgs) -> Result<()> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}

/// Writes a man page for the command and for every subcommand, nested ones
/// included; prints how many.
/// With `--markdown FILE`, writes the Markdown reference there instead.
pub fn manpages(command: clap::Command, args: ManpagesArgs) -> Result<()> {
    if let Some(file) = args.markdown {
        let text = markdown(command);
        if file.as_os_str() == "-" {
            print!("{text}");
        } else {
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("wrote the command-line reference to {}", file.display());
        }
        return Ok(());
    }
    let dir = args.dir.context("no directory given")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = write_pages(command.name("berth"), "berth", &dir)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// The command-line reference in Markdown: a preface, the environment
/// variables the CLI reads (every argument with an `env`, found by walking
/// the whole tree), then every command and subcommand as clap-markdown
/// renders them.
pub(crate) fn markdown(command: clap::Command) -> String {
    use std::fmt::Write;

    let command = command.name("berth").bin_name("berth");
    let mut out = String::new();
    out.push_str("# berth command-line reference\n\n");
    let _ = writeln!(
        out,
        "Generated from the CLI's clap definitions (bins/cli) by `berth manpages \
         --markdown docs/cli.md`; do not edit it by hand. After changing a \
         flag or a help text, run `{REGENERATE_CLI_MD}`: a test \
         (`cli_reference_is_current` in bins/cli) fails while this file is \
         stale. The same text is in `berth help COMMAND`, `berth COMMAND \
         --help` and the man pages (`berth manpages DIR`).\n"
    );
    let mut env = Vec::new();
    environment(&command, &mut vec!["berth".to_string()], &mut env);
    if !env.is_empty() {
        out.push_str("## Environment\n\n");
        out.push_str(
            "Each variable stands for a flag; the flag, when given, wins. Flags \
             of `berth` itself are global: every subcommand takes them.\n\n",
        );
        out.push_str("| variable | flag | of |\n|---|---|---|\n");
        // One row per variable and flag, with every command that takes it.
        let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
        for (var, flag, path) in env {
            match rows.iter_mut().find(|(v, f, _)| *v == var && *f == flag) {
                Some((_, _, paths)) => paths.push(path),
                None => rows.push((var, flag, vec![path])),
            }
        }
        for (var, flag, paths) in rows {
            let paths: Vec<String> = paths.iter().map(|p| format!("`{p}`")).collect();
            let _ = writeln!(out, "| `{var}` | `--{flag}` | {} |", paths.join(", "));
        }
        out.push('\n');
    }
    let options = clap_markdown::MarkdownOptions::new()
        .title("berth".to_string())
        .show_footer(false)
        .show_table_of_contents(true);
    let body = clap_markdown::help_markdown_command_custom(&command, &options);
    // clap-markdown opens with its own title and a sentence; the preface
    // above replaces both.
    let body = body
        .split_once("**Command Overview:**")
        .map(|(_, rest)| format!("## Commands\n\n**Command Overview:**{rest}"))
        .unwrap_or(body);
    out.push_str(body.trim_end());
    out.push('\n');
    out
}

/// Every visible argument with an environment variable, with its long flag
/// and the command that defines it.
fn environment(
    command: &clap::Command,
    path: &mut Vec<String>,
    out: &mut Vec<(String, String, String)>,
) {
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        if let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) {
            out.push((
                var.to_string_lossy().into_owned(),
                long.to_string(),
                path.join(" "),
            ));
        }
    }
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        path.push(sub.get_name().to_string());
        environment(sub, path, out);
        path.pop();
    }
}

pub(crate) fn write_pages(command: clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let mut command = command.name(name.to_string());
    command.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = format!("{name}-{}", sub.get_name());
        written += write_pages(sub.clone(), &sub_name, dir)?;
    }
    Ok(written)
}
