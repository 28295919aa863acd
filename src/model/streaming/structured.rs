//! Structured methods streamed (Ln and random structured): the method's own `compute_mask` run
//! on the mapped tensor in place, whose first-prune mask is one value per channel broadcast
//! over the tensor, then each tensor written a chunk at a time with whole channels kept or
//! zeroed. Methods that do not draw find every tensor's channels before the write: libtorch's
//! threads, which the norms use, spin after each use, and between writes that spinning took a
//! third of the CPU. Methods that draw find them tensor by tensor as they are written, so that
//! their draws come in write order. Held in memory: one
//! flag per channel and a chunk, where the in-memory code held the tensor, its product and the
//! method's temporaries (6.2 % of a 1.9 GB file's size in anonymous memory, the largest
//! tensor's working set).
//!
//! The mask is the in-memory path's (the same call on the same values, shape and strides), and
//! so are the bytes: for finite values the product by 1 is the value and the product by 0 the
//! zero of its sign, which is what is written. A tensor holding an infinity or a NaN is left to
//! the in-memory code, as N:M leaves it.

use super::entries::write_entries;
use super::nm::all_finite;
use crate::checkpoint::{MappedTensor, TensorSink};
use crate::error::{PruneError, Result};
use crate::prune::method::all_ones;
use crate::prune::selection::RawScores;
use crate::{PruningMethod, PruningType};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The channels `method` keeps along `dim` of `t` (`Some((dim, kept))`), which
/// [`write_channels`] writes, or `None` where the in-memory code must prune the tensor: not a
/// structured method, a tensor with non-finite values or without entries, data not aligned to
/// its dtype, or a mask that is not one value per channel. A method that draws draws here.
pub(super) fn channels(
    t: &MappedTensor,
    raw: &RawScores<'_>,
    method: &dyn PruningMethod,
) -> Result<Option<(usize, Vec<bool>)>> {
    let PruningType::Structured { dim } = method.pruning_type() else {
        return Ok(None);
    };
    if !raw.usable() || t.numel() == 0 || t.shape.is_empty() || !all_finite(raw.bytes, raw.kind) {
        return Ok(None);
    }
    let ndim = t.shape.len() as i64;
    let dim = (if dim < 0 { dim + ndim } else { dim }) as usize;
    Ok(channels_kept(t, raw, method, dim)?.map(|kept| (dim, kept)))
}

/// Writes `t` with the channels along `dim` that `kept` says kept as they are and the others
/// zeroed (the zero of each value's sign), a chunk of `buffer` at a time; returns the zeros
/// written.
pub(super) fn write_channels(
    raw: &RawScores<'_>,
    shape: &[i64],
    (dim, kept): (usize, &[bool]),
    buffer: &mut [u8],
    out: &mut dyn TensorSink,
    path: &Path,
) -> Result<i64> {
    let inner: usize = shape[dim + 1..].iter().map(|&d| d as usize).product();
    let size = raw.kind.elt_size_in_bytes();
    let numel = raw.bytes.len() / size;
    write_entries(out, numel, size, 1, buffer, path, |start, dst| {
        let end = start + dst.len() / size;
        let mut zeros = 0;
        // Runs of entries of one channel: `inner` long, cut by the piece's ends.
        let mut at = start;
        while at < end {
            let run_end = ((at / inner + 1) * inner).min(end);
            let src = &raw.bytes[at * size..run_end * size];
            let dst = &mut dst[(at - start) * size..(run_end - start) * size];
            if kept[(at / inner) % kept.len()] {
                dst.copy_from_slice(src);
                zeros += super::count_zeros(dst, raw.kind);
            } else {
                sign_zeros(src, dst, size);
                zeros += (run_end - at) as i64;
            }
            at = run_end;
        }
        Ok((end - start, zeros))
    })
}

/// Whether each channel is kept, from `method.compute_mask` on the mapped data (read in
/// place); `None` where the mask is not one value per channel broadcast along the others.
fn channels_kept(
    t: &MappedTensor,
    raw: &RawScores<'_>,
    method: &dyn PruningMethod,
    dim: usize,
) -> Result<Option<Vec<bool>>> {
    let strides = contiguous_strides(&t.shape);
    // SAFETY: the mapped bytes hold `numel` aligned entries of `kind` in this shape (checked by
    // `usable` and the header), outlive the tensor (dropped in this call), and are only read:
    // the mapping is read-only, so a write would fault rather than corrupt.
    let scores = unsafe {
        Tensor::f_from_blob(
            raw.bytes.as_ptr(),
            &t.shape,
            &strides,
            raw.kind,
            Device::Cpu,
        )?
    };
    let mask = method
        .compute_mask(&scores, &all_ones(&scores, raw.kind)?)
        .map_err(|e| e.in_tensor(&t.name))?;
    let broadcast = mask.size() == t.shape
        && mask
            .stride()
            .iter()
            .enumerate()
            .all(|(d, &s)| d == dim || s == 0);
    if !broadcast {
        return Ok(None);
    }
    // The channels' values: the mask at index 0 of every other dimension.
    let mut channels = mask;
    for d in (0..t.shape.len() as i64).rev().filter(|&d| d != dim as i64) {
        channels = channels.f_select(d, 0)?;
    }
    let values = Vec::<f64>::try_from(&channels.f_to_kind(Kind::Double)?)
        .map_err(|e| PruneError::torch(e.to_string()))?;
    if values.iter().any(|&v| v != 0.0 && v != 1.0) {
        return Ok(None);
    }
    Ok(Some(values.iter().map(|&v| v == 1.0).collect()))
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1].max(1);
    }
    strides
}

/// Each entry of `src` (little-endian, `size` bytes) times zero: the zero of its sign.
fn sign_zeros(src: &[u8], dst: &mut [u8], size: usize) {
    dst.fill(0);
    for (o, s) in dst.chunks_exact_mut(size).zip(src.chunks_exact(size)) {
        o[size - 1] = s[size - 1] & 0x80;
    }
}
