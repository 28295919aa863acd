//! Pruning a checkpoint without holding it in memory: a safetensors file, a sharded safetensors
//! checkpoint (`model.safetensors.index.json`), a `torch.save` zip or a `torch.export` archive
//! (`.pt2`, written back as one). The input is
//! memory-mapped, L1 selections (per tensor or global) stream over the mapped data, and the
//! output is written tensor by tensor, a bounded chunk at a time, with the mask applied on the
//! fly. The result is byte for byte what [`ModelFile`](crate::model::ModelFile) writes after the
//! same pruning made permanent at once.
//!
//! Anonymous memory: the selection's histograms (512 KiB per thread, and up to 8 windows of as
//! much: `prune::selection::window`), a chunk buffer of [`WRITE_CHUNK`](entries::WRITE_CHUNK)
//! entries, the output's write buffers ([`OutputFile`](crate::checkpoint::OutputFile), 12 MiB),
//! one flag per channel of the structured tensors, and, for per-tensor methods that do not
//! stream (random unstructured, identity; any method on a tensor holding an infinity or a NaN),
//! one tensor's working set at a time (the tensor, its mask, the method's temporaries). N:M and
//! structured methods are pruned a chunk at a time (`nm`, `structured`). Nothing grows with the
//! number or total size of the tensors.
//!
//! This file is the reading side: the checkpoint opened and checked (one file or the shards of
//! an index), its tensors listed and reported, and whether a pruning streams at all
//! ([`StreamedModel::unsupported`]). `source` is the file layer (safetensors, `torch.save` or `.pt2`),
//! `write` the pruning and the write.

mod entries;
mod nm;
mod nm4;

mod ranks;
mod source;
mod structured;
mod write;

use self::source::Source;
use crate::checkpoint::{
    CheckpointError, Format, MappedPt2, MappedSafetensors, MappedTensor, MappedTorchSave,
    ShardIndex,
};
use crate::error::{PruneError, Result};
use crate::model::report::{Report, TensorReport};
use crate::prune::selection::RawScores;
use crate::{PruningMethod, PruningType};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::Kind;

/// One pruning step of a streamed run: `method` applied to `names`, each on its own or, with
/// `global`, ranked together (then the method must be [`L1Unstructured`](crate::L1Unstructured)).
pub struct StreamStep<'a> {
    /// In the order the in-memory path would take them (the checkpoint's order): it decides
    /// which tied entries a global L1 step prunes.
    pub names: Vec<String>,
    /// The method, applied as `prune` then `remove`.
    pub method: &'a dyn PruningMethod,
    /// Rank all `names` together (L1 only).
    pub global: bool,
}

/// Counts for the summary of a streamed run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Elements of every tensor written.
    pub numel: i64,
    /// Exact zeros among them.
    pub zeros: i64,
    /// Elements of the tensors the steps pruned.
    pub pruned_numel: i64,
    /// Exact zeros among them.
    pub pruned_zeros: i64,
    /// Files written: 1, or the shards (the index not counted).
    pub files: usize,
    /// Folders the output went to: 1, or, for ranks on machines that do not share a
    /// filesystem, one per machine ([`StreamedModel::prune_across`]).
    pub folders: usize,
    /// How the files were written (written back as they went, direct I/O or the page cache;
    /// bytes copied in the kernel).
    pub writes: crate::checkpoint::WriteStats,
}

/// A checkpoint opened for streaming: one memory-mapped file (safetensors or `torch.save`), or
/// the shards of a `*.safetensors.index.json`.
///
/// ```
/// use tch_prune::L1Unstructured;
/// use tch_prune::model::{StreamStep, StreamedModel};
/// # let dir = tempfile::tempdir()?;
/// # let input = dir.path().join("model.safetensors");
/// # let weight = tch::Tensor::randn([64, 32], tch::kind::FLOAT_CPU);
/// # tch::Tensor::write_safetensors(&[("fc.weight", &weight)], &input)?;
/// let model = StreamedModel::open(&input)?;
/// // Every floating-point tensor but the conventional buffers, in the checkpoint's order.
/// let names = model.parameters().into_iter().map(|(name, _)| name).collect();
/// let l1 = L1Unstructured::new(0.5)?;
/// let step = StreamStep { names, method: &l1, global: true };
/// let report = model.prune(&[step], dir.path().join("pruned.safetensors"))?;
/// assert_eq!(report.pruned_zeros, 1024);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamedModel {
    index: Option<ShardIndex>,
    files: Vec<Source>,
}

/// Where a tensor is: file, then index among the file's tensors.
type Location = (usize, usize);

