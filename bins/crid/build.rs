//! Builds berth's pause program (pause/pause.c) as a static executable that
//! crid embeds and packs into its built-in sandbox image.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("pause/pause.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("pause");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&compiler)
        .args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{compiler} could not build a static pause ({s}): is libc6-dev installed?"),
        Err(e) => panic!("running {compiler}: {e}"),
    }
}
