//! A small registry of our own, for what the reference registry cannot be
//! made to do: serve a corrupted blob, trickle a blob slowly, demand bearer
//! tokens from a token server, and record every request it gets (to see
//! Range and Authorization headers). It speaks just enough HTTP/1.1 for
//! berth's client: one request per connection, Content-Length bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use berth_ids::Digest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the fake registry serves and how.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// `repo/manifests/<tag or digest>` and `repo/blobs/<digest>` →
    /// (media type, body).
    pub objects: HashMap<String, (String, Vec<u8>)>,
    /// Blobs whose bytes are flipped on the way out.
    pub corrupt: Vec<Digest>,
    /// Blobs sent at this many bytes per 10 ms.
    pub trickle: HashMap<Digest, usize>,
    /// Require `Authorization: Bearer <token>`; the challenge names the
    /// token endpoint of this same server.
    pub bearer_token: Option<String>,
    /// The user and password the token endpoint wants (None: anonymous).
    pub token_credentials: Option<(String, String)>,
    /// Requests whose path ends with the key are answered 503 this many
    /// times first.
    pub unavailable_first: HashMap<String, usize>,
    /// Blobs answered with a 307 to this URL (blob storage elsewhere).
    pub redirect: HashMap<Digest, String>,
    /// Serve any path under `/storage/` from `objects` by its last part:
    /// this registry acting as the blob storage of another.
    pub storage: bool,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Debug)]
pub struct FakeRegistry {
    pub host: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistry {
    pub async fn start(behaviour: Behaviour) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s, h) = (behaviour.clone(), seen.clone(), host.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, s, h) = (b.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, b, s, h).await;
                });
            }
        });
        FakeRegistry {
            host,
            behaviour,
            seen,
            task,
        }
    }

    /// Adds a manifest (by tag and digest) or a blob.
    pub fn put(&self, repo: &str, kind: &str, name: &str, media_type: &str, body: &[u8]) {
        self.behaviour.lock().unwrap().objects.insert(
            format!("{repo}/{kind}/{name}"),
            (media_type.to_string(), body.to_vec()),
        );
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    stream: TcpStream,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    host: String,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: target.clone(),
        headers: headers.clone(),
    });
    let mut stream = reader.into_inner();

    let (token, token_credentials) = {
        let b = behaviour.lock().unwrap();
        (b.bearer_token.clone(), b.token_credentials.clone())
    };
    if path == "/token" {
        if let Some((user, pass)) = &token_credentials {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            if headers.get("authorization") != Some(&want) {
                return respond(&mut stream, 401, &[], b"", false).await;
            }
        }
        let body = format!(r#"{{"token":"{}"}}"#, token.unwrap_or_default());
        return respond(
            &mut stream,
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            false,
        )
        .await;
    }
    if let Some(token) = &token {
        if headers.get("authorization") != Some(&format!("Bearer {token}")) {
            let challenge = format!(
                r#"Bearer realm="http://{host}/token",service="fake",scope="repository:x:pull""#
            );
            return respond(
                &mut stream,
                401,
                &[("WWW-Authenticate", &challenge)],
                b"",
                false,
            )
            .await;
        }
    }
    let failing = {
        let mut b = behaviour.lock().unwrap();
        let key = b
            .unavailable_first
            .iter()
            .find(|(suffix, left)| path.ends_with(suffix.as_str()) && **left > 0)
            .map(|(k, _)| k.clone());
        key.map(|k| {
            if let Some(left) = b.unavailable_first.get_mut(&k) {
                *left -= 1;
            }
        })
        .is_some()
    };
    if failing {
        return respond(&mut stream, 503, &[], b"", method == "HEAD").await;
    }
    if path == "/v2/" {
        return respond(&mut stream, 200, &[], b"{}", method == "HEAD").await;
    }
    let key = path.trim_start_matches("/v2/").to_string();
    let found = {
        let b = behaviour.lock().unwrap();
        if b.storage && path.starts_with("/storage/") {
            let name = path.rsplit('/').next().unwrap_or_default();
            b.objects
                .iter()
                .find(|(k, _)| k.ends_with(name))
                .map(|(_, v)| v.clone())
        } else {
            b.objects.get(&key).cloned()
        }
    };
    if let Some(digest) = key.rsplit('/').next().and_then(|d| Digest::parse(d).ok()) {
        let target = behaviour.lock().unwrap().redirect.get(&digest).cloned();
        if let Some(target) = target {
            return respond(
                &mut stream,
                307,
                &[("Location", &target)],
                b"",
                method == "HEAD",
            )
            .await;
        }
    }
    let Some((media_type, mut body)) = found else {
        return respond(&mut stream, 404, &[], b"", method == "HEAD").await;
    };
    let digest = Digest::of(&body);
    let (corrupt, trickle) = {
        let b = behaviour.lock().unwrap();
        (b.corrupt.contains(&digest), b.trickle.get(&digest).copied())
    };
    if corrupt {
        let last = body.len() - 1;
        body[last] ^= 0xff;
    }
    let mut status = 200;
    let mut extra = vec![
        ("Content-Type".to_string(), media_type),
        ("Docker-Content-Digest".to_string(), digest.to_string()),
    ];
    if let Some(range) = headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        let start: usize = range.trim_end_matches('-').parse().unwrap_or(0);
        if start < body.len() {
            extra.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
            ));
            body = body[start..].to_vec();
            status = 206;
        }
    }
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match trickle {
        Some(rate) if method == "GET" => {
            write_head(&mut stream, status, &extra, body.len()).await?;
            for piece in body.chunks(rate.max(1)) {
                stream.write_all(piece).await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
        _ => respond(&mut stream, status, &extra, &body, method == "HEAD").await,
    }
}

async fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    len: usize,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    write_head(stream, status, headers, body.len()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}
