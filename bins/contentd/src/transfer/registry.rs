//! One registry repository over HTTP: resolve, manifests and blobs, with
//! authentication, retries of 5xx and 429 answers, and ranged blob reads.

use std::sync::OnceLock;
use std::time::Duration;

use berth_errdefs::{Error, Result};
use berth_ids::{Digest, Sha256Hasher};
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};

use super::auth::{parse_challenge, Authorizer, Credentials};
use super::hosts::Endpoint;
use berth_image::media::{self, MANIFEST_ACCEPT};
use berth_image::{sniff_media_type, Descriptor, MAX_DOCUMENT_SIZE as MAX_MANIFEST_SIZE};

/// Attempts per request for answers worth retrying (5xx, 429, transport).
const ATTEMPTS: u32 = 4;

/// Redirects followed for one request, as reqwest's default policy.
const MAX_REDIRECTS: usize = 10;

/// A repository on one registry endpoint.
#[derive(Debug)]
pub struct RegistryClient {
    endpoint: Endpoint,
    http: HttpClients,
    auth: Authorizer,
    repository: String,
    push: bool,
}

/// Reads a response body, refusing more than `limit` bytes.
pub async fn read_limited(response: Response, limit: u64) -> Result<Vec<u8>> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(Error::resource_exhausted(format!(
            "{} sent {} bytes where at most {limit} are accepted",
            response.url(),
            response.content_length().unwrap_or_default()
        )));
    }
    let url = response.url().clone();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::unavailable(format!("reading {url}: {e}")))?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::resource_exhausted(format!(
                "{url} sent more than the {limit} bytes accepted"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One endpoint's HTTP clients: a plain one for `http://` URLs of an
/// `http://` endpoint, and one with TLS for `https://` URLs.
///
/// The TLS client is built on first use: building it loads the system's
/// root certificates (every file in the certificate directory, parsed) and
/// a TLS configuration, work a plain-HTTP registry does not need on every
/// fetch, and code (about 0.4 MiB of contentd's pages, resident after a
/// pull) it does not need at all. A plain endpoint still reaches `https://`
/// URLs: a token realm, an upload location, or a redirect (the plain client
/// hands a redirect to `https://` back to [`RegistryClient::send_body`],
/// which follows it with the TLS client).
#[derive(Debug)]
pub struct HttpClients {
    endpoint: Endpoint,
    plain: Option<reqwest::Client>,
    tls: OnceLock<reqwest::Client>,
}

impl HttpClients {
    /// The clients of `endpoint`; an `https://` endpoint's TLS client (and
    /// any error in its CA or client certificate files) right away.
    pub fn new(endpoint: &Endpoint) -> Result<HttpClients> {
        let clients = HttpClients {
            endpoint: endpoint.clone(),
            plain: None,
            tls: OnceLock::new(),
        };
        if is_plain(&endpoint.base) {
            Ok(HttpClients {
                plain: Some(build_http(endpoint, false)?),
                ..clients
            })
        } else {
            clients.for_url(&endpoint.base)?;
            Ok(clients)
        }
    }

    /// The client for a request to `url`.
    pub fn for_url(&self, url: &str) -> Result<&reqwest::Client> {
        if let Some(plain) = &self.plain {
            if is_plain(url) {
                return Ok(plain);
            }
        }
        if let Some(tls) = self.tls.get() {
            return Ok(tls);
        }
        let tls = build_http(&self.endpoint, true)?;
        Ok(self.tls.get_or_init(|| tls))
    }
}

/// Whether `url` is `http://` (it needs no TLS).
fn is_plain(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// An HTTP client for `endpoint`'s requests: with `tls`, with the system's
/// roots and the endpoint's CAs and client certificate; without, for
/// `http://` URLs only (no roots loaded; a redirect to `https://` is
/// returned, not followed).
fn build_http(endpoint: &Endpoint, tls: bool) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
    // reqwest drops Authorization on redirects to another host, so a
    // redirect to blob storage never carries registry credentials;
    // `send_body` adds it only for the endpoint's own host and answers
    // only the endpoint's challenges.
    if !tls {
        return builder
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if attempt.url().scheme() == "https" {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")));
    }
    let mut builder = builder
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .danger_accept_invalid_certs(endpoint.skip_verify);
    for ca in &endpoint.ca_files {
        let pem =
            std::fs::read(ca).map_err(|e| Error::io(format!("reading CA {}", ca.display()), &e))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::invalid_argument(format!("CA {}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = endpoint.client_pairs.first() {
        let mut pem = std::fs::read(cert)
            .map_err(|e| Error::io(format!("reading client certificate {}", cert.display()), &e))?;
        if key != cert {
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| Error::io(format!("reading client key {}", key.display()), &e))?,
            );
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            Error::invalid_argument(format!("client certificate {}: {e}", cert.display()))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("HTTP client: {e}")))
}

/// Where a plain-HTTP answer redirects to over TLS, for the TLS client to
/// follow: the `https://` URL of its `Location`, if it is a redirect.
fn redirect_to_tls(response: &Response) -> Option<String> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    let next = response.url().join(location).ok()?;
    (next.scheme() == "https").then(|| next.to_string())
}

fn backoff(attempt: u32, retry_after: Option<&HeaderValue>) -> Duration {
    let asked = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(10)));
    asked.unwrap_or_else(|| Duration::from_millis(200 * 2u64.pow(attempt)))
}

