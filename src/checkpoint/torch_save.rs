//! `torch.save` zip checkpoints (the default since PyTorch 1.6): read a state dict from one,
//! and write tensors as one.

use super::archive::{no_data_pkl, Opened, TorchArchive};
use super::atomic::atomic_write;
use super::dtype::DType;
use super::error::{shown as shown_name, CheckpointError};
use super::host_tensor::{check_names, HostTensor, TensorHeader};
use super::mapped::Counted;
use super::output_file::{OutputFile, Plain, TensorSink, WriteStats};
use super::pickle_writer::{state_dict_pickle, PickledStorage};
use super::sniff::Sniff;
use super::unpickler::Unpickler;
use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;
use tch::Tensor;

/// Reads a `torch.save` zip checkpoint holding a dict (plain or `OrderedDict`, e.g.
/// `model.state_dict()`) of tensors.
///
/// Returns the `(name, tensor)` pairs in the file's order as contiguous CPU tensors with
/// `requires_grad = false`, whatever device they were saved from. Offsets and strides are honoured
/// (a transposed weight saved as is reads back transposed), and tensors that shared a storage in
/// Python (views of one buffer, tied weights) come back as independent copies.
///
/// Also accepted: parameters saved with `keep_vars=True`, any pickle protocol from 2 to 5, and a
/// dict whose values are not all tensors but whose `"state_dict"` or else `"model"` entry is a dict
/// of tensors (the usual training checkpoint); that inner dict is returned. Everything else (the
/// legacy non-zip format, TorchScript archives, other objects, unknown globals, unsupported
/// dtypes, corrupt files) is a [`CheckpointError`].
pub fn read_torch_zip(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    let file = super::input_file::open_input(path)?;
    read_torch_zip_from(BufReader::new(file), path)
}

/// [`read_torch_zip`] on any seekable reader (e.g. an in-memory `Cursor`); `name` is only used in
/// error messages.
pub fn read_torch_zip_from<R: Read + Seek>(
    reader: R,
    name: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_zip(reader, name.as_ref(), false)
}

/// [`read_torch_zip`], but tied weights stay tied: names whose tensors are the same view of one
/// storage in the file (as `torch.save(model.state_dict())` writes the tied `Parameter`s of a
/// model, e.g. GPT-2's `transformer.wte.weight` and `lm_head.weight`) get the same tensor
/// (shallow clones sharing its memory), as a model with tied parameters has one `Parameter`.
/// Other views of a storage (a slice, another shape) are copies, as with [`read_torch_zip`].
pub fn read_torch_zip_tied(
    path: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    let file = super::input_file::open_input(path)?;
    read_zip(BufReader::new(file), path, true)
}

fn read_zip<R: Read + Seek>(
    reader: R,
    path: &Path,
    keep_ties: bool,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let (archive, pickle) = open_state_archive(reader, path)?;
    let mut storages = archive.into_storages();
    let mut vm = Unpickler::new(&pickle, path, &mut storages);
    vm.keep_ties(keep_ties);
    let root = vm.run()?;
    vm.into_state_dict(root)
}

/// Opens a `torch.save` zip checkpoint as every reader of one does (in memory or mapped): the
/// archive entered at the folder holding `data.pkl`, and that pickle. Other formats, TorchScript
/// archives and big-endian files are refused, each saying what it is.
pub(super) fn open_state_archive<R: Read + Seek>(
    reader: R,
    path: &Path,
) -> Result<(TorchArchive<'_, R>, Vec<u8>), CheckpointError> {
    let mut archive = match TorchArchive::open(reader, path)? {
        Opened::Archive(archive) => archive,
        Opened::NotZip(Sniff::Pickle) => {
            return Err(CheckpointError::LegacyFormat {
                path: path.to_path_buf(),
            })
        }
        Opened::NotZip(Sniff::Safetensors) => {
            return Err(CheckpointError::WrongFormat {
                path: path.to_path_buf(),
                expected: "a torch.save zip checkpoint",
                found: "a safetensors file",
            })
        }
        Opened::NotZip(_) => {
            return Err(CheckpointError::WrongFormat {
                path: path.to_path_buf(),
                expected: "a torch.save zip checkpoint",
                found: "not a zip archive",
            })
        }
    };
    if archive.layout.torchscript {
        return Err(CheckpointError::TorchScript {
            path: path.to_path_buf(),
        });
    }
    let prefix = archive
        .layout
        .prefix
        .take()
        .ok_or_else(|| no_data_pkl(path))?;
    archive.enter(prefix)?;
    let pickle = archive.data_pkl()?;
    Ok((archive, pickle))
}

