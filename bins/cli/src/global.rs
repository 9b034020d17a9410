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
    /// berth-contentd's socket [default: RUN_DIR/contentd.sock].
    #[arg(
        long,
        global = true,
        env = "BERTH_CONTENTD_ADDRESS",
        value_name = "SOCKET"
    )]
    contentd: Option<PathBuf>,
    /// berth-snapd's socket [default: RUN_DIR/snapd.sock].
    #[arg(
        long,
        global = true,
        env = "BERTH_SNAPD_ADDRESS",
        value_name = "SOCKET"
    )]
    snapd: Option<PathBuf>,
    /// berth-metad's socket [default: RUN_DIR/metad.sock].
    #[arg(
        long,
        global = true,
        env = "BERTH_METAD_ADDRESS",
        value_name = "SOCKET"
    )]
    metad: Option<PathBuf>,
    /// berth-taskd's socket [default: RUN_DIR/taskd.sock].
    #[arg(
        long,
        global = true,
        env = "BERTH_TASKD_ADDRESS",
        value_name = "SOCKET"
    )]
    taskd: Option<PathBuf>,
    /// Where the daemons' sockets are (as `berth up --root DIR` prints:
    /// DIR/run), and the CLI's fifos.
    #[arg(
        long,
        global = true,
        env = "BERTH_RUN_DIR",
        default_value = berth_api::sockets::RUN_DIR,
        value_name = "DIR"
    )]
    pub run_dir: PathBuf,
    /// The sockets, once [`Global::resolve`] has applied the run directory.
    #[arg(skip)]
    sockets: Sockets,
    /// Namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = DEFAULT_NAMESPACE
    )]
    pub namespace: String,
    /// Where `berth run --net NAME` finds CNI network lists (the default
    /// `bridge` one is written here on first use). Apart from the CRI's
    /// /etc/cni/net.d, so that pods never land on berth's bridge.
    #[arg(
        long,
        global = true,
        env = "BERTH_CNI_CONF_DIR",
        default_value = "/etc/berth/cni/net.d",
        value_name = "DIR"
    )]
    pub cni_conf_dir: PathBuf,
    /// The directories of CNI plugin binaries, colon-separated.
    #[arg(
        long,
        global = true,
        env = "BERTH_CNI_PATH",
        default_value = "/usr/lib/cni:/opt/cni/bin",
        value_name = "DIRS"
    )]
    pub cni_path: std::ffi::OsString,
    /// Output for people (table) or for scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The daemons' sockets, each from its own flag or in the run directory.
#[derive(Debug, Clone, Default)]
struct Sockets {
    contentd: PathBuf,
    snapd: PathBuf,
    metad: PathBuf,
    taskd: PathBuf,
}

impl Global {
    /// Fills in the sockets not given one by one from the run directory.
    /// Call once, right after parsing.
    pub fn resolve(&mut self) {
        let in_run_dir = |given: &Option<PathBuf>, name: &str| {
            given
                .clone()
                .unwrap_or_else(|| self.run_dir.join(format!("{name}.sock")))
        };
        self.sockets = Sockets {
            contentd: in_run_dir(&self.contentd, "contentd"),
            snapd: in_run_dir(&self.snapd, "snapd"),
            metad: in_run_dir(&self.metad, "metad"),
            taskd: in_run_dir(&self.taskd, "taskd"),
        };
    }

    /// The client's own runtime directory: fifos, and the views `berth run`
    /// mounts to read an image's users. BERTH_FIFO_DIR, else RUN_DIR/fifo.
    pub fn fifo_root(&self) -> PathBuf {
        std::env::var_os("BERTH_FIFO_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.run_dir.join("fifo"))
    }

    /// The socket for berth-contentd: `--address` if given, else
    /// `--contentd` / `BERTH_CONTENTD_ADDRESS`.
    pub fn contentd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.sockets.contentd)
    }

    /// The socket for berth-snapd: `--address` if given, else `--snapd` /
    /// `BERTH_SNAPD_ADDRESS`.
    pub fn snapd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.sockets.snapd)
    }

    /// The socket for berth-metad: `--address` if given, else `--metad` /
    /// `BERTH_METAD_ADDRESS`.
    pub fn metad_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.sockets.metad)
    }

    /// The socket for berth-taskd: `--address` if given, else `--taskd` /
    /// `BERTH_TASKD_ADDRESS`.
    pub fn taskd_socket(&self) -> &PathBuf {
        self.address.as_ref().unwrap_or(&self.sockets.taskd)
    }

    pub fn namespace(&self) -> anyhow::Result<&str> {
        validate_namespace(&self.namespace)?;
        Ok(&self.namespace)
    }
}
