//! libtorch's own warnings (printed by its C++ code straight to the process's stderr) are kept
//! off stderr unless asked for (`--libtorch-warnings`): the CLI's stderr is its one error line.
//!
//! While libtorch loads or saves a file, file descriptor 2 points into an anonymous in-memory
//! file; afterwards it is restored, and what was captured is printed only if asked for. Nothing
//! else runs meanwhile (no progress bar is drawn during loads and saves).

/// Runs `f` with libtorch's stderr captured; shows it afterwards if `show`.
#[cfg(target_os = "linux")]
pub fn quietly<T>(show: bool, f: impl FnOnce() -> T) -> T {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::{AsRawFd, FromRawFd};
    // SAFETY: memfd_create and dup only create descriptors, checked below.
    let (capture, saved) = unsafe {
        (
            libc::memfd_create(c"tch-prune-stderr".as_ptr(), libc::MFD_CLOEXEC),
            libc::dup(2),
        )
    };
    if capture < 0 || saved < 0 {
        return f();
    }
    // SAFETY: both descriptors are fresh and owned here from now on.
    let (mut capture, saved) = unsafe {
        (
            std::fs::File::from_raw_fd(capture),
            std::fs::File::from_raw_fd(saved),
        )
    };
    // SAFETY: fd 2 now refers to the capture file; restored below.
    if unsafe { libc::dup2(capture.as_raw_fd(), 2) } < 0 {
        return f();
    }
    let value = f();
    // SAFETY: puts the original stderr back.
    unsafe { libc::dup2(saved.as_raw_fd(), 2) };
    if show {
        let mut text = Vec::new();
        if capture.rewind().is_ok() && capture.read_to_end(&mut text).is_ok() {
            let _ = std::io::stderr().write_all(&text);
        }
    }
    value
}

#[cfg(not(target_os = "linux"))]
pub fn quietly<T>(_show: bool, f: impl FnOnce() -> T) -> T {
    f()
}
