//! `.pt2` archives read through a memory map, for the streaming path: the archive described as
//! [`Pt2Archive::read`] describes it (same checks, same refusals), its storages located, never
//! read. `torch.export.save` writes each storage whole, stored and 64-byte aligned, so a weight
//! that is its whole storage is a plain slice of the mapped file; the output is the input's
//! archive with those entries written by the caller, every other entry copied from the map.

use super::Pt2Archive;
use crate::checkpoint::archive::{check_crc, StorageEntry, StorageSource};
use crate::checkpoint::error::{shown, CheckpointError};
use crate::checkpoint::guarded_map::GuardedMap;
use crate::checkpoint::host_tensor::TensorHeader;
use crate::checkpoint::input_file::open_input;
use crate::checkpoint::mapped::{Counted, MappedTensor};
use crate::checkpoint::output_file::{Plain, TensorSink, WriteStats};
use crate::checkpoint::state_dict::StridedView;
use memmap2::Advice;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

/// A `torch.export` archive, its weights config read and its storages located, its data mapped
/// read-only: what [`StreamedModel`](crate::model::StreamedModel) prunes a `.pt2` larger than
/// memory through.
pub struct MappedPt2 {
    map: GuardedMap,
    archive: Pt2Archive,
    tensors: Vec<MappedTensor>,
    /// Each tensor's storage entry, in the order of `tensors`.
    entries: Vec<StorageEntry>,
    /// Each tensor's index, by name.
    index: HashMap<String, usize>,
    unmappable: Option<String>,
}

impl MappedPt2 {
    /// Maps `path`. The tensors are listed in the weights config's order. Errors as
    /// [`Pt2Archive::read`] (but for the storages' CRCs, checked by [`MappedPt2::check`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let map = GuardedMap::new(open_input(path)?, path)?;
        let described =
            describe(path, map.map()).map_err(|e| map.unchanged().err().unwrap_or(e))?;
        let (archive, tensors, entries, unmappable) = described;
        let _ = map.map().advise(Advice::Sequential);
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(MappedPt2 {
            map,
            archive,
            tensors,
            entries,
            index,
            unmappable,
        })
    }

    /// The parameters and buffers, in the archive's order.
    pub fn tensors(&self) -> &[MappedTensor] {
        &self.tensors
    }

    /// The mapped bytes of `tensor` (one of [`tensors`](Self::tensors)); empty for a tensor that
    /// is not all of its storage (see [`unmappable`](Self::unmappable)).
    pub fn bytes(&self, tensor: &MappedTensor) -> &[u8] {
        &self.map.map()[tensor.range.clone()]
    }

    /// Whether `name` is a parameter (the others are buffers, never pruned).
    pub fn is_parameter(&self, name: &str) -> bool {
        self.archive.is_parameter(name)
    }

    /// Checks the CRC of the storage entry of `tensor`, reading all of it (the bytes a writer is
    /// about to read anyway): a damaged file is refused, as [`Pt2Archive::read`] refuses it.
    pub fn check(&self, tensor: &MappedTensor) -> Result<(), CheckpointError> {
        let Some(&i) = self.index.get(&tensor.name) else {
            return Ok(());
        };
        let entry = &self.entries[i];
        if entry.unusable.is_some() {
            return Ok(());
        }
        let (start, end) = (entry.range.start as usize, entry.range.end as usize);
        check_crc(self.archive.path(), entry, &self.map.map()[start..end])
    }

    /// Fails, on one line naming the file, if the file changed since it was mapped.
    pub fn unchanged(&self) -> Result<(), CheckpointError> {
        self.map.unchanged()
    }

    /// Why some weight's bytes are not a plain slice of the file that is all of its storage, if
    /// so (the first reason found): tied weights, other views of one storage, a part of a
    /// storage, an empty storage (zeros of the tensor's size), a compressed entry. The
    /// in-memory path ([`Pt2Archive`]) reads those.
    pub fn unmappable(&self) -> Option<&str> {
        self.unmappable.as_deref()
    }

    /// Writes the archive at `path` (created, not replaced atomically: wrap the call in
    /// [`atomic_write`](crate::checkpoint::atomic_write)) with the bytes of tensor `i` of
    /// `headers` (the [`tensors`](Self::tensors), in their order, shapes and dtypes) written by
    /// `fill(i, out)` as its storage entry, every other entry copied from the map: byte for
    /// byte what [`Pt2Archive::write`] writes for the same values.
    pub fn write_streamed<E>(
        &self,
        path: &Path,
        headers: &[TensorHeader],
        mut fill: impl FnMut(usize, &mut dyn TensorSink) -> Result<(), E>,
    ) -> Result<WriteStats, E>
    where
        E: From<CheckpointError>,
    {
        if let Some(why) = &self.unmappable {
            return Err(CheckpointError::Unsupported {
                path: self.archive.path().to_path_buf(),
                reason: format!("cannot be written tensor by tensor: {why}"),
            }
            .into());
        }
        let same = headers.len() == self.tensors.len()
            && headers
                .iter()
                .zip(&self.tensors)
                .all(|(h, t)| h.name == t.name && h.kind == t.kind && h.shape == t.shape);
        if !same {
            return Err(CheckpointError::Unsupported {
                path: self.archive.path().to_path_buf(),
                reason:
                    "a .pt2 is written back with its own weights, in its order, shapes and dtypes"
                        .into(),
            }
            .into());
        }
        let by_entry: HashMap<&str, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        self.archive
            .copy_archive(Cursor::new(self.map.map()), path, path, |_, stamp, out| {
                let Some(&i) = by_entry.get(stamp.name.as_str()) else {
                    return Ok(false);
                };
                Counted {
                    inner: Plain(out),
                    written: 0,
                }
                .fill_exactly(path, i, &headers[i], &mut fill)?;
                Ok(true)
            })
    }
}

