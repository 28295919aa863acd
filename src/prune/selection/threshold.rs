//! The streamed selection: the radix select's threshold over raw little-endian data (the
//! tensors of a memory-mapped file), and the decision it makes for each entry, applied while a
//! tensor is written out. One idea: the same entries [`super::zero_smallest`] zeroes, tie rule
//! included, with no mask in memory.

use super::across::Across;
use super::keys::read_f64;
use super::radix::{is_wide, kth_key, kth_key_across};
use super::view::{element_size, Chunk, RawScores, View, CHUNK};
use crate::error::Result;
use tch::Kind;

/// The outcome of [`smallest_threshold`]: which entries of the parts to prune, decided entry by
/// entry in order with [`Threshold::keep`]. The same entries [`zero_smallest`] zeroes in
/// `out` tensors, tie rule included, without any mask in memory.
#[derive(Clone, Debug)]
pub(crate) struct Threshold {
    /// Live keys below it are pruned; `None`: nothing is.
    key: Option<u64>,
    wide: bool,
    /// How many of the entries equal to `key` are still to be pruned, first come first served.
    ties: u64,
}

/// Finds, for the `k` smallest magnitudes across `parts` (`k` at most their total size), the
/// threshold key and how many entries tied with it are pruned. Reads each part
/// `passes` times (two for f32 and f16, one for bf16, four with f64), holds nothing of their
/// size. Errors on parts [`RawScores::usable`] refuses.
pub(crate) fn smallest_threshold(parts: &[RawScores<'_>], k: i64) -> Result<Threshold> {
    let views = parts
        .iter()
        .map(View::raw)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            crate::error::PruneError::NotStreamable(
                "a streamed selection needs aligned f32, f64, f16 or bf16 data".into(),
            )
        })?;
    let wide = is_wide(&views);
    if k <= 0 {
        return Ok(Threshold {
            key: None,
            wide,
            ties: 0,
        });
    }
    let (key, below) = kth_key(&views, k, wide);
    Ok(Threshold {
        key: Some(key),
        wide,
        ties: k as u64 - below,
    })
}

