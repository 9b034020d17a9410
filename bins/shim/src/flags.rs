//! The shim's command line, in the Go `flag` package style containerd uses:
//! `-flag value`, `--flag value`, `-flag=value`, boolean flags without a
//! value, and the action word after all flags.

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address (`-address`).
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    /// Serve on this socket path instead of the inherited fd 3.
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    /// `-info`: print the runtime info for the options on stdin.
    pub info: bool,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Action {
    /// No action word: the long-lived server.
    #[default]
    Serve,
    Start,
    Delete,
}

impl Flags {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        let mut action = None;
        while let Some(arg) = args.next() {
            let Some(stripped) = arg.strip_prefix('-') else {
                if action.is_some() {
                    return Err(ShimError::InvalidArgument(format!(
                        "unexpected argument {arg:?}"
                    )));
                }
                action = Some(match arg.as_str() {
                    "start" => Action::Start,
                    "delete" => Action::Delete,
                    other => {
                        return Err(ShimError::InvalidArgument(format!(
                            "unknown action {other:?}"
                        )))
                    }
                });
                continue;
            };
            let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
            let (name, inline) = match stripped.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (stripped, None),
            };
            match name {
                "debug" => flags.debug = parse_bool(inline.as_deref())?,
                "v" | "version" => flags.version = parse_bool(inline.as_deref())?,
                "info" => flags.info = parse_bool(inline.as_deref())?,
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(value) => value,
                        None => args.next().ok_or_else(|| {
                            ShimError::InvalidArgument(format!("flag -{name} needs a value"))
                        })?,
                    };
                    match name {
                        "namespace" => flags.namespace = value,
                        "id" => flags.id = value,
                        "address" => flags.address = value,
                        "publish-binary" => flags.publish_binary = value,
                        "bundle" => flags.bundle = value,
                        _ => flags.socket = value,
                    }
                }
                other => {
                    return Err(ShimError::InvalidArgument(format!(
                        "flag provided but not defined: -{other}"
                    )))
                }
            }
        }
        flags.action = action.unwrap_or_default();
        Ok(flags)
    }

    /// The checks every action needs before it touches paths built from them.
    pub fn validate(&self) -> Result<()> {
        berth_ids::validate_namespace(&self.namespace)?;
        berth_ids::validate_id(&self.id)?;
        Ok(())
    }
}

fn parse_bool(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") => Ok(true),
        Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") => Ok(false),
        Some(other) => Err(ShimError::InvalidArgument(format!(
            "invalid boolean value {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags> {
        Flags::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn start_as_containerd_16_invokes_it() {
        let flags = parse(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(flags.action, Action::Start);
        assert_eq!(flags.namespace, "default");
        assert_eq!(flags.id, "c1");
        assert_eq!(flags.address, "/run/containerd/containerd.sock");
        assert_eq!(flags.publish_binary, "/usr/bin/containerd");
        assert!(flags.debug);
    }

    #[test]
    fn double_dash_and_equals_forms_and_serve_default() {
        let flags = parse(&["--namespace=ns", "--id", "x", "-bundle=/b", "-debug=false"]).unwrap();
        assert_eq!(flags.action, Action::Serve);
        assert_eq!(flags.namespace, "ns");
        assert_eq!(flags.id, "x");
        assert_eq!(flags.bundle, "/b");
        assert!(!flags.debug);
    }

    #[test]
    fn info_is_a_flag_not_an_action() {
        let flags = parse(&["-info"]).unwrap();
        assert!(flags.info);
        assert_eq!(flags.action, Action::Serve);
        assert!(parse(&["info"]).is_err());
    }

    #[test]
    fn rejects_unknown_flags_actions_and_missing_values() {
        assert!(parse(&["-bogus", "start"]).is_err());
        assert!(parse(&["-id", "x", "launch"]).is_err());
        assert!(parse(&["-id"]).is_err());
        assert!(parse(&["delete", "start"]).is_err());
    }

    #[test]
    fn validate_refuses_path_like_ids() {
        let flags = parse(&["-namespace", "default", "-id", "../etc", "delete"]).unwrap();
        assert!(flags.validate().is_err());
    }
}
