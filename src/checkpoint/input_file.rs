//! Input files opened as what they must be: regular files (or links to one), never a pipe, a
//! device, a socket or a folder, and, for the small files read whole (a shard index, a plan),
//! of a bounded size.
//!
//! A pipe given as a shard blocks the run forever on `open`, and `/dev/zero` given as an index
//! is read until memory runs out. So the file is opened without blocking (`O_NONBLOCK`: opening
//! a pipe with no writer returns at once) and the descriptor's own `fstat` decides, not a `stat`
//! of the path before the open, which a swap of the path between the two would defeat.

use super::error::CheckpointError;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The most a file read whole into memory (a shard index, a pruning plan) may hold: far more
/// than any real one (a 100,000-tensor index is a few MB), small enough that a wrong file is
/// refused at once instead of filling memory.
pub const MAX_SMALL_FILE: u64 = 256 << 20;

/// Opens `path` for reading, if it is a regular file (a symbolic link to one is followed).
/// Anything else is refused on one line, without blocking.
pub fn open_input(path: impl AsRef<Path>) -> Result<File, CheckpointError> {
    let path = path.as_ref();
    let file = open_nonblocking(path).map_err(|e| CheckpointError::io(path, "cannot open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, "cannot open", e))?;
    if !meta.is_file() {
        return Err(CheckpointError::io(
            path,
            "cannot read",
            io::Error::other(
                "not a regular file (a folder, device, pipe or socket): name the file itself",
            ),
        ));
    }
    clear_nonblocking(&file);
    Ok(file)
}

/// Reads all of `path`, a regular file ([`open_input`]) of at most `limit` bytes; `what` names
/// it in the error of a larger one ("a shard index", "a plan"). The limit holds even for a file
/// that grows while it is read.
pub fn read_input(
    path: impl AsRef<Path>,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, CheckpointError> {
    let path = path.as_ref();
    let file = open_input(path)?;
    let too_large = || {
        CheckpointError::io(
            path,
            "cannot read",
            io::Error::other(format!(
                "it holds more than {} MiB, more than {what} may: name the right file",
                limit >> 20
            )),
        )
    };
    let len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?
        .len();
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Reads of a regular file never block, but the flag is cleared anyway so that the descriptor
/// behaves as one opened plainly.
#[cfg(unix)]
fn clear_nonblocking(file: &File) {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fcntl` on a descriptor this function's caller owns, flags only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(not(unix))]
fn clear_nonblocking(_: &File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_links_to_them_are_read() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let file = dir.path().join("plan.json");
        std::fs::write(&file, b"[]").expect("write");
        assert_eq!(read_input(&file, 2, "a plan").expect("read"), b"[]");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert_eq!(read_input(&link, 2, "a plan").expect("read"), b"[]");
        let e = read_input(&file, 1, "a plan").expect_err("too large");
        assert!(e.to_string().contains("more than a plan may"), "{e}");
    }

    /// A pipe with no writer, a device, a folder: refused at once, none read.
    #[test]
    fn pipes_devices_and_folders_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        for path in [fifo.as_path(), zero.as_path(), dir.path()] {
            let e = read_input(path, MAX_SMALL_FILE, "a plan").expect_err("refused");
            assert!(e.to_string().contains("not a regular file"), "{e}");
            let e = open_input(path).expect_err("refused");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
}
