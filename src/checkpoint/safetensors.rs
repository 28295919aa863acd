//! `.safetensors` files, through the `safetensors` crate that Python's `safetensors` package
//! is built on, so that files written here are what `safetensors.torch.load_file` expects.
//!
//! Order: the format's header is a JSON map, and writers (this one and Python's alike) lay the
//! data out sorted by dtype size, then by name. Reading returns the tensors in the order of
//! their data in the file; the original state-dict order is not recorded by the format.

use super::atomic::atomic_write;
use super::dtype::DType;
use super::error::{first_line, shown, CheckpointError};
use super::host_tensor::{check_names, read_into, HostTensor};
use ::safetensors::tensor::{Dtype, Metadata, SafeTensorError, View};
use std::borrow::{Borrow, Cow};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Reads every tensor of a safetensors file as a contiguous CPU tensor, in the order of their
/// data in the file.
///
/// Each tensor's bytes are read from the file straight into its own memory: reading a model
/// takes the model's size in memory, not twice that.
///
/// Supported dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL; any other is an error
/// naming the tensor. `__metadata__` is ignored.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    let CheckedHeader {
        mut file, tensors, ..
    } = open_checked(path)?;
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let tensor = read_tensor(&mut file, &t.shape, t.kind).map_err(|e| match e {
            ReadError::Io(e) => CheckpointError::io(path, "cannot read", e),
            ReadError::Torch(e) => CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(&t.name),
                reason: first_line(&e.to_string()),
            },
        })?;
        out.push((t.name, tensor));
    }
    Ok(out)
}

/// A safetensors file opened and its header checked (see [`open_checked`]).
pub(super) struct CheckedHeader {
    /// The file, positioned at the first tensor's data.
    pub(super) file: File,
    /// Where the tensors' data starts in the file.
    pub(super) data_start: usize,
    /// The tensors, in the order of their data.
    pub(super) tensors: Vec<HeaderTensor>,
    /// The header's `__metadata__` text pairs (empty when it has none).
    pub(super) metadata: HashMap<String, String>,
}

/// One tensor of a [`CheckedHeader`].
pub(super) struct HeaderTensor {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) shape: Vec<i64>,
    /// Its data's start and end, from [`CheckedHeader::data_start`].
    pub(super) offsets: (usize, usize),
}

/// Opens `path` and checks its header as `SafeTensors::read_metadata` checks a whole file, and
/// every dtype against the crate's table: what every reader of safetensors files (in memory
/// or mapped) starts with, so that they accept and refuse the same files.
pub(super) fn open_checked(path: &Path) -> Result<CheckedHeader, CheckpointError> {
    let (file, file_len, header_len, metadata) = open_header(path)?;
    let infos = checked_layout(path, &metadata, header_len, file_len)?;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let kind = DType::of_safetensors(info.dtype)
            .map(|d| d.kind)
            .ok_or_else(|| CheckpointError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: shown(&name),
                dtype: format!("{:?}", info.dtype),
            })?;
        let shape = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| {
                invalid(
                    path,
                    format!("the shape of '{}' is too large", shown(&name)),
                )
            })?;
        tensors.push(HeaderTensor {
            name,
            kind,
            shape,
            offsets: info.data_offsets,
        });
    }
    Ok(CheckedHeader {
        file,
        data_start: 8 + header_len,
        tensors,
        metadata: metadata.metadata().clone().unwrap_or_default(),
    })
}

/// Opens `path` and reads its header: the file (positioned after the header), its length,
/// the header's length and its parsed contents.
fn open_header(path: &Path) -> Result<(File, u64, usize, Metadata), CheckpointError> {
    let io = |e| CheckpointError::io(path, "cannot read", e);
    let mut file = super::input_file::open_input(path)?;
    let file_len = file.metadata().map_err(io)?.len();
    let (header_len, metadata) = read_header(&mut file, file_len).map_err(|e| match e {
        HeaderError::Io(e) => io(e),
        HeaderError::Format(e) => invalid(path, describe(&e)),
    })?;
    Ok((file, file_len, header_len, metadata))
}