impl RegistryClient {
    /// `registry_host` is the reference's domain: credentials are used only
    /// when the endpoint is that registry itself.
    pub fn new(
        endpoint: Endpoint,
        registry_host: &str,
        repository: &str,
        credentials: Option<Credentials>,
    ) -> Result<RegistryClient> {
        let http = HttpClients::new(&endpoint)?;
        let is_registry = endpoint.host == registry_host
            || (registry_host == "docker.io" && endpoint.host == "registry-1.docker.io");
        let credentials = if is_registry { credentials } else { None };
        Ok(RegistryClient {
            auth: Authorizer::new(&endpoint.host, credentials),
            endpoint,
            http,
            repository: repository.to_string(),
            push: false,
        })
    }

    /// The same client, asking for push access too.
    pub fn for_push(mut self) -> RegistryClient {
        self.push = true;
        self
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn scope(&self) -> String {
        if self.push {
            format!("repository:{}:pull,push", self.repository)
        } else {
            format!("repository:{}:pull", self.repository)
        }
    }

    /// Sends a request, answering one authentication challenge and retrying
    /// answers worth retrying.
    async fn send(&self, method: Method, url: &str, headers: HeaderMap) -> Result<Response> {
        self.send_body(method, url, headers, None).await
    }

    /// [`RegistryClient::send`] with a body (kept to be sent again on a
    /// retry).
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let scope = self.scope();
        let (mut method, mut url, mut body) = (method, url.to_string(), body);
        let mut challenged = false;
        let mut attempt = 0;
        let mut redirects = 0;
        loop {
            let url_str = url.as_str();
            let mut request = self
                .http
                .for_url(url_str)?
                .request(method.clone(), url_str)
                .headers(headers.clone());
            if let Some(body) = body {
                request = request.body(body.to_vec());
            }
            // Credentials go only to the endpoint itself, never to a host an
            // upload Location or a redirect names.
            let to_endpoint = is_endpoint_url(url_str, &self.endpoint.host);
            if to_endpoint {
                if let Some(value) = self.auth.header(&scope) {
                    request = request.header(AUTHORIZATION, value);
                }
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e)
                    if attempt + 1 < ATTEMPTS
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tokio::time::sleep(backoff(attempt, None)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => {
                    return Err(Error::unavailable(format!(
                        "{method} {url}: {}",
                        error_chain(&e)
                    )))
                }
            };
            let status = response.status();
            if let Some(next) = redirect_to_tls(&response) {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Error::unavailable(format!(
                        "{method} {url}: too many redirects"
                    )));
                }
                // As reqwest follows one: 303, and 301 or 302 after a
                // POST, become a GET without the body.
                if status == StatusCode::SEE_OTHER
                    || (method == Method::POST
                        && (status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND))
                {
                    method = Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            let answered_by_endpoint =
                is_endpoint_url(response.url().as_str(), &self.endpoint.host);
            if status == StatusCode::UNAUTHORIZED && !challenged && answered_by_endpoint {
                challenged = true;
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge)
                    .ok_or_else(|| {
                        Error::failed_precondition(format!(
                            "{url}: unauthorized, with no usable challenge"
                        ))
                    })?;
                self.auth.answer(&self.http, &challenge, &scope).await?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(Error::failed_precondition(format!(
                    "{method} {url}: access denied ({status})"
                )));
            }
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                && attempt + 1 < ATTEMPTS
            {
                tokio::time::sleep(backoff(attempt, response.headers().get("retry-after"))).await;
                attempt += 1;
                continue;
            }
            return Ok(response);
        }
    }

    /// The descriptor a tag or digest names.
    pub async fn resolve(&self, object: &str) -> Result<Descriptor> {
        let url = self
            .endpoint
            .url(&format!("{}/manifests/{object}", self.repository));
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self.send(Method::HEAD, &url, headers.clone()).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!(
                "{}:{object}: not found in the registry",
                self.repository
            )));
        }
        let from_head = if status.is_success() {
            let digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok());
            let media_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
            // A HEAD response has no body, so read the header itself.
            let size = response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match (digest, media_type, size) {
                (Some(digest), Some(media_type), Some(size))
                    if media::is_index(&media_type) || media::is_manifest(&media_type) =>
                {
                    Some(Descriptor {
                        media_type,
                        digest,
                        size,
                        urls: Vec::new(),
                        platform: None,
                        annotations: Default::default(),
                    })
                }
                _ => None,
            }
        } else {
            None
        };
        let descriptor = match from_head {
            Some(d) => d,
            None => {
                // HEAD said too little: fetch the document and describe it.
                let response = self.send(Method::GET, &url, headers).await?;
                check_status(&response, &url)?;
                let declared = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
                let body = read_limited(response, MAX_MANIFEST_SIZE).await?;
                let media_type = declared
                    .filter(|m| media::is_index(m) || media::is_manifest(m))
                    .or_else(|| sniff_media_type(&body))
                    .ok_or_else(|| {
                        Error::invalid_argument(format!("{url}: not an image manifest"))
                    })?;
                Descriptor {
                    media_type,
                    digest: Digest::of(&body),
                    size: body.len() as u64,
                    urls: Vec::new(),
                    platform: None,
                    annotations: Default::default(),
                }
            }
        };
        if let Ok(wanted) = Digest::parse(object) {
            if wanted != descriptor.digest {
                return Err(Error::failed_precondition(format!(
                    "{url}: the registry answered with {} for {wanted}",
                    descriptor.digest
                )));
            }
        }
        if descriptor.size > MAX_MANIFEST_SIZE {
            return Err(Error::resource_exhausted(format!(
                "{url}: manifest of {} bytes is larger than the {MAX_MANIFEST_SIZE} accepted",
                descriptor.size
            )));
        }
        Ok(descriptor)
    }

    /// A manifest or index, verified against its descriptor.
    pub async fn fetch_manifest(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        if descriptor.size > MAX_MANIFEST_SIZE {
            return Err(Error::resource_exhausted(format!(
                "manifest {} of {} bytes is larger than the {MAX_MANIFEST_SIZE} accepted",
                descriptor.digest, descriptor.size
            )));
        }
        let url = self.endpoint.url(&format!(
            "{}/manifests/{}",
            self.repository, descriptor.digest
        ));
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self.send(Method::GET, &url, headers).await?;
        check_status(&response, &url)?;
        let body = read_limited(response, descriptor.size).await?;
        verify(&body, descriptor, &url)?;
        Ok(body)
    }

    /// A small blob (an image config), verified.
    pub async fn fetch_small_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let (response, _) = self.blob(descriptor, 0).await?;
        let url = response.url().to_string();
        let body = read_limited(response, descriptor.size).await?;
        verify(&body, descriptor, &url)?;
        Ok(body)
    }

    /// A blob's body from `offset`; true when the registry honoured the
    /// range (206), false when it sent the whole blob (200).
    pub async fn blob(&self, descriptor: &Descriptor, offset: u64) -> Result<(Response, bool)> {
        let url = self
            .endpoint
            .url(&format!("{}/blobs/{}", self.repository, descriptor.digest));
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-"))
                .map_err(|e| Error::internal(e.to_string()))?;
            headers.insert(RANGE, range);
        }
        let response = self.send(Method::GET, &url, headers).await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => Ok((response, true)),
            status if status.is_success() => Ok((response, false)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // Start over without a range.
                let response = self.send(Method::GET, &url, HeaderMap::new()).await?;
                check_status(&response, &url)?;
                Ok((response, false))
            }
            _ => {
                check_status(&response, &url)?;
                Ok((response, false))
            }
        }
    }
}

