//! `berth import`: an OCI image layout or `docker save` archive read into
//! a content store (contentd's own, on a temp dir). Whatever the archive
//! holds, the import fails with an error or names images whose roots are
//! in the store (stored blobs are verified against their digests as they
//! are written).
#![no_main]

use std::sync::OnceLock;

use berth_content::ContentStore;
use berth_contentd::store::LocalStore;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: LocalStore,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (store, _) = LocalStore::open(dir.path()).expect("the content store");
        // contentd's store commits on tokio's blocking pool. Its threads
        // are made on first use and live on detached: one made during an
        // input would look like a leak to LeakSanitizer. So the pool's
        // threads are made here, before any input, and kept: as many as
        // an import ever keeps busy at once, and more (one made for a
        // second concurrent task was such a false leak).
        const POOL: usize = 8;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(std::time::Duration::from_secs(1 << 40))
            .build()
            .expect("a runtime");
        let all_busy = std::sync::Arc::new(std::sync::Barrier::new(POOL));
        let threads: Vec<_> = (0..POOL)
            .map(|_| {
                let all_busy = all_busy.clone();
                runtime.spawn_blocking(move || {
                    all_busy.wait();
                })
            })
            .collect();
        for thread in threads {
            runtime.block_on(thread).expect("the blocking pool");
        }
        Fixture {
            runtime,
            store,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let input = Box::new(std::io::Cursor::new(data.to_vec()));
    fixture.runtime.block_on(async {
        let Ok(images) = berth_image::archive::import(&fixture.store, "fuzz", input).await else {
            return;
        };
        for image in images {
            if let Err(e) = fixture.store.info("fuzz", &image.root).await {
                panic!("import named {} but stored no such blob: {e}", image.root);
            }
        }
    });
});
