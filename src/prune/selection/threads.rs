//! How a selection pass is spread over threads: libtorch's intra-op count, one thread for small
//! inputs, and one for scores still on the disk (`mincore` says which), where threads would
//! defeat the kernel's read-ahead. One idea: the choice of threads and the runs on them.

use super::view::{element_size, Chunk};
use std::thread;

thread_local! {
    /// Set by [`on_this_thread`].
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the selections it makes on the calling thread only: for a selection that runs
/// beside other work (a streamed write's per-tensor thresholds, one tensor ahead of the
/// masking), where more threads would take the cores that work needs, and hold a histogram
/// each.
pub(crate) fn on_this_thread<T>(f: impl FnOnce() -> T) -> T {
    ALONE.with(|alone| {
        let before = alone.replace(true);
        let result = f();
        alone.set(before);
        result
    })
}

/// Threads for a selection over `chunks`: libtorch's intra-op count, but one for small inputs,
/// where starting threads costs more than it saves, or under [`on_this_thread`].
fn threads(chunks: usize) -> usize {
    if chunks < 32 || ALONE.with(std::cell::Cell::get) {
        return 1;
    }
    (tch::get_num_threads().max(1) as usize).min(64)
}

/// Whether (nine tenths of) the chunks' scores are in memory, rather than pages of a mapped file
/// still on the disk. Page faults from several threads over a mapped file defeat the kernel's
/// read-ahead: a histogram pass over 8 GiB of shards under a 1 GiB memory cgroup took 6.7 s with
/// two threads taking halves, 8.7 s with two taking alternate chunks, 4.3 s with one (`cat`: 3.5 s).
/// Memory that cannot be asked about (not a mapping the kernel knows) counts as in memory.
fn resident(chunks: &[Chunk<'_>]) -> bool {
    let page = page_size();
    let (mut pages, mut present) = (0usize, 0usize);
    let mut status = Vec::new();
    // One question per run of consecutive chunks of the same view.
    let mut i = 0;
    while i < chunks.len() {
        let view = chunks[i].view;
        let mut j = i + 1;
        while j < chunks.len() && std::ptr::eq(chunks[j].view, view) {
            j += 1;
        }
        let size = element_size(view.score_kind).unwrap_or(1);
        let start = view.scores as usize + chunks[i].start * size;
        let end = view.scores as usize + chunks[j - 1].end * size;
        let first = start / page * page;
        if end > first {
            status.resize((end - first).div_ceil(page), 0u8);
            // SAFETY: asks about the pages of memory the view reads; writes `status`, which
            // holds one byte per page of the range.
            if unsafe {
                libc::mincore(first as *mut libc::c_void, end - first, status.as_mut_ptr())
            } != 0
            {
                return true;
            }
            pages += status.len();
            present += status.iter().filter(|&&b| b & 1 != 0).count();
        }
        i = j;
    }
    present * 10 >= pages * 9
}

/// Whether (nine tenths of) the pages of `parts` are in memory, as [`resident`] tells: parts it
/// cannot read in place count as in memory.
pub(crate) fn in_memory(parts: &[super::RawScores<'_>]) -> bool {
    let views: Vec<super::view::View> = parts.iter().filter_map(super::view::View::raw).collect();
    views_resident(&views)
}

/// Whether (nine tenths of) the views' pages are in memory ([`resident`]).
pub(super) fn views_resident(views: &[super::view::View]) -> bool {
    resident(&super::view::chunks(views))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Runs `f` on every chunk, spread over libtorch's intra-op thread count; results in chunk order.
pub(super) fn parallel_map<T: Send>(
    chunks: &[Chunk<'_>],
    f: impl Fn(&Chunk<'_>) -> T + Sync,
) -> Vec<T> {
    let n = threads(chunks.len());
    if n == 1 {
        return chunks.iter().map(f).collect();
    }
    let per = chunks.len().div_ceil(n);
    thread::scope(|s| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|group| s.spawn(|| group.iter().map(&f).collect::<Vec<T>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("selection thread panicked"))
            .collect()
    })
}

/// A histogram over all chunks: each thread fills its own, then they are added up. Scores read
/// from the disk (a memory-mapped file not in the page cache) are read by one thread. `buckets`:
/// the histogram's length.
pub(super) fn parallel_sum(
    chunks: &[Chunk<'_>],
    buckets: usize,
    f: impl Fn(&Chunk<'_>, &mut [u64]) + Sync,
) -> Vec<u64> {
    let n = match threads(chunks.len()) {
        n if n > 1 && resident(chunks) => n,
        _ => 1,
    };
    if n == 1 {
        let mut histogram = vec![0u64; buckets];
        chunks.iter().for_each(|c| f(c, &mut histogram));
        return histogram;
    }
    let per = chunks.len().div_ceil(n);
    let partial: Vec<Vec<u64>> = thread::scope(|s| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|group| {
                let f = &f;
                s.spawn(move || {
                    let mut histogram = vec![0u64; buckets];
                    group.iter().for_each(|c| f(c, &mut histogram));
                    histogram
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("selection thread panicked"))
            .collect()
    });
    partial.into_iter().fold(vec![0u64; buckets], |mut acc, h| {
        acc.iter_mut().zip(h).for_each(|(a, x)| *a += x);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::selection::view::{chunks, View};
    use crate::prune::selection::RawScores;
    use tch::Kind;

    /// The histogram passes go parallel over memory and pages already read, and sequential over
    /// a mapped file whose pages are still on the disk.
    #[test]
    fn resident_tells_pages_on_disk_from_pages_in_memory() {
        use std::io::Write;
        let in_memory = vec![1f32; 1 << 20];
        // SAFETY: the f32s' own bytes, read while the vector lives.
        let bytes = unsafe {
            std::slice::from_raw_parts(in_memory.as_ptr() as *const u8, in_memory.len() * 4)
        };
        let resident_of = |bytes: &[u8]| {
            let view = View::raw(&RawScores {
                bytes,
                kind: Kind::Float,
            })
            .expect("aligned f32");
            resident(&chunks(std::slice::from_ref(&view)))
        };
        assert!(resident_of(bytes));

        let mut file = tempfile::tempfile().expect("a temporary file");
        file.write_all(bytes).expect("written");
        file.sync_all().expect("synced");
        // SAFETY: a private temporary file, not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("mapped");
        // The written pages leave the page cache once they are clean and advised away, on
        // filesystems whose pages are not the file itself (tmpfs, ramfs keep them).
        // SAFETY: advice on an open file; mincore writes one byte for the one page asked about.
        let dropped = unsafe {
            let advised = libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            ) == 0;
            let mut first = 1u8;
            libc::mincore(map.as_ptr() as *mut libc::c_void, 1, &mut first);
            advised && first & 1 == 0
        };
        if dropped {
            assert!(!resident_of(&map), "pages still on the disk");
        }
        assert!(map[..] == bytes[..]);
        assert!(resident_of(&map), "pages read in");
    }
}
