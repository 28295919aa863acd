//! Writing a large output file at the disk's speed: what the streamed writers write into.
//!
//! How a multi-GB output is written decides most of a streamed run's time. Measured on this
//! project's machine (ext4 on a virtual disk, 1.9 GB, side by side in one run): `cp` + `sync`
//! 1.1-1.5 s (`copy_file_range`, then the kernel's writeback), `dd oflag=direct` 1.5-1.7 s,
//! `dd bs=8M conv=fsync` 5.4-5.5 s (buffered writes that leave the whole file in the page
//! cache), and buffered writes that start each range's writeback as soon as it is written
//! (`sync_file_range`) and wait for it, then drop it from the cache, a few ranges behind:
//! 0.8-0.95 s, the fastest. So an [`OutputFile`] writes in buffers (three of [`BUFFER`] bytes)
//! on a thread of their own, while the next one is filled, and, by default on Linux,
//! writes them back as it goes ([`WritePath::Writeback`]); direct I/O (`O_DIRECT`, large
//! aligned buffers) and plain page-cache writes are the other paths. Bytes that are the input's
//! own (a tensor kept as it is) are copied in the kernel with `copy_file_range` where they are
//! large, without passing through this process. [`OutputFile::stats`] says which path ran.
//!
//! A zip writer goes back to fill in each entry's header: an [`OutputFile`] made by
//! [`OutputFile::create_seekable`] can [`Seek`], the bytes written after a seek going to the
//! disk in order after those before it (never with direct I/O).
//!
//! The file's last partial block is written through a second, ordinary descriptor, so the file
//! ends exactly where its data ends. [`OutputFile::finish`] syncs it. The file is where the
//! caller asked (a temporary file of [`atomic_write`](super::atomic_write) for the crate's
//! writers): nothing here changes how outputs are put in place.
//!
//! `TCH_PRUNE_WRITE=direct` asks for direct I/O (where the filesystem refuses it, the page
//! cache is used), `TCH_PRUNE_WRITE=cache` for plain page-cache writes, to compare or where a
//! filesystem serves the default badly.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// The alignment of direct writes (offsets, lengths and memory): the page size, a multiple of
/// every disk's logical block size.
const ALIGN: usize = 4096;

/// Bytes per buffer, and the range whose writeback the default path starts at once: 1 to 8 MiB
/// writes ran at the same speed on that path here; three buffers are 12 MiB of anonymous
/// memory, whatever the file's size.
pub const BUFFER: usize = 4 << 20;

/// Ranges the writeback path lets be in flight before it waits for the oldest and drops it
/// from the page cache: 32 MiB of dirty or written-back pages at most. Without the wait and
/// the drop, the page cache fills with the output and the same writes took 2-4x longer.
const WRITEBACK_LAG: usize = 8;

/// Buffers in use at once: one being filled, up to two queued or being written.
const BUFFERS: usize = 3;

/// Ranges of unchanged input at least this long are copied in the kernel; shorter ones are
/// cheaper to append to the buffer than a system call and a split buffer.
const COPY_MIN: usize = 1 << 20;

/// How an [`OutputFile`]'s buffers reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WritePath {
    /// Through the page cache, each range's writeback started as it is written and waited for a
    /// few ranges later, which then leave the cache (`sync_file_range`, `POSIX_FADV_DONTNEED`):
    /// the default on Linux.
    #[default]
    Writeback,
    /// Direct I/O (`O_DIRECT`) in aligned buffers: `TCH_PRUNE_WRITE=direct`.
    Direct,
    /// Through the page cache, synced at the end: other systems, or `TCH_PRUNE_WRITE=cache`.
    PageCache,
}

impl WritePath {
    /// The path the environment asks for (`TCH_PRUNE_WRITE`), else the default for this
    /// system.
    fn wanted() -> WritePath {
        match std::env::var("TCH_PRUNE_WRITE").as_deref() {
            Ok("direct") => WritePath::Direct,
            Ok("cache") => WritePath::PageCache,
            _ if cfg!(target_os = "linux") => WritePath::Writeback,
            _ => WritePath::PageCache,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            WritePath::Writeback => "written back as it went",
            WritePath::Direct => "direct I/O",
            WritePath::PageCache => "the page cache",
        }
    }
}

