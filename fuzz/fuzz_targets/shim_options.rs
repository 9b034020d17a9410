//! What containerd hands the shim, parsed as the shim parses it: runtime
//! options of each type it reads (a runtime options TOML document, runc's
//! and containerd's option messages, `start`'s stdin in both forms) and
//! the mount table and `/proc/PID/cgroup` it finds cgroups from. A bad
//! input is an error or an empty result, never a panic. The first byte
//! picks the parser. (`runtimeoptions.v1.Options` is left out as a type:
//! its `config_path` names a file to read; its document is the TOML case.)
#![no_main]

use containerd_shim_berth_v2::cgroups::{Cgroup, Hierarchies};
use containerd_shim_berth_v2::options::{
    RuntimeOptions, StartInput, LINUX_CREATE_OPTIONS, LINUX_RUNC_OPTIONS, RUNC_OPTIONS,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match choice % 6 {
        0 => {
            let _ = RuntimeOptions::from_toml(&text, "fuzz");
        }
        1..=3 => {
            let mut any = Any::new();
            any.type_url = [RUNC_OPTIONS, LINUX_CREATE_OPTIONS, LINUX_RUNC_OPTIONS]
                [usize::from(choice % 6) - 1]
                .to_string();
            any.value = rest.to_vec();
            let _ = RuntimeOptions::from_any(Some(&any));
        }
        4 => {
            let _ = StartInput::parse(rest, "c1", "default");
        }
        _ => {
            // The mount table, then a process's cgroups on it: split at the
            // first NUL.
            let (mounts, cgroups) = text.split_once('\0').unwrap_or((&text, ""));
            let hierarchies = Hierarchies::parse(mounts);
            let _ = Cgroup::parse(cgroups, &hierarchies);
            let _ = hierarchies.dirs("/a/b");
        }
    }
});
