//! Image references (`berth pull NAME`, image records, CRI image specs):
//! parsing never panics, and a parsed reference prints as one that parses
//! back to itself.
#![no_main]

use berth_reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, reference, "{text:?} -> {printed:?}");
    }
});
