//! `berth pull REF`: fetch an image through berth-contentd and unpack its
//! layers through berth-snapd at the same time, under a lease from
//! berth-metad, then record the image there. The pull itself is
//! [`berth_image::Puller`]; this is its flags and its display.

use anyhow::{Context, Result};
use berth_client::{
    RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter, RemoteTransfer,
};
use berth_image::{PullEvent, PullOptions, Puller, Unpacker};

use super::snapshots::SnapshotterArg;
use super::transfer::{finish, Display, SourceArgs};
use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Fetch and record the image, but do not unpack it.
    #[arg(long)]
    pub skip_unpack: bool,
    /// Write each layer back to disk (syncfs) before committing it, so
    /// that every layer is on disk when the command returns. Without it
    /// snapd writes layers back within about a second, and discards at
    /// start any that a power cut took before that (the next pull unpacks
    /// them again).
    #[arg(long)]
    pub sync_fs: bool,
    #[command(flatten)]
    pub snapshotter: SnapshotterArg,
    /// Print only the image's digest.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(global: &Global, args: PullArgs) -> Result<()> {
    let ns = global.namespace()?.to_string();
    let (reference, request) = args.source.request()?;
    let leases = RemoteLeases::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let images = RemoteImages::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let transfer = RemoteTransfer::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let content = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let snapshotter = if args.skip_unpack {
        None
    } else {
        Some(
            RemoteSnapshotter::connect(global.snapd_socket(), &args.snapshotter.snapshotter)
                .await
                .context("berth-snapd")?,
        )
    };
    let puller = Puller {
        content: &content,
        transfer: &transfer,
        images: &images,
        leases: &leases,
        unpacker: snapshotter.as_ref().map(|s| s as &dyn Unpacker),
    };
    let options = PullOptions {
        request,
        // The first --platform, else this machine's.
        unpack_platform: None,
        sync_fs: args.sync_fs,
    };
    let mut display = Display::new(global.format, args.quiet);
    let pulled = puller
        .pull(&ns, &options, &mut |event| match event {
            PullEvent::Transfer(progress) => display.show(&progress),
            PullEvent::Unpacked {
                chain_id,
                layers,
                of,
            } => display.show_unpacked(&chain_id, layers, of),
            PullEvent::Warning(warning) => eprintln!("berth: warning: {warning}"),
        })
        .await;
    display.finish();
    let pulled = pulled?;
    finish(
        global.format,
        args.quiet,
        "pulled",
        &reference,
        &pulled.root,
    )
}
