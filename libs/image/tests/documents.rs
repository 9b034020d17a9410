//! berth-image's document model on real bytes (see fixtures/README.md) and
//! on hostile variations of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_ids::Digest;
use berth_image::media::{self, Compression, Kind};
use berth_image::{
    parse_config, parse_index, parse_manifest, sniff_media_type, DescriptorExt, Document, Matcher,
    Platform, MAX_DOCUMENT_SIZE,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn oci_and_docker_manifests_name_the_same_blobs() {
    let config = fixture("config.json");
    for (name, manifest_type, layer_type) in [
        (
            "oci-manifest.json",
            media::OCI_MANIFEST,
            media::OCI_LAYER_GZIP,
        ),
        (
            "docker-manifest.json",
            media::DOCKER_MANIFEST,
            media::DOCKER_LAYER_GZIP,
        ),
    ] {
        let data = fixture(name);
        let m = parse_manifest(&data).unwrap();
        assert_eq!(m.media_type, manifest_type, "{name}");
        assert_eq!(m.config.digest, Digest::of(&config), "{name}");
        assert_eq!(m.config.size, config.len() as u64);
        assert_eq!(m.config.kind(), Kind::Config);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, layer_type);
        assert_eq!(m.layers[0].kind(), Kind::Layer(Compression::Gzip));
        assert_eq!(m.layers[0].size, 129);
        assert_eq!(sniff_media_type(&data).as_deref(), Some(manifest_type));
        let doc = Document::parse(None, &data).unwrap();
        assert_eq!(doc.children().len(), 2);
        let labels = doc.gc_labels();
        assert_eq!(
            labels["containerd.io/gc.ref.content.config"],
            m.config.digest.to_string()
        );
        assert_eq!(
            labels["containerd.io/gc.ref.content.l.0"],
            m.layers[0].digest.to_string()
        );
        assert_eq!(labels.len(), 2);
    }
}

#[test]
fn the_config_gives_diff_ids_and_what_a_container_runs() {
    let config = parse_config(&fixture("config.json")).unwrap();
    assert_eq!(config.diff_ids.len(), 1);
    let process = config.spec.config().as_ref().unwrap();
    assert_eq!(
        process.cmd().as_deref(),
        Some(&["/bin/hello".to_string()][..])
    );
    assert_eq!(process.user().as_deref(), Some("1000:1000"));
    let manifest = parse_manifest(&fixture("oci-manifest.json")).unwrap();
    assert_eq!(
        config.diff_ids_for(&manifest).unwrap(),
        &config.diff_ids[..]
    );
    let mut two_layers = manifest.clone();
    two_layers.layers.push(manifest.layers[0].clone());
    assert!(config.diff_ids_for(&two_layers).is_err());
}

#[test]
fn indexes_choose_this_platform_and_label_what_they_keep() {
    for (name, list_type, manifest) in [
        ("oci-index.json", media::OCI_INDEX, "oci-manifest.json"),
        (
            "docker-list.json",
            media::DOCKER_LIST,
            "docker-manifest.json",
        ),
    ] {
        let data = fixture(name);
        let index = parse_index(&data).unwrap();
        assert_eq!(index.media_type, list_type);
        assert_eq!(sniff_media_type(&data).as_deref(), Some(list_type));
        let amd64 = Matcher::new(vec![Platform::parse("linux/amd64").unwrap()]);
        let chosen = amd64
            .best(
                index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(|p| (p, m))),
            )
            .unwrap();
        assert_eq!(chosen.digest, Digest::of(&fixture(manifest)), "{name}");
        // arm64/v8 is arm64; BuildKit's attestation never runs anywhere.
        let arm64 = Matcher::new(vec![Platform::parse("linux/arm64").unwrap()]);
        let kept: Vec<_> = index
            .manifests
            .iter()
            .filter(|m| m.platform.as_ref().is_some_and(|p| arm64.matches(p)))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].platform.as_ref().unwrap().to_string(),
            "linux/arm64"
        );
        let labels = berth_image::document::index_gc_labels(kept);
        assert_eq!(labels.len(), 1);
        assert!(labels.contains_key("containerd.io/gc.ref.content.m.0"));
        let all = Document::parse(Some(list_type), &data).unwrap().gc_labels();
        assert_eq!(all.len(), index.manifests.len());
    }
}

