//! `SIGINT`, `SIGTERM` and `SIGHUP` end the run without leaving a temporary file behind.
//!
//! The signals are blocked in every thread (set before any other thread starts, and inherited)
//! and taken by one thread that waits for them: it removes the temporary files that have a name
//! (see `tch_prune::checkpoint::remove_temporary_files`; unnamed ones vanish with the process anyway), says
//! so on one line, and exits with 128 + the signal's number, as a shell reports it.
//!
//! `SIGPIPE` gets its default action back (Rust ignores it): `tch-prune report m.pt | head` ends
//! quietly when `head` has read enough, as `cat` does, instead of panicking on a failed print.

/// Installs the handling thread. Call first thing in `main`.
#[cfg(unix)]
pub fn install() {
    // SAFETY: restores the default action of a signal, before any other thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: plain libc calls on a local signal set; `pthread_sigmask` changes only this
    // thread's mask, which threads started later inherit.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    std::thread::spawn(move || loop {
        let mut signal = 0;
        // SAFETY: waits on the set blocked above.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        tch_prune::checkpoint::remove_temporary_files();
        let name = match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        eprintln!("error: interrupted by {name}: no file was left half-written");
        // SAFETY: ends the process at once, as the signal's default action would, without
        // running destructors that other threads may be using.
        unsafe { libc::_exit(128 + signal) };
    });
}

#[cfg(not(unix))]
pub fn install() {}