/// What was written, and how: for the summary of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// How the buffers were written: [`WritePath::Direct`] only where the filesystem took
    /// `O_DIRECT`. For several files, the first file's path, or [`WritePath::PageCache`] if
    /// the files differ.
    pub path: WritePath,
    /// Bytes written from this process's buffers.
    pub written: u64,
    /// Bytes copied from the input in the kernel (`copy_file_range`).
    pub copied: u64,
}

impl WriteStats {
    /// Adds another file's counts (a sharded output).
    pub fn add(&mut self, other: WriteStats) {
        let first = self.written == 0 && self.copied == 0;
        if first {
            self.path = other.path;
        } else if self.path != other.path {
            self.path = WritePath::PageCache;
        }
        self.written += other.written;
        self.copied += other.copied;
    }

    /// One phrase for a summary: "written with direct I/O, 12.0 MB ... copied in the kernel".
    pub fn describe(&self) -> String {
        let path = match self.path {
            WritePath::Writeback => {
                "written through the page cache, written back as it went".to_string()
            }
            other => format!("written with {}", other.describe()),
        };
        if self.copied > 0 {
            format!(
                "{path}, {:.1} MB of unchanged data copied in the kernel",
                self.copied as f64 / 1e6
            )
        } else {
            path
        }
    }
}

/// Where the bytes of a tensor kept unchanged come from: the mapped `bytes`, which are also
/// `bytes.len()` bytes of `file` from `offset` (so they may be copied file to file).
#[derive(Clone, Copy)]
pub struct InputRange<'a> {
    /// The bytes, as mapped.
    pub bytes: &'a [u8],
    /// The input file and the offset of `bytes` in it.
    pub file: &'a File,
    /// Offset of `bytes[0]` in `file`.
    pub offset: u64,
}

/// What a streamed writer hands its `fill` callback: a [`Write`] that may also copy ranges of an
/// input file in the kernel.
pub trait TensorSink: Write {
    /// Writes `range.bytes`, by copying them from `range.file` where that is faster. The default
    /// writes the bytes.
    fn write_unchanged(&mut self, range: InputRange<'_>) -> io::Result<()> {
        self.write_all(range.bytes)
    }

    /// Room for the next bytes, to be written in place: up to `max` bytes at the current
    /// position, which [`commit`](Self::commit) then takes as written. Empty (the default) where
    /// the sink has no buffer of its own; callers then write through [`Write`]. Saves a copy of
    /// every masked byte.
    fn room(&mut self, max: usize) -> &mut [u8] {
        let _ = max;
        &mut []
    }

    /// Takes the first `n` bytes of the last [`room`](Self::room) as written.
    fn commit(&mut self, n: usize) -> io::Result<()> {
        match n {
            0 => Ok(()),
            _ => Err(io::Error::other("this sink has no room to commit")),
        }
    }
}

/// A [`TensorSink`] over any writer: unchanged ranges are written as bytes.
pub(crate) struct Plain<W>(pub(crate) W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> TensorSink for Plain<W> {}

/// A page-aligned heap buffer of [`BUFFER`] bytes, as direct I/O needs.
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
}

// SAFETY: a plain owned allocation, handed between threads whole.
unsafe impl Send for Aligned {}

impl Aligned {
    fn layout() -> std::alloc::Layout {
        // BUFFER and ALIGN are nonzero powers of two.
        std::alloc::Layout::from_size_align(BUFFER, ALIGN).expect("valid layout")
    }

