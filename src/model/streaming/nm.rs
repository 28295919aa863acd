//! N:M sparsity streamed: a tensor pruned a block of rows at a time, straight from the mapped
//! data, with the decisions [`NmSparsity`](crate::train::NmSparsity)'s mask makes and the bytes
//! the in-memory path writes.
//!
//! Along the pruned dimension `dim`, of length `len`, with `inner` entries per step after it,
//! the `m` consecutive rows `g·m .. g·m + m` of each index before `dim` are `m · inner` contiguous
//! entries holding whole blocks (one per inner index): a unit that needs nothing else to be
//! decided. Units are gathered up to a chunk of entries (the output buffer's), decided, masked
//! and written. A
//! tensor holding an infinity or a NaN is left to the in-memory code (see [`write_nm`]).
//!
//! The decision is `NmSparsity::compute_mask`'s on a tensor pruned for the first time: in each
//! block, the `m - n` smallest magnitudes are pruned, a NaN ranking above every number (the
//! NaN padding of a partial block included, so a partial block of `r` entries prunes
//! `min(r, m - n)`), ties going to the earlier entry (its stable sort). Magnitudes are compared
//! as the value's bits with the sign cleared, which order like the values for everything but
//! NaN; every NaN is one key above infinity, as the sort ranks them equal.

use super::entries::{io_error, write_entries};
use super::nm4::mask_blocks4;
use crate::checkpoint::{MappedTensor, TensorSink};
use crate::error::Result;
use crate::prune::selection::RawScores;
use std::path::Path;
use tch::Kind;

/// Blocks longer than this are ranked by sorting them; shorter ones by counting, for each
/// entry, the entries that come before it in the ranking (no allocation, no branches to
/// mispredict for 2:4).
const COUNTED_BLOCK: usize = 32;

/// The buffers of the streamed N:M writes, kept from tensor to tensor: a chunk's decisions, its
/// keys, one block's ranking.
#[derive(Default)]
pub(super) struct NmScratch {
    keep: Vec<bool>,
    keys: Vec<u64>,
    order: Vec<u32>,
}

/// The shape of a streamed N:M pruning of one tensor.
struct Layout {
    /// Entries along the pruned dimension, and after it.
    len: usize,
    inner: usize,
    /// The block length and how many entries a whole block prunes.
    m: usize,
    pruned: usize,
}

impl Layout {
    /// The layout, or `None` where the tensor is left to the in-memory code (which then gives
    /// its own answer or error): a dimension the method refuses, no entries, or a unit of
    /// blocks larger than a chunk.
    fn of(t: &MappedTensor, (n, m, dim): (i64, i64, i64), chunk: usize) -> Option<Layout> {
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
        let ndim = shape.len() as i64;
        if ndim <= 1 || dim >= ndim || dim < -ndim || shape.contains(&0) {
            return None;
        }
        let dim = if dim < 0 { dim + ndim } else { dim } as usize;
        let len = shape[dim];
        let (n, m) = (usize::try_from(n).ok()?, usize::try_from(m).ok()?);
        // A block longer than the row: the row is one partial block (as `compute_mask` takes it).
        let (m, pruned) = if m > len {
            (len, (m - n).min(len))
        } else {
            (m, m - n)
        };
        let layout = Layout {
            len,
            inner: shape[dim + 1..].iter().product(),
            m,
            pruned,
        };
        (layout.m.checked_mul(layout.inner)? <= chunk).then_some(layout)
    }