type Described = (
    Pt2Archive,
    Vec<MappedTensor>,
    Vec<StorageEntry>,
    Option<String>,
);

fn describe(path: &Path, map: &[u8]) -> Result<Described, CheckpointError> {
    let (archive, zip) = Pt2Archive::describe(Cursor::new(map), path)?;
    let mut located = zip.into_located();
    let mut unmappable = None;
    let mut first_over: HashMap<usize, usize> = HashMap::new();
    let mut tensors = Vec::with_capacity(archive.weights.len());
    let mut entries = Vec::with_capacity(archive.weights.len());
    for (i, w) in archive.weights.iter().enumerate() {
        let s = &archive.storages[w.storage];
        let key = s
            .entry
            .rsplit_once('/')
            .map(|(_, file)| format!("weights/{file}"))
            .unwrap_or_default();
        located.load(&key, s.nbytes)?;
        let entry = located.entries[&key].clone();
        let numel = s.nbytes / s.kind.elt_size_in_bytes() as u64;
        let whole = s.nbytes > 0
            && StridedView::new(numel as i64, w.view.offset, &w.view.size, &w.view.stride)
                .is_ok_and(|v| v.contiguous_range() == Some((0, numel as usize)));
        let why = if let Some(why) = &entry.unusable {
            Some(why.clone())
        } else if let Some(&first) = first_over.get(&w.storage) {
            let first = &archive.weights[first];
            Some(if first.view == w.view {
                format!(
                    "'{}' and '{}' are one tensor (tied weights), which stay tied in memory",
                    shown(&first.name),
                    shown(&w.name)
                )
            } else {
                format!(
                    "'{}' and '{}' are views of one storage, which are copied in memory",
                    shown(&first.name),
                    shown(&w.name)
                )
            })
        } else if s.nbytes == 0 {
            Some(format!(
                "'{}' has an empty storage, which stands for zeros made in memory",
                shown(&w.name)
            ))
        } else if !whole {
            Some(format!(
                "'{}' is a view of part of its storage, read in memory",
                shown(&w.name)
            ))
        } else {
            None
        };
        first_over.entry(w.storage).or_insert(i);
        let range = match why {
            Some(why) => {
                unmappable.get_or_insert(why);
                0..0
            }
            None => entry.range.start as usize..entry.range.end as usize,
        };
        tensors.push(MappedTensor {
            name: w.name.clone(),
            kind: s.kind,
            shape: w.view.size.clone(),
            range,
        });
        entries.push(entry);
    }
    Ok((archive, tensors, entries, unmappable))
}
