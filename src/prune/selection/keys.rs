//! The keys the selection orders entries by: each magnitude's bit pattern in the promoted dtype
//! (f32, or f64 when a score is f64), which orders like the magnitudes, NaN above +inf as in
//! `topk`. One idea: decoding a chunk of any supported dtype into keys, with the tables and the
//! exact f16 conversion that takes.

use super::view::{is_one, Chunk};
use tch::Kind;

/// Bits of the digit a radix pass sorts by, on the CPU and on the device alike.
pub(super) const DIGIT_BITS: u32 = 16;
pub(super) const BUCKETS: usize = 1 << DIGIT_BITS;

/// Marks an entry that does not take part; no magnitude has this key (its sign bit is clear).
const NOT_LIVE: u64 = u64::MAX;

thread_local! {
    /// Each thread's buffer of decoded keys, reused from chunk to chunk.
    static KEYS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Chunk<'_> {
    /// Calls `f(index, key)` for each live entry in order; `key` orders magnitudes like the
    /// promoted dtype does (NaN above +inf, as `topk` ranks it).
    pub(super) fn for_each_live(&self, wide: bool, mut f: impl FnMut(usize, u64)) {
        KEYS.with_borrow_mut(|keys| {
            self.keys(wide, keys);
            for (offset, &key) in keys.iter().enumerate() {
                if key != NOT_LIVE {
                    f(self.start + offset, key);
                }
            }
        })
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
}

/// The f32 key of every f16 (or bf16) bit pattern, made by the general formula below (read
/// widened, then `(x as f32).abs()`): the same keys, NaNs included, at one load each.
pub(super) fn key_table(kind: Kind) -> &'static [u32] {
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

/// Element `i` of a floating-point array, widened exactly to f64.
///
/// # Safety
/// `ptr` must point to at least `i + 1` elements of `kind` (f32, f64, f16 or bf16).
pub(super) unsafe fn read_f64(ptr: *const u8, kind: Kind, i: usize) -> f64 {
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
    use tch::Tensor;

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
