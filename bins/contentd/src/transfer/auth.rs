//! Registry authentication: anonymous and credentialed bearer tokens
//! (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`) and basic
//! auth. Credentials belong to one registry host and are only ever sent to
//! it, or to the token realm it names (over HTTPS unless on the registry's
//! own host).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use berth_errdefs::{Error, Result};
use serde::Deserialize;

/// A user name and password (or identity token) for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(input: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i] == ',' || chars[i].is_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        i += 1;
        let mut value = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && chars[i] != ',' {
                value.push(chars[i]);
                i += 1;
            }
        }
        if !key.is_empty() {
            out.insert(key, value.trim().to_string());
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

/// The authorization state for one registry host.
#[derive(Debug)]
pub struct Authorizer {
    host: String,
    credentials: Option<Credentials>,
    /// Authorization header values by scope ("" for basic).
    headers: Mutex<HashMap<String, String>>,
}

impl Authorizer {
    pub fn new(host: &str, credentials: Option<Credentials>) -> Authorizer {
        Authorizer {
            host: host.to_string(),
            credentials,
            headers: Mutex::new(HashMap::new()),
        }
    }

    fn headers(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.headers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Authorization header to send for `scope`, if one is known.
    pub fn header(&self, scope: &str) -> Option<String> {
        let headers = self.headers();
        headers.get(scope).or_else(|| headers.get("")).cloned()
    }

    /// Answers a challenge so the next request for `scope` carries
    /// authorization. Fails if it cannot be answered.
    pub async fn answer(
        &self,
        http: &super::registry::HttpClients,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<()> {
        match challenge {
            Challenge::Basic => {
                let credentials = self.credentials.as_ref().ok_or_else(|| {
                    Error::failed_precondition(format!(
                        "{} asks for a user name and password (give --user or a docker config.json entry)",
                        self.host
                    ))
                })?;
                self.headers()
                    .insert(String::new(), credentials.basic_header());
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                let token = self
                    .fetch_token(http, realm, service.as_deref(), scope)
                    .await?;
                self.headers()
                    .insert(scope.to_string(), format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    async fn fetch_token(
        &self,
        http: &super::registry::HttpClients,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| Error::failed_precondition(format!("token realm {realm:?}: {e}")))?;
        let realm_host = url.host_str().unwrap_or_default().to_string();
        let registry_name = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        if url.scheme() != "https" && realm_host != registry_name {
            return Err(Error::failed_precondition(format!(
                "{} names a token service over plain HTTP on another host ({realm}); refusing to send credentials there",
                self.host
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            if !scope.is_empty() {
                query.append_pair("scope", scope);
            }
        }
        let mut request = http.for_url(url.as_str())?.get(url);
        if let Some(credentials) = &self.credentials {
            request = request.header(reqwest::header::AUTHORIZATION, credentials.basic_header());
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::unavailable(format!("token service {realm}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::failed_precondition(format!(
                "{}: access denied by the token service ({status})",
                self.host
            )));
        }
        if !status.is_success() {
            return Err(Error::unavailable(format!(
                "token service {realm}: {status}"
            )));
        }
        let body = super::registry::read_limited(response, MAX_TOKEN_RESPONSE as u64).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::failed_precondition(format!("token service {realm}: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::failed_precondition(format!("token service {realm} sent no token"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
