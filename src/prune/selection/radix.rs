//! The radix select on CPU memory: the key of the `k`-th smallest live magnitude found digit by
//! digit, one histogram pass per 16-bit digit, most significant first, then the entries below
//! it zeroed and the first tied ones. One idea: the select itself, over the chunks of
//! [`super::view`] and the keys of [`super::keys`], spread by [`super::threads`].

use super::across::Across;
use super::keys::{key_table, BUCKETS, DIGIT_BITS};
use super::threads::{parallel_map, parallel_sum};
use super::view::{chunks, Chunk, View};
use super::window::window;
use crate::error::{PruneError, Result};
use tch::Kind;

/// The radix select of [`zero_smallest`] on CPU views.
pub(super) fn radix_select(views: &[View], k: i64) {
    let wide = is_wide(views);
    let (threshold, below) = kth_key(views, k, wide);
    zero_selected(views, threshold, wide, |_| k as u64 - below);
}

/// The radix select of [`super::zero_smallest_across`]: the `k` smallest over the views of
/// every rank, in the global order (rank order, then each rank's), each rank zeroing its own.
pub(super) fn radix_select_across(views: &[View], k: i64, across: &dyn Across) -> Result<()> {
    let wide = across.any(is_wide(views))?;
    let (threshold, below) = kth_key_across(views, k, wide, across)?;
    let mut agreed = Ok(0);
    zero_selected(views, threshold, wide, |ties| {
        agreed = tie_share(k as u64 - below, ties, across);
        *agreed.as_ref().unwrap_or(&0)
    });
    agreed.map(drop)
}

/// This rank's share of the `budget` tied entries to prune, given its own `ties`: those that
/// come first in the global order (the ranks before it take theirs first).
pub(super) fn tie_share(budget: u64, ties: u64, across: &dyn Across) -> Result<u64> {
    let before = across.exclusive_prefix_sum(ties)?;
    Ok(budget.saturating_sub(before).min(ties))
}

