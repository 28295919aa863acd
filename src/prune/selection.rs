//! Magnitude selection at scale: the `k` smallest magnitudes among the live entries of one or
//! many tensors, found by a radix select over the magnitudes' bit patterns, streaming each tensor
//! in place. No concatenation, no sort, no index tensors: the extra memory is a few histograms,
//! whatever the model's size (PyTorch's `global_unstructured` concatenates every score and mask
//! and runs `topk` with int64 indices).
//!
//! The result is the set PyTorch's `topk(largest=False)` selects whenever the magnitudes do not
//! tie at the boundary. Where they do, exactly `k` entries are still selected, and the tie is
//! broken by order: the tied entries that come first (earlier tensor, then lower flat index) are
//! pruned first, on every device. (`topk`'s own choice among equal values is unspecified.)

use crate::error::Result;
use std::thread;
use tch::{Device, Kind, Tensor};

/// One tensor taking part in a selection.
pub(crate) struct Part<'a> {
    /// Ranked by magnitude.
    pub scores: &'a Tensor,
    /// Only entries equal to 1 here take part (PyTorch's "still unpruned"); all when `None`.
    pub live: Option<&'a Tensor>,
    /// Receives a 0 at every selected entry; nothing else is written.
    pub out: &'a Tensor,
}

const DIGIT_BITS: u32 = 16;
const BUCKETS: usize = 1 << DIGIT_BITS;
/// Small enough for a chunk's keys to stay in cache between decoding and use.
const CHUNK: usize = 1 << 16;
/// Marks an entry that does not take part; no magnitude has this key (its sign bit is clear).
const NOT_LIVE: u64 = u64::MAX;