    /// Decides the entries of the rows `row .. row + rows` (`rows <= m`) of one outer index,
    /// whose `rows · inner` keys are `keys`: `keep[i]` for each.
    fn decide(&self, keys: &[u64], rows: usize, keep: &mut [bool], order: &mut Vec<u32>) {
        // A partial block is ranked as if padded with NaN, which rank above every entry of it.
        let prune = self.pruned.min(rows);
        let inner = self.inner;
        if inner == 1 {
            // Contiguous blocks (blocks along the last dimension, the common case): the usual
            // block lengths unrolled.
            match rows {
                2 => return rank_block::<2>(keys, prune, keep),
                4 => return rank_block::<4>(keys, prune, keep),
                8 => return rank_block::<8>(keys, prune, keep),
                _ => {}
            }
        }
        for j in 0..inner {
            let key = |i: usize| keys[i * inner + j];
            if rows <= COUNTED_BLOCK {
                for i in 0..rows {
                    let k = key(i);
                    let before = (0..rows)
                        .filter(|&o| {
                            let ko = key(o);
                            ko < k || (ko == k && o < i)
                        })
                        .count();
                    keep[i * inner + j] = before >= prune;
                }
            } else {
                order.clear();
                order.extend(0..rows as u32);
                // Stable: ties keep their order, the earlier entry first.
                order.sort_by_key(|&i| key(i as usize));
                for (rank, &i) in order.iter().enumerate() {
                    keep[i as usize * inner + j] = rank >= prune;
                }
            }
        }
    }
}

/// The `N`-byte little-endian word at the start of `b`, widened.
#[inline(always)]
fn load<const N: usize>(b: &[u8]) -> u64 {
    match N {
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        _ => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
    }
}

/// The largest finite magnitude's bits plus one (infinity) for `kind`, and its word size.
fn infinity(kind: Kind) -> (u64, usize) {
    match kind {
        Kind::Float => (0x7f80_0000, 4),
        Kind::Double => (0x7ff0_0000_0000_0000, 8),
        Kind::Half => (0x7c00, 2),
        _ => (0x7f80, 2),
    }
}

/// Contiguous whole blocks of `M` entries of `N` bytes (every row a multiple of `M`, blocks
/// along the last dimension: 2:4 on a `Linear` weight), decided and masked in one pass from
/// `src` into `out`; returns the exact zeros written. The same decisions as
/// [`Layout::decide`], the same bytes as [`apply_finite`] (the tensor is finite).
fn mask_blocks<const N: usize, const M: usize>(
    src: &[u8],
    out: &mut [u8],
    inf: u64,
    prune: usize,
) -> u64 {
    let sign = 1u64 << (8 * N - 1);
    let mut zeros = 0;
    for (s, o) in src.chunks_exact(N * M).zip(out.chunks_exact_mut(N * M)) {
        let mut v = [0u64; M];
        let mut k = [0u64; M];
        for i in 0..M {
            v[i] = load::<N>(&s[i * N..]);
            let magnitude = v[i] & !sign;
            k[i] = if magnitude > inf { inf + 1 } else { magnitude };
        }
        for i in 0..M {
            let mut before = 0;
            for j in 0..M {
                before += ((k[j] < k[i]) | ((k[j] == k[i]) & (j < i))) as usize;
            }
            let w = if before >= prune { v[i] } else { v[i] & sign };
            zeros += (w & !sign == 0) as u64;
            o[i * N..i * N + N].copy_from_slice(&w.to_le_bytes()[..N]);
        }
    }
    zeros
}

/// [`mask_blocks`] for `kind` and `m`, if it has an unrolled version.
fn mask_blocks_of(kind: Kind, m: usize, prune: usize, src: &[u8], out: &mut [u8]) -> Option<u64> {
    let (inf, size) = infinity(kind);
    if m == 4 {
        if let Some(zeros) = mask_blocks4(size, prune, src, out) {
            return Some(zeros);
        }
    }
    Some(match (size, m) {
        (2, 4) => mask_blocks::<2, 4>(src, out, inf, prune),
        (4, 4) => mask_blocks::<4, 4>(src, out, inf, prune),
        (8, 4) => mask_blocks::<8, 4>(src, out, inf, prune),
        (2, 2) => mask_blocks::<2, 2>(src, out, inf, prune),
        (4, 2) => mask_blocks::<4, 2>(src, out, inf, prune),
        (8, 2) => mask_blocks::<8, 2>(src, out, inf, prune),
        (2, 8) => mask_blocks::<2, 8>(src, out, inf, prune),
        (4, 8) => mask_blocks::<4, 8>(src, out, inf, prune),
        (8, 8) => mask_blocks::<8, 8>(src, out, inf, prune),
        _ => return None,
    })
}

