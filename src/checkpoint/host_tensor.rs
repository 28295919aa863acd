//! Tensors on their way to or from a file: a tensor's bytes in host memory for the writers,
//! bytes read straight into a new tensor for the readers, and the names checked for repeats.

use super::dtype::DType;
use super::error::{first_line, shown, CheckpointError};
use std::collections::HashSet;
use std::path::Path;
use tch::{Device, Tensor};

/// A tensor's values in host memory, contiguous, in one of the dtypes both formats store: the
/// tensor itself when it already is so, a copy otherwise.
pub(super) struct HostTensor {
    /// The row of its dtype in the one table of supported dtypes.
    pub(super) dtype: &'static DType,
    pub(super) size: Vec<i64>,
    /// Contiguous, on the CPU: the tensor itself when it already is (its bytes are written
    /// from where they are, so a model is never held twice while it is saved).
    tensor: Tensor,
}

impl HostTensor {
    pub(super) fn of(
        path: &Path,
        name: &str,
        tensor: &Tensor,
    ) -> Result<HostTensor, CheckpointError> {
        let torch = |e: tch::TchError| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: shown(name),
            reason: format!("libtorch: {}", first_line(&e.to_string())),
        };
        let kind = tensor.f_kind().map_err(torch)?;
        let dtype = DType::of(kind).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: shown(name),
            dtype: format!("{kind:?}"),
        })?;
        let host = tensor
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        Ok(HostTensor {
            dtype,
            size: host.size(),
            tensor: host,
        })
    }

    /// The values' bytes, in the tensor's memory.
    pub(super) fn bytes(&self) -> &[u8] {
        let len = self.tensor.numel() * self.dtype.kind.elt_size_in_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: a contiguous CPU tensor holds `len` bytes from `data_ptr`, and `self` keeps
        // it (and its storage) alive as long as the borrow. The writers hold the only use of
        // the tensors they are given while they write (the crate writes to no tensor from
        // another thread meanwhile).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len) }
    }
}

/// Fills a new contiguous CPU tensor with the next bytes of `reader`, through a small buffer:
/// its memory is uninitialized, so it must not be handed to `Read` as a slice.
pub(super) fn read_into(reader: &mut impl std::io::Read, tensor: &Tensor) -> std::io::Result<()> {
    let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
    let mut buffer = vec![0u8; len.min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buffer.len());
        reader.read_exact(&mut buffer[..n])?;
        // SAFETY: the tensor is contiguous on the CPU and owns `len` bytes from `data_ptr`;
        // nothing else refers to it yet, and `done + n <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buffer.as_ptr(),
                (tensor.data_ptr() as *mut u8).add(done),
                n,
            );
        }
        done += n;
    }
    Ok(())
}

/// Both formats map names to tensors: a name given twice would silently lose a tensor.
pub(super) fn check_names<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), CheckpointError> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(name),
                reason: "the name is given twice".into(),
            });
        }
    }
    Ok(())
}
