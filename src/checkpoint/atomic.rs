//! Writing a file all or nothing: every writer of the crate goes through [`atomic_write`].
//! Where the temporary file lives, and which destinations may be replaced: [`temp_file`].

use super::error::CheckpointError;
use super::temp_file::{self, check_destination, TempFile};
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

thread_local! {
    /// The files written inside [`write_all_or_nothing`] on this thread, complete and synced,
    /// waiting to be put in place.
    static BATCH: RefCell<Option<Vec<(PathBuf, TempFile)>>> = const { RefCell::new(None) };
}

/// Runs `write`, whose [`atomic_write`]s (and so every writer of the crate) are all put in place
/// together at the end if it succeeds: if any of them, or `write` itself, fails, no destination
/// is touched. The files are written and synced as `write` runs (a full disk fails there); only
/// the renames wait. Several outputs of one job (a model and its `--state-out`) so appear all
/// or none. A call inside another joins the outer one.
pub fn write_all_or_nothing<T, E>(write: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<CheckpointError>,
{
    let outer = BATCH.with(|b| {
        let mut batch = b.borrow_mut();
        let outer = batch.is_some();
        if !outer {
            *batch = Some(Vec::new());
        }
        outer
    });
    if outer {
        return write();
    }
    let value = write();
    // Taken whatever happened: on failure, dropping the files removes them.
    let pending = BATCH.with(|b| b.borrow_mut().take()).unwrap_or_default();
    let value = value?;
    for (path, tmp) in pending {
        check_destination(&path)?;
        tmp.persist(&path)
            .map_err(|e| CheckpointError::io(&path, "cannot write", e))?;
        sync_folder(temp_file::folder(&path));
    }
    Ok(value)
}

/// Writes `path` all or nothing: `write` gets the path of a temporary file in the same folder
/// (already created, empty, unnamed while it is written where the system allows, in the same
/// folder so that the rename is atomic) and
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
    if BATCH.with(|b| b.borrow().is_some()) {
        // In a batch: synced now, put in place by `write_all_or_nothing`.
        tmp.sync()
            .map_err(|e| CheckpointError::io(path, "cannot write", e))?;
        let mut tmp = Some(tmp);
        BATCH.with(|b| {
            if let (Some(batch), Some(tmp)) = (b.borrow_mut().as_mut(), tmp.take()) {
                batch.push((path.to_path_buf(), tmp));
            }
        });
        return Ok(value);
    }
    tmp.persist(path)
        .map_err(|e| CheckpointError::io(path, "cannot write", e))?;
    sync_folder(dir);
    Ok(value)
}

/// Makes a rename in `dir` durable. Best effort: some filesystems refuse to fsync folders, and
/// the data is already in place either way.
fn sync_folder(dir: &Path) {
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::temp_file::tests::entries;
    use std::io::Write;

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

    /// A replaced file keeps its permission bits; a new one takes those of the files it is made
    /// from inside `with_permissions_of` (their intersection, under the umask), by every
    /// writer: `atomic_write`, and a file created in a folder being assembled (a shard).
    #[cfg(unix)]
    #[test]
    fn outputs_keep_or_take_the_permission_bits_they_should() {
        use crate::checkpoint::output_file::OutputFile;
        use crate::checkpoint::with_permissions_of;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary folder");
        let at = |name: &str| dir.path().join(name);
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("mode")
        };
        let mode = |p: &Path| std::fs::metadata(p).expect("file").permissions().mode() & 0o777;
        let write = |p: &Path| -> Result<(), CheckpointError> {
            atomic_write(p, |tmp| {
                std::fs::write(tmp, b"new").map_err(|e| CheckpointError::io(tmp, "x", e))
            })
        };
        std::fs::write(at("private"), b"in").expect("input");
        set(&at("private"), 0o600);
        std::fs::write(at("group"), b"in").expect("input");
        set(&at("group"), 0o640);
        std::fs::write(at("replaced"), b"old").expect("destination");
        set(&at("replaced"), 0o604);

        write(&at("replaced")).expect("replace");
        assert_eq!(
            mode(&at("replaced")),
            0o604,
            "a replaced file keeps its bits"
        );
        with_permissions_of([at("private")], || write(&at("replaced"))).expect("replace");
        assert_eq!(mode(&at("replaced")), 0o604, "whatever the inputs");
        with_permissions_of([at("private"), at("group")], || {
            write(&at("new"))?;
            OutputFile::create(&at("shard"))
                .map_err(|e| CheckpointError::io(&at("shard"), "x", e))?;
            crate::checkpoint::write_new(&at("index"), b"{}")
                .map_err(|e| CheckpointError::io(&at("index"), "x", e))
        })
        .expect("new files");
        for name in ["new", "shard", "index"] {
            assert_eq!(mode(&at(name)) & 0o077, 0, "{name} is readable by others");
        }
        // Outside the scope, the default again (0o666 under the umask).
        write(&at("plain")).expect("new file");
        let umask_allows_group_read = mode(&at("plain")) & 0o040 != 0;
        let inner = with_permissions_of([at("group")], || {
            write(&at("grouped")).expect("new file");
            mode(&at("grouped"))
        });
        assert_eq!(
            inner & 0o007,
            0,
            "others may not read what the input kept from them"
        );
        assert_eq!(inner & 0o040 != 0, umask_allows_group_read);
    }

    #[test]
    fn files_written_together_appear_together_or_not_at_all() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        let write = |p: &Path, data: &'static [u8]| {
            atomic_write(p, |tmp| {
                std::fs::write(tmp, data).map_err(|e| CheckpointError::io(tmp, "x", e))
            })
        };
        let failed: Result<(), CheckpointError> = write_all_or_nothing(|| {
            write(&a, b"first")?;
            assert!(!a.exists(), "put in place before the batch ends");
            write(&b, b"")
        });
        assert!(failed.is_err());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

        let done: Result<(), CheckpointError> = write_all_or_nothing(|| {
            write(&a, b"first")?;
            write(&b, b"second")
        });
        done.expect("both written");
        assert_eq!(std::fs::read(&a).expect("a"), b"first");
        assert_eq!(std::fs::read(&b).expect("b"), b"second");
        assert_eq!(entries(dir.path()).len(), 2);
    }
}
