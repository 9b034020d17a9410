//! `berth namespaces ...`: berth-metad's namespaces. Also the label
//! argument helpers the other metad subcommands share.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use berth_client::RemoteNamespaces;
use berth_metadata::{Labels, Namespace, NamespaceStore};
use serde::Serialize;

use crate::global::Global;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum NamespacesCommand {
    /// List namespaces, optionally matching filters (e.g. 'labels.team==core').
    #[command(visible_alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create a namespace.
    Create {
        name: String,
        /// Labels, KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels on a namespace.
    Label {
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove namespaces; refused while anything is left in them.
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// KEY=VALUE arguments as labels.
pub(crate) fn parse_labels(pairs: &[String]) -> Result<Labels> {
    let mut labels = Labels::new();
    for (key, value) in parse_pairs(pairs)? {
        labels.insert(key, value);
    }
    Ok(labels)
}

/// KEY=VALUE arguments as a label update: the labels to set and the
/// `labels.KEY` paths that apply them (KEY= removes KEY).
pub(crate) fn label_update(pairs: &[String]) -> Result<(Labels, Vec<String>)> {
    let mut labels = Labels::new();
    let mut paths = Vec::new();
    for (key, value) in parse_pairs(pairs)? {
        paths.push(format!("labels.{key}"));
        if !value.is_empty() {
            labels.insert(key, value);
        }
    }
    Ok((labels, paths))
}

fn parse_pairs(pairs: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("label {pair:?}: expected KEY=VALUE");
        };
        if key.is_empty() {
            bail!("label {pair:?}: empty key");
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Labels for a table cell: `a=1,b=2`, sorted.
pub(crate) fn labels_text(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Labels for JSON, sorted.
pub(crate) fn sorted(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.clone().into_iter().collect()
}

#[derive(Serialize)]
struct NamespaceJson {
    name: String,
    labels: BTreeMap<String, String>,
}

impl From<&Namespace> for NamespaceJson {
    fn from(namespace: &Namespace) -> NamespaceJson {
        NamespaceJson {
            name: namespace.name.clone(),
            labels: sorted(&namespace.labels),
        }
    }
}

fn print_one(format: Format, namespace: &Namespace) -> Result<()> {
    match format {
        Format::Json => output::json(&NamespaceJson::from(namespace)),
        Format::Table => {
            println!("{}", namespace.name);
            Ok(())
        }
    }
}

pub async fn run(global: &Global, command: NamespacesCommand) -> Result<()> {
    let namespaces = RemoteNamespaces::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    match command {
        NamespacesCommand::Ls { quiet, filters } => {
            let mut list = namespaces.list(&filters).await.context("namespaces ls")?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                for namespace in &list {
                    println!("{}", namespace.name);
                }
                return Ok(());
            }
            match global.format {
                Format::Json => {
                    output::json(&list.iter().map(NamespaceJson::from).collect::<Vec<_>>())
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|n| vec![n.name.clone(), labels_text(&n.labels)])
                        .collect();
                    output::table(&["NAME", "LABELS"], &rows)
                }
            }
        }
        NamespacesCommand::Create { name, labels } => {
            let labels = parse_labels(&labels)?;
            let created = namespaces
                .create(Namespace {
                    name: name.clone(),
                    labels,
                })
                .await
                .with_context(|| format!("namespaces create {name}"))?;
            print_one(global.format, &created)
        }
        NamespacesCommand::Label { name, labels } => {
            let (labels, paths) = label_update(&labels)?;
            let updated = namespaces
                .update(
                    Namespace {
                        name: name.clone(),
                        labels,
                    },
                    &paths,
                )
                .await
                .with_context(|| format!("namespaces label {name}"))?;
            match global.format {
                Format::Json => output::json(&NamespaceJson::from(&updated)),
                Format::Table => {
                    println!("{}", labels_text(&updated.labels));
                    Ok(())
                }
            }
        }
        NamespacesCommand::Rm { names } => {
            for name in names {
                namespaces
                    .delete(&name)
                    .await
                    .with_context(|| format!("namespaces rm {name}"))?;
                if global.format == Format::Table {
                    println!("{name}");
                }
            }
            Ok(())
        }
    }
}
