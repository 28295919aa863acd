//! The parts of a selection ([`Part`]: tensors; [`RawScores`]: a mapped file's bytes) and their
//! memory, read in place: raw pointers to scores, live mask and output, checked once (device,
//! layout, dtype, alignment), and cut into chunks, the unit of work of a thread. One idea:
//! where the entries are and how one is zeroed; what they are worth is [`super::keys`].

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

/// Small enough for a chunk's keys to stay in cache between decoding and use.
pub(super) const CHUNK: usize = 1 << 16;

/// Raw access to one part. The tensors are kept alive by the caller for the whole selection.
pub(super) struct View {
    pub(super) scores: *const u8,
    pub(super) score_kind: Kind,
    pub(super) live: Option<(*const u8, Kind)>,
    pub(super) out: *mut u8,
    pub(super) out_size: usize,
    pub(super) numel: usize,
}

// SAFETY: the pointers refer to tensors the caller keeps alive and does not touch during the
// selection; threads read disjoint or shared-read-only ranges and write disjoint ranges of `out`.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A view of raw scores only (no `out`: for thresholds and streamed decisions).
    pub(super) fn raw(part: &RawScores<'_>) -> Option<View> {
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

    pub(super) fn of(part: &Part<'_>) -> Option<View> {
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

    /// The view's entries in chunks of [`CHUNK`], in order.
    pub(super) fn chunks(&self) -> impl Iterator<Item = Chunk<'_>> {
        (0..self.numel).step_by(CHUNK).map(move |start| Chunk {
            view: self,
            start,
            end: (start + CHUNK).min(self.numel),
        })
    }
}

/// A range of one part's entries: the unit of work of a thread.
pub(super) struct Chunk<'a> {
    pub(super) view: &'a View,
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Chunk<'_> {
    /// Zero is the all-zero bit pattern in every supported dtype.
    #[inline(always)]
    pub(super) fn zero(&self, i: usize) {
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

/// The chunks of all views, in order.
pub(super) fn chunks(views: &[View]) -> Vec<Chunk<'_>> {
    views.iter().flat_map(View::chunks).collect()
}

/// The size of an entry of `kind`, for the kinds the crate's files hold.
pub(super) fn element_size(kind: Kind) -> Option<usize> {
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
pub(super) unsafe fn is_one(ptr: *const u8, kind: Kind, i: usize) -> bool {
    let size = element_size(kind).unwrap_or(1);
    let mut bytes = [0u8; 8];
    std::ptr::copy_nonoverlapping(ptr.add(i * size), bytes.as_mut_ptr(), size);
    Some(u64::from_le_bytes(bytes)) == one_pattern(kind)
}
