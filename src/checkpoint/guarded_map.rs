//! Read-only memory maps of input files that survive the file changing under them.
//!
//! Reading a mapped page past the end of a file that another process truncated raises `SIGBUS`,
//! which kills the process (exit 135, nothing said, and a sharded output's temporary folder
//! left behind). So every map of an input is registered here, and a `SIGBUS` handler, installed
//! once, looks at the faulting address: within a registered map, it maps a page of zeros over
//! the faulting page (`mmap` with `MAP_FIXED`, which is async-signal-safe), records the fault
//! and returns, so the read goes on with zeros. Unwinding out of a signal handler (or
//! `siglongjmp`) is not sound in Rust; carrying on with zeros and checking afterwards is.
//! Readers then call [`GuardedMap::unchanged`] before anything they wrote from the map is put
//! in place: it fails if a fault was recorded, or if the file's size or modification time are
//! no longer those it had when mapped (a file rewritten in place, same size, reads without a
//! fault). A fault outside every registered map goes to the handler that was there before
//! (Rust's own, for stack overflows; or the default action).

use super::error::CheckpointError;
use memmap2::Mmap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// A read-only map of an input file, guarded against the file shrinking under it.
pub(crate) struct GuardedMap {
    map: Mmap,
    file: File,
    path: PathBuf,
    /// Size and modification time when mapped.
    stamp: Stamp,
    /// The registry slot, if one was free (else a truncation ends the process, as without this
    /// module, and [`unchanged`](Self::unchanged) still sees the size).
    slot: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
}

fn stamp(file: &File) -> io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok(Stamp {
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
    })
}

impl GuardedMap {
    /// Maps `file` (opened from `path`, named in errors) read-only.
    pub(crate) fn new(file: File, path: &Path) -> Result<Self, CheckpointError> {
        let io = |e| CheckpointError::io(path, "cannot read", e);
        let stamp = stamp(&file).map_err(io)?;
        install();
        // SAFETY: the mapping is only read, as plain bytes. A file changed by another process
        // while it is mapped changes what is read (never memory safety, for plain bytes), and
        // a truncation faults into this module's handler: `unchanged` tells the reader.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let slot = register(map.as_ptr() as usize, map.len());
        Ok(GuardedMap {
            map,
            file,
            path: path.to_path_buf(),
            stamp,
            slot,
        })
    }

    /// The map.
    pub(crate) fn map(&self) -> &Mmap {
        &self.map
    }

    /// The mapped file, open for reading (to copy ranges of it in the kernel).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Fails, on one line naming the file, if the file changed since it was mapped: what was
    /// read from the map may then be zeros or another version's bytes, and must not be written.
    pub(crate) fn unchanged(&self) -> Result<(), CheckpointError> {
        let faulted = self
            .slot
            .is_some_and(|s| SLOTS[s].faulted.load(Ordering::Acquire));
        let now =
            stamp(&self.file).map_err(|e| CheckpointError::io(&self.path, "cannot read", e))?;
        if !faulted && now == self.stamp {
            return Ok(());
        }
        let how = if now.len != self.stamp.len || faulted {
            format!(
                "it changed size while it was read ({} bytes, now {})",
                self.stamp.len, now.len
            )
        } else {
            "it was rewritten while it was read".to_string()
        };
        Err(CheckpointError::io(
            &self.path,
            "cannot read",
            io::Error::other(format!(
                "{how}; nothing was written: run again once nothing else writes it"
            )),
        ))
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregistered before the map goes: its addresses may be mapped again by anyone.
        if let Some(s) = self.slot {
            let slot = &SLOTS[s];
            slot.len.store(0, Ordering::Release);
            slot.start.store(0, Ordering::Release);
            slot.faulted.store(false, Ordering::Release);
            slot.used.store(false, Ordering::Release);
        }
    }
}

/// One registered map. Read by the signal handler: atomics only.
struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

/// As many maps as one run holds at once: one per shard (the largest published checkpoints
/// have a few hundred).
const SLOT_COUNT: usize = 4096;

static SLOTS: [Slot; SLOT_COUNT] = [const {
    Slot {
        used: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOT_COUNT];

fn register(start: usize, len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let s = SLOTS.iter().position(|s| {
        s.used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })?;
    SLOTS[s].faulted.store(false, Ordering::Release);
    SLOTS[s].start.store(start, Ordering::Release);
    SLOTS[s].len.store(len, Ordering::Release);
    Some(s)
}

/// The page size, read once before the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The `SIGBUS` action found when the handler was installed, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls; `PREVIOUS` is set before the handler that reads it is
        // installed.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return;
            }
            let _ = PREVIOUS.set(previous);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

/// The handler: async-signal-safe (atomics, `mmap`, `sigaction`; no allocation, no lock).
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for slot in SLOTS.iter() {
        if !slot.used.load(Ordering::Acquire) {
            continue;
        }
        let (start, len) = (
            slot.start.load(Ordering::Acquire),
            slot.len.load(Ordering::Acquire),
        );
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        let at = addr & !(page - 1);
        // SAFETY: replaces one page of a registered read-only map (still mapped: it is
        // unregistered before it is unmapped) with zeros; nothing else lives there.
        let zeros = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if zeros != libc::MAP_FAILED {
            slot.faulted.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours (or the page could not be replaced): the previous action takes the fault, which
    // repeats when this handler returns.
    // SAFETY: `PREVIOUS` was set before this handler was installed (reading a set `OnceLock`
    // is an atomic load).
    unsafe {
        match PREVIOUS.get() {
            Some(previous) => {
                libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
            }
            None => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map read past the end of its file, truncated after mapping: zeros and a recorded
    /// fault instead of the process's end; the check names the file.
    #[test]
    fn a_file_truncated_under_its_map_reads_zeros_and_is_reported() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, vec![7u8; 1 << 16]).expect("write");
        let map = GuardedMap::new(File::open(&path).expect("open"), &path).expect("map");
        map.unchanged().expect("unchanged so far");
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        let bytes: &[u8] = map.map();
        assert_eq!(bytes[50], 7);
        let tail = std::hint::black_box(&bytes[(1 << 16) - 1..]);
        assert_eq!(tail, [0]);
        let e = map.unchanged().expect_err("changed").to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("changed size"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_file_rewritten_in_place_is_reported() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("model.pt");
        std::fs::write(&path, vec![1u8; 4096]).expect("write");
        let map = GuardedMap::new(File::open(&path).expect("open"), &path).expect("map");
        let file = File::options().write(true).open(&path).expect("open");
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("set the time");
        let e = map.unchanged().expect_err("changed").to_string();
        assert!(e.contains("rewritten"), "{e}");
    }
}
