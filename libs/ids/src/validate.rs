use std::collections::HashMap;

use berth_errdefs::Error;

/// The namespace a request without one is served in, as in containerd.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest namespace or id (containerd's limit, which keeps shim socket paths
/// inside `sun_path`).
pub const MAX_ID_LEN: usize = 76;
/// Longest ingest ref.
pub const MAX_REF_LEN: usize = 256;
/// Largest single label, key and value together (containerd's limit).
pub const MAX_LABEL_SIZE: usize = 4096;
/// Largest label set on one object, all keys and values together.
pub const MAX_LABELS_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} is not valid: {why}")]
    Malformed {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("label {key:?} is larger than {max} bytes")]
    LabelTooLarge { key: String, max: usize },
    #[error("labels are larger than {max} bytes in all")]
    LabelsTooLarge { max: usize },
}

impl From<ValidationError> for Error {
    fn from(err: ValidationError) -> Error {
        Error::invalid_argument(err.to_string())
    }
}

fn shorten(value: &str) -> String {
    value.chars().take(80).collect()
}

/// Identifier grammar shared by namespaces and object ids: alphanumeric
/// components joined by single `.`, `_` or `-` (containerd's identifiers).
fn validate_identifier(what: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { what });
    }
    if value.len() > MAX_ID_LEN {
        return Err(ValidationError::TooLong {
            what,
            value: shorten(value),
            max: MAX_ID_LEN,
        });
    }
    let malformed = |why| ValidationError::Malformed {
        what,
        value: shorten(value),
        why,
    };
    let mut previous_was_separator = true;
    for c in value.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => previous_was_separator = false,
            '.' | '_' | '-' => {
                if previous_was_separator {
                    return Err(malformed("separators must sit between letters or digits"));
                }
                previous_was_separator = true;
            }
            _ => {
                return Err(malformed(
                    "only letters, digits, '.', '_' and '-' are allowed",
                ))
            }
        }
    }
    if previous_was_separator {
        return Err(malformed("must end with a letter or digit"));
    }
    Ok(())
}

pub fn validate_namespace(namespace: &str) -> Result<(), ValidationError> {
    validate_identifier("namespace", namespace)
}

pub fn validate_id(id: &str) -> Result<(), ValidationError> {
    validate_identifier("id", id)
}

/// An ingest ref names a write in progress (`layer-sha256:...`,
/// `manifest-busybox:1.36`). It is never used as a path: it is hashed for
/// that. It may still not contain path separators or `..`, so that no
/// layer of the stack can be tricked into using it as one.
pub fn validate_ref(reference: &str) -> Result<(), ValidationError> {
    const WHAT: &str = "ref";
    if reference.is_empty() {
        return Err(ValidationError::Empty { what: WHAT });
    }
    if reference.len() > MAX_REF_LEN {
        return Err(ValidationError::TooLong {
            what: WHAT,
            value: shorten(reference),
            max: MAX_REF_LEN,
        });
    }
    let malformed = |why| ValidationError::Malformed {
        what: WHAT,
        value: shorten(reference),
        why,
    };
    if let Some(bad) = reference.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+' | '='))
    }) {
        return Err(if bad == '/' || bad == '\\' {
            malformed("path separators are not allowed")
        } else {
            malformed("only letters, digits and . _ - : @ + = are allowed")
        });
    }
    if reference.contains("..") {
        return Err(malformed("'..' is not allowed"));
    }
    Ok(())
}

fn validate_label(key: &str, value: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::Empty { what: "label key" });
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        return Err(ValidationError::LabelTooLarge {
            key: shorten(key),
            max: MAX_LABEL_SIZE,
        });
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::Malformed {
            what: "label key",
            value: shorten(key),
            why: "control characters and spaces are not allowed",
        });
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ValidationError::Malformed {
            what: "label value",
            value: shorten(value),
            why: "control characters are not allowed",
        });
    }
    Ok(())
}