thread_local! {
    /// Each thread's buffer of decoded keys, reused from chunk to chunk.
    static KEYS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Zeroes, in each part's `out`, the `k` live entries of smallest magnitude across all parts
/// (`k` at most the number of live entries). Contiguous CPU tensors of the usual float dtypes
/// go through the radix select; anything else (GPU tensors, other dtypes, strided views)
/// through [`zero_smallest_by_ops`], which selects the same entries with tensor operations.
pub(crate) fn zero_smallest(parts: &[Part<'_>], k: i64) -> Result<()> {
    if k <= 0 {
        return Ok(());
    }
    match parts.iter().map(View::of).collect::<Option<Vec<_>>>() {
        Some(views) => {
            radix_select(&views, k);
            Ok(())
        }
        None => zero_smallest_by_ops(parts, k).map(drop),
    }
}

/// What [`zero_smallest_by_ops`] did: full passes over the parts' entries, and device syncs
/// (results read on the host, each of which waits for the device to finish its queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpsCounts {
    pub passes: u32,
    pub syncs: u32,
}

/// The same selection with libtorch operations, on any device: the radix select of the CPU
/// path, with each pass's histogram summed on the device over every part (a `scatter_add` of
/// the keys' next 16-bit digit) and read once. The keys are the magnitudes' bit patterns (in
/// f32, or f64 when a score is f64), which order like the magnitudes, NaN above +inf as in
/// `topk`. Then one read of each part's count of entries tied at the threshold, and a last
/// pass that zeroes, with the same tie rule. In all: 2 digit passes for f32 keys (4 for f64),
/// plus 2, and one sync per digit pass plus one, whatever the number of tensors. Memory: one
/// tensor's temporaries at a time (its keys, and an int64 index per entry).
pub(crate) fn zero_smallest_by_ops(parts: &[Part<'_>], k: i64) -> Result<OpsCounts> {
    let mut counts = OpsCounts::default();
    let Some(first) = parts.first() else {
        return Ok(counts);
    };
    if k <= 0 {
        return Ok(counts);
    }
    let device = first.out.device();
    let wide = parts.iter().any(|p| p.scores.kind() == Kind::Double);
    let (float, int, digits) = if wide {
        (Kind::Double, Kind::Int64, 4)
    } else {
        (Kind::Float, Kind::Int, 2)
    };
    let keys = |p: &Part<'_>| -> Result<(Tensor, Option<Tensor>)> {
        let key = p
            .scores
            .f_abs()?
            .f_to_kind(float)?
            .f_contiguous()?
            .f_view_dtype(int)?
            .f_reshape([-1])?;
        // `None`: every entry takes part, and nothing needs masking.
        let live = match p.live {
            Some(l) => Some(l.f_eq(1)?.f_reshape([-1])?),
            None => None,
        };
        Ok((key, live))
    };
    let and = |t: Tensor, other: Option<&Tensor>| -> Result<Tensor> {
        Ok(match other {
            Some(other) => t.f_logical_and(other)?,
            None => t,
        })
    };

    // Most significant digit first: after each pass, `prefix` holds the digits of the k-th
    // smallest key found so far and `below` how many live keys are smaller.
    let (mut prefix, mut below) = (0i64, 0i64);
    for pass in 0..digits {
        let shift = (digits - 1 - pass) * DIGIT_BITS;
        // One bucket per digit value, and one more for the keys that do not take part.
        let histogram = Tensor::f_zeros([BUCKETS as i64 + 1], (Kind::Int64, device))?;
        for p in parts {
            let (key, live) = keys(p)?;
            let digit = key
                .f_bitwise_right_shift_tensor_scalar(shift as i64)?
                .f_bitwise_and(BUCKETS as i64 - 1)?;
            // Only keys whose higher digits are the prefix found so far.
            let same_prefix = match pass {
                0 => None,
                _ => {
                    let high = shift as i64 + DIGIT_BITS as i64;
                    Some(
                        key.f_bitwise_right_shift_tensor_scalar(high)?
                            .f_eq(prefix >> high)?,
                    )
                }
            };
            let counted = match (live, same_prefix) {
                (Some(live), Some(same)) => Some(live.f_logical_and(&same)?),
                (one, other) => one.or(other),
            };
            let bucket = match counted {
                Some(c) => digit.f_where_scalarother(&c, BUCKETS as i64)?,
                None => digit,
            }
            .f_to_kind(Kind::Int64)?;
            let ones =
                Tensor::f_ones([1], (Kind::Int64, device))?.f_expand(bucket.size(), false)?;
            let _ = histogram
                .shallow_clone()
                .f_scatter_add_(0, &bucket, &ones)?;
        }
        counts.passes += 1;
        let histogram = Vec::<i64>::try_from(&histogram.f_narrow(0, 0, BUCKETS as i64)?)?;
        counts.syncs += 1;
        let mut seen = below;
        let digit = histogram
            .iter()
            .position(|&n| {
                seen += n;
                seen >= k
            })
            .unwrap_or(BUCKETS - 1);
        below = seen - histogram[digit];
        prefix |= (digit as i64) << shift;
    }
    let threshold = prefix;

    // Each part's entries tied at the threshold, read at once.
    let mut tied = Vec::with_capacity(parts.len());
    for p in parts {
        let (key, live) = keys(p)?;
        tied.push(and(key.f_eq(threshold)?, live.as_ref())?.f_sum(Kind::Int64)?);
    }
    let tied = Vec::<i64>::try_from(&Tensor::f_stack(&tied, 0)?)?;
    counts.passes += 1;
    counts.syncs += 1;

    // Everything below the threshold goes; of the entries equal to it, the first `k - below`
    // in order (earlier part, then lower index).
    let mut budget = k - below;
    for (p, n) in parts.iter().zip(tied) {
        let (key, live) = keys(p)?;
        let mut pruned = and(key.f_lt(threshold)?, live.as_ref())?;
        let take = budget.min(n);
        if take > 0 {
            let ties = and(key.f_eq(threshold)?, live.as_ref())?;
            let ties = if take == n {
                ties
            } else {
                // The first `take` of them: their running count is at most `take`.
                let first = ties.f_cumsum(0, Kind::Int64)?.f_le(take)?;
                ties.f_logical_and(&first)?
            };
            pruned = pruned.f_logical_or(&ties)?;
            budget -= take;
        }
        let _ = p.out.f_view([-1])?.f_masked_fill_(&pruned, 0)?;
    }
    counts.passes += 1;
    Ok(counts)
}

/// The radix select of [`zero_smallest`] on CPU views.
fn radix_select(views: &[View], k: i64) {
    let wide = is_wide(views);
    let (threshold, below) = kth_key(views, k, wide);
    let chunks = chunks(views);

    // Everything below the threshold goes, in parallel; of the entries equal to it, the first
    // `k - below` in order, which needs their count per chunk first.
    let ties = parallel_map(&chunks, |c| {
        let mut ties = 0u64;
        c.for_each_live(wide, |i, key| {
            if key < threshold {
                c.zero(i);
            } else if key == threshold {
                ties += 1;
            }
        });
        ties
    });
    let mut budget = k as u64 - below;
    for (chunk, &n) in chunks.iter().zip(&ties) {
        if budget == 0 {
            break;
        }
        if n == 0 {
            continue;
        }
        chunk.for_each_live(wide, |i, key| {
            if key == threshold && budget > 0 {
                chunk.zero(i);
                budget -= 1;
            }
        });
    }
}

/// Compare in the precision PyTorch's concatenation promotes to: f64 if any score is f64, else
/// f32 (which holds f16 and bf16 exactly).
fn is_wide(views: &[View]) -> bool {
    views.iter().any(|v| v.score_kind == Kind::Double)
}

/// How many chunks a histogram pass hands to its threads at a time: bounds the chunk list's
/// memory whatever the number and size of the tensors.
const BATCH: usize = 1 << 12;

/// The key of the `k`-th smallest live magnitude (`k >= 1`) and how many live keys are smaller:
/// a radix select, most significant digit first, one histogram pass per digit.
fn kth_key(views: &[View], k: i64, wide: bool) -> (u64, u64) {
    let digits = if wide { 4 } else { 2 };
    // bf16 widened to f32 has a zero low half: its last digit is known without a pass.
    let passes = if !wide && views.iter().all(|v| v.score_kind == Kind::BFloat16) {
        digits - 1
    } else {
        digits
    };
    // After each pass, `prefix` holds the digits of the k-th smallest key found so far and
    // `below` how many live keys are smaller.
    let (mut prefix, mut below) = (0u64, 0u64);
    for pass in 0..passes {
        let shift = (digits - 1 - pass) * DIGIT_BITS;
        let mut histogram = vec![0u64; BUCKETS];
        for_each_batch(views, |batch| {
            let part = parallel_sum(batch, |c, h| {
                // Only keys whose higher digits are the prefix found so far.
                let high = (pass > 0).then(|| (shift + DIGIT_BITS, prefix >> (shift + DIGIT_BITS)));
                c.count_digits(wide, shift, high, h);
            });
            histogram.iter_mut().zip(part).for_each(|(a, x)| *a += x);
        });
        let mut seen = below;
        let digit = histogram
            .iter()
            .position(|&n| {
                seen += n;
                seen >= k as u64
            })
            .unwrap_or(BUCKETS - 1);
        below = seen - histogram[digit];
        prefix |= (digit as u64) << shift;
    }
    (prefix, below)
}

/// Calls `f` on the chunks of all views in order, at most [`BATCH`] at a time.
fn for_each_batch<'a>(views: &'a [View], mut f: impl FnMut(&[Chunk<'a>])) {
    let mut batch = Vec::with_capacity(BATCH);
    for view in views {
        for start in (0..view.numel).step_by(CHUNK) {
            batch.push(Chunk {
                view,
                start,
                end: (start + CHUNK).min(view.numel),
            });
            if batch.len() == BATCH {
                f(&batch);
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        f(&batch);
    }
}

/// The raw little-endian data of one contiguous tensor taking part in a streamed selection
/// (e.g. a tensor of a memory-mapped file), read in place.
#[derive(Clone, Copy)]
pub(crate) struct RawScores<'a> {
    pub bytes: &'a [u8],
    pub kind: Kind,
}

impl RawScores<'_> {
    /// Whether the selection reads these scores in place: f32, f64, f16 or bf16, whole
    /// elements, aligned to the element size.
    pub(crate) fn usable(&self) -> bool {
        View::raw(self).is_some()
    }
}

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
            crate::error::PruneError::InvalidArgument(
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

impl Threshold {
    /// How many entries of `part` tie with the threshold (one pass over it).
    pub(crate) fn ties_in(&self, part: &RawScores<'_>) -> u64 {
        let (Some(threshold), Some(view)) = (self.key, View::raw(part)) else {
            return 0;
        };
        let mut n = 0;
        for start in (0..view.numel).step_by(CHUNK) {
            let chunk = Chunk {
                view: &view,
                start,
                end: (start + CHUNK).min(view.numel),
            };
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

/// Raw access to one part. The tensors are kept alive by the caller for the whole selection.
struct View {
    scores: *const u8,
    score_kind: Kind,
    live: Option<(*const u8, Kind)>,
    out: *mut u8,
    out_size: usize,
    numel: usize,
}

// SAFETY: the pointers refer to tensors the caller keeps alive and does not touch during the
// selection; threads read disjoint or shared-read-only ranges and write disjoint ranges of `out`.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A view of raw scores only (no `out`: for thresholds and streamed decisions).
    fn raw(part: &RawScores<'_>) -> Option<View> {
        let size = element_size(part.kind)?;
        let supported = matches!(
            part.kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        let aligned = part.bytes.is_empty() || (part.bytes.as_ptr() as usize).is_multiple_of(size);
        if !supported || !aligned || !part.bytes.len().is_multiple_of(size) {
            return None;
        }
        Some(View {
            scores: part.bytes.as_ptr(),
            score_kind: part.kind,
            live: None,
            out: std::ptr::null_mut(),
            out_size: 0,
            numel: part.bytes.len() / size,
        })
    }

    fn of(part: &Part<'_>) -> Option<View> {
        let numel = part.scores.numel();
        let usable =
            |t: &Tensor| t.device() == Device::Cpu && t.is_contiguous() && t.numel() == numel;
        if !usable(part.scores) || !usable(part.out) || !part.live.is_none_or(usable) {
            return None;
        }
        let score_kind = part.scores.kind();
        if !matches!(
            score_kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return None;
        }
        let live = match part.live {
            Some(l) => {
                one_pattern(l.kind())?;
                Some((l.data_ptr() as *const u8, l.kind()))
            }
            None => None,
        };
        let out_size = element_size(part.out.kind())?;
        Some(View {
            scores: part.scores.data_ptr() as *const u8,
            score_kind,
            live,
            out: part.out.data_ptr() as *mut u8,
            out_size,
            numel,
        })
    }
}

/// A range of one part's entries: the unit of work of a thread.
struct Chunk<'a> {
    view: &'a View,
    start: usize,
    end: usize,
}

impl Chunk<'_> {
    /// Calls `f(index, key)` for each live entry in order; `key` orders magnitudes like the
    /// promoted dtype does (NaN above +inf, as `topk` ranks it).
    fn for_each_live(&self, wide: bool, mut f: impl FnMut(usize, u64)) {
        KEYS.with_borrow_mut(|keys| {
            self.keys(wide, keys);
            for (offset, &key) in keys.iter().enumerate() {
                if key != NOT_LIVE {
                    f(self.start + offset, key);
                }
            }
        })
    }

    /// Adds to `h` the digit at `shift` of each live key whose bits above `high.0` are
    /// `high.1` (of every live key when `high` is `None`). Raw f32, f16 and bf16 data (the
    /// streamed selections) is read straight from its bits, without the keys buffer.
    fn count_digits(&self, wide: bool, shift: u32, high: Option<(u32, u64)>, h: &mut [u64]) {
        let v = self.view;
        let n = self.end - self.start;
        #[inline(always)]
        fn add(
            keys: impl Iterator<Item = u64>,
            shift: u32,
            high: Option<(u32, u64)>,
            h: &mut [u64],
        ) {
            let mask = BUCKETS as u64 - 1;
            match high {
                None => keys.for_each(|key| h[((key >> shift) & mask) as usize] += 1),
                Some((bits, prefix)) => keys.for_each(|key| {
                    if key >> bits == prefix {
                        h[((key >> shift) & mask) as usize] += 1;
                    }
                }),
            }
        }
        // SAFETY: [start, end) lies within the view's `numel` elements of its dtype.
        unsafe {
            match (v.score_kind, v.live, wide) {
                (Kind::Float, None, false) => {
                    let x = std::slice::from_raw_parts((v.scores as *const u32).add(self.start), n);
                    add(x.iter().map(|&b| (b & 0x7fff_ffff) as u64), shift, high, h);
                }
                (Kind::Half | Kind::BFloat16, None, false) => {
                    let table = key_table(v.score_kind);
                    let x = std::slice::from_raw_parts((v.scores as *const u16).add(self.start), n);
                    add(x.iter().map(|&b| table[b as usize] as u64), shift, high, h);
                }
                _ => self.for_each_live(wide, |_, key| add(std::iter::once(key), shift, high, h)),
            }
        }
    }

    /// The chunk's keys, `NOT_LIVE` where the entry does not take part: decoded in one tight
    /// loop per dtype, so the passes over them stay simple.
    fn keys(&self, wide: bool, keys: &mut Vec<u64>) {
        let v = self.view;
        let n = self.end - self.start;
        keys.clear();
        // SAFETY: [start, end) lies within the tensors' `numel` elements of their dtypes.
        unsafe {
            match (v.score_kind, wide) {
                (Kind::Float, false) => {
                    let x = std::slice::from_raw_parts((v.scores as *const f32).add(self.start), n);
                    keys.extend(x.iter().map(|x| x.abs().to_bits() as u64));
                }
                (Kind::Float, true) => {
                    let x = std::slice::from_raw_parts((v.scores as *const f32).add(self.start), n);
                    keys.extend(x.iter().map(|&x| (x as f64).abs().to_bits()));
                }
                (Kind::Half | Kind::BFloat16, false) => {
                    let table = key_table(v.score_kind);
                    let x = std::slice::from_raw_parts((v.scores as *const u16).add(self.start), n);
                    keys.extend(x.iter().map(|&b| table[b as usize] as u64));
                }
                (kind, _) => keys.extend((self.start..self.end).map(|i| {
                    let x = read_f64(v.scores, kind, i);
                    if wide {
                        x.abs().to_bits()
                    } else {
                        (x as f32).abs().to_bits() as u64
                    }
                })),
            }
            match v.live {
                None => {}
                Some((ptr, Kind::Float)) => {
                    let live = std::slice::from_raw_parts((ptr as *const f32).add(self.start), n);
                    for (k, &l) in keys.iter_mut().zip(live) {
                        if l != 1.0 {
                            *k = NOT_LIVE;
                        }
                    }
                }
                Some((ptr, Kind::Bool)) => {
                    let live = std::slice::from_raw_parts(ptr.add(self.start), n);
                    for (k, &l) in keys.iter_mut().zip(live) {
                        if l != 1 {
                            *k = NOT_LIVE;
                        }
                    }
                }
                Some((ptr, kind)) => {
                    for (offset, k) in keys.iter_mut().enumerate() {
                        if !is_one(ptr, kind, self.start + offset) {
                            *k = NOT_LIVE;
                        }
                    }
                }
            }
        }
    }

    /// Zero is the all-zero bit pattern in every supported dtype.
    #[inline(always)]
    fn zero(&self, i: usize) {
        let v = self.view;
        // SAFETY: i < numel; each index is written by exactly one thread.
        unsafe {
            match v.out_size {
                1 => *v.out.add(i) = 0,
                2 => (v.out as *mut u16).add(i).write_unaligned(0),
                4 => (v.out as *mut u32).add(i).write_unaligned(0),
                _ => (v.out as *mut u64).add(i).write_unaligned(0),
            }
        }
    }
}

fn chunks(views: &[View]) -> Vec<Chunk<'_>> {
    views
        .iter()
        .flat_map(|view| {
            (0..view.numel).step_by(CHUNK).map(move |start| Chunk {
                view,
                start,
                end: (start + CHUNK).min(view.numel),
            })
        })
        .collect()
}

/// Threads for a selection over `chunks`: libtorch's intra-op count, but one for small inputs,
/// where starting threads costs more than it saves.
fn threads(chunks: usize) -> usize {
    if chunks < 32 {
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

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Runs `f` on every chunk, spread over libtorch's intra-op thread count; results in chunk order.
fn parallel_map<T: Send>(chunks: &[Chunk<'_>], f: impl Fn(&Chunk<'_>) -> T + Sync) -> Vec<T> {
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
/// from the disk (a memory-mapped file not in the page cache) are read by one thread.
fn parallel_sum(chunks: &[Chunk<'_>], f: impl Fn(&Chunk<'_>, &mut [u64]) + Sync) -> Vec<u64> {
    let n = match threads(chunks.len()) {
        n if n > 1 && resident(chunks) => n,
        _ => 1,
    };
    if n == 1 {
        let mut histogram = vec![0u64; BUCKETS];
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
                    let mut histogram = vec![0u64; BUCKETS];
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
    partial.into_iter().fold(vec![0u64; BUCKETS], |mut acc, h| {
        acc.iter_mut().zip(h).for_each(|(a, x)| *a += x);
        acc
    })
}

/// The f32 key of every f16 (or bf16) bit pattern, made by the general formula below (read
/// widened, then `(x as f32).abs()`): the same keys, NaNs included, at one load each.
fn key_table(kind: Kind) -> &'static [u32] {
    static HALF: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    static BF16: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let make = move || -> Vec<u32> {
        (0..=u16::MAX)
            .map(|b| {
                let bytes = b.to_le_bytes();
                // SAFETY: two bytes, one element of a 16-bit float kind.
                let x = unsafe { read_f64(bytes.as_ptr(), kind, 0) };
                (x as f32).abs().to_bits()
            })
            .collect()
    };
    match kind {
        Kind::Half => HALF.get_or_init(make),
        _ => BF16.get_or_init(make),
    }
}

/// The size of an entry of `kind`, for the kinds the crate's files hold.
fn element_size(kind: Kind) -> Option<usize> {
    matches!(
        kind,
        Kind::Bool
            | Kind::Uint8
            | Kind::Int8
            | Kind::Half
            | Kind::BFloat16
            | Kind::Int16
            | Kind::Float
            | Kind::Int
            | Kind::Double
            | Kind::Int64
    )
    .then(|| kind.elt_size_in_bytes())
}

/// The bytes of the value 1 in `kind`, little-endian.
fn one_pattern(kind: Kind) -> Option<u64> {
    Some(match kind {
        Kind::Bool | Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 => 1,
        Kind::Half => 0x3C00,
        Kind::BFloat16 => 0x3F80,
        Kind::Float => 1f32.to_bits() as u64,
        Kind::Double => 1f64.to_bits(),
        _ => return None,
    })
}

/// Whether element `i` of a `kind` array equals 1.
///
/// # Safety
/// `ptr` must point to at least `i + 1` elements of `kind`, one of those `one_pattern` knows.
unsafe fn is_one(ptr: *const u8, kind: Kind, i: usize) -> bool {
    let size = element_size(kind).unwrap_or(1);
    let mut bytes = [0u8; 8];
    std::ptr::copy_nonoverlapping(ptr.add(i * size), bytes.as_mut_ptr(), size);
    Some(u64::from_le_bytes(bytes)) == one_pattern(kind)
}

/// Element `i` of a floating-point array, widened exactly to f64.
///
/// # Safety
/// `ptr` must point to at least `i + 1` elements of `kind` (f32, f64, f16 or bf16).
unsafe fn read_f64(ptr: *const u8, kind: Kind, i: usize) -> f64 {
    match kind {
        Kind::Double => (ptr as *const f64).add(i).read_unaligned(),
        Kind::Half => f16_to_f32((ptr as *const u16).add(i).read_unaligned()) as f64,
        Kind::BFloat16 => {
            f32::from_bits(((ptr as *const u16).add(i).read_unaligned() as u32) << 16) as f64
        }
        _ => (ptr as *const f32).add(i).read_unaligned() as f64,
    }
}

/// IEEE half to single precision, exactly (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24, exact in f32.
            let magnitude = m as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The radix select on CPU and the tensor-operation path (what GPU tensors take) prune the
    /// same entries, ties included.
    #[test]
    fn both_paths_select_the_same_entries() {
        tch::manual_seed(5);
        for kinds in [
            [Kind::Float, Kind::Float],
            [Kind::Double, Kind::Float],
            [Kind::Half, Kind::BFloat16],
        ] {
            for ties in [false, true] {
                let scores: Vec<Tensor> = [[40, 30], [7, 9]]
                    .iter()
                    .zip(kinds)
                    .map(|(shape, kind)| {
                        let t = Tensor::randn(shape, (Kind::Float, Device::Cpu));
                        if ties { t.round() } else { t }.to_kind(kind)
                    })
                    .collect();
                let live: Vec<Tensor> = scores
                    .iter()
                    .map(|s| {
                        Tensor::rand(s.size(), (Kind::Float, Device::Cpu))
                            .gt(0.2)
                            .to_kind(Kind::Float)
                    })
                    .collect();
                let total: i64 = live
                    .iter()
                    .map(|l| l.sum(Kind::Int64).int64_value(&[]))
                    .sum();
                for k in [1, total / 3, total / 2, total] {
                    let run = |by_ops: bool| -> Vec<Tensor> {
                        let outs: Vec<Tensor> = live.iter().map(|l| l.copy()).collect();
                        let parts: Vec<Part<'_>> = scores
                            .iter()
                            .zip(&live)
                            .zip(&outs)
                            .map(|((scores, live), out)| Part {
                                scores,
                                live: Some(live),
                                out,
                            })
                            .collect();
                        if by_ops {
                            zero_smallest_by_ops(&parts, k).unwrap();
                        } else {
                            zero_smallest(&parts, k).unwrap();
                        }
                        outs
                    };
                    let (radix, ops) = (run(false), run(true));
                    for (a, b) in radix.iter().zip(&ops) {
                        assert!(a.equal(b), "{kinds:?} ties={ties} k={k}");
                    }
                    let pruned: i64 = live
                        .iter()
                        .zip(&radix)
                        .map(|(l, o)| (l - o).sum(Kind::Int64).int64_value(&[]))
                        .sum();
                    assert_eq!(pruned, k);
                }
            }
        }
    }

    /// Scores with NaN, infinities, signed zeros, subnormals and ties, in every float dtype;
    /// live masks as floats, booleans or absent: the tensor-operation path (what GPU tensors
    /// take) selects what the radix select selects, exactly `k` entries.
    #[test]
    fn both_paths_agree_on_special_values_and_every_live_mask() {
        tch::manual_seed(6);
        let special = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            1.0,
            -1.0,
            1.0,
        ];
        for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
            for live_kind in [None, Some(Kind::Float), Some(Kind::Bool)] {
                let noise = Tensor::randn([50], (Kind::Double, Device::Cpu)).round();
                let scores = Tensor::cat(&[Tensor::from_slice(&special), noise], 0)
                    .to_kind(kind)
                    .view([6, 10]);
                let live = live_kind.map(|k| {
                    Tensor::rand([6, 10], (Kind::Float, Device::Cpu))
                        .gt(0.3)
                        .to_kind(k)
                });
                let total = live.as_ref().map_or(60, |l| {
                    l.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
                });
                for k in [1, 2, 5, total / 2, total - 1, total] {
                    let run = |by_ops: bool| {
                        let out = Tensor::ones([6, 10], (Kind::Bool, Device::Cpu));
                        let part = Part {
                            scores: &scores,
                            live: live.as_ref(),
                            out: &out,
                        };
                        if by_ops {
                            zero_smallest_by_ops(&[part], k).unwrap();
                        } else {
                            zero_smallest(&[part], k).unwrap();
                        }
                        out
                    };
                    let (radix, ops) = (run(false), run(true));
                    assert!(radix.equal(&ops), "{kind:?} live={live_kind:?} k={k}");
                    let zeros = 60 - radix.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(zeros, k, "{kind:?} live={live_kind:?}");
                }
            }
        }
    }

    /// The bisection the tensor-operation path used before (a device sync per tensor per
    /// step): kept to check that the radix select on the device selects the same entries and
    /// to time both side by side.
    fn bisection(parts: &[Part<'_>], k: i64) -> OpsCounts {
        let mut counts = OpsCounts::default();
        let keys = |p: &Part<'_>| {
            let key = p
                .scores
                .abs()
                .to_kind(Kind::Float)
                .contiguous()
                .view_dtype(Kind::Int)
                .reshape([-1]);
            (key, p.live.map(|l| l.eq(1).reshape([-1])))
        };
        let and_live = |t: Tensor, live: &Option<Tensor>| match live {
            Some(live) => t.logical_and(live),
            None => t,
        };
        let mut count = |pred: &dyn Fn(&Tensor) -> Tensor| -> i64 {
            counts.passes += 1;
            parts
                .iter()
                .map(|p| {
                    let (key, live) = keys(p);
                    counts.syncs += 1;
                    and_live(pred(&key), &live)
                        .sum(Kind::Int64)
                        .int64_value(&[])
                })
                .sum()
        };
        let (mut lo, mut hi) = (0i64, i32::MAX as i64);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if count(&|key| key.le(mid)) >= k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let threshold = lo;
        let mut budget = k - count(&|key| key.lt(threshold));
        for p in parts {
            let (key, live) = keys(p);
            let mut out = p.out.view([-1]);
            let _ = out.masked_fill_(&and_live(key.lt(threshold), &live), 0);
            if budget > 0 {
                let ties = and_live(key.eq(threshold), &live).nonzero().reshape([-1]);
                counts.syncs += 1;
                let take = budget.min(ties.size()[0]);
                let _ = out.index_fill_(0, &ties.narrow(0, 0, take), 0);
                budget -= take;
            }
        }
        counts.passes += 1;
        counts
    }

    /// Many tensors, f32 and f64 keys: a fixed number of passes and syncs, whatever the number
    /// of tensors, and the same entries as the bisection.
    #[test]
    fn one_sync_per_pass_whatever_the_number_of_tensors() {
        tch::manual_seed(8);
        for (kind, digits) in [(Kind::Float, 2), (Kind::Double, 4)] {
            let scores: Vec<Tensor> = (0..20)
                .map(|i| Tensor::randn([30 + i, 7], (kind, Device::Cpu)))
                .collect();
            let live: Vec<Tensor> = scores
                .iter()
                .map(|s| {
                    Tensor::rand(s.size(), (Kind::Float, Device::Cpu))
                        .gt(0.25)
                        .to_kind(Kind::Float)
                })
                .collect();
            let outs = |_: ()| -> Vec<Tensor> { live.iter().map(Tensor::copy).collect() };
            fn parts<'a>(
                scores: &'a [Tensor],
                live: &'a [Tensor],
                outs: &'a [Tensor],
            ) -> Vec<Part<'a>> {
                scores
                    .iter()
                    .zip(live)
                    .zip(outs)
                    .map(|((scores, live), out)| Part {
                        scores,
                        live: Some(live),
                        out,
                    })
                    .collect()
            }
            let (a, b) = (outs(()), outs(()));
            let counts = zero_smallest_by_ops(&parts(&scores, &live, &a), 1000).unwrap();
            assert_eq!(
                counts,
                OpsCounts {
                    passes: digits + 2,
                    syncs: digits + 1
                },
                "{kind:?}"
            );
            if kind == Kind::Float {
                let old = bisection(&parts(&scores, &live, &b), 1000);
                assert!(old.syncs > 30 * 20, "{old:?}");
                for (x, y) in a.iter().zip(&b) {
                    assert!(x.equal(y));
                }
            }
        }
    }

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

    /// `cargo test --release --lib selection::tests::time_ops_against_bisection -- --ignored
    /// --nocapture`: the tensor-operation path on CPU tensors (the code GPU tensors take),
    /// against the bisection it replaced, side by side in one run.
    #[test]
    #[ignore]
    fn time_ops_against_bisection() {
        tch::manual_seed(9);
        let n: i64 = std::env::var("SELECTION_NUMEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 22);
        let tensors: i64 = 16;
        let scores: Vec<Tensor> = (0..tensors)
            .map(|_| Tensor::randn([n / tensors], (Kind::Float, Device::Cpu)))
            .collect();
        let run = |ops: bool| {
            let outs: Vec<Tensor> = scores
                .iter()
                .map(|s| Tensor::ones(s.size(), (Kind::Bool, Device::Cpu)))
                .collect();
            let parts: Vec<Part<'_>> = scores
                .iter()
                .zip(&outs)
                .map(|(scores, out)| Part {
                    scores,
                    live: None,
                    out,
                })
                .collect();
            let start = std::time::Instant::now();
            let counts = if ops {
                zero_smallest_by_ops(&parts, n / 2).unwrap()
            } else {
                bisection(&parts, n / 2)
            };
            (start.elapsed().as_secs_f64(), counts, outs)
        };
        let _warm_up = run(true);
        let (t_old, c_old, b) = run(false);
        let (t_new, c_new, a) = run(true);
        assert!(a.iter().zip(&b).all(|(x, y)| x.equal(y)));
        println!(
            "{n} f32 entries in {tensors} tensors, k = n/2: device radix select {t_new:.3} s \
             ({} passes, {} syncs), bisection {t_old:.3} s ({} passes, {} syncs): {:.1}x faster",
            c_new.passes,
            c_new.syncs,
            c_old.passes,
            c_old.syncs,
            t_old / t_new
        );
    }

    #[test]
    fn half_conversion_is_exact_for_every_bit_pattern() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let t = Tensor::from_slice(&all.iter().map(|&b| b as i16).collect::<Vec<_>>());
        // Reinterpret the int16 bits as f16 through libtorch, then widen there.
        let halves = t.view_dtype(Kind::Half).to_kind(Kind::Float);
        let expected = Vec::<f32>::try_from(&halves).unwrap();
        for (b, e) in all.iter().zip(expected) {
            let got = f16_to_f32(*b);
            assert!(
                got.to_bits() == e.to_bits() || (got.is_nan() && e.is_nan()),
                "{b:#06x}: {got} vs {e}"
            );
        }
    }
}