    fn new() -> Aligned {
        // SAFETY: a nonzero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        let ptr = std::ptr::NonNull::new(ptr)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        Aligned { ptr }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: BUFFER initialized (zeroed) bytes, owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), BUFFER) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BUFFER) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

/// A buffer's bytes to write at an offset.
struct Job {
    buffer: Aligned,
    len: usize,
    offset: u64,
}

/// A file being written: see the module's documentation.
pub struct OutputFile {
    /// An ordinary descriptor of the same file, for copies and the last partial block.
    plain: File,
    buffer: Aligned,
    filled: usize,
    /// Offset in the file of `buffer[0]`: a multiple of [`ALIGN`] when direct.
    offset: u64,
    /// The file's end so far, past the position after a seek back ([`Seek`]).
    end: u64,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Aligned>,
    allocated: usize,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// False once a copy in the kernel failed for a reason other than I/O: not tried again.
    can_copy: bool,
    stats: WriteStats,
}

impl OutputFile {
    /// Creates (or truncates) the file at `path`, to be written by the path the environment
    /// asks for ([`WritePath`]; `TCH_PRUNE_WRITE`), or the default.
    pub fn create(path: &Path) -> io::Result<OutputFile> {
        Self::create_with(path, WritePath::wanted())
    }

    /// [`create`](Self::create) for a writer that goes back over what it wrote ([`Seek`]): a
    /// zip archive's writer fills in each entry's header once its data is written. Direct I/O,
    /// whose writes must stay aligned, is not used: the default path is.
    pub fn create_seekable(path: &Path) -> io::Result<OutputFile> {
        let wanted = match WritePath::wanted() {
            WritePath::Direct => WritePath::default(),
            other => other,
        };
        Self::create_with(path, wanted)
    }

    /// [`create`](Self::create) by `path`; direct I/O falls back to the page cache where the
    /// filesystem refuses `O_DIRECT`.
    fn create_with(file_path: &Path, path: WritePath) -> io::Result<OutputFile> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // A new file (a shard in an output folder) takes the mode of what it is made from
        // (`with_permissions_of`); an existing one keeps its own.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, super::temp_file::create_mode());
        let plain = options.open(file_path)?;
        if path == WritePath::Direct {
            if let Some(file) = open_direct(file_path) {
                return Self::with_handles(file, plain, WritePath::Direct);
            }
            return Self::with_handles(plain.try_clone()?, plain, WritePath::PageCache);
        }
        Self::with_handles(plain.try_clone()?, plain, path)
    }

    /// Writes buffers through `file` (opened with `O_DIRECT` for [`WritePath::Direct`]), copies
    /// and the last block through `plain`, both on the same empty file.
    fn with_handles(file: File, plain: File, path: WritePath) -> io::Result<OutputFile> {
        let (jobs, queue) = sync_channel::<Job>(BUFFERS - 1);
        let (give_back, free) = sync_channel::<Aligned>(BUFFERS);
        // The thread owns the buffers' descriptor (with `O_DIRECT` when direct).
        let writer = file;
        let thread = std::thread::Builder::new()
            .name("tch-prune-write".into())
            .spawn(move || -> io::Result<()> {
                let mut behind = std::collections::VecDeque::new();
                for job in queue {
                    write_at(&writer, &job.buffer.bytes()[..job.len], job.offset)?;
                    if path == WritePath::Writeback {
                        writeback(&writer, job.offset, job.len, &mut behind)?;
                    }
                    // The owner may be gone (it stops at the first error): nothing to give.
                    let _ = give_back.send(job.buffer);
                }
                Ok(())
            })?;
        Ok(OutputFile {
            plain,
            buffer: Aligned::new(),
            filled: 0,
            offset: 0,
            end: 0,
            jobs: Some(jobs),
            free,
            allocated: 1,
            thread: Some(thread),
            can_copy: cfg!(target_os = "linux"),
            stats: WriteStats {
                path,
                ..WriteStats::default()
            },
        })
    }

    /// What was written so far, and how.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// The position the next byte goes to.
    fn position(&self) -> u64 {
        self.offset + self.filled as u64
    }

    /// Hands the buffer's first `len` bytes (a multiple of [`ALIGN`] when direct) to the thread
    /// and takes an empty buffer; bytes past `len` move to the new buffer's start.
    fn send(&mut self, len: usize) -> io::Result<()> {
        let fresh = if self.allocated < BUFFERS {
            self.allocated += 1;
            Aligned::new()
        } else {
            match self.free.recv() {
                Ok(b) => b,
                Err(_) => return Err(self.thread_error()),
            }
        };
        let mut full = std::mem::replace(&mut self.buffer, fresh);
        let rest = self.filled - len;
        self.buffer.bytes_mut()[..rest].copy_from_slice(&full.bytes_mut()[len..self.filled]);
        let job = Job {
            buffer: full,
            len,
            offset: self.offset,
        };
        let sent = self.jobs.as_ref().map(|j| j.send(job).is_ok());
        if sent != Some(true) {
            return Err(self.thread_error());
        }
        self.stats.written += len as u64;
        self.offset += len as u64;
        self.filled = rest;
        Ok(())
    }

    /// The writing thread's error, once it has stopped.
    fn thread_error(&mut self) -> io::Error {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the writing thread panicked"),
            _ => io::Error::other("the writing thread stopped"),
        }
    }

