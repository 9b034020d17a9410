//! The `-info` flag (containerd 2.x runtime introspection): the runtime
//! options on stdin, a `containerd.types.RuntimeInfo` protobuf on stdout.
//! containerd asks before creating a task whose spec has idmapped mounts,
//! and for `ctr plugins inspect-runtime` and the CRI plugin's runtime
//! handler features (recursive read-only mounts, user namespaces), which
//! it reads from `Features`: the OCI runtime's own `features` document.

use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::error::{Result, ShimError};
use crate::options::{self, RuntimeOptions};

/// The name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.berth.v2";
/// The type URL containerd registers for the runtime-spec `Features`
/// document (a JSON value in the `Any`).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Builds the encoded `RuntimeInfo` for the options on `stdin`. The
/// options are echoed back as given. Features come from `<runtime>
/// features`; a runtime without that command gives none, as with the Go
/// shim, but one that prints something other than JSON is an error.
pub fn run(stdin: &[u8]) -> Result<Vec<u8>> {
    let given = options::any_from_bytes(stdin)?;
    let options = RuntimeOptions::from_any(given.as_ref())?;
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.into();
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").into();
    info.version = Some(version).into();
    info.options = given.into();
    let binary = if options.binary_name.is_empty() {
        "runc"
    } else {
        options.binary_name.as_str()
    };
    if let Some(features) = runtime_features(binary)? {
        info.features = Some(features).into();
    }
    info.write_to_bytes()
        .map_err(|e| ShimError::protobuf("encoding the runtime info", e))
}

/// `<binary> features` as the `Any` containerd decodes, or none when the
/// runtime cannot say (no such binary, or no `features` command).
fn runtime_features(binary: &str) -> Result<Option<Any>> {
    let output = match Command::new(binary)
        .arg("features")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => output,
        _ => return Ok(None),
    };
    features_any(&output.stdout, binary).map(Some)
}

/// The document as the runtime printed it, once checked to be a JSON
/// object (containerd decodes it as JSON; nothing needs rewriting).
fn features_any(document: &[u8], binary: &str) -> Result<Any> {
    serde_json::from_slice::<serde::de::IgnoredAny>(document)
        .map_err(|e| ShimError::json(format!("reading `{binary} features`"), e))?;
    if !document.trim_ascii_start().starts_with(b"{") {
        return Err(ShimError::InvalidArgument(format!(
            "`{binary} features` did not print a JSON object"
        )));
    }
    let mut any = Any::new();
    any.type_url = FEATURES_TYPE_URL.into();
    any.value = document.trim_ascii().to_vec();
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::shim::oci::Options as RuncOptions;

    #[test]
    fn features_are_the_runtimes_json_document() {
        let any = features_any(
            br#"{"ociVersionMin": "1.0.0", "mountOptions": ["rro"]}"#,
            "runc",
        )
        .unwrap();
        assert_eq!(any.type_url, FEATURES_TYPE_URL);
        let back: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(back["mountOptions"][0], "rro");
        assert!(features_any(b"runc 1.1", "runc").is_err());
        assert!(features_any(b"[1]", "runc").is_err());
    }

    /// A runtime that fails `features` (or has no such binary) has none;
    /// one that answers gives its document.
    #[test]
    fn features_come_only_from_a_runtime_that_answers() {
        assert!(runtime_features("false").unwrap().is_none());
        assert!(runtime_features("/nonexistent/berth-runtime")
            .unwrap()
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("fake-runc");
        std::fs::write(
            &runtime,
            "#!/bin/sh\necho '{\"mountOptions\": [\"rro\"]}'\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // Another test thread forking while the script was open for writing
        // can make its exec fail with ETXTBSY for a moment: try again.
        let features = (0..20)
            .find_map(|_| {
                let found = runtime_features(runtime.to_str().unwrap()).unwrap();
                if found.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                found
            })
            .expect("the fake runtime's features");
        assert_eq!(features.value, br#"{"mountOptions": ["rro"]}"#);
    }

    #[test]
    fn info_names_the_shim_and_echoes_the_options() {
        let mut runc = RuncOptions::new();
        runc.binary_name = "/nonexistent/berth-no-runtime".into();
        let mut given = Any::new();
        given.type_url = options::RUNC_OPTIONS.into();
        given.value = runc.write_to_bytes().unwrap();
        let info =
            RuntimeInfo::parse_from_bytes(&run(&given.write_to_bytes().unwrap()).unwrap()).unwrap();
        assert_eq!(info.name, RUNTIME_NAME);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.options.as_ref(), Some(&given));
        assert!(info.features.is_none(), "a missing runtime has no features");

        assert!(run(b"\xff\xff").is_err(), "stdin that is no Any");
    }
}
