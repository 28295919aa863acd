//! Blocks of four (2:4, 1:4, 3:4 along a row) of f32, f16 or bf16 decided and masked with SSE2,
//! a block (f32) or two (16-bit) per instruction: the scalar ranking of `nm::mask_blocks`
//! compares every pair of a block one entry at a time, which made 2:4 the slowest streamed
//! method (2.3x `cp` of the file, where L1 was 1.2x).
//!
//! The ranking is the scalar one: an entry's rank is the number of entries of its block with a
//! smaller magnitude, or an equal one earlier in the block; the `prune` lowest ranks are pruned.
//! Comparing the block with its three rotations counts them: in rotation `s`, lane `i` holds
//! entry `(i + s) % 4`, which comes before `i` exactly when `i >= 4 - s`. Magnitudes are the
//! bits with the sign cleared (below 2^31 or 2^15, so signed comparisons order them), and the
//! data is finite (the caller checked), so no NaN needs its own key. A pruned entry becomes the
//! zero of its sign: `value & (keep | sign)`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Masks the whole blocks of four `size`-byte entries of `src` into `out` (the same length, a
/// multiple of `4 * size`) and returns the exact zeros written, or `None` where this module has
/// no kernel for `size`.
pub(super) fn mask_blocks4(size: usize, prune: usize, src: &[u8], out: &mut [u8]) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(src.len() == out.len() && src.len().is_multiple_of(4 * size) && prune <= 4);
        // SAFETY: SSE2 is part of x86_64; the lengths are checked by the callers' layout (whole
        // blocks, equal slices), and every load and store is unaligned.
        match size {
            4 => return Some(unsafe { blocks_f32(prune, src, out) }),
            2 => return Some(unsafe { blocks_16(prune, src, out) }),
            _ => {}
        }
    }
    let _ = (size, prune, src, out);
    None
}

/// One f32 block per 128-bit lane group.
#[cfg(target_arch = "x86_64")]
unsafe fn blocks_f32(prune: usize, src: &[u8], out: &mut [u8]) -> u64 {
    let magnitude = _mm_set1_epi32(0x7fff_ffff);
    let sign = _mm_set1_epi32(i32::MIN);
    // Lanes `i >= 4 - s` of rotation `s`: its entry comes first.
    let earlier = [
        _mm_set_epi32(-1, 0, 0, 0),
        _mm_set_epi32(-1, -1, 0, 0),
        _mm_set_epi32(-1, -1, -1, 0),
    ];
    // keep: -(entries ranked before) <= -prune, i.e. the negated count below 1 - prune.
    let bound = _mm_set1_epi32(1 - prune as i32);
    let zero = _mm_setzero_si128();
    let mut zeros = _mm_setzero_si128();
    let blocks = src.len() / 16;
    for b in 0..blocks {
        let v = _mm_loadu_si128(src.as_ptr().add(b * 16) as *const __m128i);
        let k = _mm_and_si128(v, magnitude);
        let rotations = [
            _mm_shuffle_epi32::<0b00_11_10_01>(k),
            _mm_shuffle_epi32::<0b01_00_11_10>(k),
            _mm_shuffle_epi32::<0b10_01_00_11>(k),
        ];
        let mut before = zero;
        for (r, e) in rotations.iter().zip(&earlier) {
            let ahead = _mm_or_si128(
                _mm_cmplt_epi32(*r, k),
                _mm_and_si128(_mm_cmpeq_epi32(*r, k), *e),
            );
            before = _mm_add_epi32(before, ahead);
        }
        let keep = _mm_cmplt_epi32(before, bound);
        let w = _mm_and_si128(v, _mm_or_si128(keep, sign));
        _mm_storeu_si128(out.as_mut_ptr().add(b * 16) as *mut __m128i, w);
        zeros = _mm_sub_epi32(zeros, _mm_cmpeq_epi32(_mm_and_si128(w, magnitude), zero));
    }
    lanes_sum(zeros)
}

/// Two 16-bit blocks (f16 or bf16) per 128 bits: the rotations stay within each half.
#[cfg(target_arch = "x86_64")]
unsafe fn blocks_16(prune: usize, src: &[u8], out: &mut [u8]) -> u64 {
    let magnitude = _mm_set1_epi16(0x7fff);
    let sign = _mm_set1_epi16(i16::MIN);
    let earlier = [
        _mm_set_epi16(-1, 0, 0, 0, -1, 0, 0, 0),
        _mm_set_epi16(-1, -1, 0, 0, -1, -1, 0, 0),
        _mm_set_epi16(-1, -1, -1, 0, -1, -1, -1, 0),
    ];
    let bound = _mm_set1_epi16(1 - prune as i16);
    let zero = _mm_setzero_si128();
    let ones = _mm_set1_epi16(1);
    let mut zeros = _mm_setzero_si128();
    let (whole, tail) = (src.len() / 16, src.len() % 16);
    let mut one = |v: __m128i| -> __m128i {
        let k = _mm_and_si128(v, magnitude);
        let rotations = [
            _mm_shufflehi_epi16::<0b00_11_10_01>(_mm_shufflelo_epi16::<0b00_11_10_01>(k)),
            _mm_shufflehi_epi16::<0b01_00_11_10>(_mm_shufflelo_epi16::<0b01_00_11_10>(k)),
            _mm_shufflehi_epi16::<0b10_01_00_11>(_mm_shufflelo_epi16::<0b10_01_00_11>(k)),
        ];
        let mut before = zero;
        for (r, e) in rotations.iter().zip(&earlier) {
            let ahead = _mm_or_si128(
                _mm_cmplt_epi16(*r, k),
                _mm_and_si128(_mm_cmpeq_epi16(*r, k), *e),
            );
            before = _mm_add_epi16(before, ahead);
        }
        let keep = _mm_cmplt_epi16(before, bound);
        let w = _mm_and_si128(v, _mm_or_si128(keep, sign));
        // 16-bit zero flags summed in pairs into 32-bit lanes: no lane can overflow.
        let flags = _mm_cmpeq_epi16(_mm_and_si128(w, magnitude), zero);
        zeros = _mm_sub_epi32(zeros, _mm_madd_epi16(flags, ones));
        w
    };
    for b in 0..whole {
        let v = _mm_loadu_si128(src.as_ptr().add(b * 16) as *const __m128i);
        let w = one(v);
        _mm_storeu_si128(out.as_mut_ptr().add(b * 16) as *mut __m128i, w);
    }
    if tail > 0 {
        // One last block of four (8 bytes): through a zeroed register, whose upper block of
        // zeros is neither stored nor counted (its four zeros are taken off).
        let mut last = [0u8; 16];
        last[..tail].copy_from_slice(&src[whole * 16..]);
        let w = one(_mm_loadu_si128(last.as_ptr() as *const __m128i));
        _mm_storeu_si128(last.as_mut_ptr() as *mut __m128i, w);
        out[whole * 16..].copy_from_slice(&last[..tail]);
        return lanes_sum(zeros) - 4;
    }
    lanes_sum(zeros)
}

#[cfg(target_arch = "x86_64")]
unsafe fn lanes_sum(v: __m128i) -> u64 {
    let mut lanes = [0u32; 4];
    _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, v);
    lanes.iter().map(|&x| x as u64).sum()
}