/// Checks every label and the size of the set as a whole.
pub fn validate_labels(labels: &HashMap<String, String>) -> Result<(), ValidationError> {
    let mut total = 0usize;
    for (key, value) in labels {
        validate_label(key, value)?;
        total += key.len() + value.len();
    }
    if total > MAX_LABELS_SIZE {
        return Err(ValidationError::LabelsTooLarge {
            max: MAX_LABELS_SIZE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_containerds_grammar() {
        for good in ["default", "k8s.io", "a", "my_ns-1", "A.b_c-D9"] {
            assert_eq!(validate_namespace(good), Ok(()), "{good}");
        }
        for bad in [
            "", "..", "../x", "a/b", "-a", "a-", "a..b", "a b", "ns\0", ".hidden", "ümlaut",
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(validate_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn refs_have_no_path_separators_or_dot_dot() {
        for good in [
            "layer-sha256:0123abcd",
            "manifest-busybox:1.36",
            "index@sha256:ff",
            "a+b=c",
        ] {
            assert_eq!(validate_ref(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "../../x",
            "a/b",
            "..",
            "a\\b",
            "with space",
            "nul\0",
            "x..y",
        ] {
            let err = validate_ref(bad).expect_err(bad);
            let converted: Error = err.into();
            assert_eq!(converted.kind(), berth_errdefs::ErrorKind::InvalidArgument);
        }
        assert!(validate_ref(&"r".repeat(MAX_REF_LEN + 1)).is_err());
    }

    #[test]
    fn labels_are_bounded() {
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "x".to_string());
        assert_eq!(validate_labels(&labels), Ok(()));
        labels.insert("big".to_string(), "v".repeat(MAX_LABEL_SIZE));
        assert!(matches!(
            validate_labels(&labels),
            Err(ValidationError::LabelTooLarge { .. })
        ));
        let mut many = HashMap::new();
        for i in 0..40 {
            many.insert(format!("k{i}"), "v".repeat(2000));
        }
        assert!(matches!(
            validate_labels(&many),
            Err(ValidationError::LabelsTooLarge { .. })
        ));
        let mut bad_key = HashMap::new();
        bad_key.insert("a b".to_string(), String::new());
        assert!(validate_labels(&bad_key).is_err());
        let mut empty_key = HashMap::new();
        empty_key.insert(String::new(), "v".to_string());
        assert!(validate_labels(&empty_key).is_err());
    }

    #[test]
    fn refs_are_bounded_and_their_errors_say_why() {
        assert_eq!(validate_ref(&"r".repeat(MAX_REF_LEN)), Ok(()));
        let long = "r".repeat(MAX_REF_LEN + 1);
        assert_eq!(
            validate_ref(&long),
            Err(ValidationError::TooLong {
                what: "ref",
                value: "r".repeat(80),
                max: MAX_REF_LEN,
            })
        );
        for (bad, why) in [
            ("a/b", "path separators are not allowed"),
            ("a\\b", "path separators are not allowed"),
            ("a b", "only letters, digits and . _ - : @ + = are allowed"),
            ("a..b", "'..' is not allowed"),
        ] {
            match validate_ref(bad) {
                Err(ValidationError::Malformed { why: got, .. }) => assert_eq!(got, why, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn labels_are_bounded_one_by_one_and_in_all() {
        // One label: key and value together up to 4096 bytes.
        let one =
            |key: &str, value_len: usize| HashMap::from([(key.to_string(), "v".repeat(value_len))]);
        assert_eq!(validate_labels(&one("k", MAX_LABEL_SIZE - 1)), Ok(()));
        assert_eq!(
            validate_labels(&one("k", MAX_LABEL_SIZE)),
            Err(ValidationError::LabelTooLarge {
                key: "k".into(),
                max: MAX_LABEL_SIZE,
            })
        );
        // The set: 16 labels of exactly 4096 bytes fill 64 KiB; one byte
        // more is too much.
        let mut labels: HashMap<String, String> = (0..16)
            .map(|i| (format!("{i:02}"), "v".repeat(MAX_LABEL_SIZE - 2)))
            .collect();
        assert_eq!(MAX_LABELS_SIZE, 16 * MAX_LABEL_SIZE);
        assert_eq!(validate_labels(&labels), Ok(()));
        labels.insert("x".into(), String::new());
        assert_eq!(
            validate_labels(&labels),
            Err(ValidationError::LabelsTooLarge {
                max: MAX_LABELS_SIZE
            })
        );
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = format!("{}{}", "a".repeat(80), "b".repeat(20));
        match validate_id(&long) {
            Err(ValidationError::TooLong { value, .. }) => assert_eq!(value, "a".repeat(80)),
            other => panic!("{other:?}"),
        }
    }
}
