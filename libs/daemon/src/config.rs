use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags every daemon takes. Each one may also be set in the TOML file
/// named by `--config` (under the same name, with `_` for `-`); a flag wins
/// over the file, the file over the daemon's default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonFlags {
    /// Directory for the daemon's persistent data.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Directory for runtime state that does not survive a reboot.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Socket to serve on (a filesystem path; ignored under socket activation).
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Group (name or number) whose members may call the daemon besides root
    /// and the daemon's own user.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Serve Prometheus metrics over HTTP at this address: host:port, or an
    /// absolute path for a unix socket (GET /metrics). Off when unset.
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_address: Option<String>,
    /// Most the daemon's metadata store (LMDB) may grow to, in MiB (by
    /// default the daemon's own: 8192 for contentd, 4096 for snapd and
    /// metad). Raise it when the daemon reports that its metadata store is
    /// full; it applies from the next start.
    #[arg(long, value_name = "MIB")]
    pub metadata_max_mib: Option<u64>,
    /// Print the complete default configuration file (commented TOML:
    /// every key, each with its default) and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// A daemon's defaults, used where neither flag nor file says otherwise.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    /// The config file read when `--config` is not given, if it exists
    /// (`/etc/berth/<daemon>.toml`).
    pub config: PathBuf,
}

/// The configuration a daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub socket_group: Option<String>,
    /// Where to serve metrics, if anywhere.
    pub metrics_address: Option<crate::MetricsAddress>,
    /// The metadata store's size limit, if not the daemon's own.
    pub metadata_max_mib: Option<u64>,
    /// Path of the config file, if one was given.
    pub file: Option<PathBuf>,
    /// Keys of the file that are not common to all daemons.
    pub rest: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    address: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    socket_group: Option<String>,
    metrics_address: Option<String>,
    metadata_max_mib: Option<u64>,
    /// The daemon's own keys; see [`DaemonConfig::daemon_settings`].
    #[serde(flatten)]
    rest: toml::Table,
}

/// The complete default configuration of a daemon as commented TOML: the
/// keys every daemon takes, then `own` (its own keys, each with its default
/// as a TOML value, or None for "unset"). Each key's comment is the help
/// of the flag of the same name in `command` (the daemon's clap command),
/// so the file and `--help` say the same.
pub fn default_config_toml(
    command: &clap::Command,
    defaults: &Defaults,
    own: &[(&str, Option<toml::Value>)],
) -> String {
    let path = |p: &Path| Some(toml::Value::String(p.display().to_string()));
    let common = [
        ("root", path(&defaults.root)),
        ("state", path(&defaults.state)),
        ("address", path(&defaults.address)),
        ("log_level", Some(toml::Value::String("info".to_string()))),
        ("log_format", Some(toml::Value::String("text".to_string()))),
        ("socket_group", None),
        ("metrics_address", None),
        ("metadata_max_mib", None),
    ];
    let mut text = format!(
        "# {} configuration: read from {} when it exists, or from --config\n\
         # FILE. A flag wins over its key here.\n",
        command.get_name(),
        defaults.config.display()
    );
    for (key, value) in common.iter().cloned().chain(own.iter().cloned()) {
        let flag = key.replace('_', "-");
        let help = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag.as_str()))
            .and_then(|arg| arg.get_help())
            .map(|help| help.to_string())
            .unwrap_or_default();
        text.push('\n');
        for line in help.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        match value {
            Some(value) => text.push_str(&format!("{key} = {value}\n")),
            None => text.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    text
}

/// The socket of another daemon: its flag, else its key in the config
/// file, else `default`.
pub fn peer_socket(flag: Option<PathBuf>, setting: Option<PathBuf>, default: &str) -> PathBuf {
    flag.or(setting).unwrap_or_else(|| PathBuf::from(default))
}

impl DaemonConfig {
    pub fn resolve(flags: &DaemonFlags, defaults: Defaults) -> Result<DaemonConfig, DaemonError> {
        let path = match &flags.config {
            Some(path) => Some(path.clone()),
            None => Some(defaults.config.clone()).filter(|path| path.exists()),
        };
        let file = match &path {
            Some(path) => read_config_file(path)?,
            None => FileConfig::default(),
        };
        let config = DaemonConfig {
            root: flags.root.clone().or(file.root).unwrap_or(defaults.root),
            state: flags.state.clone().or(file.state).unwrap_or(defaults.state),
            address: flags
                .address
                .clone()
                .or(file.address)
                .unwrap_or(defaults.address),
            log_level: flags
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            log_format: flags
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            socket_group: flags.socket_group.clone().or(file.socket_group),
            metrics_address: flags
                .metrics_address
                .clone()
                .or(file.metrics_address)
                .map(|text| text.parse())
                .transpose()?,
            metadata_max_mib: flags.metadata_max_mib.or(file.metadata_max_mib),
            file: path,
            rest: file.rest,
        };
        if config.metadata_max_mib == Some(0) {
            return Err(DaemonError::InvalidSetting(
                "metadata_max_mib must be at least 1".to_string(),
            ));
        }
        for (name, path) in [
            ("root", &config.root),
            ("state", &config.state),
            ("address", &config.address),
        ] {
            if !path.is_absolute() {
                return Err(DaemonError::InvalidSetting(format!(
                    "{name} must be an absolute path, not {}",
                    path.display()
                )));
            }
        }
        Ok(config)
    }
}

impl DaemonConfig {
    /// The daemon's own settings from the file's remaining keys. `T` should
    /// deny unknown fields, so a misspelt key is an error, not ignored.
    pub fn daemon_settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, DaemonError> {
        toml::Value::Table(self.rest.clone())
            .try_into()
            .map_err(|e: toml::de::Error| DaemonError::Config {
                path: self.file.clone().unwrap_or_default(),
                message: e.message().to_string(),
            })
    }
}