/// The fixture with one string replaced, which must be there.
fn altered(name: &str, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).unwrap();
    assert!(text.contains(from), "{name} has no {from:?}");
    text.replacen(from, to, 1).into_bytes()
}

#[test]
fn hostile_documents_are_refused_with_a_reason() {
    let oci = "oci-manifest.json";
    let layer_digest = "sha256:12f58694dc8c542df98d51be8ea5dacd871663c76d587e348725b30e4c931984";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a path for a digest",
            altered(oci, layer_digest, "sha256:../../../etc/passwd"),
            "../../../etc/passwd",
        ),
        (
            "an unsupported algorithm",
            altered(oci, layer_digest, &format!("sha512:{}", "0".repeat(128))),
            "sha512",
        ),
        (
            "upper-case hex",
            altered(
                oci,
                layer_digest,
                &layer_digest.to_uppercase().replace("SHA", "sha"),
            ),
            "digest",
        ),
        (
            "a negative size",
            altered(oci, "\"size\": 129", "\"size\": -1"),
            "malformed",
        ),
        (
            "schema version 1",
            altered(oci, "\"schemaVersion\": 2", "\"schemaVersion\": 1"),
            "schemaVersion 1",
        ),
        (
            "no schema version",
            altered(oci, "\"schemaVersion\": 2,", ""),
            "malformed",
        ),
        (
            "an index's media type",
            altered(oci, media::OCI_MANIFEST, media::OCI_INDEX),
            "not a manifest",
        ),
        ("not JSON", b"\x1f\x8b\x08".to_vec(), "malformed"),
    ];
    for (what, data, reason) in cases {
        let err = parse_manifest(&data).expect_err(what);
        assert!(err.to_string().contains(reason), "{what}: {err}");
    }
    let index_with_manifest_type = altered(
        "oci-index.json",
        "\"mediaType\": \"application/vnd.oci.image.index.v1+json\"",
        &format!("\"mediaType\": \"{}\"", media::OCI_MANIFEST),
    );
    assert!(parse_index(&index_with_manifest_type).is_err());
    let bad_diff_id = altered("config.json", "sha256:", "sha256:zz");
    assert!(parse_config(&bad_diff_id)
        .unwrap_err()
        .to_string()
        .contains("diff ID"));
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    // Valid JSON, just too big: the bound is checked before the parser runs.
    let mut big = fixture("oci-manifest.json");
    let pad = MAX_DOCUMENT_SIZE as usize + 1 - big.len();
    big.extend(std::iter::repeat_n(b' ', pad));
    assert_eq!(big.len() as u64, MAX_DOCUMENT_SIZE + 1);
    let err = parse_manifest(&big).unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::ResourceExhausted);
    assert!(parse_index(&big).is_err());
    assert!(parse_config(&big).is_err());
    assert_eq!(sniff_media_type(&big), None);
    big.truncate(MAX_DOCUMENT_SIZE as usize);
    assert!(parse_manifest(&big).is_ok());

    // An index of 5,000 tiny entries fits in 4 MiB but lists too many.
    let entry = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:12f58694dc8c542df98d51be8ea5dacd871663c76d587e348725b30e4c931984","size":1}"#;
    let many = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        vec![entry; 5000].join(",")
    );
    let err = parse_index(many.as_bytes()).unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::ResourceExhausted);
}

#[test]
fn roots_are_parsed_by_their_media_type_or_their_shape() {
    let index = fixture("oci-index.json");
    let manifest = fixture("docker-manifest.json");
    assert!(matches!(
        Document::parse(Some("application/octet-stream"), &index).unwrap(),
        Document::Index(_)
    ));
    assert!(matches!(
        Document::parse(None, &manifest).unwrap(),
        Document::Manifest(_)
    ));
    // A media type that contradicts the document is an error, not a guess.
    assert!(Document::parse(Some(media::OCI_INDEX), &manifest).is_err());
    assert!(Document::parse(None, br#"{"schemaVersion":2}"#).is_err());
}