/// Writes tensors as `torch.save(OrderedDict(tensors), path)` would: a zip checkpoint that
/// Python's `torch.load` reads (with `weights_only=True`, the default since PyTorch 2.6, and
/// with `mmap=True`: storages are 64-byte aligned) and [`read_torch_zip`] reads back bit for bit.
///
/// Tensors may live on any device, be non-contiguous or require grad: their values are written,
/// as contiguous CPU tensors, one storage each, but for tensors that are one (the same memory
/// seen the same way, as tied weights are): those share one storage, as `torch.save` writes them.
/// A contiguous CPU tensor is written from its own memory; any other is copied to the host as
/// it is written, one at a time (extra host memory: the largest such tensor).
/// Dtypes as for [`read_torch_zip`]; names must be unique. The pickle carries no `_metadata`
/// (module versions), which `load_state_dict` does not need. The file is replaced atomically
/// (see [`atomic_write`]).
pub fn write_torch_zip<S, T>(
    path: impl AsRef<Path>,
    tensors: &[(S, T)],
) -> Result<(), CheckpointError>
where
    S: AsRef<str>,
    T: std::borrow::Borrow<Tensor>,
{
    let path = path.as_ref();
    check_names(path, tensors.iter().map(|(name, _)| name.as_ref()))?;
    // Tied weights (names given the very same tensor memory, seen the same way) share one
    // storage, as `torch.save` writes a tied model's state dict.
    let mut hosts = Vec::with_capacity(tensors.len());
    let mut storage_of = Vec::with_capacity(tensors.len());
    let mut seen: HashMap<(usize, String, Vec<i64>, Vec<i64>), usize> = HashMap::new();
    for (name, tensor) in tensors {
        let t: &Tensor = tensor.borrow();
        let identity = (t.numel() > 0 && t.is_contiguous()).then(|| {
            let place = format!("{:?}{:?}", t.device(), t.kind());
            (t.data_ptr() as usize, place, t.size(), t.stride())
        });
        if let Some(&key) = identity.as_ref().and_then(|id| seen.get(id)) {
            storage_of.push(key);
            continue;
        }
        if let Some(id) = identity {
            seen.insert(id, hosts.len());
        }
        storage_of.push(hosts.len());
        hosts.push(HostTensor::of(path, name.as_ref(), t)?);
    }
    let names: Vec<&str> = tensors.iter().map(|(name, _)| name.as_ref()).collect();
    let headers: Vec<TensorHeader> = hosts
        .iter()
        .zip(&names)
        .map(|(host, name)| TensorHeader {
            name: name.to_string(),
            kind: host.dtype.kind,
            shape: host.size.clone(),
        })
        .collect();
    atomic_write(path, |tmp| {
        // One tensor in host memory at a time: a GPU tensor is copied as it is written.
        write_zip(tmp, path, &names, &storage_of, &headers, |key, out| {
            out.write_all(&hosts[key].bytes()?)
                .map_err(|e| CheckpointError::io(path, "cannot write", e))
        })
        .map(drop)
    })
}

