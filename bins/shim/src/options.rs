//! The runtime options containerd hands a shim, in every form it sends
//! them, read into one model ([`RuntimeOptions`]).
//!
//! The same settings arrive in several wrappers, depending on the caller:
//!
//! - `containerd.runc.v1.Options`: runtimes named `io.containerd.runc.*`,
//!   and any runtime a caller configures with runc's option type;
//! - `containerd.linux.runc.CreateOptions`: what containerd's Go client
//!   sends for every other runtime name when it sets a shim cgroup, io
//!   owner, no-pivot or no-new-keyring (`WithShimCgroup` and friends);
//! - `containerd.linux.runc.RuncOptions`: the legacy v1 linux runtime's
//!   runtime name, root and systemd flag;
//! - `runtimeoptions.v1.Options`: what `ctr --runtime-config-path` and the
//!   CRI plugin send for runtimes that are not runc: a `config_path` to a
//!   TOML file, or (containerd 2.x) the runtime's TOML options section as
//!   `config_body`. Both are read with runc's option names (`BinaryName`,
//!   `Root`, `SystemdCgroup`, `ShimCgroup`, ...).
//!
//! On `start`'s stdin, containerd 2.3 and later wrap the options in a
//! `containerd.runtime.bootstrap.v1.BootstrapParams`; [`StartInput`] tells
//! the two stdin forms apart.
//!
//! Options of a type not listed are ignored, as the Go shim does for types
//! it has no use for; options that claim a listed type but do not decode
//! are an error.

use std::path::Path;

use containerd_shim_protos::bootstrap_api::BootstrapParams;
use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;

use crate::error::{Result, ShimError};

pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
pub const LINUX_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";
pub const LINUX_RUNC_OPTIONS: &str = "containerd.linux.runc.RuncOptions";
pub const CONFIG_FILE_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The runtime settings a shim takes from containerd, whatever wrapper
/// they came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeOptions {
    /// The OCI runtime to run ("" = `runc`).
    pub binary_name: String,
    /// The runtime's state root ("" = the shim's default).
    pub root: String,
    pub systemd_cgroup: bool,
    /// The cgroup `start` moves the shim's server into ("" = none).
    pub shim_cgroup: String,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    /// The owner of the pipes the container's stdio goes through, for a
    /// container whose root is mapped to another user (0 = root).
    pub io_uid: u32,
    pub io_gid: u32,
    /// The runc options as they came, for `-info` to echo.
    pub runc: Option<RuncOptions>,
}