/// [`Layout::decide`] for one contiguous block of `M` entries.
#[inline(always)]
fn rank_block<const M: usize>(keys: &[u64], prune: usize, keep: &mut [bool]) {
    let (Ok(k), Ok(keep)) = (
        <&[u64; M]>::try_from(&keys[..M]),
        <&mut [bool; M]>::try_from(&mut keep[..M]),
    ) else {
        return;
    };
    for i in 0..M {
        let mut before = 0;
        for o in 0..M {
            before += ((k[o] < k[i]) | ((k[o] == k[i]) & (o < i))) as usize;
        }
        keep[i] = before >= prune;
    }
}

/// The magnitude key of each entry of `bytes` (little-endian `kind`): the bits with the sign
/// cleared, every NaN one above infinity.
fn keys(bytes: &[u8], kind: Kind, out: &mut Vec<u64>) {
    out.clear();
    fn push<const N: usize>(bytes: &[u8], inf: u64, out: &mut Vec<u64>) {
        let magnitude = (1u64 << (8 * N - 1)) - 1;
        out.extend(bytes.chunks_exact(N).map(|b| {
            let mut word = [0u8; 8];
            word[..N].copy_from_slice(b);
            let bits = u64::from_le_bytes(word) & magnitude;
            if bits > inf {
                inf + 1
            } else {
                bits
            }
        }));
    }
    match kind {
        Kind::Float => push::<4>(bytes, 0x7f80_0000, out),
        Kind::Double => push::<8>(bytes, 0x7ff0_0000_0000_0000, out),
        Kind::Half => push::<2>(bytes, 0x7c00, out),
        _ => push::<2>(bytes, 0x7f80, out),
    }
}

/// Writes `t` pruned N:M (`Some(zeros written)`), or returns `None`, having written nothing,
/// when the in-memory code must do it (see [`Layout::of`]).
/// `pattern`: `(n, m, dim)` ([`PruningMethod::semi_structured`](crate::PruningMethod::semi_structured));
/// `buffer`: room for the output of one chunk (whose length in entries it sets).
pub(super) fn write_nm(
    t: &MappedTensor,
    raw: &RawScores<'_>,
    pattern: (i64, i64, i64),
    buffer: &mut [u8],
    scratch: &mut NmScratch,
    out: &mut dyn TensorSink,
    path: &Path,
) -> Result<Option<i64>> {
    if !matches!(
        raw.kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) || !raw.usable()
    {
        return Ok(None);
    }
    let size = raw.kind.elt_size_in_bytes();
    let chunk_len = buffer.len() / size;
    let Some(layout) = Layout::of(t, pattern, chunk_len) else {
        return Ok(None);
    };
    // Infinities and NaNs: their products by the mask are libtorch's, and which of its
    // multiplications the in-memory path makes depends on the mask's memory layout (a product
    // by a boolean gives other NaN bits than one by a cast mask, in bf16). A tensor holding
    // one is left to the in-memory code; the check reads the tensor once more, from the cache.
    if !all_finite(raw.bytes, raw.kind) {
        return Ok(None);
    }
    let numel = raw.bytes.len() / size;
    let (m, prune) = (layout.m, layout.pruned);
    // Whole contiguous blocks (2:4 on a Linear weight): decided and masked in place.
    if layout.inner == 1
        && layout.len % m == 0
        && mask_blocks_of(raw.kind, m, prune, &[], &mut []).is_some()
    {
        let zeros = write_entries(out, numel, size, m, buffer, path, |start, dst| {
            let n = dst.len() / size / m * m;
            let src = &raw.bytes[start * size..(start + n) * size];
            let zeros = mask_blocks_of(raw.kind, m, prune, src, &mut dst[..n * size]);
            Ok((n, zeros.unwrap_or(0) as i64))
        })?;
        return Ok(Some(zeros));
    }
    let slab = layout.len * layout.inner;
    if scratch.keep.len() < chunk_len {
        scratch.keep = vec![true; chunk_len];
    }
    let NmScratch {
        keep,
        keys: keys_buf,
        order,
    } = scratch;
    let mut zeros = 0;
    let unit = layout.m * layout.inner;
    // Whole slabs where they fit in a chunk, else whole units of one slab (its last unit may be
    // short): a chunk always ends where a unit does.
    let chunk_end = |start: usize| -> usize {
        let in_slab = start % slab;
        if in_slab == 0 && slab <= chunk_len {
            (start + chunk_len / slab * slab).min(numel)
        } else {
            (start + (chunk_len / unit).max(1) * unit).min(start - in_slab + slab)
        }
    };
    let mut start = 0;
    while start < numel {
        let end = chunk_end(start);
        let n = end - start;
        let chunk = &mut buffer[..n * size];
        let src = &raw.bytes[start * size..end * size];
        keys(src, raw.kind, keys_buf);
        let mut at = start;
        // Rows left in the current slab (of `len`).
        let mut left = (slab - start % slab) / layout.inner;
        while at < end {
            let rows = layout.m.min(left);
            let width = rows * layout.inner;
            let (from, to) = (at - start, at - start + width);
            layout.decide(&keys_buf[from..to], rows, &mut keep[from..to], order);
            at += width;
            left -= rows;
            if left == 0 {
                left = layout.len;
            }
        }
        zeros += apply_finite(src, raw.kind, &keep[..n], chunk) as i64;
        out.write_all(chunk).map_err(|e| io_error(path, e))?;
        start = end;
    }
    Ok(Some(zeros))
}

