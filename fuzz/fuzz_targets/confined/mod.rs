//! A target directory for a layer to be applied into, inside a parent of
//! its own beside an empty sibling, so that anything written outside the
//! target shows.

use std::path::PathBuf;

pub struct Confined {
    parent: tempfile::TempDir,
    pub root: PathBuf,
    sibling: PathBuf,
}

impl Confined {
    /// None when the temp dirs cannot be made (nothing to test then).
    pub fn new() -> Option<Confined> {
        let parent = tempfile::tempdir().ok()?;
        let (root, sibling) = (parent.path().join("root"), parent.path().join("sibling"));
        std::fs::create_dir(&root).ok()?;
        std::fs::create_dir(&sibling).ok()?;
        Some(Confined {
            parent,
            root,
            sibling,
        })
    }

    /// Panics unless the parent holds exactly the target and the sibling,
    /// and the sibling is still empty.
    pub fn assert_nothing_outside(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.parent.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        assert_eq!(names, ["root", "sibling"], "the layer wrote beside its root");
        assert_eq!(
            std::fs::read_dir(&self.sibling).map(|d| d.count()).unwrap_or(0),
            0,
            "the layer wrote into a sibling of its root"
        );
    }
}