impl RuntimeOptions {
    /// Reads an options `Any` (a Create request's `options`, or `start`'s
    /// legacy stdin). `None` and unknown types give the defaults.
    pub fn from_any(any: Option<&Any>) -> Result<RuntimeOptions> {
        let Some(any) = any else {
            return Ok(RuntimeOptions::default());
        };
        // Type URLs come bare ("containerd.runc.v1.Options") or with a
        // prefix ("types.containerd.io/containerd.runc.v1.Options").
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        match name {
            RUNC_OPTIONS => {
                let runc = RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| ShimError::protobuf("decoding runc options", e))?;
                Ok(RuntimeOptions::from_runc(runc))
            }
            LINUX_CREATE_OPTIONS => decode_linux_create_options(&any.value),
            LINUX_RUNC_OPTIONS => decode_linux_runc_options(&any.value),
            CONFIG_FILE_OPTIONS => {
                let (path, body) = decode_config_file_options(&any.value)?;
                if !path.is_empty() {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        ShimError::io(format!("reading the runtime config {path}"), e)
                    })?;
                    RuntimeOptions::from_toml(&text, &path)
                } else if !body.is_empty() {
                    let text = String::from_utf8(body).map_err(|_| {
                        ShimError::InvalidArgument("runtime config body is not UTF-8".into())
                    })?;
                    RuntimeOptions::from_toml(&text, "the runtime's options section")
                } else {
                    Ok(RuntimeOptions::default())
                }
            }
            _ => Ok(RuntimeOptions::default()),
        }
    }

    fn from_runc(runc: RuncOptions) -> RuntimeOptions {
        RuntimeOptions {
            binary_name: runc.binary_name.clone(),
            root: runc.root.clone(),
            systemd_cgroup: runc.systemd_cgroup,
            shim_cgroup: runc.shim_cgroup.clone(),
            no_pivot_root: runc.no_pivot_root,
            no_new_keyring: runc.no_new_keyring,
            io_uid: runc.io_uid,
            io_gid: runc.io_gid,
            runc: Some(runc),
        }
    }

    /// Runc's option names in a TOML document (a `ConfigPath` file or the
    /// CRI plugin's options section); `origin` names it in errors. The
    /// document is flat `Key = value` lines (see [`parse_option_document`]);
    /// an unknown key is an error rather than a setting silently lost.
    pub fn from_toml(text: &str, origin: &str) -> Result<RuntimeOptions> {
        let invalid = |message: String| {
            ShimError::InvalidArgument(format!("runtime options in {origin}: {message}"))
        };
        let mut runc = RuncOptions::new();
        for (key, value) in parse_option_document(text).map_err(invalid)? {
            let wrong_type = || invalid(format!("{key} has the wrong type"));
            let string = |value: &OptionValue| match value {
                OptionValue::String(s) => Ok(s.clone()),
                _ => Err(wrong_type()),
            };
            let boolean = |value: &OptionValue| match value {
                OptionValue::Bool(b) => Ok(*b),
                _ => Err(wrong_type()),
            };
            let id = |value: &OptionValue| match value {
                OptionValue::Integer(n) => u32::try_from(*n).map_err(|_| wrong_type()),
                _ => Err(wrong_type()),
            };
            match key.as_str() {
                "BinaryName" => runc.binary_name = string(&value)?,
                "Root" => runc.root = string(&value)?,
                "SystemdCgroup" => runc.systemd_cgroup = boolean(&value)?,
                "ShimCgroup" => runc.shim_cgroup = string(&value)?,
                "NoPivotRoot" => runc.no_pivot_root = boolean(&value)?,
                "NoNewKeyring" => runc.no_new_keyring = boolean(&value)?,
                "IoUid" => runc.io_uid = id(&value)?,
                "IoGid" => runc.io_gid = id(&value)?,
                "CriuImagePath" => runc.criu_image_path = string(&value)?,
                "CriuWorkPath" => runc.criu_work_path = string(&value)?,
                // The CRI plugin's own keys, when it passes its whole
                // options section.
                "TypeUrl" | "ConfigPath" => {}
                other => return Err(invalid(format!("unknown option {other:?}"))),
            }
        }
        Ok(RuntimeOptions::from_runc(runc))
    }
}

/// A value in a runtime options document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OptionValue {
    String(String),
    Bool(bool),
    Integer(i64),
}

/// Reads the flat TOML runtime options are written in: `Key = value`
/// lines, with strings (basic `"..."` with escapes, or literal `'...'`),
/// booleans and decimal integers, blank lines and `#` comments. Tables,
/// arrays, dotted keys and multi-line strings, which no runc option needs,
/// are refused with the line they are on. (The shim parses this itself
/// rather than through the `toml` crate: the crate's code would add about
/// 150 KiB to every idle shim's resident memory.)
fn parse_option_document(text: &str) -> std::result::Result<Vec<(String, OptionValue)>, String> {
    let mut entries: Vec<(String, OptionValue)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let at = |message: &str| format!("line {line_number}: {message}");
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            return Err(at("tables are not supported in runtime options"));
        }
        let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
            parse_basic_string(quoted).map_err(|e| at(&e))?
        } else {
            let end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(line.len());
            (line[..end].to_string(), &line[end..])
        };
        if key.is_empty() {
            return Err(at("expected a key"));
        }
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            return Err(at(
                "expected `=` after the key (dotted keys are not supported)",
            ));
        };
        let rest = rest.trim_start();
        let (value, rest) = if let Some(quoted) = rest.strip_prefix('"') {
            if quoted.starts_with("\"\"") {
                return Err(at("multi-line strings are not supported"));
            }
            let (s, rest) = parse_basic_string(quoted).map_err(|e| at(&e))?;
            (OptionValue::String(s), rest)
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            if quoted.starts_with("''") {
                return Err(at("multi-line strings are not supported"));
            }
            let Some(end) = quoted.find('\'') else {
                return Err(at("unterminated string"));
            };
            (
                OptionValue::String(quoted[..end].to_string()),
                &quoted[end + 1..],
            )
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '#')
                .unwrap_or(rest.len());
            let word = &rest[..end];
            let value =
                match word {
                    "true" => OptionValue::Bool(true),
                    "false" => OptionValue::Bool(false),
                    _ => OptionValue::Integer(parse_integer(word).ok_or_else(|| {
                        at(&format!("{word:?} is not a string, boolean or integer"))
                    })?),
                };
            (value, &rest[end..])
        };
        let rest = rest.trim_start();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(at(&format!("unexpected {rest:?} after the value")));
        }
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(at(&format!("{key} is given twice")));
        }
        entries.push((key, value));
    }
    Ok(entries)
}

