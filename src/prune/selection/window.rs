//! One read for a radix select of f32, f16 or bf16 keys: its first pass also counts the low
//! digits of the few high digits where a sample says the `k`-th key lies, so that the second
//! pass (the low digit under the high digit found) needs no read when the sample was right.
//! A streamed `--global` selection then reads the checkpoint once before writing it, where it
//! read it twice; a wrong sample costs the second pass, never a wrong answer.
//!
//! The sample is a run at the start of every chunk (256 KiB of f32): pages spread evenly over
//! all the data, a 64th of it at least, read in order; for data still on the disk, the same
//! share of each tensor from its start, in one run. The window holds the high digits between the sample's
//! quantiles `k/n` plus and minus six standard deviations of a sample quantile (at most
//! [`WINDOW`] of them: the memory of the pass).

use super::keys::{key_table, BUCKETS, DIGIT_BITS};
use super::threads::views_resident;
use super::view::{Chunk, View, CHUNK};
use tch::Kind;

/// High digits whose low digits the first pass counts: at most `WINDOW` histograms of 512 KiB
/// per thread.
pub(super) const WINDOW: usize = 8;

/// Below this many entries the second pass costs less than the sample.
pub(super) const SAMPLED_FROM: usize = 1 << 20;

/// Sampled entries aimed at (a 64th of the data at least): six standard deviations of the
/// sample's quantile then span about four high digits of gaussian-like weights (a high digit
/// holds 0.3 % of them near the median).
const SAMPLE: usize = 1 << 18;

/// The high digits `lo .. lo + width` (`width <= WINDOW`) the `k`-th smallest key very probably
/// has, or `None` where no sample is taken (live masks, few entries) or it cannot narrow the
/// key to [`WINDOW`] digits.
pub(super) fn window(views: &[View], k: i64) -> Option<(u64, usize)> {
    if views.iter().any(|v| v.live.is_some()) {
        return None;
    }
    let total: usize = views.iter().map(|v| v.numel).sum();
    if total < SAMPLED_FROM {
        return None;
    }
    let run = (CHUNK * SAMPLE / total).clamp(CHUNK / 64, CHUNK);
    let mut histogram = vec![0u64; BUCKETS];
    let mut sampled = 0u64;
    if views_resident(views) {
        for chunk in views.iter().flat_map(View::chunks) {
            let end = (chunk.start + run).min(chunk.end);
            let head = Chunk { end, ..chunk };
            head.count(DIGIT_BITS, None, &mut histogram);
            sampled += (end - chunk.start) as u64;
        }
    } else {
        // Pages on the disk: the same share of each tensor read in one run from its start, as
        // the disk reads fastest (a run every 256 KiB read half the file, through read-ahead).
        for view in views {
            let want = view.numel * run / CHUNK;
            for chunk in view.chunks().take_while(|c| c.start < want) {
                let end = chunk.end.min(want);
                Chunk { end, ..chunk }.count(DIGIT_BITS, None, &mut histogram);
                sampled += (end - chunk.start) as u64;
            }
        }
    }
    if sampled == 0 {
        return None;
    }
    let n = sampled as f64;
    let q = (k as f64 / total as f64).clamp(0.0, 1.0);
    let margin = 6.0 * (n * q * (1.0 - q)).sqrt() + 16.0;
    let at = |rank: f64| -> u64 {
        let rank = rank.clamp(0.0, n - 1.0) as u64;
        let mut seen = 0;
        histogram
            .iter()
            .position(|&c| {
                seen += c;
                seen > rank
            })
            .unwrap_or(BUCKETS - 1) as u64
    };
    let (lo, hi) = (at(q * n - margin), at(q * n + margin));
    let width = (hi - lo + 1) as usize;
    (width <= WINDOW).then_some((lo, width))
}

impl Chunk<'_> {
    /// Adds to `h[..BUCKETS]` the high digit (at `shift`) of every key, and, where `window` is
    /// `Some((lo, width))`, to `h[BUCKETS * (1 + d - lo)..][..BUCKETS]` the low digit of each
    /// key whose high digit `d` is in the window. For views without live masks and with f32
    /// keys (no f64 among the parts).
    pub(super) fn count(&self, shift: u32, window: Option<(u64, usize)>, h: &mut [u64]) {
        let v = self.view;
        let n = self.end - self.start;
        let low = BUCKETS as u64 - 1;
        let (lo, width) = window.unwrap_or((0, 0));
        let mut add = |key: u64| {
            let d = key >> shift;
            h[d as usize] += 1;
            let w = d.wrapping_sub(lo);
            if w < width as u64 {
                h[BUCKETS * (1 + w as usize) + (key & low) as usize] += 1;
            }
        };
        // SAFETY: [start, end) lies within the view's `numel` elements of its dtype.
        unsafe {
            match v.score_kind {
                Kind::Float => {
                    let x = std::slice::from_raw_parts((v.scores as *const u32).add(self.start), n);
                    x.iter().for_each(|&b| add((b & 0x7fff_ffff) as u64));
                }
                Kind::Half | Kind::BFloat16 => {
                    let table = key_table(v.score_kind);
                    let x = std::slice::from_raw_parts((v.scores as *const u16).add(self.start), n);
                    x.iter().for_each(|&b| add(table[b as usize] as u64));
                }
                _ => self.for_each_live(false, |_, key| add(key)),
            }
        }
    }
}