impl StreamedModel {
    /// Opens a `.safetensors` file, a `torch.save` zip checkpoint (told apart by their content),
    /// a `*.index.json` of shards, or a folder holding exactly one `*.safetensors.index.json`.
    /// Every shard is checked against the index: each tensor of a shard is mapped to it, each
    /// tensor of the index is in its shard.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let Some(index_path) = ShardIndex::locate(path) else {
            let file = match Format::detect(path)? {
                Format::TorchZip => Source::TorchSave(MappedTorchSave::open(path)?),
                Format::Pt2 => Source::Pt2(MappedPt2::open(path)?),
                Format::TorchScript => return Err(CheckpointError::WrongFormat {
                    path: path.to_path_buf(),
                    expected:
                        "a safetensors file, a torch.save zip or a .pt2 archive (what is streamed)",
                    found: "a TorchScript module (read in memory: ModelFile)",
                }
                .into()),
                _ => Source::Safetensors(MappedSafetensors::open(path)?),
            };
            return Ok(StreamedModel {
                index: None,
                files: vec![file],
            });
        };
        let index = ShardIndex::read(&index_path)?;
        let folder = index.folder();
        let mut files = Vec::new();
        let mut found = 0;
        for shard in index.shards() {
            let file = MappedSafetensors::open(folder.join(&shard))?;
            for t in file.tensors() {
                if index.weight_map.get(&t.name) != Some(&shard) {
                    return Err(index_error(
                        &index_path,
                        format!(
                            "shard '{shard}' holds '{}', which the index maps elsewhere or not at all",
                            t.name
                        ),
                    ));
                }
            }
            found += file.tensors().len();
            files.push(Source::Safetensors(file));
        }
        if found != index.weight_map.len() {
            return Err(index_error(
                &index_path,
                format!(
                    "it maps {} tensors, but its shards hold {found}: a shard lacks a tensor the index names",
                    index.weight_map.len()
                ),
            ));
        }
        Ok(StreamedModel {
            index: Some(index),
            files,
        })
    }

    /// Whether the input is a sharded checkpoint.
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// The floating-point tensors with their number of dimensions, in the checkpoint's order
    /// (shards in file-name order, each in the order of its data): what
    /// [`ModelFile::parameters`](crate::model::ModelFile::parameters) lists for the same file.
    pub fn parameters(&self) -> Vec<(String, usize)> {
        self.tensors()
            .filter(|(f, t)| is_float(t.kind) && !self.files[*f].is_buffer(&t.name))
            .map(|(_, t)| (t.name.clone(), t.shape.len()))
            .collect()
    }

    /// The tensors PyTorch modules register as buffers by convention (`running_mean`,
    /// `running_var`, `num_batches_tracked`), or a `.pt2` says are not parameters, in the
    /// checkpoint's order: never pruned, as [`ModelFile::buffers`](crate::model::ModelFile::buffers).
    pub fn buffers(&self) -> Vec<String> {
        self.tensors()
            .filter(|(f, t)| self.files[*f].is_buffer(&t.name))
            .map(|(_, t)| t.name.clone())
            .collect()
    }

    /// Every tensor's name, shape and dtype, in the checkpoint's order, as the headers give
    /// them (nothing is read).
    pub fn shapes(&self) -> Vec<(String, Vec<i64>, Kind)> {
        self.tensors()
            .map(|(_, t)| (t.name.clone(), t.shape.clone(), t.kind))
            .collect()
    }

    /// Every tensor with its file, in the checkpoint's order.
    fn tensors(&self) -> impl Iterator<Item = (usize, &MappedTensor)> {
        self.files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| file.tensors().iter().map(move |t| (f, t)))
    }

    fn locations(&self) -> HashMap<&str, Location> {
        self.files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| {
                file.tensors()
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (t.name.as_str(), (f, i)))
            })
            .collect()
    }

    /// The sparsity of every tensor, counted over the mapped bytes (nothing is read into
    /// memory): what [`Report::with_ties`](crate::model::Report::with_ties) gives for the same file
    /// read in memory, when [`unsupported`](Self::unsupported) has nothing to say of it (no tied
    /// weights, not saved pruned). For a checkpoint too large to read, or sharded.
    pub fn report(&self) -> Result<Report> {
        if let Some(reason) = self.unsupported(&[]) {
            return Err(PruneError::NotStreamable(format!(
                "cannot report this checkpoint from its memory map: {reason}"
            )));
        }
        let rows = self
            .tensors()
            .map(|(f, t)| {
                let zeros = count_zeros(self.files[f].bytes(t), t.kind);
                TensorReport::new(&t.name, t.shape.clone(), t.kind, zeros)
            })
            .collect();
        self.unchanged()?;
        Ok(Report::from_rows(rows))
    }

    /// Fails, on one line naming the file, if an input file changed since it was mapped (cut
    /// short, grown or rewritten in place): what was read from it may be zeros or another
    /// version's bytes. [`prune`](Self::prune) and [`report`](Self::report) check it before
    /// they put anything in place or return.
    pub fn unchanged(&self) -> Result<()> {
        self.files.iter().try_for_each(Source::unchanged)
    }

    /// Total size of the tensors' data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.tensors().map(|(_, t)| t.byte_len() as u64).sum()
    }

    /// Why the streamed path would not give what the in-memory path gives for these steps, or
    /// `None` when it does. [`prune`](Self::prune) refuses what this refuses.
    pub fn unsupported(&self, steps: &[StreamStep<'_>]) -> Option<String> {
        let names: HashSet<&str> = self.tensors().map(|(_, t)| t.name.as_str()).collect();
        let saved_pruned = names.iter().any(|n| {
            n.strip_suffix("_mask").is_some_and(|base| {
                names.contains(format!("{base}_orig").as_str()) && !names.contains(base)
            })
        });
        if saved_pruned {
            return Some("the checkpoint was saved pruned (<name>_orig / <name>_mask pairs), which resumes in memory".into());
        }
        if let Some(reason) = self.files.iter().find_map(|f| f.unsupported(&names)) {
            return Some(reason);
        }
        let locations = self.locations();
        let mut seen = HashSet::new();
        let mut other_steps = 0;
        for step in steps {
            let l1 = step.method.smallest_magnitudes().is_some()
                && step.method.pruning_type() == PruningType::Unstructured;
            if step.global && !l1 {
                return Some(format!(
                    "global pruning with {:?} concatenates the tensors (only L1 streams)",
                    step.method
                ));
            }
            if !l1 {
                other_steps += 1;
            }
            for name in &step.names {
                if !seen.insert(name.as_str()) {
                    return Some(format!(
                        "'{name}' is pruned by two steps (iterative pruning composes masks in memory)"
                    ));
                }
                let Some(&(f, i)) = locations.get(name.as_str()) else {
                    return Some(format!("'{name}' is not in the checkpoint"));
                };
                let t = &self.files[f].tensors()[i];
                if !is_float(t.kind) {
                    return Some(format!("'{name}' is not a floating-point tensor"));
                }
                if l1 && !self.raw(f, t).usable() {
                    return Some(format!(
                        "the data of '{name}' is not aligned to its dtype in the file"
                    ));
                }
            }
            // Random methods draw in the order tensors are pruned: one tensor at a time in write
            // order, which is the in-memory order only within one step, and only if the file's
            // data is in the order its output is written.
            if !l1 && !step.global {
                let order = self.write_order();
                let positions: Vec<usize> = step
                    .names
                    .iter()
                    .map(|n| order.get(n).copied().unwrap_or(0))
                    .collect();
                if positions.windows(2).any(|w| w[0] > w[1]) {
                    return Some(format!(
                        "{:?} would see the tensors in another order than the file's",
                        step.method
                    ));
                }
            }
        }
        if other_steps > 1 {
            return Some(
                "more than one step uses a method other than L1 (their random draws would interleave)"
                    .into(),
            );
        }
        None
    }

    /// Every tensor's rank in the order the output is written.
    fn write_order(&self) -> HashMap<String, usize> {
        self.files
            .iter()
            .flat_map(Source::headers)
            .enumerate()
            .map(|(i, h)| (h.name, i))
            .collect()
    }

    fn raw<'a>(&'a self, file: usize, t: &MappedTensor) -> RawScores<'a> {
        RawScores {
            bytes: self.files[file].bytes(t),
            kind: t.kind,
        }
    }
}

fn index_error(path: &Path, reason: String) -> PruneError {
    crate::checkpoint::CheckpointError::InvalidIndex {
        path: path.to_path_buf(),
        reason,
    }
    .into()
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

/// Exact zeros among `bytes` of `kind` (-0.0 included, as `count_nonzero` counts).
fn count_zeros(bytes: &[u8], kind: Kind) -> i64 {
    let float = is_float(kind);
    let n = match kind.elt_size_in_bytes() {
        1 => bytes.iter().filter(|&&b| b == 0).count(),
        2 => {
            let m = if float { 0x7fff } else { 0xffff };
            bytes
                .chunks_exact(2)
                .filter(|b| u16::from_le_bytes([b[0], b[1]]) & m == 0)
                .count()
        }
        4 => {
            let m = if float { 0x7fff_ffff } else { u32::MAX };
            bytes
                .chunks_exact(4)
                .filter(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & m == 0)
                .count()
        }
        _ => {
            let m = if float { u64::MAX >> 1 } else { u64::MAX };
            bytes
                .chunks_exact(8)
                .filter(|b| u64::from_le_bytes((*b).try_into().unwrap_or([0; 8])) & m == 0)
                .count()
        }
    };
    n as i64
}
