//! What the image's config says about running it.

use oci_spec::image::ImageConfiguration;

/// The run-time defaults an image carries in its config (`config` of the
/// OCI image configuration): missing fields are empty.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    /// `Env`: `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the arguments appended to the entrypoint.
    pub cmd: Vec<String>,
    /// `WorkingDir`; empty for `/`.
    pub working_dir: String,
    /// `User`; empty for root.
    pub user: String,
    /// `StopSignal`, for whoever stops the container (not part of the spec).
    pub stop_signal: Option<String>,
    /// `Volumes`: the paths the image wants kept out of its writable layer,
    /// in order.
    pub volumes: Vec<String>,
}

impl ImageDefaults {
    /// The defaults of an image configuration.
    pub fn from_config(config: &ImageConfiguration) -> ImageDefaults {
        let Some(c) = config.config() else {
            return ImageDefaults::default();
        };
        ImageDefaults {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            stop_signal: c.stop_signal().clone(),
            volumes: c
                .volumes()
                .iter()
                .flatten()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn from_config_takes_the_run_fields() {
        let json = br#"{
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {
                "Env": ["PATH=/bin", "A=b"],
                "Entrypoint": ["/entry"],
                "Cmd": ["serve", "--port=80"],
                "WorkingDir": "/srv",
                "User": "www:www",
                "StopSignal": "SIGQUIT",
                "Volumes": {"/var/lib/db": {}, "/cache": {}}
            }
        }"#;
        let config: ImageConfiguration = serde_json::from_slice(json).unwrap();
        let d = ImageDefaults::from_config(&config);
        assert_eq!(d.env, ["PATH=/bin", "A=b"]);
        assert_eq!(d.entrypoint, ["/entry"]);
        assert_eq!(d.cmd, ["serve", "--port=80"]);
        assert_eq!(d.working_dir, "/srv");
        assert_eq!(d.volumes, ["/cache", "/var/lib/db"]);
        assert_eq!(d.user, "www:www");
        assert_eq!(d.stop_signal.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn from_config_without_config_is_empty() {
        let json = br#"{"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}}"#;
        let config: ImageConfiguration = serde_json::from_slice(json).unwrap();
        let d = ImageDefaults::from_config(&config);
        assert!(d.env.is_empty() && d.entrypoint.is_empty() && d.cmd.is_empty());
        assert!(d.user.is_empty() && d.working_dir.is_empty() && d.stop_signal.is_none());
    }
}
