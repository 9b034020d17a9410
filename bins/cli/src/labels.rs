//! Labels on the command line: `KEY=VALUE` arguments in, sorted text and
//! JSON out. Every subcommand that takes or shows labels uses these.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

/// Labels as the daemons' traits take them.
type Labels = HashMap<String, String>;

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
