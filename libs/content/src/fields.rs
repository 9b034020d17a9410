//! The fields filters and updates see on blobs and ingests.

use berth_errdefs::{Error, Result};
use berth_filters::Adaptor;

use crate::{Info, Labels, Status};

/// `digest`, `size` and `labels.KEY` of a blob, for filters.
#[derive(Debug)]
pub struct InfoFields<'a>(pub &'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.0.digest.to_string()),
            [f] if f == "size" => Some(self.0.size.to_string()),
            [f, key @ ..] if f == "labels" && !key.is_empty() => {
                self.0.labels.get(&key.join(".")).cloned()
            }
            _ => None,
        }
    }
}

/// `ref` (and `expected`) of an ingest, for filters.
#[derive(Debug)]
pub struct StatusFields<'a>(pub &'a Status);

impl Adaptor for StatusFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.0.reference.clone()),
            [f] if f == "expected" => self.0.expected.as_ref().map(|d| d.to_string()),
            _ => None,
        }
    }
}

/// Applies a label update with containerd's field-path rules: no paths or
/// `labels` replace all labels; `labels.KEY` sets or (when absent from
/// `new`) removes one key. Anything else is InvalidArgument.
pub fn apply_label_update(current: &mut Labels, new: &Labels, paths: &[String]) -> Result<()> {
    if paths.is_empty() {
        *current = new.clone();
        return Ok(());
    }
    let mut replaced = current.clone();
    for path in paths {
        if path == "labels" {
            replaced = new.clone();
        } else if let Some(key) = path.strip_prefix("labels.") {
            if key.is_empty() {
                return Err(Error::invalid_argument("empty label key in update path"));
            }
            match new.get(key) {
                Some(value) => {
                    replaced.insert(key.to_string(), value.clone());
                }
                None => {
                    replaced.remove(key);
                }
            }
        } else {
            return Err(Error::invalid_argument(format!(
                "cannot update {path:?}: only labels can change"
            )));
        }
    }
    *current = replaced;
    Ok(())
}
