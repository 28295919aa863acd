//! Writing a file all or nothing: every writer of the crate goes through [`atomic_write`].

use super::error::CheckpointError;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of concurrent writers within one process (the pid does
/// so across processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` all or nothing: `write` gets a temporary path in the same folder (named
/// `.<name>.tmp-<pid>-<n>`) and must create the file there; once it returns `Ok` the file is
/// fsynced and renamed over `path`. If `write` fails (or panics), or the sync or the rename
/// does, the temporary file is removed and `path` is left as it was, so readers never see a
/// truncated file.
///
/// The error type is the closure's, so callers whose errors wrap [`CheckpointError`] (like
/// [`PruneError`](crate::PruneError)) can use it directly.
pub fn atomic_write<T, E, F>(path: impl AsRef<Path>, write: F) -> Result<T, E>
where
    F: FnOnce(&Path) -> Result<T, E>,
    E: From<CheckpointError>,
{
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| {
        CheckpointError::io(
            path,
            "cannot write",
            io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
        )
    })?;
    // Same folder, so the rename stays within one filesystem and is atomic.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = RemoveOnDrop(Some(&tmp));

    let value = write(&tmp)?;
    let synced = File::open(&tmp).and_then(|file| file.sync_all());
    synced.map_err(|e| CheckpointError::io(path, "cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| CheckpointError::io(path, "cannot write", e))?;
    guard.disarm();
    // Makes the rename itself durable. Best effort: some filesystems refuse to fsync folders,
    // and the data is already in place either way.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(value)
}

/// Deletes the temporary file on every exit path, panics included, until disarmed.
struct RemoveOnDrop<'a>(Option<&'a Path>);

impl RemoveOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_leaves_nothing_when_the_writer_fails() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.safetensors");
        let result: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
            let mut file = File::create(tmp).map_err(|e| CheckpointError::io(tmp, "x", e))?;
            file.write_all(b"half of a file")
                .map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Err(CheckpointError::UnknownFormat {
                path: tmp.to_path_buf(),
            })
        });
        assert!(result.is_err());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn atomic_write_keeps_the_old_file_when_the_writer_fails() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").expect("write");
        let result: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
            std::fs::write(tmp, b"new but broken").map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Err(CheckpointError::UnknownFormat {
                path: tmp.to_path_buf(),
            })
        });
        assert!(result.is_err());
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
        assert_eq!(std::fs::read(&target).expect("read"), b"old");
    }

    #[test]
    fn atomic_write_removes_the_temporary_file_when_the_writer_panics() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        let outcome = std::panic::catch_unwind(|| {
            let _: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
                std::fs::write(tmp, b"partial").expect("write");
                panic!("writer bug");
            });
        });
        assert!(outcome.is_err());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn atomic_write_replaces_the_file_on_success() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").expect("write");
        let n: Result<usize, CheckpointError> = atomic_write(&target, |tmp| {
            std::fs::write(tmp, b"new").map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Ok(3)
        });
        assert_eq!(n.expect("write succeeds"), 3);
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
    }

    #[test]
    fn atomic_write_fails_cleanly_when_the_writer_creates_nothing() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        let result: Result<(), CheckpointError> = atomic_write(&target, |_| Ok(()));
        let err = result.expect_err("nothing was written");
        assert!(err.to_string().contains("out.bin"), "{err}");
        assert!(entries(dir.path()).is_empty());
    }
}