/// Writes a `torch.save` zip checkpoint at `path` (created, not replaced atomically: wrap the
/// call in [`atomic_write`], which also syncs it), byte for byte what [`write_torch_zip`] writes
/// for the same tensors (each its own storage, in this order), without holding them: `fill(i,
/// out)` writes tensor `i`'s bytes (exactly its size, little-endian) to `out` when its entry
/// is written. [`write_torch_zip`] writes through this same code.
pub fn write_torch_zip_streamed<E>(
    path: &Path,
    tensors: &[TensorHeader],
    mut fill: impl FnMut(usize, &mut dyn Write) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<CheckpointError>,
{
    write_torch_zip_to_sink(path, tensors, |i, out| fill(i, out)).map(drop)
}

/// [`write_torch_zip_streamed`] with a [`TensorSink`] for `fill`, as the streamed writers of
/// every format take it; returns how the file was written (never with direct I/O: the zip
/// writer seeks back over its entries, which direct I/O's aligned buffers do not allow).
pub fn write_torch_zip_to_sink<E>(
    path: &Path,
    tensors: &[TensorHeader],
    fill: impl FnMut(usize, &mut dyn TensorSink) -> Result<(), E>,
) -> Result<WriteStats, E>
where
    E: From<CheckpointError>,
{
    check_names(path, tensors.iter().map(|t| t.name.as_str()))?;
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let storage_of: Vec<usize> = (0..tensors.len()).collect();
    write_zip(path, path, &names, &storage_of, tensors, fill)
}

/// The one writer of `torch.save` archives: name `n` over storage `storage_of[n]`, storage `i`
/// of `storages[i]`'s dtype and shape (its name unused), its bytes from `fill(i, out)`. The file
/// is created at `file` (an [`OutputFile`]) and synced; messages name `shown` (the destination,
/// when `file` is temporary). Returns how it was written.
fn write_zip<E>(
    file: &Path,
    shown: &Path,
    names: &[&str],
    storage_of: &[usize],
    storages: &[TensorHeader],
    mut fill: impl FnMut(usize, &mut dyn TensorSink) -> Result<(), E>,
) -> Result<WriteStats, E>
where
    E: From<CheckpointError>,
{
    let path = shown;
    let mut pickled = Vec::with_capacity(storages.len());
    for t in storages {
        let dtype = DType::of(t.kind).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: shown_name(&t.name),
            dtype: format!("{:?}", t.kind),
        })?;
        pickled.push(PickledStorage {
            dtype,
            size: &t.shape,
        });
    }
    let pickle = state_dict_pickle(names, storage_of, &pickled);

    let write_err = |e: std::io::Error| CheckpointError::io(path, "cannot write", e);
    let zip_err = |e: zip::result::ZipError| {
        CheckpointError::io(path, "cannot write", std::io::Error::other(e.to_string()))
    };
    let created = OutputFile::create_seekable(file).map_err(write_err)?;
    let mut zip = zip::ZipWriter::new(created);
    // Stored and aligned as torch.save does, so that torch.load(mmap=True) can map storages.
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let start = |zip: &mut zip::ZipWriter<_>, name: &str, len: usize| {
        let large = len as u64 >= u64::from(u32::MAX);
        zip.start_file(format!("archive/{name}"), options.large_file(large))
            .map_err(zip_err)
    };
    let small: [(&str, &[u8]); 4] = [
        ("data.pkl", &pickle),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
    ];
    for (name, bytes) in small {
        start(&mut zip, name, bytes.len())?;
        zip.write_all(bytes).map_err(write_err)?;
    }
    for (key, t) in storages.iter().enumerate() {
        start(&mut zip, &format!("data/{key}"), t.byte_len())?;
        Counted {
            inner: Plain(&mut zip),
            written: 0,
        }
        .fill_exactly(path, key, t, &mut fill)?;
    }
    start(&mut zip, "version", 2)?;
    zip.write_all(b"3\n").map_err(write_err)?;
    let written = zip.finish().map_err(zip_err)?;
    Ok(written.finish().map_err(write_err)?)
}
