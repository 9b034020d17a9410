//! `berth completion SHELL` and `berth manpages DIR`: shell completions and
//! man pages generated from the CLI's own definitions, so they never drift
//! from it.

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
    dir: PathBuf,
}

/// Prints the completion script for `args.shell` to stdout.
pub fn completion(mut command: clap::Command, args: CompletionArgs) -> Result<()> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}

/// Writes a man page for the command and for every subcommand, nested ones
/// included; prints how many.
pub fn manpages(command: clap::Command, args: ManpagesArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let written = write_pages(command.name("berth"), "berth", &args.dir)?;
    println!("wrote {written} man pages to {}", args.dir.display());
    Ok(())
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