/// [`smallest_threshold`] over the parts of every rank (`k` counted over their union): the
/// global threshold key, and in [`Threshold::ties`] how many tied entries the union prunes.
/// Which of them each rank takes is the caller's: the tied entries go in the union's order,
/// which only the caller knows (see [`Threshold::ties_in`] and [`Threshold::with_ties`]).
/// Every rank calls it.
pub(crate) fn smallest_threshold_across(
    parts: &[RawScores<'_>],
    k: i64,
    across: &dyn Across,
) -> Result<Threshold> {
    let views = parts.iter().map(View::raw).collect::<Option<Vec<_>>>();
    // Whether any rank refused its parts, known to all before the selection's collectives.
    if across.any(views.is_none())? {
        return Err(crate::error::PruneError::NotStreamable(match views {
            None => "a streamed selection needs aligned f32, f64, f16 or bf16 data".into(),
            Some(_) => "another rank's tensors cannot take part in the streamed selection".into(),
        }));
    }
    let views = views.unwrap_or_default();
    let wide = across.any(is_wide(&views))?;
    if k <= 0 {
        return Ok(Threshold {
            key: None,
            wide,
            ties: 0,
        });
    }
    let (key, below) = kth_key_across(&views, k, wide, across)?;
    Ok(Threshold {
        key: Some(key),
        wide,
        ties: k as u64 - below,
    })
}

impl Threshold {
    /// How many entries of `part` tie with the threshold (one pass over it).
    pub(crate) fn ties_in(&self, part: &RawScores<'_>) -> u64 {
        let (Some(threshold), Some(view)) = (self.key, View::raw(part)) else {
            return 0;
        };
        let mut n = 0;
        for chunk in view.chunks() {
            chunk.for_each_live(self.wide, |_, key| n += (key == threshold) as u64);
        }
        n
    }

    /// The same threshold with `ties` tied entries left to prune (to hand each part its share
    /// when parts are visited in another order than the selection's).
    pub(crate) fn with_ties(&self, ties: u64) -> Threshold {
        Threshold {
            ties,
            ..self.clone()
        }
    }

    pub(crate) fn ties(&self) -> u64 {
        self.ties
    }

    /// Sets `keep[i]` to whether entry `start + i` of `part` survives, for the entries that
    /// follow in order, consuming the tie allowance as ties are met.
    pub(crate) fn keep(&mut self, part: &RawScores<'_>, start: usize, keep: &mut [bool]) {
        let Some(threshold) = self.key else {
            keep.fill(true);
            return;
        };
        let Some(view) = View::raw(part) else {
            keep.fill(true);
            return;
        };
        let chunk_end = (start + keep.len()).min(view.numel);
        let mut offset = start;
        while offset < chunk_end {
            let end = (offset + CHUNK).min(chunk_end);
            let chunk = Chunk {
                view: &view,
                start: offset,
                end,
            };
            let ties = &mut self.ties;
            chunk.for_each_live(self.wide, |i, key| {
                keep[i - start] = if key < threshold {
                    false
                } else if key == threshold && *ties > 0 {
                    *ties -= 1;
                    false
                } else {
                    true
                };
            });
            offset = end;
        }
    }

    /// What [`keep`](Self::keep) decides for entries `start..start + n` of `part`, applied:
    /// writes each entry times 1 (kept) or 0 (pruned) into `out` (`n` entries of the part's
    /// dtype), consuming the tie allowance the same way, and returns the exact zeros written.
    /// Returns `None`, having consumed and written nothing, when the entries hold an infinity or
    /// a NaN: those products are libtorch's to make (NaN payloads, `inf * 0`). For finite
    /// values the product by 1 is the value itself and the product by 0 the zero of the value's
    /// sign, in every IEEE format and rounding: the bytes libtorch's `mul` writes, without a
    /// float operation or a thread pool.
    pub(crate) fn apply_finite(
        &mut self,
        part: &RawScores<'_>,
        start: usize,
        out: &mut [u8],
    ) -> Option<u64> {
        let size = element_size(part.kind)?;
        let n = out.len() / size;
        let src = part.bytes.get(start * size..(start + n) * size)?;
        let (below, tie) = self.native_bound(part.kind)?;
        let ties = &mut self.ties;
        // SAFETY: `src` and `out` hold `n` whole elements; `src` is aligned to the element size
        // (checked by `View::raw` when the threshold was found) and `out` by the caller.
        unsafe {
            match part.kind {
                Kind::Float => mask_finite::<u32>(src, out, 0x7f80_0000, below, tie, ties),
                Kind::Double => {
                    mask_finite::<u64>(src, out, 0x7ff0_0000_0000_0000, below, tie, ties)
                }
                Kind::Half => mask_finite::<u16>(src, out, 0x7c00, below, tie, ties),
                Kind::BFloat16 => mask_finite::<u16>(src, out, 0x7f80, below, tie, ties),
                _ => None,
            }
        }
    }

    /// The threshold in `kind`'s own magnitude bits (the value's bits with the sign cleared,
    /// which order like the magnitudes for finite values): finite entries whose bits are below
    /// the first are pruned, and those equal to the second (when some finite value has exactly
    /// the threshold key) are the ties. Found by bisection over the key of each bit pattern,
    /// computed as the selection computes it, so both decide alike.
    fn native_bound(&self, kind: Kind) -> Option<(u64, Option<u64>)> {
        let infinity: u64 = match kind {
            Kind::Float => 0x7f80_0000,
            Kind::Double => 0x7ff0_0000_0000_0000,
            Kind::Half => 0x7c00,
            Kind::BFloat16 => 0x7f80,
            _ => return None,
        };
        let Some(threshold) = self.key else {
            // Nothing pruned: every finite entry is at or above a bound of 0 with no ties.
            return Some((0, None));
        };
        let wide = self.wide;
        let key = |bits: u64| -> u64 {
            let bytes = bits.to_le_bytes();
            // SAFETY: `bytes` holds at least one element of `kind` (at most 8 bytes).
            let x = unsafe { read_f64(bytes.as_ptr(), kind, 0) };
            if wide {
                x.abs().to_bits()
            } else {
                (x as f32).abs().to_bits() as u64
            }
        };
        // The smallest magnitude bits, up to infinity's, whose key reaches the threshold.
        let (mut lo, mut hi) = (0u64, infinity);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(mid) >= threshold {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let tie = (lo < infinity && key(lo) == threshold).then_some(lo);
        Some((lo, tie))
    }
}

/// The unsigned integer holding one element's bits.
trait Bits:
    Copy + Eq + Ord + std::ops::BitAnd<Output = Self> + std::ops::Not<Output = Self> + Default
{
    /// Every bit but the sign.
    const MAGNITUDE: Self;
    fn from_u64(x: u64) -> Self;
}

impl Bits for u16 {
    const MAGNITUDE: Self = 0x7fff;
    fn from_u64(x: u64) -> Self {
        x as u16
    }
}

impl Bits for u32 {
    const MAGNITUDE: Self = 0x7fff_ffff;
    fn from_u64(x: u64) -> Self {
        x as u32
    }
}

impl Bits for u64 {
    const MAGNITUDE: Self = u64::MAX >> 1;
    fn from_u64(x: u64) -> Self {
        x
    }
}

/// [`Threshold::apply_finite`] on elements of `T`: `None` if any element has the exponent
/// `exponent` (all ones: infinity or NaN), else the masked copy and its count of zeros.
///
/// # Safety
/// `src` and `out` must hold the same whole number of `T` elements, both aligned to `T`.
unsafe fn mask_finite<T: Bits>(
    src: &[u8],
    out: &mut [u8],
    exponent: u64,
    below: u64,
    tie: Option<u64>,
    ties: &mut u64,
) -> Option<u64> {
    let n = src.len() / std::mem::size_of::<T>();
    let src = std::slice::from_raw_parts(src.as_ptr() as *const T, n);
    let out = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut T, n);
    let (infinity, exponent) = (exponent, T::from_u64(exponent));
    // No early exit: a branch-free scan vectorizes, and special values are rare.
    if src
        .iter()
        .fold(false, |seen, &b| seen | (b & exponent == exponent))
    {
        return None;
    }
    let (magnitude, below, zero) = (T::MAGNITUDE, T::from_u64(below), T::default());
    let sign = !magnitude;
    // No finite magnitude has infinity's bits: without a tie key, nothing is counted as tied.
    let tie = T::from_u64(tie.unwrap_or(infinity));
    // Everything below the bound goes, ties kept for now: one branch-free pass, vectorized.
    let (mut zeros, mut tied) = (0u64, 0u64);
    for (o, &b) in out.iter_mut().zip(src) {
        let m = b & magnitude;
        let v = if m < below { b & sign } else { b };
        zeros += (v & magnitude == zero) as u64;
        tied += (m == tie) as u64;
        *o = v;
    }
    // Then the first tied entries, in order, while the allowance lasts (rarely more than a few).
    if tied > 0 && *ties > 0 {
        for (o, &b) in out.iter_mut().zip(src) {
            if *ties == 0 {
                break;
            }
            if b & magnitude == tie {
                *o = b & sign;
                // A tie at magnitude 0 was already counted as a zero.
                zeros += (tie != zero) as u64;
                *ties -= 1;
            }
        }
    }
    Some(zeros)
}