    /// Writes everything out, ends the file at its last byte and syncs it. Returns how it was
    /// written.
    pub fn finish(mut self) -> io::Result<WriteStats> {
        let whole = if self.stats.path == WritePath::Direct {
            self.filled / ALIGN * ALIGN
        } else {
            self.filled
        };
        if whole > 0 {
            self.send(whole)?;
        }
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| io::Error::other("the writing thread panicked"))??;
        }
        // The last partial block, through the ordinary descriptor.
        write_at(
            &self.plain,
            &self.buffer.bytes()[..self.filled],
            self.offset,
        )?;
        self.stats.written += self.filled as u64;
        let end = self.end.max(self.offset + self.filled as u64);
        self.filled = 0;
        // A copy that reached further than the data cannot happen, but the length is the
        // writer's contract: the file ends at its last byte.
        self.plain.set_len(end)?;
        self.plain.sync_all()?;
        Ok(self.stats)
    }

    /// Copies `range` in the kernel to the current position, keeping the buffer's alignment:
    /// the head up to the next aligned offset and the unaligned tail go through the buffer.
    /// Returns false, having written nothing, where a copy is not worth it or not possible.
    fn copy(&mut self, range: InputRange<'_>) -> io::Result<bool> {
        let len = range.bytes.len();
        if !self.can_copy || len < COPY_MIN + 2 * ALIGN {
            return Ok(false);
        }
        let position = self.position();
        let direct = self.stats.path == WritePath::Direct;
        let head = if direct {
            (ALIGN - (position as usize) % ALIGN) % ALIGN
        } else {
            0
        };
        let middle = if direct {
            (len - head) / ALIGN * ALIGN
        } else {
            len
        };
        self.append(&range.bytes[..head])?;
        // Everything before the copied range goes to the thread (its writes and the copy touch
        // different ranges of the file, so they need no ordering).
        if self.filled > 0 {
            self.send(self.filled)?;
        }
        let dst = self.position();
        match copy_file_range(
            range.file,
            range.offset + head as u64,
            &self.plain,
            dst,
            middle,
        ) {
            Ok(()) => {
                if self.stats.path == WritePath::Writeback {
                    // Started now, on the disk by `finish`'s sync (the copy's pages are not
                    // waited for here: the main thread would wait on the disk).
                    start_writeback(&self.plain, dst, middle)?;
                }
            }
            Err(e) if copy_unsupported(&e) => {
                self.can_copy = false;
                self.append(&range.bytes[head..])?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        self.stats.copied += middle as u64;
        self.offset += middle as u64;
        self.append(&range.bytes[head + middle..])?;
        Ok(true)
    }

    /// Appends bytes to the buffer, handing full buffers to the thread.
    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(BUFFER - self.filled);
            self.buffer.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == BUFFER {
                self.send(BUFFER)?;
            }
        }
        Ok(())
    }
}

impl Write for OutputFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append(bytes)?;
        Ok(bytes.len())
    }

    /// Nothing to do: the buffers are written as they fill, and [`OutputFile::finish`] writes
    /// the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// For writers that patch what they wrote (a zip entry's header once its data is known):
/// the bytes so far go to the writing thread, and the next ones are written from the new
/// position, in order after them. Not on a file written with direct I/O, whose writes must stay
/// aligned ([`OutputFile::create_seekable`] never uses it).
impl Seek for OutputFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let position = self.position();
        let end = self.end.max(position);
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => position.checked_add_signed(d),
            SeekFrom::End(d) => end.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start"))?;
        if target == position {
            return Ok(target);
        }
        if self.stats.path == WritePath::Direct {
            return Err(io::Error::other(
                "a file written with direct I/O cannot seek",
            ));
        }
        if self.filled > 0 {
            self.send(self.filled)?;
        }
        self.end = end;
        self.offset = target;
        Ok(target)
    }
}

