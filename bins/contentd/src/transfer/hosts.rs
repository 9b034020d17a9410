//! Where a registry's endpoints are and how to reach them: containerd's
//! `certs.d/<host>/hosts.toml` layout.
//!
//! ```toml
//! server = "https://registry.example:5000"   # the registry itself
//! ca = "/etc/berth/certs.d/registry.example:5000/ca.crt"
//! client = [["client.cert", "client.key"]]
//! skip_verify = false
//!
//! [host."https://mirror.example"]            # tried first, in file order
//! capabilities = ["pull", "resolve"]
//! ca = "mirror-ca.crt"
//! ```
//!
//! Relative paths are relative to the host's directory; `*.crt` files there
//! are extra CAs and `*.cert`/`*.key` pairs client certificates, as in
//! docker's `certs.d`. Without a file, the registry is
//! `https://<host>` (`https://registry-1.docker.io` for docker.io), or
//! `http://<host>` for loopback hosts and hosts the caller names as plain
//! HTTP.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use serde::Deserialize;

/// Largest hosts.toml read.
const MAX_HOSTS_FILE: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One place to send registry requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port`; requests go to `<base>/v2/...` unless
    /// `override_path`, when `base` already ends in the API path.
    pub base: String,
    /// The host credentials are for (the registry's, even for a mirror
    /// reached under another name, is never assumed: a mirror gets only
    /// its own credentials).
    pub host: String,
    pub override_path: bool,
    pub capabilities: Capabilities,
    pub ca_files: Vec<PathBuf>,
    pub client_pairs: Vec<(PathBuf, PathBuf)>,
    pub skip_verify: bool,
}

impl Endpoint {
    /// `<base>/v2/<rest>`.
    pub fn url(&self, rest: &str) -> String {
        if self.override_path {
            format!("{}/{rest}", self.base.trim_end_matches('/'))
        } else {
            format!("{}/v2/{rest}", self.base.trim_end_matches('/'))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    ca: StringOrList,
    #[serde(default)]
    client: ClientSetting,
    skip_verify: Option<bool>,
    capabilities: Option<Vec<String>>,
    override_path: Option<bool>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn paths(&self, dir: &Path) -> Vec<PathBuf> {
        match self {
            StringOrList::None => Vec::new(),
            StringOrList::One(s) => vec![dir.join(s)],
            StringOrList::Many(v) => v.iter().map(|s| dir.join(s)).collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum ClientSetting {
    #[default]
    None,
    /// One PEM holding certificate and key.
    One(String),
    Pairs(Vec<(String, String)>),
    Singles(Vec<String>),
}

impl ClientSetting {
    fn pairs(&self, dir: &Path) -> Vec<(PathBuf, PathBuf)> {
        match self {
            ClientSetting::None => Vec::new(),
            ClientSetting::One(s) => vec![(dir.join(s), dir.join(s))],
            ClientSetting::Pairs(v) => v.iter().map(|(c, k)| (dir.join(c), dir.join(k))).collect(),
            ClientSetting::Singles(v) => v.iter().map(|s| (dir.join(s), dir.join(s))).collect(),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_capabilities(list: &Option<Vec<String>>) -> Result<Capabilities> {
    let Some(list) = list else {
        return Ok(Capabilities::ALL);
    };
    let mut caps = Capabilities::default();
    for c in list {
        match c.as_str() {
            "pull" => caps.pull = true,
            "resolve" => caps.resolve = true,
            "push" => caps.push = true,
            other => {
                return Err(Error::invalid_argument(format!(
                    "hosts.toml: unknown capability {other:?}"
                )))
            }
        }
    }
    Ok(caps)
}

/// Extra CAs and client pairs dropped into the host's directory.
fn dir_certificates(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, PathBuf)>) {
    let mut cas = Vec::new();
    let mut pairs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (cas, pairs);
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => cas.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                if key.exists() {
                    pairs.push((path, key));
                }
            }
            _ => {}
        }
    }
    (cas, pairs)
}

/// The endpoints for `host`, mirrors first, the registry last.
pub fn endpoints(hosts_dir: Option<&Path>, host: &str, plain_http: bool) -> Result<Vec<Endpoint>> {
    let default_scheme = if plain_http || is_loopback(host) {
        "http"
    } else {
        "https"
    };
    let default_server = if host == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("{default_scheme}://{host}")
    };
    let dir = hosts_dir.and_then(|root| {
        // `host` is a validated reference domain: letters, digits, '.', '-',
        // ':' and brackets, never a path separator.
        [
            host.to_string(),
            host.replace(':', "_"),
            "_default".to_string(),
        ]
        .into_iter()
        .map(|name| root.join(name))
        .find(|d| d.is_dir())
    });
    let Some(dir) = dir else {
        return Ok(vec![Endpoint {
            base: default_server,
            host: host.to_string(),
            override_path: false,
            capabilities: Capabilities::ALL,
            ca_files: Vec::new(),
            client_pairs: Vec::new(),
            skip_verify: false,
        }]);
    };
    let file = dir.join("hosts.toml");
    let config = if file.exists() {
        let meta = std::fs::metadata(&file).map_err(|e| Error::io("reading hosts.toml", &e))?;
        if meta.len() > MAX_HOSTS_FILE {
            return Err(Error::invalid_argument(format!(
                "{} is too large",
                file.display()
            )));
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| Error::io("reading hosts.toml", &e))?;
        toml::from_str::<HostsFile>(&text)
            .map_err(|e| Error::invalid_argument(format!("{}: {}", file.display(), e.message())))?
    } else {
        HostsFile::default()
    };
    let (dir_cas, dir_pairs) = dir_certificates(&dir);
    let mut out = Vec::new();
    for (url, value) in &config.host {
        let table: HostsFile = value.clone().try_into().map_err(|e: toml::de::Error| {
            Error::invalid_argument(format!("hosts.toml [host.{url:?}]: {}", e.message()))
        })?;
        out.push(endpoint_from(url, &table, &dir, &dir_cas, &dir_pairs)?);
    }
    let server = config.server.clone().unwrap_or(default_server);
    let mut registry = endpoint_from(&server, &config, &dir, &dir_cas, &dir_pairs)?;
    registry.capabilities = Capabilities::ALL;
    out.push(registry);
    Ok(out)
}

fn endpoint_from(
    url: &str,
    config: &HostsFile,
    dir: &Path,
    dir_cas: &[PathBuf],
    dir_pairs: &[(PathBuf, PathBuf)],
) -> Result<Endpoint> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_argument(format!("hosts.toml: endpoint {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::invalid_argument(format!(
            "hosts.toml: endpoint {url:?} must be an http or https URL"
        )));
    }
    let host = match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_string(),
    };
    let mut ca_files = config.ca.paths(dir);
    ca_files.extend(dir_cas.iter().cloned());
    let mut client_pairs = config.client.pairs(dir);
    client_pairs.extend(dir_pairs.iter().cloned());
    Ok(Endpoint {
        base: url.trim_end_matches('/').to_string(),
        host,
        override_path: config.override_path.unwrap_or(false),
        capabilities: parse_capabilities(&config.capabilities)?,
        ca_files,
        client_pairs,
        skip_verify: config.skip_verify.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_hosts_dir() {
        let e = endpoints(None, "docker.io", false).unwrap();
        assert_eq!(e[0].base, "https://registry-1.docker.io");
        assert_eq!(
            e[0].url("library/busybox/manifests/1.36"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/1.36"
        );
        assert_eq!(
            endpoints(None, "127.0.0.1:5000", false).unwrap()[0].base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            endpoints(None, "localhost", false).unwrap()[0].base,
            "http://localhost"
        );
        assert_eq!(
            endpoints(None, "registry.example", false).unwrap()[0].base,
            "https://registry.example"
        );
        assert_eq!(
            endpoints(None, "registry.example", true).unwrap()[0].base,
            "http://registry.example"
        );
    }

    #[test]
    fn hosts_toml_mirrors_and_certificates() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("registry.example:5000");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("extra.crt"), "x").unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            r#"
server = "https://registry.example:5000"
ca = "ca.pem"
client = [["c.cert", "c.key"]]

[host."https://mirror.example"]
capabilities = ["pull", "resolve"]
skip_verify = true

[host."http://10.0.0.1:8080/custom/v2"]
capabilities = ["pull"]
override_path = true
"#,
        )
        .unwrap();
        let e = endpoints(Some(root.path()), "registry.example:5000", false).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].base, "https://mirror.example");
        assert!(e[0].skip_verify && !e[0].capabilities.push && e[0].capabilities.pull);
        assert_eq!(e[0].host, "mirror.example");
        assert_eq!(
            e[1].url("app/blobs/x"),
            "http://10.0.0.1:8080/custom/v2/app/blobs/x"
        );
        assert_eq!(e[2].base, "https://registry.example:5000");
        assert_eq!(
            e[2].ca_files,
            vec![dir.join("ca.pem"), dir.join("extra.crt")]
        );
        assert_eq!(
            e[2].client_pairs,
            vec![(dir.join("c.cert"), dir.join("c.key"))]
        );
        assert!(e[2].capabilities.push);
    }

    #[test]
    fn bad_hosts_files_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("r.example");
        std::fs::create_dir(&dir).unwrap();
        for bad in [
            "server = 5",
            "[host.\"ftp://x\"]\n",
            "[host.\"https://m\"]\ncapabilities = [\"delete\"]\n",
        ] {
            std::fs::write(dir.join("hosts.toml"), bad).unwrap();
            assert!(
                endpoints(Some(root.path()), "r.example", false).is_err(),
                "{bad}"
            );
        }
    }
}
