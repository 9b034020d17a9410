//! Moving images between registries and berth-contentd, with progress:
//! `berth content fetch REF` and `berth push REF DIGEST`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_api::transfer as pb;
use berth_client::{docker_credentials, RemoteTransfer};
use berth_image::{media, Descriptor, Progress, Transfer};
use berth_reference::Reference;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::global::Global;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print only the image's digest.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What to fetch and how: shared by `berth content fetch` and `berth pull`.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// Image reference: busybox, library/busybox:1.36, host:port/repo:tag,
    /// repo@sha256:...
    pub reference: String,
    /// Platform to fetch (os/arch[/variant]); repeatable. Default: the
    /// daemon's own.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
    /// Fetch every platform of a multi-platform image.
    #[arg(long, conflicts_with = "platforms")]
    pub all_platforms: bool,
    /// Registry credentials, USER:PASSWORD (else docker's config.json).
    #[arg(short, long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// Talk plain HTTP to the registry (loopback registries always may).
    #[arg(long)]
    pub plain_http: bool,
    /// Blobs fetched at once.
    #[arg(long, default_value_t = 3)]
    pub max_concurrent_downloads: u32,
    /// Also fetch layers the manifest marks as foreign (from URLs outside
    /// the registry; no credentials are sent there).
    #[arg(long)]
    pub allow_foreign_layers: bool,
}

impl SourceArgs {
    /// The parsed reference and the fetch request for it.
    pub(crate) fn request(&self) -> Result<(Reference, pb::FetchRequest)> {
        let reference = parse_reference(&self.reference)?;
        let request = pb::FetchRequest {
            reference: reference.to_string(),
            platforms: self.platforms.clone(),
            all_platforms: self.all_platforms,
            max_concurrent: self.max_concurrent_downloads,
            plain_http: self.plain_http,
            credentials: credentials(self.user.as_deref(), reference.domain())?.into(),
            allow_foreign_layers: self.allow_foreign_layers,
            ..Default::default()
        };
        Ok((reference, request))
    }
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Where to push: host[:port]/repository:tag
    pub reference: String,
    /// The image's root (index or manifest digest) in the content store.
    pub digest: String,
    /// Registry credentials, USER:PASSWORD (else docker's config.json).
    #[arg(short, long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// Talk plain HTTP to the registry (loopback registries always may).
    #[arg(long)]
    pub plain_http: bool,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 3)]
    pub max_concurrent_uploads: u32,
    /// Print only the image's digest.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `--user USER:PASSWORD`, else the docker config's entry for the host.
fn credentials(user: Option<&str>, host: &str) -> Result<Option<pb::Credentials>> {
    Ok(match user {
        Some(user) => {
            let Some((username, secret)) = user.split_once(':') else {
                bail!("--user: expected USER:PASSWORD");
            };
            Some(pb::Credentials {
                username: username.to_string(),
                secret: secret.to_string(),
                ..Default::default()
            })
        }
        None => docker_credentials(host).map(|c| pb::Credentials {
            username: c.username,
            secret: c.secret,
            ..Default::default()
        }),
    })
}

fn parse_reference(value: &str) -> Result<Reference> {
    Reference::parse(value).map_err(|e| anyhow::anyhow!(e))
}

/// Prints the outcome of a transfer: the digest, or a JSON event.
pub(crate) fn finish(
    format: Format,
    quiet: bool,
    verb: &str,
    reference: &Reference,
    root: &Descriptor,
) -> Result<()> {
    match format {
        Format::Json => {
            // One event per line, like the progress before it.
            let event = serde_json::json!({
                "event": verb,
                "reference": reference.to_string(),
                "digest": root.digest.to_string(),
                "media_type": root.media_type,
                "size": root.size,
            });
            println!("{event}");
        }
        Format::Table if quiet => println!("{}", root.digest),
        Format::Table => println!("{reference}: {verb} {}", root.digest),
    }
    Ok(())
}

