//! The loop every streamed masked write shares (L1's, N:M's, structured ones): a tensor's
//! entries made chunk by chunk, straight into the output's buffer where it has room. One idea:
//! how made entries reach the sink; what they are is each method's.

use crate::checkpoint::TensorSink;
use crate::error::{PruneError, Result};
use std::path::Path;

/// Entries per chunk of the masked write: 4 MiB of f32, small against any budget, large enough
/// for libtorch's vectorized multiply to dominate its call overhead.
pub(crate) const WRITE_CHUNK: usize = 1 << 20;

/// Writes a tensor's `numel` entries of `size` bytes, made by `fill(first, dst)`: into the
/// sink's own buffer where it has room aligned to `size` (no copy; see
/// [`TensorSink::room`]), else into `spare` ([`WRITE_CHUNK`] entries), then written. `fill`
/// fills a prefix of `dst` with whole entries from entry `first` and returns how many and the
/// exact zeros among them; given `unit` entries or more, it fills at least `unit` (blocks that
/// are decided together), and it fills all of `spare`'s entries that remain, or a multiple of
/// `unit` of them. Returns the zeros written.
pub(super) fn write_entries(
    out: &mut dyn TensorSink,
    numel: usize,
    size: usize,
    unit: usize,
    spare: &mut [u8],
    path: &Path,
    mut fill: impl FnMut(usize, &mut [u8]) -> Result<(usize, i64)>,
) -> Result<i64> {
    let mut zeros = 0;
    let mut start = 0;
    while start < numel {
        let want = (numel - start).min(WRITE_CHUNK).min(spare.len() / size);
        let room = out.room(want * size);
        let fits = room.len() / size;
        if fits >= unit.min(want) && fits > 0 && (room.as_ptr() as usize).is_multiple_of(size) {
            let (done, z) = fill(start, &mut room[..fits * size])?;
            out.commit(done * size).map_err(|e| io_error(path, e))?;
            if done > 0 {
                zeros += z;
                start += done;
                continue;
            }
        }
        let (done, z) = fill(start, &mut spare[..want * size])?;
        if done == 0 {
            return Err(PruneError::torch(format!(
                "a streamed write filled no entry at {start} of {numel}"
            )));
        }
        out.write_all(&spare[..done * size])
            .map_err(|e| io_error(path, e))?;
        zeros += z;
        start += done;
    }
    Ok(zeros)
}

/// A failed write of the output at `path`, as the crate's error.
pub(super) fn io_error(path: &Path, e: std::io::Error) -> PruneError {
    crate::checkpoint::CheckpointError::io(path, "cannot write", e).into()
}