/// The tensors of a header in the order of their data, checked as `SafeTensors::read_metadata`
/// checks a whole buffer: the tensors' data tile the rest of the file exactly, each of the size
/// its shape and dtype give.
fn checked_layout<'a>(
    path: &Path,
    metadata: &'a Metadata,
    header_len: usize,
    file_len: u64,
) -> Result<Vec<(String, &'a ::safetensors::tensor::TensorInfo)>, CheckpointError> {
    let mut infos: Vec<_> = metadata.tensors().into_iter().collect();
    infos.sort_by(|(a_name, a), (b_name, b)| {
        a.data_offsets
            .cmp(&b.data_offsets)
            .then_with(|| a_name.cmp(b_name))
    });
    let mut end = 0;
    for (name, info) in &infos {
        let (start, stop) = info.data_offsets;
        if start != end || stop < start {
            return Err(invalid(
                path,
                describe(&SafeTensorError::InvalidOffset(name.clone())),
            ));
        }
        let bytes = info
            .shape
            .iter()
            .try_fold(info.dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| invalid(path, describe(&SafeTensorError::ValidationOverflow)))?;
        if stop - start != bytes {
            return Err(invalid(path, describe(&SafeTensorError::TensorInvalidInfo)));
        }
        end = stop;
    }
    if end as u64 + 8 + header_len as u64 != file_len {
        return Err(invalid(
            path,
            describe(&SafeTensorError::MetadataIncompleteBuffer),
        ));
    }
    Ok(infos)
}

