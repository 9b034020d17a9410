//! Registry credentials the way docker keeps them: `config.json` under
//! `$DOCKER_CONFIG` or `~/.docker`.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use serde::Deserialize;

/// A user name and secret for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Largest config.json read.
const MAX_CONFIG: u64 = 4 * 1024 * 1024;

/// The docker config file in use: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// Credentials for `host` from the docker config file, if it has them.
pub fn docker_credentials(host: &str) -> Option<RegistryCredentials> {
    let path = docker_config_path()?;
    if std::fs::metadata(&path).ok()?.len() > MAX_CONFIG {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    from_docker_config(&data, host)
}

/// Credentials for `host` from the text of a docker `config.json`
/// (`{"auths": {"host": {"auth": base64("user:pass")}}}`).
pub fn from_docker_config(config: &[u8], host: &str) -> Option<RegistryCredentials> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let config: Config = serde_json::from_slice(config).ok()?;
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    let entry = keys.iter().find_map(|k| {
        config
            .auths
            .get(k)
            .or_else(|| config.auths.get(&format!("{k}/")))
    })?;
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        return Some(RegistryCredentials {
            username: user.to_string(),
            secret: pass.to_string(),
        });
    }
    if let Some(token) = &entry.identitytoken {
        return Some(RegistryCredentials {
            username: "<token>".into(),
            secret: token.clone(),
        });
    }
    Some(RegistryCredentials {
        username: entry.username.clone()?,
        secret: entry.password.clone()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries() {
        let config = br#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"},"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#;
        let c = from_docker_config(config, "127.0.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("user", "pass"));
        let d = from_docker_config(config, "docker.io").unwrap();
        assert_eq!(d.username, "u");
        assert!(from_docker_config(config, "other.example").is_none());
        assert!(!format!("{c:?}").contains("pass"));
    }
}
