//! A layer tarball applied by snapd (native whiteouts, without
//! privileges): whatever the archive says, nothing is made outside the
//! target directory. The target sits in a parent directory beside an
//! empty sibling; after the apply the parent must hold exactly those two
//! and the sibling stay empty. bench/fuzz.sh runs this target as an
//! unprivileged user, so that a bug could not write where root can.
#![no_main]

mod confined;

use berth_snapd::apply::{apply, ApplyOptions, Unprivileged};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(target) = confined::Confined::new() else {
        return;
    };
    let _ = apply(data, &target.root, &ApplyOptions::default(), &Unprivileged);
    target.assert_nothing_outside();
});
