//! `torch.save` zip checkpoints read through a memory map: the pickle is run by the same
//! unpickler as for [`read_torch_zip`](super::read_torch_zip) (same allow-list, same limits, same
//! refusals), but storages are only located in the file, never read, so each tensor comes out
//! as a name, a dtype, a shape and where its bytes lie. `torch.save` stores every storage
//! uncompressed and 64-byte aligned, so the bytes of a contiguous tensor are a plain slice of the
//! mapped file.

use super::archive::{check_crc, StorageEntry};
use super::error::{shown, CheckpointError};
use super::guarded_map::GuardedMap;
use super::host_tensor::TensorLayout;
use super::input_file::open_input;
use super::mapped::MappedTensor;
use super::torch_save::open_state_archive;
use super::unpickler::Unpickler;
use memmap2::Advice;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// A `torch.save` zip checkpoint (a dict of tensors, or a training checkpoint's `state_dict` /
/// `model` entry), its pickle read and its storages located, its data mapped read-only.
pub struct MappedTorchSave {
    path: PathBuf,
    map: GuardedMap,
    tensors: Vec<MappedTensor>,
    /// The storage entry of each tensor (by name), for [`MappedTorchSave::check`].
    entries: HashMap<String, StorageEntry>,
    unmappable: Option<String>,
    nested_under: String,
}

impl MappedTorchSave {
    /// Maps `path`. The tensors are listed in the state dict's order. Errors as
    /// [`read_torch_zip`](super::read_torch_zip) (but for the entries' CRCs, which only reading
    /// every byte checks), one line naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let map = GuardedMap::new(open_input(path)?, path)?;
        // A file cut short while its zip directory and pickle are read reads zeros: that, not
        // what the zeros look like, is the error.
        let (tensors, entries, unmappable, nested_under) =
            describe(path, map.map()).map_err(|e| map.unchanged().err().unwrap_or(e))?;
        // Read front to back: the kernel reads ahead and drops what was read first.
        let _ = map.map().advise(Advice::Sequential);
        Ok(MappedTorchSave {
            path: path.to_path_buf(),
            map,
            tensors,
            entries,
            unmappable,
            nested_under,
        })
    }

    /// Checks the CRC of the storage entry that holds `tensor`'s bytes, reading all of it (the
    /// bytes a writer is about to read anyway): a damaged file is refused, as
    /// [`read_torch_zip`](super::read_torch_zip) refuses it.
    pub fn check(&self, tensor: &MappedTensor) -> Result<(), CheckpointError> {
        match self.entries.get(&tensor.name) {
            Some(entry) if entry.unusable.is_none() => {
                let (start, end) = (entry.range.start as usize, entry.range.end as usize);
                check_crc(&self.path, entry, &self.map.map()[start..end])
            }
            _ => Ok(()),
        }
    }

    /// Fails, on one line naming the file, if the file changed (size or modification time) or
    /// was read past a new end since it was mapped: what was read from it must not be written.
    pub fn unchanged(&self) -> Result<(), CheckpointError> {
        self.map.unchanged()
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, in the state dict's order.
    pub fn tensors(&self) -> &[MappedTensor] {
        &self.tensors
    }

    /// The mapped bytes of `tensor` (one of [`tensors`](Self::tensors)); empty for every tensor
    /// when [`unmappable`](Self::unmappable) says why.
    pub fn bytes(&self, tensor: &MappedTensor) -> &[u8] {
        &self.map.map()[tensor.range.clone()]
    }

    /// Why some tensor's bytes are not a plain slice of the file, if so (the first reason
    /// found): a compressed storage entry, a strided view of its storage, names that are one
    /// tensor (tied weights, which a writer keeps as one storage) or other views of one storage
    /// (which a writer copies).
    pub fn unmappable(&self) -> Option<&str> {
        self.unmappable.as_deref()
    }

    /// The key the state dict was found under in a training checkpoint (`"state_dict."` or
    /// `"model."`), or `""` when the file is the state dict itself.
    pub fn nested_under(&self) -> &str {
        &self.nested_under
    }
}

type Described = (
    Vec<MappedTensor>,
    HashMap<String, StorageEntry>,
    Option<String>,
    String,
);

/// The tensors of the archive in `map`, where each one's bytes are, and why some are not a
/// plain slice of it (the first reason).
fn describe(path: &Path, map: &[u8]) -> Result<Described, CheckpointError> {
    let (archive, pickle) = open_state_archive(Cursor::new(map), path)?;
    let mut storages = archive.into_located();
    let mut vm = Unpickler::new(&pickle, path, &mut storages);
    let root = vm.run()?;
    let (nested_under, layouts) = vm.into_layouts(root)?;
    let mut unmappable = None;
    // The first name over each storage, with its view.
    let mut users: HashMap<&str, (ViewOf<'_>, &str)> = HashMap::new();
    let mut tensors = Vec::with_capacity(layouts.len());
    let mut by_name = HashMap::with_capacity(layouts.len());
    for (name, layout) in &layouts {
        let entry = storages.entries.get(&layout.storage).ok_or_else(|| {
            CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!(
                    "the storage of '{}' was never located",
                    shown(&format!("{nested_under}{name}"))
                ),
            }
        })?;
        let why = match placed(layout, entry) {
            Ok(range) => {
                let view = (
                    layout.storage.as_str(),
                    layout.kind,
                    layout.offset,
                    &layout.size[..],
                    &layout.stride[..],
                );
                match users.get(layout.storage.as_str()) {
                    Some((first_view, first)) if *first_view == view => Err(format!(
                        "'{}' and '{}' are one tensor (tied weights), which stay tied in memory",
                        shown(first),
                        shown(name)
                    )),
                    // Written as copies, which the in-memory reader bounds: a few bytes of
                    // pickle could otherwise ask for an output of any size.
                    Some((_, first)) => Err(format!(
                        "'{}' and '{}' are views of one storage, which are copied in memory",
                        shown(first),
                        shown(name)
                    )),
                    None => {
                        users.insert(layout.storage.as_str(), (view, name));
                        Ok(range)
                    }
                }
            }
            Err(why) => Err(why.unwrap_or_else(|| {
                format!(
                    "'{}' is a strided view of its storage, made contiguous in memory",
                    shown(name)
                )
            })),
        };
        let range = why.unwrap_or_else(|why| {
            unmappable.get_or_insert(why);
            0..0
        });
        by_name.insert(name.clone(), entry.clone());
        tensors.push(MappedTensor {
            name: name.clone(),
            kind: layout.kind,
            shape: layout.size.clone(),
            range,
        });
    }
    Ok((tensors, by_name, unmappable, nested_under))
}

/// A view of a storage: key, dtype, offset, size, stride. Names over the same one are tied.
type ViewOf<'a> = (&'a str, tch::Kind, i64, &'a [i64], &'a [i64]);

/// The bytes of the file a tensor covers, if it is a contiguous slice of a stored entry; else
/// the entry's reason, or `None` for a strided view.
fn placed(
    layout: &TensorLayout,
    entry: &StorageEntry,
) -> Result<std::ops::Range<usize>, Option<String>> {
    if let Some(why) = &entry.unusable {
        return Err(Some(why.clone()));
    }
    let (first, end) = layout.elements.ok_or(None)?;
    let size = layout.kind.elt_size_in_bytes();
    // In bounds of the file: the view was checked against the storage's element count, the
    // entry's size against that count, and the entry against the file's length.
    let start = entry.range.start as usize;
    Ok(start + first * size..start + end * size)
}
