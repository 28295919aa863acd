//! [`mask_digest`]: a mask in 64 bits, for comparing masks across processes.

use crate::error::Result;
use tch::{Device, Tensor};

/// A 64-bit digest of a mask: its dtype, shape and bytes (FNV-1a over them). Equal masks have
/// equal digests on every machine; a difference anywhere changes it (but for a collision,
/// about one chance in 2^64).
///
/// ```
/// use tch::Tensor;
/// use tch_prune::distributed::mask_digest;
/// let a = Tensor::from_slice(&[1f32, 0., 1.]);
/// assert_eq!(mask_digest(&a)?, mask_digest(&a.copy())?);
/// assert_ne!(mask_digest(&a)?, mask_digest(&Tensor::from_slice(&[1f32, 1., 1.]))?);
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
pub fn mask_digest(mask: &Tensor) -> Result<u64> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    eat(format!("{:?}{:?}", mask.kind(), mask.size()).as_bytes());
    let cpu = mask.f_to(Device::Cpu)?.f_contiguous()?;
    let bytes = cpu.numel() * cpu.kind().elt_size_in_bytes();
    if bytes > 0 {
        // SAFETY: a contiguous CPU tensor owns `bytes` bytes at its data pointer, alive while
        // `cpu` is.
        let data = unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, bytes) };
        eat(data);
    }
    Ok(hash)
}
