//! The names every request carries, as berth checks them: ids and
//! namespaces (they become path components), ingest refs, digests,
//! platforms and labels. Never a panic; and what is accepted keeps the
//! promises paths rely on.
#![no_main]

use std::collections::HashMap;

use berth_ids::{validate_id, validate_labels, validate_namespace, validate_ref, Digest, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for accepted in [validate_id(&text).is_ok(), validate_namespace(&text).is_ok()] {
        if accepted {
            // A path component: never empty, a separator, `.` or `..`, or
            // anything but [A-Za-z0-9._-], and bounded.
            assert!(!text.is_empty() && text.len() <= berth_ids::MAX_ID_LEN);
            assert!(text != "." && text != "..");
            assert!(text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
        }
    }
    if validate_ref(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= berth_ids::MAX_REF_LEN);
        assert!(
            !text.contains('/') && !text.contains('\\') && !text.contains(".."),
            "{text:?}"
        );
    }
    if let Ok(digest) = Digest::parse(&text) {
        // The digest prints as what was parsed, and its hex is what names
        // the blob's file.
        assert_eq!(digest.as_str(), text);
        assert!(!digest.hex().is_empty() && !digest.hex().contains('/'));
    }
    let _ = Platform::parse(&text);
    // Labels: the text split into key=value lines.
    let labels: HashMap<String, String> = text
        .lines()
        .map(|line| {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let _ = validate_labels(&labels);
});