impl TensorSink for OutputFile {
    fn write_unchanged(&mut self, range: InputRange<'_>) -> io::Result<()> {
        if !self.copy(range)? {
            self.append(range.bytes)?;
        }
        Ok(())
    }

    fn room(&mut self, max: usize) -> &mut [u8] {
        let end = self.filled.saturating_add(max).min(BUFFER);
        let start = self.filled;
        &mut self.buffer.bytes_mut()[start..end]
    }

    fn commit(&mut self, n: usize) -> io::Result<()> {
        if self.filled + n > BUFFER {
            return Err(io::Error::other("committed more than the room given"));
        }
        self.filled += n;
        if self.filled == BUFFER {
            self.send(BUFFER)?;
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    /// An unfinished file (an error on the way): the thread is stopped and waited for, its
    /// error dropped (the caller has one already).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the writeback of the range just written, then, once [`WRITEBACK_LAG`] ranges are in
/// flight, waits for the oldest and drops its pages from the cache (they are on the disk).
#[cfg(target_os = "linux")]
fn writeback(
    file: &File,
    offset: u64,
    len: usize,
    behind: &mut std::collections::VecDeque<(u64, usize)>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    start_writeback(file, offset, len)?;
    behind.push_back((offset, len));
    // SAFETY: plain system calls on an open descriptor, over ranges of its file.
    unsafe {
        while behind.len() > WRITEBACK_LAG {
            let Some((offset, len)) = behind.pop_front() else {
                break;
            };
            let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            if libc::sync_file_range(fd, offset as i64, len as i64, all) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Advice only: a failure changes nothing written.
            let _ = libc::posix_fadvise(fd, offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
        }
    }
    Ok(())
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk, without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WRITE;
    // SAFETY: a plain system call on an open descriptor, over a range of its file.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: usize) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn writeback(
    _: &File,
    _: u64,
    _: usize,
    _: &mut std::collections::VecDeque<(u64, usize)>,
) -> io::Result<()> {
    Ok(())
}

/// `path` opened again for writing with `O_DIRECT`, if the filesystem takes it.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// Writes all of `bytes` at `offset`.
fn write_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !bytes.is_empty() {
        match file.write_at(bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Errors that mean "copy it yourself" before any byte was copied: another filesystem, a
/// kernel or filesystem without the call.
fn copy_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
    ) && e.kind() != io::ErrorKind::Other
}

/// Copies `len` bytes of `from` at `src` to `to` at `dst` in the kernel. An input that ends
/// early (cut short while it is read) is an error; so is a copy that fails part way.
#[cfg(target_os = "linux")]
fn copy_file_range(from: &File, src: u64, to: &File, dst: u64, len: usize) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let (mut src, mut dst) = (src as libc::loff_t, dst as libc::loff_t);
    let mut left = len;
    while left > 0 {
        // SAFETY: valid descriptors and offsets owned by this call; the kernel copies between
        // the files, touching no memory of this process.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut src,
                to.as_raw_fd(),
                &mut dst,
                left,
                0,
            )
        };
        match n {
            n if n > 0 => left -= n as usize,
            0 => {
                return Err(io::Error::other(
                    "the input ended early while it was copied: it changed while it was read",
                ))
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if left < len {
                    // Part of it was copied: not a question of support any more.
                    return Err(io::Error::other(e.to_string()));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn copy_file_range(_: &File, _: u64, _: &File, _: u64, _: usize) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that tell their position apart.
    fn pattern(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Writes, unchanged ranges and odd sizes interleaved, on every write path: the file is
    /// exactly the bytes in order, whichever path each piece took.
    #[test]
    fn every_mix_of_writes_and_copies_gives_the_bytes_in_order() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let input_path = dir.path().join("input");
        let input = pattern(3 * BUFFER + 12_345, 1);
        std::fs::write(&input_path, &input).expect("write input");
        let source = File::open(&input_path).expect("open input");
        // (kind, length): 0 written, 1 copied from the input at a running offset.
        let pieces = [
            (0, 8),
            (1, COPY_MIN + 2 * ALIGN + 3),
            (0, 5),
            (0, BUFFER + 17),
            (1, 2 * COPY_MIN + 1),
            (1, 100),
            (0, ALIGN),
            (1, BUFFER + ALIGN),
            (0, 1),
        ];
        for path in [
            WritePath::Direct,
            WritePath::Writeback,
            WritePath::PageCache,
        ] {
            let out = dir.path().join(format!("out-{path:?}"));
            let mut file = OutputFile::create_with(&out, path).expect("create");
            let mut expected = Vec::new();
            let mut at = 0usize;
            for (i, &(kind, len)) in pieces.iter().enumerate() {
                if kind == 0 {
                    let bytes = pattern(len, 100 + i as u64);
                    file.write_all(&bytes).expect("write");
                    expected.extend_from_slice(&bytes);
                } else {
                    let range = InputRange {
                        bytes: &input[at..at + len],
                        file: &source,
                        offset: at as u64,
                    };
                    file.write_unchanged(range).expect("copy");
                    expected.extend_from_slice(range.bytes);
                    at += len + 7;
                }
            }
            let stats = file.finish().expect("finish");
            assert_eq!(stats.written + stats.copied, expected.len() as u64);
            assert!(stats.copied > 0 || !cfg!(target_os = "linux"));
            assert!(std::fs::read(&out).expect("read") == expected, "{path:?}");
        }
    }

    /// A writer that goes back over what it wrote (a zip's headers) leaves the bytes it wrote
    /// last at every position, whether the place it patches is still in the buffer or already
    /// written; direct I/O refuses to go back.
    #[test]
    fn a_seek_back_patches_in_place_and_the_file_ends_at_its_end() {
        let dir = tempfile::tempdir().expect("temporary folder");
        for path in [
            WritePath::Writeback,
            WritePath::PageCache,
            WritePath::Direct,
        ] {
            let out = dir.path().join(format!("out-{path:?}"));
            let mut file = OutputFile::create_with(&out, path).expect("create");
            let mut expected = pattern(2 * BUFFER + 100, 7);
            file.write_all(&expected).expect("write");
            if file.stats().path == WritePath::Direct {
                assert!(file.seek(SeekFrom::Start(10)).is_err());
                assert_eq!(
                    file.stream_position().expect("position"),
                    expected.len() as u64
                );
                continue;
            }
            // In a buffer already written, across two of them, then in the one being filled.
            for (at, len) in [(10, 5), (BUFFER - 2, 4), (2 * BUFFER + 50, 9)] {
                let patch = pattern(len, at as u64);
                assert_eq!(
                    file.seek(SeekFrom::Start(at as u64)).expect("seek"),
                    at as u64
                );
                file.write_all(&patch).expect("patch");
                expected[at..at + len].copy_from_slice(&patch);
            }
            assert_eq!(
                file.seek(SeekFrom::Current(-9)).expect("back"),
                2 * BUFFER as u64 + 50
            );
            assert_eq!(
                file.seek(SeekFrom::End(0)).expect("end"),
                expected.len() as u64
            );
            let tail = pattern(BUFFER + 3, 9);
            file.write_all(&tail).expect("write on");
            expected.extend_from_slice(&tail);
            // Ending the file back inside it still keeps every byte written.
            file.seek(SeekFrom::Start(1)).expect("seek");
            file.finish().expect("finish");
            assert!(std::fs::read(&out).expect("read") == expected, "{path:?}");
        }
    }

    /// A write error reaches the caller (here: the thread's descriptor is read-only).
    #[test]
    fn a_failed_write_is_an_error_not_a_short_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let out = dir.path().join("out");
        std::fs::write(&out, b"").expect("create");
        let mut file = OutputFile::with_handles(
            File::open(&out).expect("read-only"),
            std::fs::OpenOptions::new()
                .write(true)
                .open(&out)
                .expect("plain"),
            WritePath::Writeback,
        )
        .expect("create");
        let err = (|| -> io::Result<WriteStats> {
            for _ in 0..4 {
                file.write_all(&vec![1u8; BUFFER])?;
            }
            file.finish()
        })()
        .expect_err("a read-only descriptor cannot write");
        assert!(!err.to_string().is_empty());
    }
}
