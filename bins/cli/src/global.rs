use std::path::PathBuf;

use berth_ids::{validate_namespace, DEFAULT_NAMESPACE};

use crate::output::Format;

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Send the subcommand to this one socket, whichever daemon it is
    /// (for debugging one component).
    #[arg(long, global = true, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// berth-contentd's socket.
    #[arg(
        long,
        global = true,
        env = "BERTH_CONTENTD_ADDRESS",
        default_value = berth_api::sockets::CONTENTD,
        value_name = "SOCKET"
    )]
    pub contentd: PathBuf,
    /// berth-snapd's socket.
    #[arg(
        long,
        global = true,
        env = "BERTH_SNAPD_ADDRESS",
        default_value = berth_api::sockets::SNAPD,
        value_name = "SOCKET"
    )]
    pub snapd: PathBuf,
    /// berth-metad's socket.
    #[arg(
        long,
        global = true,
        env = "BERTH_METAD_ADDRESS",
        default_value = berth_api::sockets::METAD,
        value_name = "SOCKET"
    )]
    pub metad: PathBuf,
    /// berth-taskd's socket.
    #[arg(
        long,
        global = true,
        env = "BERTH_TASKD_ADDRESS",
        default_value = berth_api::sockets::TASKD,
        value_name = "SOCKET"
    )]
    pub taskd: PathBuf,
    /// Namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = DEFAULT_NAMESPACE
    )]
    pub namespace: String,
    /// Output for people (table) or for scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl Global {
    /// The socket for berth-contentd: `--address` if given, else
    /// `--contentd` / `BERTH_CONTENTD_ADDRESS`.
    pub fn contentd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.contentd)
    }

    /// The socket for berth-snapd: `--address` if given, else `--snapd` /
    /// `BERTH_SNAPD_ADDRESS`.
    pub fn snapd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.snapd)
    }

    /// The socket for berth-metad: `--address` if given, else `--metad` /
    /// `BERTH_METAD_ADDRESS`.
    pub fn metad_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.metad)
    }

    /// The socket for berth-taskd: `--address` if given, else `--taskd` /
    /// `BERTH_TASKD_ADDRESS`.
    pub fn taskd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.taskd)
    }

    pub fn namespace(&self) -> anyhow::Result<&str> {
        validate_namespace(&self.namespace)?;
        Ok(&self.namespace)
    }
}