/// The header's `__metadata__` (free-form text pairs), empty when it has none. It is where
/// `safetensors.torch.save_model` records tied weights: the file holds one name of each tie, and
/// each other name maps to the name kept (`{"transformer.wte.weight": "lm_head.weight"}`).
pub fn read_safetensors_metadata(
    path: impl AsRef<Path>,
) -> Result<HashMap<String, String>, CheckpointError> {
    let (_, _, _, metadata) = open_header(path.as_ref())?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

enum HeaderError {
    Io(std::io::Error),
    Format(SafeTensorError),
}

/// The header's length and contents, checked as `SafeTensors::read_metadata` checks them.
fn read_header(file: &mut File, file_len: u64) -> Result<(usize, Metadata), HeaderError> {
    let format = |e| Err(HeaderError::Format(e));
    if file_len < 8 {
        return format(SafeTensorError::HeaderTooSmall);
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(HeaderError::Io)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_LEN {
        return format(SafeTensorError::HeaderTooLarge);
    }
    if len + 8 > file_len {
        return format(SafeTensorError::InvalidHeaderLength);
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(HeaderError::Io)?;
    let Ok(text) = std::str::from_utf8(&header) else {
        return format(SafeTensorError::InvalidHeader);
    };
    match serde_json::from_str(text) {
        Ok(metadata) => Ok((len as usize, metadata)),
        Err(_) => format(SafeTensorError::InvalidHeaderDeserialization),
    }
}

/// The safetensors crate's bound on the header, 100 MB.
const MAX_HEADER_LEN: u64 = 100_000_000;

enum ReadError {
    Io(std::io::Error),
    Torch(tch::TchError),
}

/// The next tensor's bytes, read from `file` into a new tensor (little-endian, as both the
/// format and the machines libtorch runs on are).
fn read_tensor(file: &mut File, size: &[i64], kind: Kind) -> Result<Tensor, ReadError> {
    // Booleans are read as bytes: a byte other than 0 or 1 is not a valid `bool`.
    let read_kind = if kind == Kind::Bool {
        Kind::Uint8
    } else {
        kind
    };
    let tensor = Tensor::f_empty(size, (read_kind, Device::Cpu)).map_err(ReadError::Torch)?;
    read_into(file, &tensor).map_err(ReadError::Io)?;
    match kind {
        Kind::Bool => tensor.f_ne(0).map_err(ReadError::Torch),
        _ => Ok(tensor),
    }
}

/// Writes tensors to a safetensors file that Python's `safetensors.torch.load_file` (and
/// [`read_safetensors`]) read back bit for bit.
///
/// Tensors may live on any device, be non-contiguous or require grad: their values are what is
/// written. A contiguous CPU tensor is written from its own memory; any other is copied to the
/// host as it is written, one at a time (extra host memory: the largest such tensor). Dtypes
/// as for [`read_safetensors`]; names must be unique and not `__metadata__`. The file is
/// replaced atomically (see [`atomic_write`]), so an error leaves any previous file untouched
/// and no partial file behind. The header's `__metadata__` is `{"format": "pt"}`, as Hugging
/// Face tools expect from PyTorch weights.
pub fn write_safetensors<S, T>(
    path: impl AsRef<Path>,
    tensors: &[(S, T)],
) -> Result<(), CheckpointError>
where
    S: AsRef<str>,
    T: Borrow<Tensor>,
{
    write_safetensors_with_metadata(path, tensors, &HashMap::new())
}

/// [`write_safetensors`] with more `__metadata__` entries besides `{"format": "pt"}`: e.g. the
/// tied names `safetensors.torch.save_model` records (each name left out, mapped to the name
/// kept), so that `safetensors.torch.load_model` loads the file into the tied model.
pub fn write_safetensors_with_metadata<S, T>(
    path: impl AsRef<Path>,
    tensors: &[(S, T)],
    extra: &HashMap<String, String>,
) -> Result<(), CheckpointError>
where
    S: AsRef<str>,
    T: Borrow<Tensor>,
{
    let entries: Vec<(&str, &Tensor, Option<Kind>)> = tensors
        .iter()
        .map(|(name, tensor)| (name.as_ref(), tensor.borrow(), None))
        .collect();
    write_safetensors_as(path, &entries, extra)
}

/// [`write_safetensors_with_metadata`], each tensor written as the dtype given with it (its
/// own if `None`), converted as it is copied to the host: a boolean mask on a GPU written as
/// f32 takes no GPU memory of its f32 size.
pub fn write_safetensors_as(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor, Option<Kind>)],
    extra: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    check_names(path, tensors.iter().map(|(name, _, _)| *name))?;
    if let Some((name, _, _)) = tensors.iter().find(|(name, _, _)| *name == "__metadata__") {
        return Err(CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: shown(name),
            reason: "__metadata__ is reserved by the safetensors format".into(),
        });
    }
    let mut owned = Vec::with_capacity(tensors.len());
    for &(name, tensor, kind) in tensors {
        owned.push((name.to_string(), SafeView::of(path, name, tensor, kind)?));
    }
    let mut metadata = extra.clone();
    metadata.insert("format".to_string(), "pt".to_string());
    let metadata = Some(metadata);
    atomic_write(path, |tmp| {
        ::safetensors::tensor::serialize_to_file(
            owned.iter().map(|(n, t)| (n.as_str(), t)),
            &metadata,
            tmp,
        )
        .map_err(|e| match e {
            SafeTensorError::IoError(e) => CheckpointError::io(path, "cannot write", e),
            other => invalid(path, format!("cannot write: {}", describe(&other))),
        })?;
        // A host copy that failed while the file was written (see `SafeView::data`).
        match owned.iter().find_map(|(_, view)| view.failed.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// A [`HostTensor`] with the shape type and dtype tag the `safetensors` crate wants.
struct SafeView {
    dtype: Dtype,
    shape: Vec<usize>,
    host: HostTensor,
    /// `View::data` cannot fail: a host copy that does is kept here, and the write fails
    /// after the crate returns (the temporary file is then removed).
    failed: RefCell<Option<CheckpointError>>,
}

impl SafeView {
    fn of(
        path: &Path,
        name: &str,
        tensor: &Tensor,
        kind: Option<Kind>,
    ) -> Result<SafeView, CheckpointError> {
        let host = HostTensor::of_as(path, name, tensor, kind)?;
        let dtype = host.dtype.safetensors;
        let shape = host
            .size
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(name),
                reason: format!("negative size {:?}", host.size),
            })?;
        Ok(SafeView {
            dtype,
            shape,
            host,
            failed: RefCell::new(None),
        })
    }
}

impl View for &SafeView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Called once per tensor, as the crate writes it: a tensor not on the host is copied
    /// now, and the copy dropped once written.
    fn data(&self) -> Cow<'_, [u8]> {
        self.host.bytes().unwrap_or_else(|e| {
            *self.failed.borrow_mut() = Some(e);
            Cow::Owned(vec![0; self.host.byte_len()])
        })
    }
    fn data_len(&self) -> usize {
        self.host.byte_len()
    }
}

/// The crate's own messages are its variant names; these say what is wrong with the file.
pub(super) fn describe(err: &SafeTensorError) -> String {
    match err {
        SafeTensorError::HeaderTooSmall => "shorter than the 8-byte length of its header".into(),
        SafeTensorError::HeaderTooLarge => "the header length is larger than 100 MB".into(),
        SafeTensorError::InvalidHeaderLength => {
            "the header length goes past the end of the file (truncated?)".into()
        }
        SafeTensorError::InvalidHeader => "the header is not UTF-8 text".into(),
        SafeTensorError::InvalidHeaderStart => "the header does not start with '{'".into(),
        SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not a JSON map of tensor entries (or names an unknown dtype)".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors' data does not exactly fill the rest of the file (truncated?)".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!(
                "the data offsets of '{}' leave a gap or overlap",
                shown(name)
            )
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data size does not match its shape and dtype".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows".into(),
        other => format!("{other:?}"),
    }
}

pub(super) fn invalid(path: &Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Safetensors {
        path: path.to_path_buf(),
        reason: first_line(&reason.to_string()),
    }
}
