//! Writing a file all or nothing: every writer of the crate goes through [`atomic_write`].
//! Where the temporary file lives, and which destinations may be replaced: [`temp_file`].

use super::error::CheckpointError;
use super::temp_file::{self, check_destination, TempFile};
use std::fs::File;
use std::io;
use std::path::Path;

/// Writes `path` all or nothing: `write` gets the path of a temporary file in the same folder
/// (already created, empty; see [`temp_file`] for where it lives and when it has a name) and
/// must write the file there; once it returns `Ok` the file is fsynced and renamed over `path`.
/// If `write` fails (or panics), or the sync or the rename does, the temporary file is removed
/// and `path` is left as it was, so readers never see a truncated file. A writer that writes
/// nothing is an error (no model file is empty).
///
/// `path` must be a regular file or not exist, in an existing folder ([`check_destination`]):
/// links, devices, pipes and folders are never replaced. The check is made before writing and
/// again before the rename.
///
/// The error type is the closure's, so callers whose errors wrap [`CheckpointError`] (like
/// [`PruneError`](crate::PruneError)) can use it directly.
pub fn atomic_write<T, E, F>(path: impl AsRef<Path>, write: F) -> Result<T, E>
where
    F: FnOnce(&Path) -> Result<T, E>,
    E: From<CheckpointError>,
{
    let path = path.as_ref();
    check_destination(path)?;
    // Same folder, so the rename stays within one filesystem and is atomic.
    let dir = temp_file::folder(path);
    let tmp = TempFile::create(dir)
        .map_err(|e| CheckpointError::io(path, "cannot create a temporary file beside", e))?;
    let value = write(tmp.path())?;
    if std::fs::metadata(tmp.path()).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(CheckpointError::io(
            path,
            "cannot write",
            io::Error::other("the writer wrote nothing"),
        )
        .into());
    }
    check_destination(path)?;
    tmp.persist(path)
        .map_err(|e| CheckpointError::io(path, "cannot write", e))?;
    // Makes the rename itself durable. Best effort: some filesystems refuse to fsync folders,
    // and the data is already in place either way.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(value)
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
