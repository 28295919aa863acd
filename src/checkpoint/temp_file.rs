//! Where outputs are written before they are complete, and what may be replaced.
//!
//! A file is written to a temporary file in its destination's folder and renamed over the
//! destination once complete and synced (see [`atomic_write`](super::atomic_write)). On Linux the
//! temporary file has no name at all while it is written (`O_TMPFILE`): a process killed by any
//! signal, `SIGKILL` included, leaves nothing behind, since the kernel frees an unnamed file with
//! its last descriptor. It gets a name (`.tch-prune-<pid>-<n>.tmp`, short whatever the
//! destination's name) only for the instant between `linkat` and the rename. Where `O_TMPFILE`
//! is not available (other systems, some filesystems) the file has that name while it is
//! written. Either way a name is registered until the rename, so that a signal handler can
//! remove it ([`remove_temporary_files`], which the CLI calls on `SIGINT`, `SIGTERM` and
//! `SIGHUP`), and a later write into the same folder removes those left by processes that no
//! longer run (killed with `SIGKILL` in that instant, or on a system without `O_TMPFILE`).
//!
//! Destinations ([`check_destination`]): a regular file or nothing. A symbolic link, a device
//! node, a pipe, a socket or a folder is never replaced: renaming over it would replace the node
//! itself with a regular file (`/dev/null` for root), and following a link would write where the
//! user did not name.
//!
//! Permissions: a destination that is replaced keeps its permission bits (the temporary file
//! takes them before the rename: pruning a private file in place leaves it private). A new file
//! is created with 0o666 under the umask, or, inside [`with_permissions_of`], with the permission
//! bits of the files it is made from under the umask (as `cp` creates a new file from its
//! source's mode): a model made from a private file is private too.

use super::error::CheckpointError;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinguishes the temporary files of concurrent writers within one process (the pid does
/// so across processes).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Named temporary files not yet renamed into place, for [`remove_temporary_files`].
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

thread_local! {
    /// The permission bits new outputs are created with on this thread (under the umask), set
    /// by [`with_permissions_of`]; `None`: 0o666.
    static CREATE_MODE: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Runs `write` with every new file the crate's writers create on this thread (a model file, a
/// shard, a `--state-out`, an index) given the permission bits common to all `inputs` (their
/// intersection: an output made of several files is no more readable than the least readable
/// of them), under the umask, as `cp` gives a new file its source's mode. A file that is
/// replaced keeps its own permission bits whatever this says. Inputs that cannot be read are
/// left out; with none left, new files get the default 0o666 under the umask.
///
/// ```no_run
/// use tch_prune::checkpoint::{with_permissions_of, write_safetensors};
/// # let state: Vec<(String, tch::Tensor)> = Vec::new();
/// // model.safetensors is 0600: pruned.safetensors is created 0600 too.
/// with_permissions_of(["model.safetensors"], || write_safetensors("pruned.safetensors", &state))?;
/// # Ok::<(), tch_prune::checkpoint::CheckpointError>(())
/// ```
pub fn with_permissions_of<P: AsRef<Path>, T>(
    inputs: impl IntoIterator<Item = P>,
    write: impl FnOnce() -> T,
) -> T {
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        inputs
            .into_iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.permissions().mode() & 0o777)
            .reduce(|a, b| a & b)
    };
    #[cfg(not(unix))]
    let mode = inputs.into_iter().next().map(|_| 0o666);
    /// Restores the outer setting however `write` ends (a panic included).
    struct Restore(Option<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CREATE_MODE.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(CREATE_MODE.with(|m| m.replace(mode.or(m.get()))));
    write()
}

/// The permission bits a new output file is created with on this thread (the umask applies).
pub(crate) fn create_mode() -> u32 {
    CREATE_MODE.with(|m| m.get()).unwrap_or(0o666)
}

/// Writes `bytes` to the new file `path` (in a folder being assembled, such as a shard index),
/// created with [`create_mode`] as every other output is.
pub(crate) fn write_new(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, create_mode());
    options.open(path)?.write_all(bytes.as_ref())
}

const PREFIX: &str = ".tch-prune-";
const SUFFIX: &str = ".tmp";

/// Removes every temporary file (and temporary folder of a sharded output) this process has
/// named and not yet renamed into place. For a signal handler that is about to end the process
/// (run it from a thread that waits for the signal, not from an asynchronous handler: it takes
/// a lock).
pub fn remove_temporary_files() {
    let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    for path in pending.iter() {
        remove_entry(path);
    }
}

