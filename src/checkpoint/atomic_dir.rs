//! Writing a folder of files all or nothing (a sharded checkpoint): the files are written into
//! a temporary folder beside the target, synced, and the folder is renamed into place.

use super::error::CheckpointError;
use super::temp_file::{register, remove_stale, unregister};
use std::fs::File;
use std::io;
use std::path::Path;

/// Creates the folder `dir` all or nothing: `write` gets a fresh temporary folder beside it
/// (`.tch-prune-<pid>-<n>.tmp`, as temporary files are named) and writes the files there; once
/// it returns `Ok` every file and the folder are fsynced and the folder is renamed to `dir`, so
/// `dir` appears whole or not at all. `dir` must not exist, or be an empty folder. On any
/// failure (or a panic) the temporary folder is removed, and so it is by
/// [`remove_temporary_files`](super::remove_temporary_files) (the CLI's `SIGINT`, `SIGTERM` and
/// `SIGHUP`); the one of a process killed outright is removed by the next write beside it.
pub fn atomic_write_dir<T, E, F>(dir: impl AsRef<Path>, write: F) -> Result<T, E>
where
    F: FnOnce(&Path) -> Result<T, E>,
    E: From<CheckpointError>,
{
    let dir = dir.as_ref();
    let fail = |e: io::Error| CheckpointError::io(dir, "cannot write", e);
    check_folder_destination(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    remove_stale(parent);
    let tmp = register(parent);
    let guard = RemoveDirOnDrop(Some(&tmp));
    std::fs::create_dir(&tmp).map_err(fail)?;
    let value = write(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        File::open(&path).and_then(|f| f.sync_all()).map_err(fail)?;
    }
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(fail)?;
    // Over an empty folder, rename replaces it atomically.
    std::fs::rename(&tmp, dir).map_err(fail)?;
    guard.disarm();
    if let Ok(folder) = File::open(parent) {
        let _ = folder.sync_all();
    }
    Ok(value)
}

/// Checks that `dir` may be created by [`atomic_write_dir`]: nothing, or an empty folder (not
/// a link to one: the final rename would fail on it, after the whole output was written), in
/// an existing folder. For callers that check their destinations before reading anything.
pub fn check_folder_destination(dir: impl AsRef<Path>) -> Result<(), CheckpointError> {
    let dir = dir.as_ref();
    let refuse = |reason: &str| {
        Err(CheckpointError::Destination {
            path: dir.to_path_buf(),
            reason: reason.into(),
        })
    };
    if dir.file_name().is_none() {
        return refuse("the path does not name a folder");
    }
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return refuse("it is a symbolic link, which is never replaced or written through: name a new folder");
        }
        Ok(meta) => {
            let empty = meta.is_dir()
                && std::fs::read_dir(dir)
                    .map_err(|e| CheckpointError::io(dir, "cannot write", e))?
                    .next()
                    .is_none();
            if !empty {
                return refuse(
                    "a sharded output is a folder that must not exist yet (or be empty): choose a new one",
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CheckpointError::io(dir, "cannot write", e)),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return refuse(&format!(
            "the folder {} does not exist: create it first",
            parent.display()
        ));
    }
    Ok(())
}

struct RemoveDirOnDrop<'a>(Option<&'a Path>);

impl RemoveDirOnDrop<'_> {
    fn disarm(mut self) {
        if let Some(path) = self.0.take() {
            unregister(path);
        }
    }
}

impl Drop for RemoveDirOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_dir_all(path);
            unregister(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::temp_file::tests::{entries, handler_lock};

    #[test]
    fn a_failed_write_leaves_no_folder() {
        let _serial = handler_lock();
        let root = tempfile::tempdir().expect("temporary folder");
        let target = root.path().join("out");
        let result: Result<(), CheckpointError> = atomic_write_dir(&target, |tmp| {
            std::fs::write(tmp.join("a.safetensors"), b"part").expect("write");
            Err(CheckpointError::UnknownFormat {
                path: tmp.to_path_buf(),
            })
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read_dir(root.path()).expect("list").count(), 0);
    }

    #[test]
    fn a_folder_appears_whole_and_refuses_to_overwrite() {
        let _serial = handler_lock();
        let root = tempfile::tempdir().expect("temporary folder");
        let target = root.path().join("out");
        std::fs::create_dir(&target).expect("empty folder");
        let ok: Result<(), CheckpointError> = atomic_write_dir(&target, |tmp| {
            std::fs::write(tmp.join("a"), b"1").expect("write");
            std::fs::write(tmp.join("b"), b"2").expect("write");
            Ok(())
        });
        ok.expect("written");
        assert_eq!(std::fs::read(target.join("b")).expect("read"), b"2");
        let again: Result<(), CheckpointError> = atomic_write_dir(&target, |_| Ok(()));
        let err = again.expect_err("not empty");
        assert!(err.to_string().contains("must not exist"), "{err}");
        assert_eq!(std::fs::read_dir(root.path()).expect("list").count(), 1);
    }

    /// A link (even to an empty folder), a file and a folder in a missing folder are refused
    /// before anything is written.
    #[test]
    fn links_and_files_are_refused_up_front() {
        let root = tempfile::tempdir().expect("temporary folder");
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).expect("folder");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&empty, &link).expect("symlink");
        std::fs::write(root.path().join("file"), b"x").expect("write");
        check_folder_destination(&empty).expect("an empty folder");
        check_folder_destination(root.path().join("new")).expect("a new name");
        for (path, words) in [
            (link, "symbolic link"),
            (root.path().join("file"), "must not exist"),
            (root.path().join("missing/out"), "does not exist"),
        ] {
            let e = check_folder_destination(&path)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(words), "{e}");
            let written: Result<(), CheckpointError> =
                atomic_write_dir(&path, |_| panic!("nothing is written"));
            assert!(written.is_err());
        }
    }

    /// What a signal handler removes, and what a killed process left, is gone.
    #[test]
    fn temporary_folders_are_removed_on_signals_and_by_the_next_write() {
        let _serial = handler_lock();
        let root = tempfile::tempdir().expect("temporary folder");
        let result: Result<(), CheckpointError> = atomic_write_dir(root.path().join("a"), |tmp| {
            std::fs::write(tmp.join("shard"), b"part").expect("write");
            super::super::remove_temporary_files();
            assert!(!tmp.exists());
            Ok(())
        });
        assert!(result.is_err(), "the folder vanished: nothing to rename");
        // Pids above the kernel's maximum (4194304) never run.
        let stale = root.path().join(".tch-prune-999999999-3.tmp");
        std::fs::create_dir(&stale).expect("create");
        std::fs::write(stale.join("shard"), b"part").expect("write");
        let written: Result<(), CheckpointError> =
            atomic_write_dir(root.path().join("b"), |_| Ok(()));
        written.expect("written");
        assert_eq!(entries(root.path()), ["b"]);
    }
}
