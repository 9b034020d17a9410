//! `berth config default [DAEMON]`: a daemon's complete default
//! configuration file, as the daemon itself prints it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use berth_client::local::Daemon;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the complete default configuration file (commented TOML, for
    /// `--config FILE`) of one daemon, or of all five one after another.
    Default {
        #[arg(value_enum)]
        daemon: Option<DaemonName>,
        /// Where the berth-* daemons are [default: beside this berth, else
        /// on PATH].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DaemonName {
    Contentd,
    Snapd,
    Metad,
    Taskd,
    Crid,
}

impl DaemonName {
    const ALL: [DaemonName; 5] = [
        DaemonName::Contentd,
        DaemonName::Snapd,
        DaemonName::Metad,
        DaemonName::Taskd,
        DaemonName::Crid,
    ];

    /// Its executable.
    fn binary(self) -> String {
        match self {
            DaemonName::Contentd => Daemon::Contentd.binary(),
            DaemonName::Snapd => Daemon::Snapd.binary(),
            DaemonName::Metad => Daemon::Metad.binary(),
            DaemonName::Taskd => Daemon::Taskd.binary(),
            DaemonName::Crid => Daemon::Crid.binary(),
        }
    }
}

pub fn run(command: ConfigCommand) -> Result<()> {
    let ConfigCommand::Default { daemon, bin_dir } = command;
    let binaries = super::up::binaries_dir(bin_dir)?;
    let daemons: Vec<DaemonName> = match daemon {
        Some(name) => vec![name],
        None => DaemonName::ALL.to_vec(),
    };
    for (n, daemon) in daemons.iter().enumerate() {
        let binary = binaries.join(daemon.binary());
        // The daemon prints its own: its keys and their help come from its
        // own flags.
        let out = Command::new(&binary)
            .arg("--print-default-config")
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        if !out.status.success() {
            bail!(
                "{} --print-default-config: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if n > 0 {
            println!();
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}