/// Removes a temporary file, or a temporary folder with what it holds (never following a link).
fn remove_entry(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Checks that the filesystem `path` would be written in has `bytes` free: a write that runs out
/// of room fails only when it gets there, which for a checkpoint of hundreds of GB comes many
/// minutes in. (Room can still run out while writing, to another writer: the write then fails
/// and its temporary file is removed.) Where the free space cannot be read, the write will tell.
pub(crate) fn check_room(path: impl AsRef<Path>, bytes: u64) -> Result<(), CheckpointError> {
    use std::os::unix::ffi::OsStrExt;
    let path = path.as_ref();
    let dir = folder(path);
    let Ok(name) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: statvfs fills the struct it is given from a NUL-terminated path.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(name.as_ptr(), &mut fs) } != 0 {
        return Ok(());
    }
    // A filesystem without a block count (some FUSE ones) does not know its room.
    let free = (fs.f_bavail as u64).saturating_mul(fs.f_frsize as u64);
    if fs.f_blocks == 0 || free >= bytes {
        return Ok(());
    }
    let size = |n: u64| match n {
        0..1_000_000 => format!("{n} bytes"),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    };
    Err(CheckpointError::Destination {
        path: path.to_path_buf(),
        reason: format!(
            "the output needs about {} and {} has {} free: make room, or write it elsewhere",
            size(bytes),
            dir.display(),
            size(free)
        ),
    })
}

/// Checks that `path` may be written by replacing it: it is a regular file, or nothing in an
/// existing folder. Symbolic links (even to regular files), devices, pipes, sockets and folders
/// are refused, and so is a folder that does not exist.
pub fn check_destination(path: impl AsRef<Path>) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let refuse = |reason: String| {
        Err(CheckpointError::Destination {
            path: path.to_path_buf(),
            reason,
        })
    };
    if path.file_name().is_none() {
        return refuse("the path does not name a file".into());
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return refuse("it is a symbolic link, which is never replaced or written through: name the file itself".into());
        }
        Ok(meta) if !meta.is_file() => {
            return refuse(
                "it is not a regular file (a folder, device, pipe or socket), so it is not replaced: name a regular file".into(),
            );
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CheckpointError::io(path, "cannot write", e)),
    }
    let dir = folder(path);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return refuse(format!("{} is not a folder", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return refuse(format!(
                "the folder {} does not exist: create it first",
                dir.display()
            ))
        }
        Err(e) => return Err(CheckpointError::io(path, "cannot write", e)),
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            CheckpointError::Destination {
                path: path.to_path_buf(),
                reason: "the path holds a NUL byte".into(),
            }
        })?;
        // SAFETY: a valid NUL-terminated string; `access` only reads it.
        if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(CheckpointError::io(
                path,
                "cannot write into its folder",
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// The folder a file `path` lies in (`.` for a bare name).
pub(crate) fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A file being written in a destination's folder, not yet in place.
pub(crate) struct TempFile {
    /// Open on the file: the unnamed one, or the named one.
    file: File,
    /// The path writers are given: `/proc/self/fd/<n>` for an unnamed file (opening it reopens
    /// the same file), else the name.
    path: PathBuf,
    dir: PathBuf,
    /// The registered name, for the named kind; `None` while unnamed.
    name: Option<PathBuf>,
}

impl TempFile {
    /// A new empty temporary file in `dir`, unnamed where the system allows.
    pub(crate) fn create(dir: &Path) -> io::Result<TempFile> {
        remove_stale(dir);
        #[cfg(target_os = "linux")]
        if let Some(unnamed) = Self::unnamed(dir) {
            return Ok(unnamed);
        }
        Self::named(dir)
    }

    #[cfg(target_os = "linux")]
    fn unnamed(dir: &Path) -> Option<TempFile> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(create_mode())
            .open(dir)
            .ok()?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // Without /proc, writers could not reopen it, nor could it be linked.
        path.exists().then(|| TempFile {
            file,
            path,
            dir: dir.to_path_buf(),
            name: None,
        })
    }

    fn named(dir: &Path) -> io::Result<TempFile> {
        let name = register(dir);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, create_mode());
        let created = options.open(&name);
        match created {
            Ok(file) => Ok(TempFile {
                file,
                path: name.clone(),
                dir: dir.to_path_buf(),
                name: Some(name),
            }),
            Err(e) => {
                unregister(&name);
                Err(e)
            }
        }
    }

    /// Where writers write it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file to the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Syncs the file and renames it over `target` (in the same folder). On error the
    /// temporary file is removed (dropping `self`), and `target` is as it was.
    pub(crate) fn persist(mut self, target: &Path) -> io::Result<()> {
        // A file replaced keeps its permission bits (a private file pruned in place stays
        // private); set before the rename, so the new file is never more readable.
        if let Ok(old) = std::fs::symlink_metadata(target) {
            if old.is_file() {
                self.file.set_permissions(old.permissions())?;
            }
        }
        self.file.sync_all()?;
        let name = match self.name.clone() {
            Some(name) => name,
            None => self.link()?,
        };
        std::fs::rename(&name, target)?;
        unregister(&name);
        self.name = None;
        Ok(())
    }

    /// Gives the unnamed file a name (`linkat` through `/proc`, which needs no privilege).
    #[cfg(unix)]
    fn link(&mut self) -> io::Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let name = register(&self.dir);
        let c =
            |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        let (from, to) = (c(&self.path)?, c(&name)?);
        // SAFETY: valid NUL-terminated strings; linkat only reads them.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked != 0 {
            let e = io::Error::last_os_error();
            unregister(&name);
            return Err(e);
        }
        self.name = Some(name.clone());
        Ok(name)
    }

    #[cfg(not(unix))]
    fn link(&mut self) -> io::Result<PathBuf> {
        Err(io::Error::other(
            "unnamed temporary files need a Unix system",
        ))
    }
}