/// Zeroes the live entries below `threshold`, and the first of those equal to it: `budget`
/// says how many, given how many there are.
fn zero_selected(views: &[View], threshold: u64, wide: bool, budget: impl FnOnce(u64) -> u64) {
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
    let mut budget = budget(ties.iter().sum());
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
pub(super) fn is_wide(views: &[View]) -> bool {
    views.iter().any(|v| v.score_kind == Kind::Double)
}

/// How many chunks a histogram pass hands to its threads at a time: bounds the chunk list's
/// memory whatever the number and size of the tensors.
const BATCH: usize = 1 << 12;

/// The key of the `k`-th smallest live magnitude (`k >= 1`) and how many live keys are smaller:
/// a radix select, most significant digit first, one histogram pass per digit.
pub(super) fn kth_key(views: &[View], k: i64, wide: bool) -> (u64, u64) {
    let all_bf16 = views.iter().all(|v| v.score_kind == Kind::BFloat16);
    // Only a local select samples: each rank's sample would give another window.
    let window = (!wide && !all_bf16).then(|| window(views, k)).flatten();
    let result = kth_key_with(views, k, wide, all_bf16, window, &mut |_| Ok(()));
    result.unwrap_or_else(|e: PruneError| unreachable!("a local select cannot fail: {e}"))
}

/// [`kth_key`] over the views of every rank: the histograms summed over the ranks after each
/// pass, so the key is the global one and `below` counts the keys below it on all ranks.
pub(super) fn kth_key_across(
    views: &[View],
    k: i64,
    wide: bool,
    across: &dyn Across,
) -> Result<(u64, u64)> {
    let all_bf16 = !across.any(views.iter().any(|v| v.score_kind != Kind::BFloat16))?;
    kth_key_with(views, k, wide, all_bf16, None, &mut |h| across.sum(h))
}

/// The select of [`kth_key`], `sum` adding the other ranks' counts into each histogram. With a
/// `window` (f32 keys, two digits), the first pass also counts the low digits of the window's
/// high digits ([`super::window`]): the second pass is not made when the key's high digit is
/// one of them.
fn kth_key_with(
    views: &[View],
    k: i64,
    wide: bool,
    all_bf16: bool,
    window: Option<(u64, usize)>,
    sum: &mut dyn FnMut(&mut [u64]) -> Result<()>,
) -> Result<(u64, u64)> {
    let digits = if wide { 4 } else { 2 };
    // bf16 widened to f32 has a zero low half: its last digit is known without a pass.
    let passes = if !wide && all_bf16 {
        digits - 1
    } else {
        digits
    };
    // After each pass, `prefix` holds the digits of the k-th smallest key found so far and
    // `below` how many live keys are smaller.
    let (mut prefix, mut below) = (0u64, 0u64);
    // The window's low-digit histograms, once the first pass has counted them.
    let mut counted: Vec<u64> = Vec::new();
    for pass in 0..passes {
        let shift = (digits - 1 - pass) * DIGIT_BITS;
        // The second digit's histogram, if the first pass counted it.
        let known = window.filter(|_| pass == 1).and_then(|(lo, width)| {
            let d = (prefix >> DIGIT_BITS).wrapping_sub(lo) as usize;
            (d < width && !counted.is_empty())
                .then(|| counted[BUCKETS * (1 + d)..][..BUCKETS].to_vec())
        });
        let read = known.is_none();
        let mut histogram = known.unwrap_or_default();
        let windowed = window.filter(|_| pass == 0);
        let buckets = BUCKETS * (1 + windowed.map_or(0, |(_, width)| width));
        if windowed.is_some() {
            counted = Vec::new();
        }
        if read {
            for_each_batch(views, |batch| {
                let part = parallel_sum(batch, buckets, |c, h| match windowed {
                    Some(_) => c.count(shift, windowed, h),
                    None => {
                        // Only keys whose higher digits are the prefix found so far.
                        let high = (pass > 0)
                            .then(|| (shift + DIGIT_BITS, prefix >> (shift + DIGIT_BITS)));
                        c.count_digits(wide, shift, high, h);
                    }
                });
                let sum = match windowed {
                    Some(_) => &mut counted,
                    None => &mut histogram,
                };
                add_into(sum, part);
            });
            if windowed.is_some() && !counted.is_empty() {
                histogram = counted[..BUCKETS].to_vec();
            }
        }
        // No entries at all: an empty histogram.
        histogram.resize(BUCKETS, 0);
        sum(&mut histogram)?;
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
    Ok((prefix, below))
}

/// Adds a batch's histogram into the sum so far (taken whole as the first: no second copy of
/// the window's histograms in memory).
fn add_into(sum: &mut Vec<u64>, part: Vec<u64>) {
    if sum.is_empty() {
        *sum = part;
    } else {
        sum.iter_mut().zip(part).for_each(|(a, x)| *a += x);
    }
}

/// Calls `f` on the chunks of all views in order, at most [`BATCH`] at a time.
fn for_each_batch<'a>(views: &'a [View], mut f: impl FnMut(&[Chunk<'a>])) {
    let mut batch = Vec::with_capacity(BATCH);
    for chunk in views.iter().flat_map(View::chunks) {
        batch.push(chunk);
        if batch.len() == BATCH {
            f(&batch);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        f(&batch);
    }
}

impl Chunk<'_> {
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
}

/// The one-read select ([`super::window`]) against sorting.
#[cfg(test)]
mod window_tests {
    use super::super::view::{RawScores, CHUNK};
    use super::super::window::{window, SAMPLED_FROM};
    use super::*;

    /// The `k`-th smallest key (1-based) and how many keys are smaller, by sorting.
    fn sorted_kth(keys: &mut [u64], k: usize) -> (u64, u64) {
        keys.sort_unstable();
        let key = keys[k - 1];
        (key, keys.partition_point(|&x| x < key) as u64)
    }

    fn select(bytes: &[u8], kind: Kind, k: i64) -> ((u64, u64), Option<(u64, usize)>) {
        let view = View::raw(&RawScores { bytes, kind }).expect("aligned");
        let views = [view];
        (kth_key(&views, k, false), window(&views, k))
    }

    #[test]
    fn one_read_finds_the_key_two_passes_find() {
        let n = SAMPLED_FROM + 12345;
        // Gaussian values from a fixed seed (Box-Muller over xorshift): the same test every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let (a, b) = (uniform(), uniform());
                ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
            })
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut keys: Vec<u64> = values.iter().map(|v| v.abs().to_bits() as u64).collect();
        for k in [1, n / 3, n / 2, n - 7, n] {
            let (found, window) = select(&bytes, Kind::Float, k as i64);
            // The extremes lie where the sample is thin: a window there may be too wide.
            // and where it narrows it, the key is in the window: the second pass is not made.
            if k == n / 3 || k == n / 2 {
                let (lo, width) = window.expect("a sample of gaussian weights narrows the key");
                assert!((lo..lo + width as u64).contains(&(found.0 >> DIGIT_BITS)));
            }
            assert_eq!(found, sorted_kth(&mut keys, k), "k = {k}");
        }
        // f16: the same keys through the table.
        let half = tch::Tensor::from_slice(&values).to_kind(Kind::Half);
        let bits = Vec::<i16>::try_from(&half.view_dtype(Kind::Int16)).expect("bits");
        let halves: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let widened = Vec::<f32>::try_from(&half.to_kind(Kind::Float)).expect("f32");
        let mut keys: Vec<u64> = widened.iter().map(|v| v.abs().to_bits() as u64).collect();
        let (found, window) = select(&halves, Kind::Half, (n / 2) as i64);
        assert!(window.is_some());
        assert_eq!(found, sorted_kth(&mut keys, n / 2));
    }

    /// A sample that misleads (the head of every chunk unlike the rest) costs the second pass,
    /// not the answer.
    #[test]
    fn a_misleading_sample_falls_back_to_the_second_pass() {
        let n = SAMPLED_FROM * 2;
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let small = 1.0 + (i % 977) as f32 / 977.0;
                if i % CHUNK < CHUNK / 8 {
                    1000.0 + small
                } else {
                    small
                }
            })
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut keys: Vec<u64> = values.iter().map(|v| v.abs().to_bits() as u64).collect();
        let k = n / 2;
        let (found, window) = select(&bytes, Kind::Float, k as i64);
        let (lo, width) = window.expect("a narrow (wrong) window");
        let (expect, _) = sorted_kth(&mut keys.clone(), k);
        assert!(expect >> DIGIT_BITS < lo || expect >> DIGIT_BITS >= lo + width as u64);
        assert_eq!(found, sorted_kth(&mut keys, k));
    }
}
