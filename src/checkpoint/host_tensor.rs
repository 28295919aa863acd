//! Tensors on their way to or from a file: a tensor's bytes in host memory for the writers,
//! bytes read straight into a new tensor for the readers, the names checked for repeats, and the
//! layout of a tensor a pickle described without its storage being read (the mapped reader's).

use super::dtype::DType;
use super::error::{first_line, shown, CheckpointError};
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A tensor on its way to a file: its dtype and shape now, its bytes in host memory when the
/// writer gets to it ([`HostTensor::bytes`]). A contiguous CPU tensor of the written dtype is
/// written from its own memory; any other (on a GPU, strided, or written as another dtype) is
/// copied to the host then, one tensor at a time, so writing a model from a GPU takes host
/// memory for its largest tensor, not for the whole model.
pub(super) struct HostTensor {
    /// The row of its written dtype in the one table of supported dtypes.
    pub(super) dtype: &'static DType,
    pub(super) size: Vec<i64>,
    /// The tensor as given (detached): on any device, of any layout and dtype.
    tensor: Tensor,
    /// For the messages of a copy that fails while the file is written.
    path: PathBuf,
    name: String,
}

impl HostTensor {
    /// `tensor` to be written as it is.
    pub(super) fn of(
        path: &Path,
        name: &str,
        tensor: &Tensor,
    ) -> Result<HostTensor, CheckpointError> {
        Self::of_as(path, name, tensor, None)
    }

    /// `tensor` to be written as dtype `kind` (its own if `None`), converted as it is copied
    /// to the host (a boolean mask written as the weight's float dtype takes no memory of its
    /// converted size on its device).
    pub(super) fn of_as(
        path: &Path,
        name: &str,
        tensor: &Tensor,
        kind: Option<Kind>,
    ) -> Result<HostTensor, CheckpointError> {
        let kind = match kind {
            Some(kind) => kind,
            None => tensor.f_kind().map_err(|e| torch_error(path, name, &e))?,
        };
        let dtype = DType::of(kind).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: shown(name),
            dtype: format!("{kind:?}"),
        })?;
        let tensor = tensor.f_detach().map_err(|e| torch_error(path, name, &e))?;
        Ok(HostTensor {
            dtype,
            size: tensor.size(),
            tensor,
            path: path.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// How many bytes [`HostTensor::bytes`] gives.
    pub(super) fn byte_len(&self) -> usize {
        self.size.iter().product::<i64>().max(0) as usize * self.dtype.kind.elt_size_in_bytes()
    }

    /// The values' bytes: borrowed from the tensor's memory if it is a contiguous CPU tensor
    /// of the written dtype, else a host copy of this tensor alone, made now (the caller drops
    /// it once written).
    pub(super) fn bytes(&self) -> Result<Cow<'_, [u8]>, CheckpointError> {
        let len = self.byte_len();
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let t = &self.tensor;
        if t.device() == Device::Cpu && t.is_contiguous() && t.kind() == self.dtype.kind {
            // SAFETY: a contiguous CPU tensor holds `len` bytes from `data_ptr`, and `self`
            // keeps it (and its storage) alive as long as the borrow. The writers hold the only
            // use of the tensors they are given while they write (the crate writes to no tensor
            // from another thread meanwhile).
            let bytes = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) };
            return Ok(Cow::Borrowed(bytes));
        }
        // Copied (and converted) by libtorch straight into the bytes to be written: a CPU
        // tensor over this buffer's memory, filled by `copy_`.
        let mut buffer = vec![0u8; len];
        let strides = contiguous_strides(&self.size);
        let copied = unsafe {
            // SAFETY: `buffer` holds `len` bytes, exactly `size` elements of the written dtype
            // laid out with `strides`, and outlives `host`, which is dropped right after the copy.
            Tensor::f_from_blob(
                buffer.as_mut_ptr(),
                &self.size,
                &strides,
                self.dtype.kind,
                Device::Cpu,
            )
        }
        .and_then(|mut host| host.f_copy_(t).map(drop));
        copied.map_err(|e| torch_error(&self.path, &self.name, &e))?;
        Ok(Cow::Owned(buffer))
    }
}

fn torch_error(path: &Path, name: &str, e: &tch::TchError) -> CheckpointError {
    CheckpointError::InvalidTensor {
        path: path.to_path_buf(),
        tensor: shown(name),
        reason: format!("libtorch: {}", first_line(&e.to_string())),
    }
}

/// Row-major strides of a tensor of `size` (what the files hold, and the host copies' layout).
pub(super) fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(size[i + 1].max(1));
    }
    strides
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

/// A tensor to be written by a streamed writer ([`write_safetensors_streamed`](super::write_safetensors_streamed),
/// [`write_torch_zip_streamed`](super::write_torch_zip_streamed)): its name, dtype and shape;
/// its bytes come later, from the caller.
#[derive(Clone, Debug)]
pub struct TensorHeader {
    /// Its name in the file.
    pub name: String,
    /// Its dtype.
    pub kind: Kind,
    /// Its shape.
    pub shape: Vec<i64>,
}

impl TensorHeader {
    pub(super) fn byte_len(&self) -> usize {
        let size = DType::of(self.kind).map_or(1, |d| d.safetensors.size());
        self.shape.iter().product::<i64>() as usize * size
    }
}

/// A tensor of a `data.pkl` described, its storage not read: what a reader that maps the file
/// needs to find its bytes.
#[derive(Clone, Debug)]
pub(super) struct TensorLayout {
    /// The key of its storage (entry `data/<key>`).
    pub(super) storage: String,
    pub(super) kind: Kind,
    /// Its storage offset, in elements.
    pub(super) offset: i64,
    /// The elements of the storage it covers, if it is a plain slice of it (contiguous); its
    /// view was checked against the storage's size.
    pub(super) elements: Option<(usize, usize)>,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
}
