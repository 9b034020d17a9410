//! A `certs.d/<host>/hosts.toml` as contentd reads it: a bad file is an
//! error, never a panic. (The file is written to a temporary directory:
//! contentd reads it from disk.)
#![no_main]

use berth_contentd::transfer::hosts::endpoints;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let host_dir = dir.path().join("registry.test");
    if std::fs::create_dir(&host_dir).is_err()
        || std::fs::write(host_dir.join("hosts.toml"), data).is_err()
    {
        return;
    }
    let _ = endpoints(Some(dir.path()), "registry.test", false);
});