impl Drop for TempFile {
    /// A file not persisted is removed (an unnamed one disappears with its descriptor).
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = std::fs::remove_file(&name);
            unregister(&name);
        }
    }
}

/// A fresh temporary name in `dir`, registered for [`remove_temporary_files`] until
/// [`unregister`]ed.
pub(crate) fn register(dir: &Path) -> PathBuf {
    let name = dir.join(format!(
        "{PREFIX}{}-{}{SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.clone());
    name
}

pub(crate) fn unregister(name: &Path) {
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != name);
}

/// Removes the temporary files and folders in `dir` of processes that no longer run. Best
/// effort: a folder that cannot be listed is left alone, and so is the file of any process that
/// may still run.
pub(crate) fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name: OsString = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.split_once('-'))
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !running(pid) {
            remove_entry(&entry.path());
        }
    }
}

/// Whether a process `pid` may still run (a process of another user counts as running).
fn running(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 checks for the process without sending anything.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return true;
        }
        io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The names in `dir`, sorted.
    pub(crate) fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Held by the tests that call [`remove_temporary_files`] (which removes every pending
    /// file of the process) and by those with a temporary name pending across such a call.
    pub(crate) fn handler_lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An output larger than the free space is refused before a byte is written, saying how
    /// much it needs and where.
    #[test]
    fn check_room_refuses_what_the_filesystem_cannot_hold() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let out = dir.path().join("pruned.safetensors");
        check_room(&out, 1 << 20).expect("a megabyte fits");
        assert!(check_room(&out, 0).is_ok());
        let err = check_room(&out, u64::MAX / 2).expect_err("no filesystem holds 9.2 EB");
        let text = err.to_string();
        assert!(text.contains("needs about 9223372036.9 GB"), "{text}");
        assert!(text.contains("make room, or write it elsewhere"), "{text}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_temporary_file_is_invisible_until_persisted() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let tmp = TempFile::create(dir.path()).expect("create");
        std::fs::write(tmp.path(), b"data").expect("write through the path");
        if cfg!(target_os = "linux") {
            assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        }
        let target = dir.path().join("out.bin");
        tmp.persist(&target).expect("persist");
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
        assert_eq!(std::fs::read(&target).expect("read"), b"data");
    }

    #[test]
    fn a_named_temporary_file_is_removed_when_dropped_or_by_the_handler() {
        let _serial = handler_lock();
        let dir = tempfile::tempdir().expect("temporary folder");
        let tmp = TempFile::named(dir.path()).expect("create");
        let mut file = File::options().write(true).open(tmp.path()).expect("open");
        file.write_all(b"partial").expect("write");
        assert_eq!(entries(dir.path()).len(), 1);
        drop(tmp);
        assert!(entries(dir.path()).is_empty());

        let tmp = TempFile::named(dir.path()).expect("create");
        remove_temporary_files();
        assert!(entries(dir.path()).is_empty());
        drop(tmp);
    }

    #[test]
    fn stale_files_of_dead_processes_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().expect("temporary folder");
        // Pids above the kernel's maximum (4194304) never run.
        let dead = format!("{PREFIX}999999999-0{SUFFIX}");
        let alive = format!("{PREFIX}1-0{SUFFIX}"); // init
        let other = ".out.bin.tmp-999999999-0".to_string();
        for n in [&dead, &alive, &other] {
            std::fs::write(dir.path().join(n), b"x").expect("write");
        }
        let tmp = TempFile::create(dir.path()).expect("create");
        drop(tmp);
        assert_eq!(entries(dir.path()), {
            let mut v = vec![other, alive];
            v.sort();
            v
        });
    }

    #[test]
    fn destinations_must_be_regular_files_in_existing_folders() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let file = dir.path().join("model.pt");
        std::fs::write(&file, b"x").expect("write");
        assert!(check_destination(&file).is_ok());
        assert!(check_destination(dir.path().join("new.pt")).is_ok());
        let refused = |p: &Path, words: &str| {
            let e = check_destination(p).expect_err("refused").to_string();
            assert!(e.contains(words), "{e}");
        };
        refused(dir.path(), "not a regular file");
        refused(&dir.path().join("missing/out.pt"), "does not exist");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.pt");
            std::os::unix::fs::symlink(&file, &link).expect("symlink");
            refused(&link, "symbolic link");
            refused(Path::new("/dev/null"), "not a regular file");
        }
    }
}
