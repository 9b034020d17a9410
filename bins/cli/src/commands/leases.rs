//! `berth leases ...`: leases in berth-metad, and the resources they hold
//! from garbage collection.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use berth_client::RemoteLeases;
use berth_metadata::{
    format_rfc3339, lease_expiry, Lease, LeaseManager, Resource, LABEL_GC_EXPIRE,
};
use serde::Serialize;

use crate::global::Global;
use crate::labels::{labels_text, parse_labels, sorted};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum LeasesCommand {
    /// List leases, optionally matching filters (e.g. 'labels.purpose==pull').
    #[command(visible_alias = "list")]
    Ls {
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create a lease; prints its id.
    Create {
        /// The lease's id (generated if not given).
        #[arg(long)]
        id: Option<String>,
        /// Let the lease expire after this long (e.g. 30m, 1h30m, 2d).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Labels, KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove leases (what they held goes at the next collection).
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
    /// List what a lease holds.
    Resources { id: String },
    /// Hold a resource: TYPE is content (RESOURCE a digest), ingests (an
    /// ingest ref) or snapshots/<snapshotter> (a snapshot key).
    Add {
        id: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        resource: String,
    },
    /// Stop holding a resource.
    RemoveResource {
        id: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        resource: String,
    },
}

/// `30s`, `5m`, `1h30m`, `2d`: whole numbers of d, h, m or s, largest first
/// or not.
fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || anyhow::anyhow!("duration {text:?}: expected e.g. 30s, 5m, 1h30m or 2d");
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[derive(Serialize)]
struct LeaseJson {
    id: String,
    created_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<f64>,
    labels: BTreeMap<String, String>,
}

impl From<&Lease> for LeaseJson {
    fn from(lease: &Lease) -> LeaseJson {
        LeaseJson {
            id: lease.id.clone(),
            created_at: output::unix_seconds(lease.created_at),
            expires_at: lease_expiry(&lease.labels)
                .ok()
                .flatten()
                .map(output::unix_seconds),
            labels: sorted(&lease.labels),
        }
    }
}

#[derive(Serialize)]
struct ResourceJson {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

/// When a lease expires, for a table.
fn expiry_text(lease: &Lease) -> String {
    match lease_expiry(&lease.labels) {
        Ok(Some(at)) => format_rfc3339(at),
        Ok(None) => "-".to_string(),
        Err(_) => "invalid".to_string(),
    }
}

pub async fn run(global: &Global, command: LeasesCommand) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let ns = namespace.as_str();
    let leases = RemoteLeases::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    match command {
        LeasesCommand::Ls { quiet, filters } => {
            let mut list = leases.list(ns, &filters).await.context("leases ls")?;
            list.sort_by(|a, b| a.id.cmp(&b.id));
            if quiet {
                for lease in &list {
                    println!("{}", lease.id);
                }
                return Ok(());
            }
            match global.format {
                Format::Json => output::json(&list.iter().map(LeaseJson::from).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|l| {
                            let mut labels = l.labels.clone();
                            labels.remove(LABEL_GC_EXPIRE);
                            vec![
                                l.id.clone(),
                                output::age(l.created_at),
                                expiry_text(l),
                                labels_text(&labels),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "CREATED", "EXPIRES", "LABELS"], &rows)
                }
            }
        }
        LeasesCommand::Create {
            id,
            expires,
            labels,
        } => {
            let mut labels = parse_labels(&labels)?;
            if let Some(expires) = expires {
                let at = SystemTime::now() + parse_duration(&expires)?;
                labels.insert(LABEL_GC_EXPIRE.to_string(), format_rfc3339(at));
            }
            let id = id.unwrap_or_default();
            let lease = leases
                .create(ns, &id, labels)
                .await
                .with_context(|| format!("leases create {id}"))?;
            match global.format {
                Format::Json => output::json(&LeaseJson::from(&lease)),
                Format::Table => {
                    println!("{}", lease.id);
                    Ok(())
                }
            }
        }
        LeasesCommand::Rm { ids, sync } => {
            for id in ids {
                leases
                    .delete(ns, &id, sync)
                    .await
                    .with_context(|| format!("leases rm {id}"))?;
                if global.format == Format::Table {
                    println!("{id}");
                }
            }
            Ok(())
        }
        LeasesCommand::Resources { id } => {
            let mut resources = leases
                .list_resources(ns, &id)
                .await
                .with_context(|| format!("leases resources {id}"))?;
            resources.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
            match global.format {
                Format::Json => output::json(
                    &resources
                        .iter()
                        .map(|r| ResourceJson {
                            kind: r.kind.clone(),
                            id: r.id.clone(),
                        })
                        .collect::<Vec<_>>(),
                ),
                Format::Table => {
                    let rows: Vec<Vec<String>> = resources
                        .iter()
                        .map(|r| vec![r.kind.clone(), r.id.clone()])
                        .collect();
                    output::table(&["TYPE", "ID"], &rows)
                }
            }
        }
        LeasesCommand::Add { id, kind, resource } => leases
            .add_resource(ns, &id, Resource { id: resource, kind })
            .await
            .with_context(|| format!("leases add {id}")),
        LeasesCommand::RemoveResource { id, kind, resource } => leases
            .delete_resource(ns, &id, Resource { id: resource, kind })
            .await
            .with_context(|| format!("leases remove-resource {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "5", "m", "1x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