/// Whether every entry of `bytes` (little-endian `kind`) is finite.
pub(super) fn all_finite(bytes: &[u8], kind: Kind) -> bool {
    fn run<const N: usize>(bytes: &[u8], exp: u64) -> bool {
        // Whole pieces without an early exit, so that the loop vectorizes.
        bytes.chunks(N << 12).all(|piece| {
            piece
                .chunks_exact(N)
                .fold(0u64, |n, b| n + (load::<N>(b) & exp == exp) as u64)
                == 0
        })
    }
    match kind {
        Kind::Float => run::<4>(bytes, 0x7f80_0000),
        Kind::Double => run::<8>(bytes, 0x7ff0_0000_0000_0000),
        Kind::Half => run::<2>(bytes, 0x7c00),
        _ => run::<2>(bytes, 0x7f80),
    }
}

/// `value * keep` for finite values, by their bits (kept: the value; pruned: the zero of its
/// sign, which IEEE multiplication by zero gives in every format), into `out`; the exact zeros
/// written.
fn apply_finite(src: &[u8], kind: Kind, keep: &[bool], out: &mut [u8]) -> u64 {
    fn run<const N: usize>(src: &[u8], keep: &[bool], out: &mut [u8]) -> u64 {
        let sign = 1u64 << (8 * N - 1);
        let mut zeros = 0;
        for ((s, o), &k) in src.chunks_exact(N).zip(out.chunks_exact_mut(N)).zip(keep) {
            let mut word = [0u8; 8];
            word[..N].copy_from_slice(s);
            let bits = u64::from_le_bytes(word);
            let v = if k { bits } else { bits & sign };
            zeros += (v & !sign == 0) as u64;
            o.copy_from_slice(&v.to_le_bytes()[..N]);
        }
        zeros
    }
    match kind {
        Kind::Float => run::<4>(src, keep, out),
        Kind::Double => run::<8>(src, keep, out),
        _ => run::<2>(src, keep, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(m: usize, pruned: usize, inner: usize) -> Layout {
        Layout {
            len: m,
            inner,
            m,
            pruned,
        }
    }

    #[test]
    fn ties_go_to_the_earlier_entry_and_nan_ranks_last() {
        let mut keep = [false; 4];
        let mut order = Vec::new();
        layout(4, 2, 1).decide(&[5, 5, 5, 5], 4, &mut keep, &mut order);
        assert_eq!(keep, [false, false, true, true]);
        let nan = 0x7f80_0001;
        layout(4, 2, 1).decide(&[nan, 3, nan, 1], 4, &mut keep, &mut order);
        assert_eq!(keep, [true, false, true, false]);
        // A partial block of three prunes min(3, 2).
        let mut keep = [false; 3];
        layout(4, 2, 1).decide(&[9, 1, 4], 3, &mut keep, &mut order);
        assert_eq!(keep, [true, false, false]);
    }

    #[test]
    fn sorted_and_counted_rankings_agree() {
        let keys: Vec<u64> = (0..64u64).map(|i| (i * 37) % 11).collect();
        let (mut counted, mut sorted) = (vec![false; 64], vec![false; 64]);
        let mut order = Vec::new();
        // 64 rows of one column: sorted; the same as 2 columns of 32 rows, counted, per column.
        layout(64, 40, 1).decide(&keys, 64, &mut sorted, &mut order);
        let mut pruned = 0;
        for (i, k) in sorted.iter().enumerate() {
            let before = (0..64)
                .filter(|&o| keys[o] < keys[i] || (keys[o] == keys[i] && o < i))
                .count();
            assert_eq!(*k, before >= 40);
            pruned += !*k as usize;
        }
        assert_eq!(pruned, 40);
        layout(32, 20, 2).decide(&keys, 32, &mut counted, &mut order);
        for j in 0..2 {
            let column: Vec<u64> = (0..32).map(|i| keys[i * 2 + j]).collect();
            let mut expect = vec![false; 32];
            layout(32, 20, 1).decide(&column, 32, &mut expect, &mut order);
            let got: Vec<bool> = (0..32).map(|i| counted[i * 2 + j]).collect();
            assert_eq!(got, expect);
        }
    }

    /// The SSE2 kernel of blocks of four against the scalar ranking, on keys with many ties
    /// (a few distinct magnitudes, both signs, zeros of both signs) for every `prune`.
    #[test]
    fn blocks_of_four_match_the_scalar_ranking() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (kind, size) in [(Kind::Float, 4), (Kind::Half, 2), (Kind::BFloat16, 2)] {
            let (inf, _) = infinity(kind);
            // 4099 blocks: the 16-bit kernel's last odd block included.
            let src: Vec<u8> = (0..4099 * 4)
                .flat_map(|_| {
                    let r = next();
                    let magnitude = [0, 1, 2, 3, inf - 1][(r % 5) as usize] << (r >> 8 & 1);
                    let bits = magnitude.min(inf - 1) | (r >> 16 & 1) << (8 * size - 1);
                    bits.to_le_bytes()[..size].to_vec()
                })
                .collect();
            for prune in 0..=4 {
                let (mut fast, mut slow) = (vec![7u8; src.len()], vec![9u8; src.len()]);
                let z = mask_blocks4(size, prune, &src, &mut fast);
                let expect = match size {
                    4 => mask_blocks::<4, 4>(&src, &mut slow, inf, prune),
                    _ => mask_blocks::<2, 4>(&src, &mut slow, inf, prune),
                };
                if cfg!(target_arch = "x86_64") {
                    assert_eq!(z, Some(expect), "{kind:?} prune {prune}");
                    assert!(fast == slow, "{kind:?} prune {prune}");
                }
            }
        }
    }

    #[test]
    fn keys_order_like_magnitudes() {
        let values = [
            -0.0f32,
            0.0,
            1.5,
            -1.5,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            1e-40,
        ];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut k = Vec::new();
        keys(&bytes, Kind::Float, &mut k);
        assert_eq!(k[0], k[1]);
        assert_eq!(k[2], k[3]);
        assert!(k[7] < k[2] && k[2] < k[4] && k[4] < k[5]);
        assert_eq!(k[5], k[6]);
    }
}
