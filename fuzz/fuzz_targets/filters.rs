//! containerd's filter syntax (`berth images ls`, every List request's
//! filters): parsing never panics.
#![no_main]

use berth_filters::Filter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Filter::parse(text);
        let _ = Filter::parse_any(text.split('\n'));
    }
});
