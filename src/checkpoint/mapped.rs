//! Safetensors files read through a memory map, and written tensor by tensor: what pruning a
//! checkpoint larger than memory needs. The tensors' bytes are never copied into the process's
//! own memory by this module: they are read where the kernel maps the file (page cache, which
//! the kernel can drop and read again), and written from whatever the caller hands over.

use super::dtype::DType;
use super::error::{shown, CheckpointError};
use super::guarded_map::GuardedMap;
pub use super::host_tensor::TensorHeader;
use super::output_file::{InputRange, OutputFile, TensorSink, WriteStats};
use super::safetensors::{invalid, open_checked, CheckedHeader};
use ::safetensors::tensor::{Dtype, TensorInfo};
use memmap2::Advice;
use serde::ser::{SerializeMap, Serializer};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Kind;

/// One tensor of a [`MappedSafetensors`] file.
#[derive(Clone, Debug)]
pub struct MappedTensor {
    /// Its name in the file.
    pub name: String,
    /// Its dtype.
    pub kind: Kind,
    /// Its shape.
    pub shape: Vec<i64>,
    /// The tensor's bytes within the file.
    pub(super) range: std::ops::Range<usize>,
}

impl MappedTensor {
    /// Its number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }

    /// The tensor's size in bytes.
    pub fn byte_len(&self) -> usize {
        self.range.len()
    }
}

/// A safetensors file, its header parsed and checked as [`read_safetensors`](super::read_safetensors)
/// checks it, its data mapped read-only.
pub struct MappedSafetensors {
    path: PathBuf,
    map: GuardedMap,
    tensors: Vec<MappedTensor>,
    metadata: HashMap<String, String>,
}

impl MappedSafetensors {
    /// Maps `path`. The tensors are listed in the order of their data in the file. Errors as
    /// [`read_safetensors`](super::read_safetensors) (dtypes outside the crate's table included),
    /// one line naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let CheckedHeader {
            file,
            data_start,
            tensors,
            metadata,
        } = open_checked(path)?;
        let tensors = tensors
            .into_iter()
            .map(|t| MappedTensor {
                name: t.name,
                kind: t.kind,
                shape: t.shape,
                range: data_start + t.offsets.0..data_start + t.offsets.1,
            })
            .collect();
        let map = GuardedMap::new(file, path)?;
        // Read front to back: the kernel reads ahead and drops what was read first.
        // (`MADV_WILLNEED` on the next chunk was measured slower under a memory cgroup.)
        let _ = map.map().advise(Advice::Sequential);
        Ok(MappedSafetensors {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's `__metadata__` text pairs (empty when it has none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The tensors, in the order of their data in the file.
    pub fn tensors(&self) -> &[MappedTensor] {
        &self.tensors
    }

    /// The mapped bytes of `tensor` (one of [`tensors`](Self::tensors)). If the file shrinks
    /// while they are read, the bytes past its new end read as zeros: call
    /// [`unchanged`](Self::unchanged) before using what was read.
    pub fn bytes(&self, tensor: &MappedTensor) -> &[u8] {
        &self.map.map()[tensor.range.clone()]
    }

    /// The mapped bytes of `tensor` with where they lie in the file, for
    /// [`TensorSink::write_unchanged`] (which may copy them file to file in the kernel).
    pub fn input_range(&self, tensor: &MappedTensor) -> InputRange<'_> {
        InputRange {
            bytes: self.bytes(tensor),
            file: self.map.file(),
            offset: tensor.range.start as u64,
        }
    }

    /// Fails, on one line naming the file, if the file changed (size or modification time) or
    /// was read past a new end since it was mapped: what was read from it must not be written.
    pub fn unchanged(&self) -> Result<(), CheckpointError> {
        self.map.unchanged()
    }
}

/// The order in which the `safetensors` crate (and Python's `safetensors`) lay tensors out: by
/// dtype, widest first, then by name. [`write_safetensors_streamed`] asks for their bytes in
/// this order.
pub fn safetensors_order(tensors: &mut [TensorHeader]) {
    let dtype = |t: &TensorHeader| DType::of(t.kind).map(|d| d.safetensors);
    tensors.sort_by(|a, b| dtype(b).cmp(&dtype(a)).then_with(|| a.name.cmp(&b.name)));
}