/// A registry URL for `rest` (`blobs/uploads/`, `manifests/tag`) of this
/// client's repository.
impl RegistryClient {
    pub fn repo_url(&self, rest: &str) -> String {
        self.endpoint.url(&format!("{}/{rest}", self.repository))
    }

    /// Resolves an upload `Location` header (often relative) against the
    /// request it answered.
    pub fn location(&self, response: &Response) -> Result<String> {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::failed_precondition(format!("{}: upload without a Location", response.url()))
            })?;
        response
            .url()
            .join(location)
            .map(|u| u.to_string())
            .map_err(|e| {
                Error::failed_precondition(format!(
                    "{}: bad Location {location:?}: {e}",
                    response.url()
                ))
            })
    }
}

/// Whether `url` is on `host` (`name` or `name:port`, as endpoints name
/// their host).
fn is_endpoint_url(url: &str, host: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(name) = url.host_str() else {
        return false;
    };
    match url.port() {
        Some(port) => format!("{name}:{port}") == host,
        None => name == host,
    }
}

/// An error with its causes (reqwest's own message leaves them out: "error
/// sending request" says nothing of an untrusted certificate).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub fn check_status(response: &Response, url: &str) -> Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    Err(match status {
        StatusCode::NOT_FOUND => Error::not_found(format!("{url}: not found")),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            Error::unavailable(format!("{url}: {s}"))
        }
        s => Error::failed_precondition(format!("{url}: {s}")),
    })
}

fn verify(body: &[u8], descriptor: &Descriptor, url: &str) -> Result<()> {
    if body.len() as u64 != descriptor.size {
        return Err(Error::failed_precondition(format!(
            "{url}: {} bytes received, {} expected",
            body.len(),
            descriptor.size
        )));
    }
    let mut hasher = Sha256Hasher::new();
    hasher.update(body);
    let digest = hasher.finalize();
    if digest != descriptor.digest {
        return Err(Error::failed_precondition(format!(
            "{url}: content is {digest}, {} expected",
            descriptor.digest
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_only_for_the_endpoint_host() {
        assert!(is_endpoint_url(
            "https://registry.example/v2/x",
            "registry.example"
        ));
        assert!(is_endpoint_url(
            "http://127.0.0.1:5000/v2/x",
            "127.0.0.1:5000"
        ));
        assert!(!is_endpoint_url(
            "http://127.0.0.1:5001/v2/x",
            "127.0.0.1:5000"
        ));
        assert!(!is_endpoint_url(
            "https://storage.example/blob",
            "registry.example"
        ));
        assert!(!is_endpoint_url(
            "https://registry.example.evil/x",
            "registry.example"
        ));
        assert!(!is_endpoint_url("not a url", "registry.example"));
    }
}