/// A basic string's contents after its opening quote, escapes decoded;
/// returns it and what follows the closing quote.
fn parse_basic_string(text: &str) -> std::result::Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '\\' => {
                let (_, escaped) = chars.next().ok_or("unterminated string")?;
                match escaped {
                    'b' => out.push('\u{8}'),
                    't' => out.push('\t'),
                    'n' => out.push('\n'),
                    'f' => out.push('\u{c}'),
                    'r' => out.push('\r'),
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    'u' | 'U' => {
                        let digits = if escaped == 'u' { 4 } else { 8 };
                        let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == digits)
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad escape \\{escaped}{hex}"))?;
                        out.push(code);
                    }
                    other => return Err(format!("bad escape \\{other}")),
                }
            }
            c if c.is_control() && c != '\t' => return Err("control character in a string".into()),
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

/// A decimal TOML integer: optional sign, digits, single underscores
/// between digits, no leading zero.
fn parse_integer(word: &str) -> Option<i64> {
    let digits = word.strip_prefix(['+', '-']).unwrap_or(word);
    let well_formed = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return None;
    }
    word.replace('_', "").parse().ok()
}

/// What `start` reads on stdin.
#[derive(Debug, Default)]
pub struct StartInput {
    pub options: RuntimeOptions,
    /// containerd's version, when it sent the 2.3+ bootstrap parameters.
    pub containerd_version: Option<String>,
}

impl StartInput {
    /// Empty stdin: no options (containerd 1.6–2.2 without options). A
    /// `BootstrapParams` naming this shim's id and namespace, or carrying
    /// any field a legacy `Any` cannot have: containerd 2.3+, options in
    /// its extensions. Otherwise a legacy options `Any`.
    pub fn parse(stdin: &[u8], id: &str, namespace: &str) -> Result<StartInput> {
        if stdin.is_empty() {
            return Ok(StartInput::default());
        }
        if let Ok(params) = BootstrapParams::parse_from_bytes(stdin) {
            let new_format = (params.instance_id == id && params.namespace == namespace)
                || !params.containerd_version.is_empty()
                || !params.containerd_ttrpc_address.is_empty()
                || !params.containerd_grpc_address.is_empty()
                || !params.containerd_binary.is_empty()
                || !params.extensions.is_empty()
                || params.socket_dir.is_some();
            if new_format {
                let mut options = RuntimeOptions::default();
                for extension in &params.extensions {
                    let found = RuntimeOptions::from_any(extension.value.as_ref())?;
                    if found != RuntimeOptions::default() {
                        options = found;
                    }
                }
                return Ok(StartInput {
                    options,
                    containerd_version: Some(params.containerd_version.clone()),
                });
            }
        }
        let any = Any::parse_from_bytes(stdin)
            .map_err(|e| ShimError::protobuf("decoding the runtime options on stdin", e))?;
        Ok(StartInput {
            options: RuntimeOptions::from_any(Some(&any))?,
            containerd_version: None,
        })
    }
}

/// Reads `options` from a file containing the protobuf encoding of an
/// `Any`, as `-info` gets it (empty = none).
pub fn any_from_bytes(bytes: &[u8]) -> Result<Option<Any>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Any::parse_from_bytes(bytes)
        .map(Some)
        .map_err(|e| ShimError::protobuf("decoding the runtime options", e))
}

/// Walks the fields of a protobuf message no crate publishes the type of,
/// handing each known field number to `field` and skipping the rest.
fn decode_fields(
    bytes: &[u8],
    what: &str,
    mut field: impl FnMut(u32, &mut CodedInputStream<'_>) -> protobuf::Result<bool>,
) -> Result<()> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let malformed = |e| ShimError::protobuf(format!("decoding {what}"), e);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
        if field(tag >> 3, &mut input).map_err(malformed)? {
            continue;
        }
        let wire = WireType::new(tag & 7).ok_or_else(|| {
            ShimError::InvalidArgument(format!("decoding {what}: bad wire type in tag {tag}"))
        })?;
        input.skip_field(wire).map_err(malformed)?;
    }
    Ok(())
}