/// Writes a safetensors file at `path` (created, not replaced atomically: wrap the call in
/// [`atomic_write`](super::atomic_write) or write into a folder that is renamed whole), byte for
/// byte what [`write_safetensors`](super::write_safetensors) writes for the same tensors:
/// `tensors` must already be in [`safetensors_order`]. `fill(i, out)` writes tensor `i`'s bytes
/// (exactly its size, little-endian) to `out`, which buffers them; nothing else is held. The
/// file is synced. [`write_safetensors_to_sink`] is the same with a sink that can also copy
/// an input's bytes in the kernel, and says how the file was written.
pub fn write_safetensors_streamed<E>(
    path: &Path,
    tensors: &[TensorHeader],
    mut fill: impl FnMut(usize, &mut dyn Write) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<CheckpointError>,
{
    write_safetensors_to_sink(path, tensors, |i, out| fill(i, out)).map(drop)
}

/// [`write_safetensors_streamed`] into an [`OutputFile`]: `fill(i, out)` may write bytes, or
/// hand over an input's bytes with [`TensorSink::write_unchanged`], which copies them in the
/// kernel where it can. The file is written by the [`WritePath`](super::WritePath) the
/// environment asks for, and synced; the returned [`WriteStats`] say how it was written.
pub fn write_safetensors_to_sink<E>(
    path: &Path,
    tensors: &[TensorHeader],
    mut fill: impl FnMut(usize, &mut dyn TensorSink) -> Result<(), E>,
) -> Result<WriteStats, E>
where
    E: From<CheckpointError>,
{
    let io = |e| CheckpointError::io(path, "cannot write", e);
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for t in tensors {
        let dtype = DType::of(t.kind)
            .ok_or_else(|| CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(&t.name),
                reason: format!("cannot write dtype {:?}", t.kind),
            })?
            .safetensors;
        let shape = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        let n = t.byte_len();
        infos.push((
            t.name.as_str(),
            TensorInfo {
                dtype,
                shape,
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let header = header_bytes(&infos).map_err(|e| invalid(path, e))?;
    let file = OutputFile::create(path).map_err(io)?;
    let mut out = Counted {
        inner: file,
        written: 0,
    };
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        out.fill_exactly(path, i, t, &mut fill)?;
    }
    Ok(out.inner.finish().map_err(io)?)
}

/// Counts what goes through, to check each tensor's size.
pub(super) struct Counted<W> {
    pub(super) inner: W,
    pub(super) written: usize,
}

impl<W: TensorSink> Counted<W> {
    /// Has `fill` write tensor `i`, `t`, which must come to exactly `t`'s size: another count
    /// would shift every tensor after it.
    pub(super) fn fill_exactly<E: From<CheckpointError>>(
        &mut self,
        path: &Path,
        i: usize,
        t: &TensorHeader,
        fill: &mut impl FnMut(usize, &mut dyn TensorSink) -> Result<(), E>,
    ) -> Result<(), E> {
        let before = self.written;
        fill(i, self)?;
        let written = self.written - before;
        if written != t.byte_len() {
            return Err(CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(&t.name),
                reason: format!(
                    "{written} bytes were written for a tensor of {}",
                    t.byte_len()
                ),
            }
            .into());
        }
        Ok(())
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: TensorSink> TensorSink for Counted<W> {
    fn write_unchanged(&mut self, range: InputRange<'_>) -> std::io::Result<()> {
        self.inner.write_unchanged(range)?;
        self.written += range.bytes.len();
        Ok(())
    }
}

/// The header as `safetensors::tensor::serialize` writes it: a JSON map with `__metadata__`
/// (`{"format": "pt"}`, as [`write_safetensors`](super::write_safetensors) writes) first, then
/// the tensors in order, padded with spaces to a multiple of 8 bytes.
fn header_bytes(infos: &[(&str, TensorInfo)]) -> Result<Vec<u8>, String> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut buf);
    let mut map = ser
        .serialize_map(Some(infos.len() + 1))
        .map_err(|e| e.to_string())?;
    map.serialize_entry("__metadata__", &metadata)
        .map_err(|e| e.to_string())?;
    for (name, info) in infos {
        map.serialize_entry(name, info).map_err(|e| e.to_string())?;
    }
    map.end().map_err(|e| e.to_string())?;
    let extra = (8 - buf.len() % 8) % 8;
    buf.extend(std::iter::repeat_n(b' ', extra));
    Ok(buf)
}

/// The dtype `safetensors` writes for `kind`, if the crate's table has it.
pub fn safetensors_dtype(kind: Kind) -> Option<Dtype> {
    DType::of(kind).map(|d| d.safetensors)
}
