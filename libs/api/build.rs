#![allow(clippy::expect_used)] // A build script fails the build by panicking.

//! Compiles berth's own service definitions in `proto/` with ttrpc-codegen.

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &[
    "berth/content/v1/content.proto",
    "berth/transfer/v1/transfer.proto",
    "berth/snapshots/v1/snapshots.proto",
    "berth/namespaces/v1/namespaces.proto",
    "berth/images/v1/images.proto",
    "berth/containers/v1/containers.proto",
    "berth/leases/v1/leases.proto",
    "berth/events/v1/events.proto",
    "berth/gc/v1/gc.proto",
    "berth/tasks/v1/tasks.proto",
];

fn main() {
    // Read when the script runs, not baked in when it is compiled: a copy
    // of the tree (cargo-mutants makes one) may reuse the compiled script.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let proto_root = PathBuf::from(manifest_dir).join("../../proto");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS.iter().map(|p| proto_root.join(p)))
        .include(&proto_root)
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from proto/");
    strip_inner_attributes(&out_dir);
}

/// The generated files start with inner attributes (`#![allow(...)]`), which
/// `include!` cannot take; lib.rs sets the same allowances on the module.
fn strip_inner_attributes(out_dir: &std::path::Path) {
    for entry in std::fs::read_dir(out_dir).expect("reading OUT_DIR") {
        let path = entry.expect("reading OUT_DIR").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("reading generated code");
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| !(line.starts_with("#![") || line.starts_with("//!")))
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("writing generated code");
        }
    }
}