fn read_config_file(path: &Path) -> Result<FileConfig, DaemonError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| DaemonError::io("reading config", path, e))?;
    toml::from_str(&text).map_err(|e| DaemonError::Config {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            root: "/var/lib/berth/x".into(),
            state: "/run/berth/x".into(),
            address: "/run/berth/x.sock".into(),
            config: "/nonexistent/berth/x.toml".into(),
        }
    }

    #[derive(Debug, clap::Parser)]
    #[command(name = "berth-exampled")]
    struct ExampleCli {
        #[command(flatten)]
        daemon: DaemonFlags,
        /// Where the example lives.
        #[arg(long)]
        example_dir: Option<PathBuf>,
    }

    #[test]
    fn the_default_config_parses_back_to_the_defaults_with_every_key_explained() {
        use clap::CommandFactory;
        let text = default_config_toml(
            &ExampleCli::command(),
            &defaults(),
            &[("example_dir", Some(toml::Value::String("/ex".into())))],
        );
        for key in [
            "root",
            "state",
            "address",
            "log_level",
            "log_format",
            "example_dir",
        ] {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing:\n{text}"
            );
        }
        assert!(text.contains("# socket_group = (unset)"), "{text}");
        assert!(text.contains("# Where the example lives"), "{text}");
        assert!(
            text.contains("# Directory for the daemon's persistent data"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, &text).unwrap();
        let flags = DaemonFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(&flags, defaults()).unwrap();
        let expected = DaemonConfig {
            root: defaults().root,
            state: defaults().state,
            address: defaults().address,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            socket_group: None,
            metrics_address: None,
            metadata_max_mib: None,
            file: Some(file),
            rest: config.rest.clone(),
        };
        assert_eq!(config, expected);
        assert_eq!(
            config.rest.get("example_dir"),
            Some(&toml::Value::String("/ex".into()))
        );
    }

    #[test]
    fn a_peer_socket_comes_from_the_flag_then_the_file_then_the_default() {
        let (flag, file) = (PathBuf::from("/f.sock"), PathBuf::from("/c.sock"));
        assert_eq!(
            peer_socket(Some(flag.clone()), Some(file.clone()), "/d.sock"),
            flag
        );
        assert_eq!(peer_socket(None, Some(file.clone()), "/d.sock"), file);
        assert_eq!(peer_socket(None, None, "/d.sock"), PathBuf::from("/d.sock"));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "root = \"/file/root\"\nstate = \"/file/state\"\nlog_format = \"json\"\nsocket_group = \"berth\"\n",
        )
        .unwrap();
        let flags = DaemonFlags {
            root: Some("/flag/root".into()),
            config: Some(file),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(&flags, defaults()).unwrap();
        assert_eq!(config.root, PathBuf::from("/flag/root"));
        assert_eq!(config.state, PathBuf::from("/file/state"));
        assert_eq!(config.address, PathBuf::from("/run/berth/x.sock"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_level, "info");
        assert_eq!(config.socket_group.as_deref(), Some("berth"));
    }

    #[test]
    fn daemon_specific_keys_come_from_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "hosts_dir = \"/etc/x\"\nroot = \"/r\"\n").unwrap();
        let flags = DaemonFlags {
            config: Some(file),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(&flags, defaults()).unwrap();
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Own {
            hosts_dir: Option<String>,
        }
        let own: Own = config.daemon_settings().unwrap();
        assert_eq!(own.hosts_dir.as_deref(), Some("/etc/x"));
        assert_eq!(config.root, PathBuf::from("/r"));
    }

    #[test]
    fn unknown_keys_and_relative_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "roots = \"/x\"\n").unwrap();
        let flags = DaemonFlags {
            config: Some(file),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(&flags, defaults()).unwrap();
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Own {
            #[allow(dead_code)]
            hosts_dir: Option<String>,
        }
        let err = config.daemon_settings::<Own>().unwrap_err();
        assert!(err.to_string().contains("roots"), "{err}");

        let flags = DaemonFlags {
            root: Some("relative".into()),
            ..Default::default()
        };
        assert!(DaemonConfig::resolve(&flags, defaults()).is_err());
    }

    #[test]
    fn the_default_file_is_read_when_it_exists_and_no_config_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.toml");
        let with_default_file = || Defaults {
            config: file.clone(),
            ..defaults()
        };
        // Absent: the built-in defaults, no file.
        let config = DaemonConfig::resolve(&DaemonFlags::default(), with_default_file()).unwrap();
        assert_eq!(config.file, None);
        assert_eq!(config.metrics_address, None);

        std::fs::write(
            &file,
            "log_level = \"debug\"\nmetrics_address = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        let config = DaemonConfig::resolve(&DaemonFlags::default(), with_default_file()).unwrap();
        assert_eq!(config.file.as_deref(), Some(file.as_path()));
        assert_eq!(config.log_level, "debug");
        assert_eq!(
            config.metrics_address,
            Some(crate::MetricsAddress::Tcp("127.0.0.1:9100".into()))
        );

        // --config names another file: the default one is not read.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "log_level = \"warn\"\n").unwrap();
        let flags = DaemonFlags {
            config: Some(other.clone()),
            ..Default::default()
        };
        let config = DaemonConfig::resolve(&flags, with_default_file()).unwrap();
        assert_eq!(config.file, Some(other));
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.metrics_address, None);

        // A bad metrics address in the file is an error, not ignored.
        std::fs::write(&file, "metrics_address = \"nowhere\"\n").unwrap();
        assert!(DaemonConfig::resolve(&DaemonFlags::default(), with_default_file()).is_err());
    }
}
