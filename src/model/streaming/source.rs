//! The file layer of the streaming path: one mapped input file, safetensors, `torch.save` or a
//! `torch.export` archive (`.pt2`), with what differs between them (where a tensor's bytes are, what can be checked of them,
//! what the in-memory path would do otherwise, how the output is written).

use crate::checkpoint::{
    safetensors_order, write_safetensors_to_sink, write_torch_zip_to_sink, InputRange, MappedPt2,
    MappedSafetensors, MappedTensor, MappedTorchSave, TensorHeader, TensorSink, WriteStats,
};
use crate::error::Result;
use crate::model::model_file::is_conventional_buffer;
use std::collections::HashSet;
use std::path::Path;

/// One mapped input file, in a format the streaming path reads and writes: the file layer of
/// [`StreamedModel`] (which tensors, where their bytes are, how the output is written).
pub(super) enum Source {
    Safetensors(MappedSafetensors),
    TorchSave(MappedTorchSave),
    Pt2(MappedPt2),
}

impl Source {
    /// The tensors, in the file's order.
    pub(super) fn tensors(&self) -> &[MappedTensor] {
        match self {
            Source::Safetensors(f) => f.tensors(),
            Source::TorchSave(f) => f.tensors(),
            Source::Pt2(f) => f.tensors(),
        }
    }

    /// Whether `name` is a buffer, never pruned: what a `.pt2` says is not a parameter, and in
    /// a state dict the tensors PyTorch modules register as buffers by convention.
    pub(super) fn is_buffer(&self, name: &str) -> bool {
        match self {
            Source::Pt2(f) => !f.is_parameter(name),
            _ => is_conventional_buffer(name),
        }
    }

    /// The mapped bytes of one of [`tensors`](Self::tensors).
    pub(super) fn bytes(&self, t: &MappedTensor) -> &[u8] {
        match self {
            Source::Safetensors(f) => f.bytes(t),
            Source::TorchSave(f) => f.bytes(t),
            Source::Pt2(f) => f.bytes(t),
        }
    }

    /// `t`'s bytes with where they lie in the file, for a copy in the kernel (safetensors; a
    /// `torch.save` zip or a `.pt2` is written through a zip writer, which takes bytes).
    pub(super) fn input_range(&self, t: &MappedTensor) -> Option<InputRange<'_>> {
        match self {
            Source::Safetensors(f) => Some(f.input_range(t)),
            Source::TorchSave(_) | Source::Pt2(_) => None,
        }
    }

    /// Checks what the file can check of `t`'s bytes before they are written (a `torch.save`
    /// storage's CRC). A file cut short fails its CRC on the zeros read past its new end: that
    /// it changed is the error then.
    pub(super) fn check(&self, t: &MappedTensor) -> Result<()> {
        match self {
            Source::Safetensors(_) => Ok(()),
            Source::TorchSave(f) => f
                .check(t)
                .map_err(|e| f.unchanged().err().unwrap_or(e).into()),
            Source::Pt2(f) => f
                .check(t)
                .map_err(|e| f.unchanged().err().unwrap_or(e).into()),
        }
    }

    /// Fails if the file changed since it was mapped (see [`MappedSafetensors::unchanged`]):
    /// checked after each tensor and before any output is put in place.
    pub(super) fn unchanged(&self) -> Result<()> {
        match self {
            Source::Safetensors(f) => Ok(f.unchanged()?),
            Source::TorchSave(f) => Ok(f.unchanged()?),
            Source::Pt2(f) => Ok(f.unchanged()?),
        }
    }

    /// Why the in-memory path would write something else than tensors read where they lie and
    /// written one by one, if so. `names`: every tensor name of the checkpoint.
    pub(super) fn unsupported(&self, names: &HashSet<&str>) -> Option<String> {
        match self {
            // `safetensors.torch.save_model` keeps one name of tied weights and maps the others
            // to it in the metadata: the in-memory path restores and writes those ties.
            Source::Safetensors(f) => f
                .metadata()
                .iter()
                .any(|(alias, kept)| alias != "format" && names.contains(kept.as_str()))
                .then(|| {
                    "the checkpoint has tied weights (metadata aliases), which are kept tied in memory"
                        .into()
                }),
            Source::TorchSave(f) => f.unmappable().map(str::to_string),
            Source::Pt2(f) => f.unmappable().map(str::to_string),
        }
    }

    /// The output's tensors in the order they are written: safetensors sorts them (see
    /// [`safetensors_order`]), `torch.save` and `.pt2` keep the state dict's order.
    pub(super) fn headers(&self) -> Vec<TensorHeader> {
        let mut headers: Vec<TensorHeader> = self
            .tensors()
            .iter()
            .map(|t| TensorHeader {
                name: t.name.clone(),
                kind: t.kind,
                shape: t.shape.clone(),
            })
            .collect();
        if let Source::Safetensors(_) = self {
            safetensors_order(&mut headers);
        }
        headers
    }

    /// Writes a file of this format at `path` (not atomically): `headers` in order, their bytes
    /// from `fill`. Returns how it was written.
    pub(super) fn write(
        &self,
        path: &Path,
        headers: &[TensorHeader],
        mut fill: impl FnMut(usize, &mut dyn TensorSink) -> Result<()>,
    ) -> Result<WriteStats> {
        match self {
            Source::Safetensors(_) => write_safetensors_to_sink(path, headers, &mut fill),
            Source::TorchSave(_) => write_torch_zip_to_sink(path, headers, &mut fill),
            Source::Pt2(f) => f.write_streamed(path, headers, &mut fill),
        }
    }
}
