//! A layer tarball applied by snapd (native whiteouts, without
//! privileges): whatever the archive says, nothing is made outside the
//! target directory. The target sits in a parent directory beside an
//! empty sibling; after the apply the parent must hold exactly those two
//! and the sibling stay empty. bench/fuzz.sh runs this target as an
//! unprivileged user, so that a bug could not write where root can.
#![no_main]

use berth_snapd::apply::{apply, ApplyOptions, Unprivileged};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parent) = tempfile::tempdir() else {
        return;
    };
    let (root, sibling) = (parent.path().join("root"), parent.path().join("sibling"));
    if std::fs::create_dir(&root).is_err() || std::fs::create_dir(&sibling).is_err() {
        return;
    }
    let _ = apply(data, &root, &ApplyOptions::default(), &Unprivileged);
    let mut names: Vec<String> = std::fs::read_dir(parent.path())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    assert_eq!(
        names,
        ["root", "sibling"],
        "the layer wrote beside its root"
    );
    assert_eq!(
        std::fs::read_dir(&sibling).map(|d| d.count()).unwrap_or(0),
        0,
        "the layer wrote into a sibling of its root"
    );
});
