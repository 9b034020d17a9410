//! `berth content ...`: berth-contentd's blobs and ingests.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use berth_client::RemoteContentStore;
use berth_content::{CommitOptions, ContentStore, Info, Status, WriterOptions, MAX_READ};
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;

use crate::global::Global;
use crate::labels::{label_update, labels_text, parse_labels};
use crate::output::{self, Format};

/// How many reads `get` keeps in flight.
const READ_AHEAD: usize = 4;

#[derive(Debug, clap::Subcommand)]
pub enum ContentCommand {
    /// List blobs, optionally matching filters (e.g. 'labels."a.b"==c').
    #[command(visible_alias = "list")]
    Ls {
        /// Print digests only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Show one blob's size, times and labels.
    Info { digest: String },
    /// Write a blob to standard output.
    Get { digest: String },
    /// Store standard input as a blob, under an ingest ref (resumable).
    ///
    /// A blob nothing refers to (no image, lease or reference label) is
    /// garbage to the next collection, as in containerd; to keep one by
    /// hand, give it `--label containerd.io/gc.root=REASON`.
    ///
    /// When standard input is a file (`< FILE`), contentd is handed the
    /// open file and reads it itself where it can (a regular file on a disk
    /// or memory filesystem); otherwise the bytes are sent.
    ///
    /// A blob already stored under `--expected` is not written again (as
    /// `ctr content ingest`); its `--label`s are added to it. So an ingest
    /// cut off after contentd committed it succeeds when run again.
    Ingest {
        reference: String,
        /// The digest the content must have.
        #[arg(long)]
        expected: Option<String>,
        /// The size the content must have.
        #[arg(long)]
        size: Option<u64>,
        /// Labels for the blob, KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove blobs from the namespace.
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels on a blob.
    Label {
        digest: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List ingests in progress.
    Active { filters: Vec<String> },
    /// Drop ingests in progress and their data.
    Abort {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Fetch an image's blobs from its registry (no unpacking).
    Fetch(crate::commands::transfer::FetchArgs),
}

pub async fn run(global: &Global, command: ContentCommand) -> Result<()> {
    match command {
        // Fetching talks to the transfer service, not the store.
        ContentCommand::Fetch(args) => crate::commands::transfer::fetch(global, args).await,
        other => run_on_store(global, other).await,
    }
}

async fn run_on_store(global: &Global, command: ContentCommand) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let socket = global.contentd_socket();
    let store = RemoteContentStore::connect(socket)
        .await
        .with_context(|| "berth-contentd".to_string())?;
    let ns = namespace.as_str();
    match command {
        ContentCommand::Ls { quiet, filters } => {
            list(&store, ns, &filters, quiet, global.format).await
        }
        ContentCommand::Info { digest } => {
            let digest = parse_digest(&digest)?;
            let info = store
                .info(ns, &digest)
                .await
                .with_context(|| format!("content info {digest}"))?;
            match global.format {
                Format::Json => output::json(&InfoJson::from(&info)),
                Format::Table => {
                    println!("digest:   {}", info.digest);
                    println!("size:     {} ({})", info.size, output::size(info.size));
                    println!("created:  {}", output::age(info.created_at));
                    println!("updated:  {}", output::age(info.updated_at));
                    let mut labels: Vec<_> = info.labels.iter().collect();
                    labels.sort();
                    for (k, v) in labels {
                        println!("label:    {k}={v}");
                    }
                    Ok(())
                }
            }
        }
        ContentCommand::Get { digest } => {
            let digest = parse_digest(&digest)?;
            get(&store, ns, &digest)
                .await
                .with_context(|| format!("content get {digest}"))
        }
        ContentCommand::Ingest {
            reference,
            expected,
            size,
            labels,
        } => {
            let expected = expected.as_deref().map(parse_digest).transpose()?;
            let labels = parse_labels(&labels)?;
            let digest = ingest(&store, ns, &reference, expected, size, labels)
                .await
                .with_context(|| format!("content ingest {reference}"))?;
            match global.format {
                Format::Json => output::json(&serde_json::json!({ "digest": digest.to_string() })),
                Format::Table => {
                    println!("{digest}");
                    Ok(())
                }
            }
        }
        ContentCommand::Rm { digests } => {
            for digest in digests {
                let digest = parse_digest(&digest)?;
                store
                    .delete(ns, &digest)
                    .await
                    .with_context(|| format!("content rm {digest}"))?;
                if global.format == Format::Table {
                    println!("{digest}");
                }
            }
            Ok(())
        }
        ContentCommand::Label { digest, labels } => {
            let digest = parse_digest(&digest)?;
            let (new, paths) = label_update(&labels)?;
            let mut info = store
                .info(ns, &digest)
                .await
                .with_context(|| format!("content label {digest}"))?;
            info.labels = new;
            let updated = store
                .update(ns, info, &paths)
                .await
                .with_context(|| format!("content label {digest}"))?;
            match global.format {
                Format::Json => output::json(&InfoJson::from(&updated)),
                Format::Table => {
                    println!("{}", labels_text(&updated.labels));
                    Ok(())
                }
            }
        }
        ContentCommand::Active { filters } => {
            let statuses = store
                .list_statuses(ns, &filters)
                .await
                .context("content active")?;
            match global.format {
                Format::Json => {
                    output::json(&statuses.iter().map(StatusJson::from).collect::<Vec<_>>())
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = statuses
                        .iter()
                        .map(|s| {
                            vec![
                                s.reference.clone(),
                                output::size(s.offset),
                                if s.total == 0 {
                                    "-".into()
                                } else {
                                    output::size(s.total)
                                },
                                output::age(s.started_at),
                                output::age(s.updated_at),
                            ]
                        })
                        .collect();
                    output::table(&["REF", "OFFSET", "TOTAL", "STARTED", "UPDATED"], &rows)
                }
            }
        }
        ContentCommand::Fetch(args) => crate::commands::transfer::fetch(global, args).await,
        ContentCommand::Abort { references } => {
            for reference in references {
                store
                    .abort(ns, &reference)
                    .await
                    .with_context(|| format!("content abort {reference}"))?;
            }
            Ok(())
        }
    }
}

fn parse_digest(value: &str) -> Result<Digest> {
    Digest::parse(value).map_err(|e| anyhow::anyhow!(e))
}

#[derive(Serialize)]
struct InfoJson {
    digest: String,
    size: u64,
    created_at: f64,
    updated_at: f64,
    labels: std::collections::BTreeMap<String, String>,
}

impl From<&Info> for InfoJson {
    fn from(info: &Info) -> InfoJson {
        InfoJson {
            digest: info.digest.to_string(),
            size: info.size,
            created_at: output::unix_seconds(info.created_at),
            updated_at: output::unix_seconds(info.updated_at),
            labels: info.labels.clone().into_iter().collect(),
        }
    }
}

#[derive(Serialize)]
struct StatusJson {
    #[serde(rename = "ref")]
    reference: String,
    offset: u64,
    total: u64,
    expected: Option<String>,
    started_at: f64,
    updated_at: f64,
}

impl From<&Status> for StatusJson {
    fn from(s: &Status) -> StatusJson {
        StatusJson {
            reference: s.reference.clone(),
            offset: s.offset,
            total: s.total,
            expected: s.expected.as_ref().map(|d| d.to_string()),
            started_at: output::unix_seconds(s.started_at),
            updated_at: output::unix_seconds(s.updated_at),
        }
    }
}

async fn list(
    store: &RemoteContentStore,
    namespace: &str,
    filters: &[String],
    quiet: bool,
    format: Format,
) -> Result<()> {
    let mut infos = store.list(namespace, filters).await.context("content ls")?;
    infos.sort_by(|a, b| a.digest.cmp(&b.digest));
    if quiet {
        for info in &infos {
            println!("{}", info.digest);
        }
        return Ok(());
    }
    match format {
        Format::Json => output::json(&infos.iter().map(InfoJson::from).collect::<Vec<_>>()),
        Format::Table => {
            let rows: Vec<Vec<String>> = infos
                .iter()
                .map(|info| {
                    let mut labels: Vec<_> = info
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    labels.sort();
                    vec![
                        info.digest.to_string(),
                        output::size(info.size),
                        output::age(info.created_at),
                        labels.join(","),
                    ]
                })
                .collect();
            output::table(&["DIGEST", "SIZE", "AGE", "LABELS"], &rows)
        }
    }
}

/// Streams a blob to stdout with a few reads in flight.
async fn get(store: &RemoteContentStore, namespace: &str, digest: &Digest) -> Result<()> {
    let size = store.info(namespace, digest).await?.size;
    let mut out = std::io::stdout().lock();
    let mut pending = FuturesOrdered::new();
    let mut next = 0u64;
    let mut written = 0u64;
    loop {
        while pending.len() < READ_AHEAD && next < size {
            let offset = next;
            pending
                .push_back(async move { store.read_at(namespace, digest, offset, MAX_READ).await });
            next += MAX_READ as u64;
        }
        let Some(chunk) = pending.next().await else {
            break;
        };
        let chunk = chunk?;
        if chunk.is_empty() {
            bail!("blob ended at {written} of {size} bytes");
        }
        out.write_all(&chunk)
            .context("writing to standard output")?;
        written += chunk.len() as u64;
    }
    out.flush().context("writing to standard output")?;
    Ok(())
}

/// Standard input as a file of its own (a duplicate of descriptor 0, sharing
/// its position).
fn standard_input() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard input")?;
    Ok(std::fs::File::from(fd))
}

/// Passes over the first `skip` bytes of `input`: by seeking in a file, by
/// reading them from anything else.
fn skip_input(input: &std::fs::File, skip: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let meta = input.metadata().context("inspecting standard input")?;
    let mut input = input;
    let passed = if meta.is_file() {
        let at = input
            .stream_position()
            .context("finding standard input's position")?;
        let passed = skip.min(meta.len().saturating_sub(at));
        input
            .seek(SeekFrom::Current(passed as i64))
            .context("seeking in standard input")?;
        passed
    } else {
        std::io::copy(&mut input.take(skip), &mut std::io::sink())
            .context("reading standard input")?
    };
    if passed < skip {
        bail!("standard input is shorter than what the ingest already holds");
    }
    Ok(())
}

async fn ingest(
    store: &RemoteContentStore,
    namespace: &str,
    reference: &str,
    expected: Option<Digest>,
    size: Option<u64>,
    labels: HashMap<String, String>,
) -> Result<Digest> {
    let mut options = WriterOptions::new(reference);
    options.total = size;
    options.expected = expected.clone();
    let mut writer = match store.writer(namespace, options).await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && expected.is_some() => {
            return already_stored(store, namespace, e, expected, labels).await;
        }
        opened => opened?,
    };
    // A resumed ingest already holds the first `skip` bytes: standard input
    // gives them again, and they are not sent again. Only with an expected
    // digest, which the commit checks against the held bytes and the new
    // ones together: without one, a leftover ingest of other bytes would
    // be committed as a mix of the two, so it is started afresh.
    let mut skip = writer.status().await?.offset;
    if skip > 0 && expected.is_none() {
        eprintln!("berth: restarting {reference}: it holds {skip} bytes, and without --expected they cannot be checked");
        writer.restart().await?;
        skip = 0;
    }
    if skip > 0 {
        eprintln!("berth: resuming {reference} at offset {skip}");
    }
    let stdin = standard_input()?;
    if skip > 0 {
        skip_input(&stdin, skip)?;
    }
    // From a file, contentd reads the bytes itself when it can.
    writer.write_file(stdin).await?;
    let committed = writer
        .commit(CommitOptions {
            size,
            expected: expected.clone(),
            labels: labels.clone(),
        })
        .await;
    match committed {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && expected.is_some() => {
            already_stored(store, namespace, e, expected, labels).await
        }
        committed => Ok(committed?),
    }
}

/// The expected blob is stored already (`exists` says so): it gets the
/// ingest's labels, and its digest is the ingest's result.
async fn already_stored(
    store: &RemoteContentStore,
    namespace: &str,
    exists: berth_errdefs::Error,
    expected: Option<Digest>,
    labels: HashMap<String, String>,
) -> Result<Digest> {
    let Some(digest) = expected else {
        return Err(exists.into());
    };
    for (key, value) in labels {
        berth_content::set_label(store, namespace, &digest, &key, Some(value)).await?;
    }
    Ok(digest)
}
