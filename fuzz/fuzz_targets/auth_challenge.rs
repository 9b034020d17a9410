//! A registry's `WWW-Authenticate` header: parsing never panics.
#![no_main]

use berth_contentd::transfer::auth::parse_challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_challenge(text);
    }
});
