//! The shrunk module saved and loaded again (libtorch caches each method's execution plan with
//! the old code inlined, so only a fresh load runs the rewritten module), through a file in a
//! folder of this process's own.
//!
//! Why a folder of our own: a file at a predictable name in the shared temporary folder
//! (`/tmp/tch-prune-shrink-<pid>-0.pt`) can be planted by another user before we write it. A
//! symbolic link there makes libtorch's save (which opens with `O_TRUNC`, following links)
//! overwrite the link's target; a file of theirs lets them replace what we saved before we load
//! it, and the module loaded back is run without the code check. `mkdir` never follows a link
//! and fails on any name that exists, and the folder is made readable and writable by us alone.

use crate::error::{PruneError, Result};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{CModule, Device};

/// Saves `module` and loads it again on `device`, through a private folder under the
/// temporary folder; the file and the folder are removed whatever happens.
pub(super) fn reload(module: &CModule, device: Device) -> Result<CModule> {
    let root = std::env::temp_dir();
    let folder = private_folder(&root).map_err(|e| {
        PruneError::Shrink(format!(
            "cannot make a folder in {} to reload the shrunk model: {e} (set TMPDIR to a writable folder)",
            root.display()
        ))
    })?;
    let file = folder.join("model.pt");
    let loaded = module
        .save(&file)
        .and_then(|()| CModule::load_on_device(&file, device));
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&folder);
    Ok(loaded?)
}

/// The number in the next folder's name.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new folder under `root` that nobody else can have made or can enter: created by `mkdir`
/// (mode 0700 on Unix), under the next name that does not exist yet.
fn private_folder(root: &Path) -> io::Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let mut last = None;
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let folder = root.join(format!("tch-prune-shrink-{}-{n}", std::process::id()));
        match builder.create(&folder) {
            Ok(()) => return Ok(folder),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names planted in advance (links to a victim, as another user of a shared temporary
    /// folder could plant them) are skipped, never followed or reused.
    #[test]
    fn planted_names_are_never_followed() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let root = dir.path();
        let victim = root.join("victim");
        std::fs::write(&victim, b"precious").expect("victim written");
        let next = COUNTER.load(Ordering::Relaxed);
        for n in next..next + 50 {
            let name = root.join(format!("tch-prune-shrink-{}-{n}", std::process::id()));
            #[cfg(unix)]
            std::os::unix::fs::symlink(&victim, &name).expect("link planted");
            #[cfg(not(unix))]
            std::fs::write(&name, b"planted").expect("file planted");
        }
        let folder = private_folder(root).expect("a folder of our own");
        let meta = std::fs::symlink_metadata(&folder).expect("the folder exists");
        assert!(meta.is_dir(), "{} is a real folder", folder.display());
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o700
        );
        std::fs::write(folder.join("model.pt"), b"ours").expect("written in our folder");
        assert_eq!(std::fs::read(&victim).expect("victim read"), b"precious");
    }
}
