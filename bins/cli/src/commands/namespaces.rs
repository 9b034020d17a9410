//! `berth namespaces ...`: berth-metad's namespaces.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use berth_client::RemoteNamespaces;
use berth_metadata::{Namespace, NamespaceStore};
use serde::Serialize;

use crate::global::Global;
use crate::labels::{label_update, labels_text, parse_labels, sorted};
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
