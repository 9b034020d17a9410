//! `berth gc`: a garbage collection in berth-metad now, and what it removed
//! — counts by type and namespace in a table, every object with
//! `--format json`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use berth_api::gc as pb;
use serde::Serialize;

use crate::global::Global;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct GcArgs {}

pub async fn run(global: &Global, args: GcArgs) -> anyhow::Result<()> {
    let GcArgs {} = args;
    let socket = global.metad_socket();
    let gc = berth_client::RemoteGc::connect(socket)
        .await
        .with_context(|| format!("connecting to berth-metad at {}", socket.display()))?;
    let response = gc.collect().await.context("collecting garbage")?;
    match global.format {
        Format::Json => output::json(&summary_json(&response)),
        Format::Table => {
            let rows = count_rows(&response);
            if !rows.is_empty() {
                output::table(&["TYPE", "NAMESPACE", "REMOVED"], &rows)?;
            }
            for line in summary_lines(&response) {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// One row per (type, namespace): how many objects went.
fn count_rows(response: &pb::CollectResponse) -> Vec<Vec<String>> {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for removed in &response.removed {
        *counts
            .entry((removed.type_.as_str(), removed.namespace.as_str()))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((kind, namespace), n)| vec![kind.to_string(), namespace.to_string(), n.to_string()])
        .collect()
}

/// The lines under the table: the total and times, then what was skipped.
fn summary_lines(response: &pb::CollectResponse) -> Vec<String> {
    let removed = match response.removed.len() {
        0 => "nothing to remove".to_string(),
        1 => "removed 1 object".to_string(),
        n => format!("removed {n} objects"),
    };
    let mut lines = vec![format!(
        "{removed} in {:?} (writers paused {:?})",
        duration(response.duration_nanos),
        duration(response.pause_nanos)
    )];
    if !response.skipped.is_empty() {
        lines.push(format!(
            "skipped, could not be reached: {} (no blobs or snapshots were removed)",
            response.skipped.join(", ")
        ));
    }
    lines
}

#[derive(Serialize)]
struct RemovedJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    namespace: &'a str,
    id: &'a str,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    removed: Vec<RemovedJson<'a>>,
    duration_seconds: f64,
    pause_seconds: f64,
    skipped: &'a [String],
}

fn summary_json(response: &pb::CollectResponse) -> SummaryJson<'_> {
    SummaryJson {
        removed: response
            .removed
            .iter()
            .map(|r| RemovedJson {
                kind: &r.type_,
                namespace: &r.namespace,
                id: &r.id,
            })
            .collect(),
        duration_seconds: duration(response.duration_nanos).as_secs_f64(),
        pause_seconds: duration(response.pause_nanos).as_secs_f64(),
        skipped: &response.skipped,
    }
}

/// A wire duration; a negative one (never sent) reads as zero.
fn duration(nanos: i64) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn removed(kind: &str, namespace: &str, id: &str) -> pb::Removed {
        pb::Removed {
            type_: kind.to_string(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            ..Default::default()
        }
    }

    fn response() -> pb::CollectResponse {
        pb::CollectResponse {
            removed: vec![
                removed("content", "default", "sha256:a"),
                removed("snapshots/overlayfs", "default", "k1"),
                removed("content", "default", "sha256:b"),
                removed("content", "other", "sha256:a"),
                removed("leases", "default", "old"),
                removed("snapshots/overlayfs", "default", "k2"),
            ],
            duration_nanos: 12_500_000,
            pause_nanos: 1_250_000,
            ..Default::default()
        }
    }

    #[test]
    fn the_table_counts_by_type_and_namespace() {
        let rows = count_rows(&response());
        let rows: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["content", "default", "2"],
                ["content", "other", "1"],
                ["leases", "default", "1"],
                ["snapshots/overlayfs", "default", "2"],
            ]
        );
        assert_eq!(
            summary_lines(&response()),
            ["removed 6 objects in 12.5ms (writers paused 1.25ms)"]
        );
    }

    #[test]
    fn nothing_removed_and_skipped_daemons_are_said() {
        let response = pb::CollectResponse {
            skipped: vec!["berth-contentd".into()],
            ..Default::default()
        };
        assert!(count_rows(&response).is_empty());
        assert_eq!(
            summary_lines(&response),
            [
                "nothing to remove in 0ns (writers paused 0ns)",
                "skipped, could not be reached: berth-contentd (no blobs or snapshots were removed)"
            ]
        );
    }

    #[test]
    fn json_lists_every_object() {
        let json = serde_json::to_value(summary_json(&response())).unwrap();
        assert_eq!(json["removed"].as_array().unwrap().len(), 6);
        assert_eq!(
            json["removed"][1],
            serde_json::json!({"type": "snapshots/overlayfs", "namespace": "default", "id": "k1"})
        );
        assert_eq!(json["duration_seconds"], 0.0125);
        assert_eq!(json["pause_seconds"], 0.00125);
        assert_eq!(json["skipped"], serde_json::json!([]));
    }
}