pub async fn push(global: &Global, args: PushArgs) -> Result<()> {
    let namespace = global.namespace()?;
    let reference = parse_reference(&args.reference)?;
    let digest = berth_ids::Digest::parse(&args.digest).map_err(|e| anyhow::anyhow!(e))?;
    let request = pb::PushRequest {
        reference: reference.to_string(),
        digest: digest.to_string(),
        max_concurrent: args.max_concurrent_uploads,
        plain_http: args.plain_http,
        credentials: credentials(args.user.as_deref(), reference.domain())?.into(),
        ..Default::default()
    };
    let transfer = RemoteTransfer::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let mut display = Display::new(global.format, args.quiet);
    let root = transfer
        .push(namespace, &request, &mut |p| display.show(&p))
        .await
        .with_context(|| format!("push {reference}"))?;
    display.finish();
    finish(global.format, args.quiet, "pushed", &reference, &root)
}

pub async fn fetch(global: &Global, args: FetchArgs) -> Result<()> {
    let namespace = global.namespace()?;
    let (reference, request) = args.source.request()?;
    let transfer = RemoteTransfer::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let mut display = Display::new(global.format, args.quiet);
    let root = transfer
        .fetch(namespace, &request, None, &mut |p| display.show(&p))
        .await
        .with_context(|| format!("content fetch {reference}"))?;
    display.finish();
    finish(global.format, args.quiet, "fetched", &reference, &root)
}

/// How progress is shown: bars on a terminal, lines otherwise, JSON events
/// for scripts, nothing when quiet.
pub(crate) enum Display {
    Quiet,
    Json,
    Lines {
        last: HashMap<String, String>,
    },
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

fn kind(media_type: &str) -> &'static str {
    media::ingest_kind(media_type)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

impl Display {
    pub(crate) fn new(format: Format, quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if format == Format::Json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            Display::Bars {
                multi: MultiProgress::new(),
                bars: HashMap::new(),
            }
        } else {
            Display::Lines {
                last: HashMap::new(),
            }
        }
    }

    /// Layers `..count` of `total` are unpacked into `chain`.
    pub(crate) fn show_unpacked(&mut self, chain: &berth_ids::Digest, count: usize, total: usize) {
        match self {
            Display::Quiet => {}
            Display::Json => {
                let event = serde_json::json!({
                    "event": "unpacked",
                    "chain_id": chain.to_string(),
                    "layers": count,
                    "of": total,
                });
                println!("{event}");
            }
            Display::Lines { .. } => {
                eprintln!("unpacked {count}/{total} layers: {}", short(chain.as_str()));
            }
            Display::Bars { multi, .. } => {
                let _ = multi.println(format!(
                    "unpacked {count}/{total} layers: {}",
                    short(chain.as_str())
                ));
            }
        }
    }

    pub(crate) fn show(&mut self, progress: &Progress) {
        let descriptor = progress.descriptor();
        let (state, offset) = match progress {
            Progress::Blob { state, offset, .. } => (Some(*state), *offset),
            _ => (None, 0),
        };
        let digest = descriptor.digest.to_string();
        match self {
            Display::Quiet => {}
            Display::Json => {
                let event = serde_json::json!({
                    "event": progress.event_name(),
                    "digest": digest,
                    "media_type": descriptor.media_type,
                    "size": descriptor.size,
                    "state": state.map_or("", |s| s.as_str()),
                    "offset": offset,
                });
                println!("{event}");
            }
            Display::Lines { last } => {
                if let Progress::Resolved(_) = progress {
                    eprintln!("resolved {digest} ({})", kind(&descriptor.media_type));
                    return;
                }
                let Some(state) = state else {
                    return;
                };
                // One line per change of state, not per megabyte.
                if last.get(&digest).map(String::as_str) == Some(state.as_str()) {
                    return;
                }
                last.insert(digest.clone(), state.as_str().to_string());
                eprintln!(
                    "{:<8} {} {:<11} {}",
                    kind(&descriptor.media_type),
                    short(&digest),
                    state.as_str(),
                    output::size(descriptor.size)
                );
            }
            Display::Bars { multi, bars } => {
                let Some(state) = state else {
                    return;
                };
                let bar = bars.entry(digest.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(descriptor.size));
                    let style = ProgressStyle::with_template(
                        "{prefix:.bold} {msg:<11} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                    bar.set_style(style);
                    bar.set_prefix(format!("{:<8} {}", kind(&descriptor.media_type), short(&digest)));
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                bar.set_message(state.as_str());
                bar.set_position(offset);
                if state.is_final() {
                    bar.finish();
                }
            }
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Display::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}