/// `containerd.linux.runc.CreateOptions` (containerd's runctypes).
fn decode_linux_create_options(bytes: &[u8]) -> Result<RuntimeOptions> {
    let mut options = RuntimeOptions::default();
    decode_fields(bytes, LINUX_CREATE_OPTIONS, |number, input| {
        match number {
            1 => options.no_pivot_root = input.read_bool()?,
            8 => options.no_new_keyring = input.read_bool()?,
            9 => options.shim_cgroup = input.read_string()?,
            10 => options.io_uid = input.read_uint32()?,
            11 => options.io_gid = input.read_uint32()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(options)
}

/// `containerd.linux.runc.RuncOptions` (the v1 linux runtime's).
fn decode_linux_runc_options(bytes: &[u8]) -> Result<RuntimeOptions> {
    let mut options = RuntimeOptions::default();
    decode_fields(bytes, LINUX_RUNC_OPTIONS, |number, input| {
        match number {
            1 => options.binary_name = input.read_string()?,
            2 => options.root = input.read_string()?,
            4 => options.systemd_cgroup = input.read_bool()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(options)
}

/// `runtimeoptions.v1.Options`: (config path, config body).
fn decode_config_file_options(bytes: &[u8]) -> Result<(String, Vec<u8>)> {
    let (mut path, mut body) = (String::new(), Vec::new());
    decode_fields(bytes, CONFIG_FILE_OPTIONS, |number, input| {
        match number {
            2 => path = input.read_string()?,
            3 => body = input.read_bytes()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if !path.is_empty() && !Path::new(&path).is_absolute() {
        return Err(ShimError::InvalidArgument(format!(
            "runtime config path {path:?} is not absolute"
        )));
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::bootstrap_api::Extension;
    use protobuf::CodedOutputStream;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = value;
        any
    }

    /// Encodes fields (number, value) the way Go's protobuf does.
    enum F<'a> {
        Bool(u32, bool),
        Str(u32, &'a str),
        U32(u32, u32),
    }

    fn encode(fields: &[F<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut out = CodedOutputStream::vec(&mut bytes);
        for field in fields {
            match field {
                F::Bool(n, v) => out.write_bool(*n, *v).unwrap(),
                F::Str(n, v) => out.write_string(*n, v).unwrap(),
                F::U32(n, v) => out.write_uint32(*n, *v).unwrap(),
            }
        }
        out.flush().unwrap();
        drop(out);
        bytes
    }

    #[test]
    fn runc_options_are_read_with_or_without_a_type_url_prefix() {
        let mut runc = RuncOptions::new();
        runc.binary_name = "crun".into();
        runc.shim_cgroup = "/shims".into();
        runc.io_uid = 1000;
        let value = runc.write_to_bytes().unwrap();
        for url in [
            RUNC_OPTIONS,
            "types.containerd.io/containerd.runc.v1.Options",
        ] {
            let options = RuntimeOptions::from_any(Some(&any(url, value.clone()))).unwrap();
            assert_eq!(options.binary_name, "crun");
            assert_eq!(options.shim_cgroup, "/shims");
            assert_eq!(options.io_uid, 1000);
            assert_eq!(options.runc.as_ref(), Some(&runc));
        }
    }

    #[test]
    fn linux_create_options_carry_the_shim_cgroup_and_io_owner() {
        let value = encode(&[
            F::Bool(1, true),
            F::Bool(4, true), // terminal: not ours, skipped
            F::Str(7, "ignored"),
            F::Bool(8, true),
            F::Str(9, "/berth/shims"),
            F::U32(10, 100_000),
            F::U32(11, 100_001),
            F::Str(13, "/criu"),
        ]);
        let options = RuntimeOptions::from_any(Some(&any(LINUX_CREATE_OPTIONS, value))).unwrap();
        assert_eq!(
            options,
            RuntimeOptions {
                no_pivot_root: true,
                no_new_keyring: true,
                shim_cgroup: "/berth/shims".into(),
                io_uid: 100_000,
                io_gid: 100_001,
                ..RuntimeOptions::default()
            }
        );
    }

    #[test]
    fn linux_runc_options_name_the_runtime() {
        let value = encode(&[F::Str(1, "crun"), F::Str(2, "/run/crun"), F::Bool(4, true)]);
        let options = RuntimeOptions::from_any(Some(&any(LINUX_RUNC_OPTIONS, value))).unwrap();
        assert_eq!(options.binary_name, "crun");
        assert_eq!(options.root, "/run/crun");
        assert!(options.systemd_cgroup);
    }

    #[test]
    fn a_config_path_is_read_as_runc_options_in_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "BinaryName = \"/usr/local/bin/runc-wrapper\"\nSystemdCgroup = true\n\
             ShimCgroup = \"/shims\"\nIoUid = 5\n",
        )
        .unwrap();
        let value = encode(&[F::Str(2, path.to_str().unwrap())]);
        let options = RuntimeOptions::from_any(Some(&any(CONFIG_FILE_OPTIONS, value))).unwrap();
        assert_eq!(options.binary_name, "/usr/local/bin/runc-wrapper");
        assert!(options.systemd_cgroup);
        assert_eq!(options.shim_cgroup, "/shims");
        assert_eq!(options.io_uid, 5);

        std::fs::write(&path, "BinaryNam = \"typo\"\n").unwrap();
        let value = encode(&[F::Str(2, path.to_str().unwrap())]);
        let err = RuntimeOptions::from_any(Some(&any(CONFIG_FILE_OPTIONS, value))).unwrap_err();
        assert!(err.to_string().contains("BinaryNam"), "{err}");

        let value = encode(&[F::Str(2, "relative.toml")]);
        assert!(RuntimeOptions::from_any(Some(&any(CONFIG_FILE_OPTIONS, value))).is_err());
        let missing = dir.path().join("missing.toml");
        let value = encode(&[F::Str(2, missing.to_str().unwrap())]);
        assert!(RuntimeOptions::from_any(Some(&any(CONFIG_FILE_OPTIONS, value))).is_err());
    }

    #[test]
    fn a_config_body_is_the_cri_plugins_options_section() {
        let body = "TypeUrl = \"x\"\nBinaryName = \"crun\"\nRoot = \"/run/crun\"\n";
        let mut bytes = Vec::new();
        let mut out = CodedOutputStream::vec(&mut bytes);
        out.write_string(1, "x").unwrap();
        out.write_bytes(3, body.as_bytes()).unwrap();
        out.flush().unwrap();
        drop(out);
        let options = RuntimeOptions::from_any(Some(&any(CONFIG_FILE_OPTIONS, bytes))).unwrap();
        assert_eq!(options.binary_name, "crun");
        assert_eq!(options.root, "/run/crun");
    }

    #[test]
    fn unknown_types_and_no_options_give_the_defaults_but_broken_ones_fail() {
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        let other = any("io.example.Options", vec![1, 2, 3]);
        assert_eq!(
            RuntimeOptions::from_any(Some(&other)).unwrap(),
            RuntimeOptions::default()
        );
        let broken = any(RUNC_OPTIONS, vec![0x0a, 0xff]);
        assert!(RuntimeOptions::from_any(Some(&broken)).is_err());
        let broken = any(LINUX_CREATE_OPTIONS, vec![0x4a, 0x05, b'a']);
        assert!(RuntimeOptions::from_any(Some(&broken)).is_err());
    }

    #[test]
    fn start_input_tells_bootstrap_params_from_a_legacy_any() {
        assert_eq!(
            StartInput::parse(&[], "c1", "default").unwrap().options,
            RuntimeOptions::default()
        );

        let mut runc = RuncOptions::new();
        runc.shim_cgroup = "/shims".into();
        let options_any = any(RUNC_OPTIONS, runc.write_to_bytes().unwrap());
        let legacy =
            StartInput::parse(&options_any.write_to_bytes().unwrap(), "c1", "default").unwrap();
        assert_eq!(legacy.options.shim_cgroup, "/shims");
        assert_eq!(legacy.containerd_version, None);

        let mut params = BootstrapParams::new();
        params.instance_id = "c1".into();
        params.namespace = "default".into();
        params.containerd_version = "v2.3.0".into();
        let mut extension = Extension::new();
        extension.value = Some(options_any).into();
        params.extensions.push(extension);
        let bootstrap =
            StartInput::parse(&params.write_to_bytes().unwrap(), "c1", "default").unwrap();
        assert_eq!(bootstrap.options.shim_cgroup, "/shims");
        assert_eq!(bootstrap.containerd_version.as_deref(), Some("v2.3.0"));

        // Only id and namespace, as a BootstrapParams: still the new form
        // (a legacy Any would read them as type URL and value).
        let mut bare = BootstrapParams::new();
        bare.instance_id = "c1".into();
        bare.namespace = "default".into();
        let parsed = StartInput::parse(&bare.write_to_bytes().unwrap(), "c1", "default").unwrap();
        assert_eq!(parsed.options, RuntimeOptions::default());
        assert!(parsed.containerd_version.is_some());

        // Any one field a legacy Any cannot have makes it the new form,
        // whatever the id; the id alone, or the namespace alone, does not.
        let setters: [fn(&mut BootstrapParams); 6] = [
            |p| p.containerd_version = "v2.3.0".into(),
            |p| p.containerd_ttrpc_address = "/run/c.sock.ttrpc".into(),
            |p| p.containerd_grpc_address = "/run/c.sock".into(),
            |p| p.containerd_binary = "/usr/bin/containerd".into(),
            |p| p.extensions.push(Extension::new()),
            |p| p.socket_dir = Some("/run/s".into()),
        ];
        for set in setters {
            let mut params = BootstrapParams::new();
            params.instance_id = "other".into();
            set(&mut params);
            let parsed =
                StartInput::parse(&params.write_to_bytes().unwrap(), "c1", "default").unwrap();
            assert!(parsed.containerd_version.is_some(), "{params:?}");
        }
        for (id, namespace) in [("c1", "elsewhere"), ("other", "default")] {
            let mut params = BootstrapParams::new();
            params.instance_id = id.into();
            params.namespace = namespace.into();
            let parsed =
                StartInput::parse(&params.write_to_bytes().unwrap(), "c1", "default").unwrap();
            assert_eq!(parsed.containerd_version, None, "{id} {namespace}");
        }
    }

    #[test]
    fn option_documents_are_flat_toml() {
        let text = concat!(
            "# runc options\n",
            "\n",
            "BinaryName = \"/opt/a \\\"b\\\" \\u00e9\" # trailing\n",
            "Root = '/run/c:\\d'\n",
            "\"SystemdCgroup\" = true\n",
            "IoUid = 100_000\n",
            "IoGid = +7# no space before the comment\n",
            "Some-Key_2 = false\n",
            "Tabbed = \"a\tb\"\n",
        );
        let entries = parse_option_document(text).unwrap();
        assert_eq!(
            entries,
            vec![
                (
                    "BinaryName".into(),
                    OptionValue::String("/opt/a \"b\" \u{e9}".into())
                ),
                ("Root".into(), OptionValue::String("/run/c:\\d".into())),
                ("SystemdCgroup".into(), OptionValue::Bool(true)),
                ("IoUid".into(), OptionValue::Integer(100_000)),
                ("IoGid".into(), OptionValue::Integer(7)),
                ("Some-Key_2".into(), OptionValue::Bool(false)),
                ("Tabbed".into(), OptionValue::String("a\tb".into())),
            ]
        );
        let err = parse_option_document("A = 1\n\n[table]\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        for bad in [
            "[table]\n",
            "a.b = 1\n",
            "Key = [1, 2]\n",
            "Key = \"open\n",
            "Key = \"\"\"multi\n",
            "Key = '''multi\n",
            "Key = 1 2\n",
            "Key = 012\n",
            "Key = 1__0\n",
            "Key = \"bad \\q escape\"\n",
            "= 1\n",
            "Key = yes\n",
            "Key = 1\nKey = 2\n",
            "Key = \"a\u{1}b\"\n",
        ] {
            assert!(parse_option_document(bad).is_err(), "{bad:?} was accepted");
        }
        let err = RuntimeOptions::from_toml("IoUid = -1\n", "f").unwrap_err();
        assert!(err.to_string().contains("IoUid"), "{err}");
        let err = RuntimeOptions::from_toml("SystemdCgroup = \"yes\"\n", "f").unwrap_err();
        assert!(err.to_string().contains("SystemdCgroup"), "{err}");
    }
}
