//! Pruning a checkpoint without holding it in memory: a safetensors file, a sharded safetensors
//! checkpoint (`model.safetensors.index.json`) or a `torch.save` zip. The input is
//! memory-mapped, L1 selections (per tensor or global) stream over the mapped data, and the
//! output is written tensor by tensor, a bounded chunk at a time, with the mask applied on the fly. The result is byte for byte what
//! [`ModelFile`](crate::model::ModelFile) writes after the same pruning made permanent at once.
//!
//! Anonymous memory: the selection's histograms (512 KiB per thread), a few chunk buffers of
//! [`WRITE_CHUNK`] entries, and, for per-tensor methods other than L1 (random, structured,
//! identity), one tensor's working set at a time (the tensor, its mask, the method's
//! temporaries). Nothing grows with the number or total size of the tensors.

use crate::checkpoint::{
    atomic_write, atomic_write_dir, check_room, safetensors_order, write_safetensors_streamed,
    write_torch_zip_streamed, Format, MappedSafetensors, MappedTensor, MappedTorchSave, ShardIndex,
    TensorHeader,
};
use crate::error::{PruneError, Result};
use crate::model::model_file::is_conventional_buffer;
use crate::model::report::{Report, TensorReport};
use crate::model::script_model::add_dotted;
use crate::prune::pruner::MASK_PIECE;
use crate::prune::selection::{smallest_threshold, RawScores, Threshold};
use crate::{Pruner, PruningMethod, PruningType};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Entries per chunk of the masked write: 4 MiB of f32, small against any budget, large enough
/// for libtorch's vectorized multiply to dominate its call overhead.
pub(crate) const WRITE_CHUNK: usize = 1 << 20;

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
}

/// A checkpoint opened for streaming: one memory-mapped file (safetensors or `torch.save`), or
/// the shards of a `*.safetensors.index.json`.
///
/// ```
/// use tch_prune::{L1Unstructured, StreamStep, StreamedModel};
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

/// One mapped input file, in a format the streaming path reads and writes: the file layer of
/// [`StreamedModel`] (which tensors, where their bytes are, how the output is written).
enum Source {
    Safetensors(MappedSafetensors),
    TorchSave(MappedTorchSave),
}

impl Source {
    /// The tensors, in the file's order.
    fn tensors(&self) -> &[MappedTensor] {
        match self {
            Source::Safetensors(f) => f.tensors(),
            Source::TorchSave(f) => f.tensors(),
        }
    }

    /// The mapped bytes of one of [`tensors`](Self::tensors).
    fn bytes(&self, t: &MappedTensor) -> &[u8] {
        match self {
            Source::Safetensors(f) => f.bytes(t),
            Source::TorchSave(f) => f.bytes(t),
        }
    }

    /// Checks what the file can check of `t`'s bytes before they are written (a `torch.save`
    /// storage's CRC). A file cut short fails its CRC on the zeros read past its new end: that
    /// it changed is the error then.
    fn check(&self, t: &MappedTensor) -> Result<()> {
        match self {
            Source::Safetensors(_) => Ok(()),
            Source::TorchSave(f) => f
                .check(t)
                .map_err(|e| f.unchanged().err().unwrap_or(e).into()),
        }
    }

    /// Fails if the file changed since it was mapped (see [`MappedSafetensors::unchanged`]):
    /// checked after each tensor and before any output is put in place.
    fn unchanged(&self) -> Result<()> {
        match self {
            Source::Safetensors(f) => Ok(f.unchanged()?),
            Source::TorchSave(f) => Ok(f.unchanged()?),
        }
    }

    /// Why the in-memory path would write something else than tensors read where they lie and
    /// written one by one, if so. `names`: every tensor name of the checkpoint.
    fn unsupported(&self, names: &HashSet<&str>) -> Option<String> {
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
        }
    }

    /// The output's tensors in the order they are written: safetensors sorts them (see
    /// [`safetensors_order`]), `torch.save` keeps the state dict's order.
    fn headers(&self) -> Vec<TensorHeader> {
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
    /// from `fill`.
    fn write(
        &self,
        path: &Path,
        headers: &[TensorHeader],
        mut fill: impl FnMut(usize, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        match self {
            Source::Safetensors(_) => write_safetensors_streamed(path, headers, &mut fill),
            Source::TorchSave(_) => write_torch_zip_streamed(path, headers, &mut fill),
        }
    }
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
            .filter(|(_, t)| is_float(t.kind) && !is_conventional_buffer(&t.name))
            .map(|(_, t)| (t.name.clone(), t.shape.len()))
            .collect()
    }

    /// The tensors PyTorch modules register as buffers by convention (`running_mean`,
    /// `running_var`, `num_batches_tracked`), in the checkpoint's order: never pruned, as
    /// [`ModelFile::buffers`](crate::model::ModelFile::buffers).
    pub fn buffers(&self) -> Vec<String> {
        self.tensors()
            .filter(|(_, t)| is_conventional_buffer(&t.name))
            .map(|(_, t)| t.name.clone())
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

    /// Prunes the steps' tensors, each pruning made permanent, and writes the checkpoint to
    /// `output`: for one file, a file of its format replaced atomically; for a sharded input, a
    /// folder (that must not exist yet, or be empty) holding the same shards and an index of the
    /// same name, which appears whole or not at all. The bytes written are those
    /// [`ModelFile::save`](crate::model::ModelFile::save) writes after the same steps.
    pub fn prune(
        &self,
        steps: &[StreamStep<'_>],
        output: impl AsRef<Path>,
    ) -> Result<StreamReport> {
        let output = output.as_ref();
        if let Some(reason) = self.unsupported(steps) {
            return Err(PruneError::NotStreamable(format!(
                "cannot stream this pruning: {reason}"
            )));
        }
        // Before the selection's passes, which take minutes on a checkpoint larger than memory.
        check_room(output, self.byte_len())?;
        let locations = self.locations();
        let order = self.write_order();
        let mut roles: HashMap<&str, Role<'_>> = HashMap::new();
        for step in steps {
            if step.names.is_empty() {
                return Err(PruneError::NothingToPrune);
            }
            let amount = step.method.smallest_magnitudes();
            match amount {
                Some(amount) if step.global => {
                    let parts: Vec<RawScores<'_>> = step
                        .names
                        .iter()
                        .map(|n| {
                            let (f, i) = locations[n.as_str()];
                            self.raw(f, &self.files[f].tensors()[i])
                        })
                        .collect();
                    let total: usize = parts
                        .iter()
                        .map(|p| p.bytes.len() / p.kind.elt_size_in_bytes())
                        .sum();
                    let k = amount.to_count(total as i64)?;
                    let threshold = smallest_threshold(&parts, k)?;
                    // Ties go to the first tensors in the step's order; when the output visits
                    // them in another order, each gets its share up front.
                    let in_order = step.names.windows(2).all(|w| order[&w[0]] < order[&w[1]]);
                    if in_order {
                        let shared = std::rc::Rc::new(std::cell::RefCell::new(threshold));
                        for n in &step.names {
                            roles.insert(n, Role::L1(Share::Shared(shared.clone())));
                        }
                    } else {
                        let mut left = threshold.ties();
                        for (n, part) in step.names.iter().zip(&parts) {
                            let take = threshold.ties_in(part).min(left);
                            left -= take;
                            roles.insert(n, Role::L1(Share::Own(threshold.with_ties(take))));
                        }
                    }
                }
                Some(amount) => {
                    for n in &step.names {
                        let (f, i) = locations[n.as_str()];
                        let t = &self.files[f].tensors()[i];
                        // Checked before anything is written, and named: a step over many
                        // tensors can fail on one of them.
                        let k = amount
                            .to_count(t.numel() as i64)
                            .map_err(|e| e.in_tensor(n))?;
                        roles.insert(n, Role::L1(Share::PerTensor(k)));
                    }
                }
                None => {
                    for n in &step.names {
                        roles.insert(n, Role::Method(step.method));
                    }
                }
            }
        }

        // Per-tensor thresholds are found one or two tensors ahead of the write, on a thread of
        // their own: the selection's passes over the next tensor overlap the masked write of
        // this one.
        let mut ahead: Vec<(usize, RawScores<'_>, i64)> = roles
            .iter()
            .filter_map(|(n, role)| match role {
                Role::L1(Share::PerTensor(k)) => {
                    let (f, i) = locations[n];
                    Some((order[*n], self.raw(f, &self.files[f].tensors()[i]), *k))
                }
                _ => None,
            })
            .collect();
        ahead.sort_by_key(|(rank, _, _)| *rank);
        std::thread::scope(|s| {
            // A rendezvous: the next threshold waits for the writer, so the selection is never
            // more than one tensor ahead of the write (its pages stay in memory between the two).
            let (send, thresholds) = std::sync::mpsc::sync_channel(0);
            s.spawn(move || {
                for (_, raw, k) in ahead {
                    let threshold = smallest_threshold(&[raw], k);
                    let failed = threshold.is_err();
                    // A send fails once the writer has stopped: nothing more is wanted.
                    if send.send(threshold).is_err() || failed {
                        break;
                    }
                }
            });
            let mut writer = Writer {
                roles: &roles,
                thresholds,
                scratch: Scratch::default(),
                report: StreamReport::default(),
            };
            let written = self.write_all(output, &mut writer);
            // The receiver goes with the writer, before the scope waits for the thread: a thread
            // blocked on sending a threshold nobody will take then returns.
            let Writer { report, .. } = writer;
            written.map(|files| StreamReport { files, ..report })
        })
    }

    /// Writes the output: one file, or the shards and their index in a folder.
    fn write_all(&self, output: &Path, writer: &mut Writer<'_, '_>) -> Result<usize> {
        match &self.index {
            None => {
                atomic_write(output, |tmp| {
                    self.write_file(0, tmp, writer)?;
                    // Before the rename: the selection read the map too.
                    self.unchanged()
                })?;
                Ok(1)
            }
            Some(index) => {
                let index_name = index
                    .path
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("model.safetensors.index.json"));
                let shards = index.shards();
                atomic_write_dir(output, |tmp| -> Result<()> {
                    for (f, shard) in shards.iter().enumerate() {
                        self.write_file(f, &tmp.join(shard), writer)?;
                    }
                    let index_path = tmp.join(&index_name);
                    std::fs::write(&index_path, index.to_json()).map_err(|e| {
                        crate::checkpoint::CheckpointError::io(&index_path, "cannot write", e)
                    })?;
                    // Before the rename: a shard written first may have changed since.
                    self.unchanged()
                })?;
                Ok(shards.len())
            }
        }
    }

    /// Writes file `f` of the input, pruned, to `path`.
    fn write_file(&self, f: usize, path: &Path, writer: &mut Writer<'_, '_>) -> Result<()> {
        let file = &self.files[f];
        let headers = file.headers();
        let by_name: HashMap<&str, &MappedTensor> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        file.write(path, &headers, |i, out| -> Result<()> {
            let t = by_name[headers[i].name.as_str()];
            file.check(t)?;
            let raw = self.raw(f, t);
            let role = writer.roles.get(t.name.as_str());
            let scratch = &mut writer.scratch;
            let zeros = match role {
                None => write_unchanged(&raw, out, path)?,
                Some(Role::L1(share)) => match share {
                    Share::Shared(shared) => {
                        write_masked(&raw, &mut shared.borrow_mut(), scratch, out, path)?
                    }
                    Share::Own(threshold) => {
                        write_masked(&raw, &mut threshold.clone(), scratch, out, path)?
                    }
                    Share::PerTensor(_) => {
                        // No message only if the selection's thread panicked, which the scope
                        // then reports.
                        let mut threshold = writer.thresholds.recv().map_err(|_| {
                            PruneError::torch(format!("the selection of '{}' stopped", t.name))
                        })??;
                        write_masked(&raw, &mut threshold, scratch, out, path)?
                    }
                },
                Some(Role::Method(method)) => write_pruned_whole(t, &raw, *method, out, path)?,
            };
            // Stops at the first tensor read from a file that changed, not at the end.
            file.unchanged()?;
            let report = &mut writer.report;
            report.numel += t.numel() as i64;
            report.zeros += zeros;
            if role.is_some() {
                report.pruned_numel += t.numel() as i64;
                report.pruned_zeros += zeros;
            }
            Ok(())
        })
    }
}

/// The state of one streamed write, carried from file to file.
struct Writer<'r, 'a> {
    roles: &'r HashMap<&'a str, Role<'a>>,
    /// The per-tensor thresholds, in write order.
    thresholds: std::sync::mpsc::Receiver<Result<Threshold>>,
    scratch: Scratch,
    report: StreamReport,
}

/// What happens to a tensor.
enum Role<'a> {
    /// Its L1 selection.
    L1(Share),
    /// Another method, on the whole tensor in memory.
    Method(&'a dyn PruningMethod),
}

/// A tensor's part of an L1 selection.
enum Share {
    /// The step's threshold, whose tie allowance the tensors use up in write order.
    Shared(std::rc::Rc<std::cell::RefCell<Threshold>>),
    /// Its own allowance of ties.
    Own(Threshold),
    /// A per-tensor selection of this many entries, found by the selection's thread just before
    /// the tensor is written.
    PerTensor(i64),
}

fn index_error(path: &Path, reason: String) -> PruneError {
    crate::checkpoint::CheckpointError::InvalidIndex {
        path: path.to_path_buf(),
        reason,
    }
    .into()
}

fn io_error(path: &Path, e: std::io::Error) -> PruneError {
    crate::checkpoint::CheckpointError::io(path, "cannot write", e).into()
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

/// A tensor not pruned: its bytes as they are, from the mapping (booleans normalised to 0/1,
/// as the in-memory reader normalises them).
fn write_unchanged(raw: &RawScores<'_>, out: &mut dyn Write, path: &Path) -> Result<i64> {
    if raw.kind == Kind::Bool {
        let mut zeros = 0;
        for piece in raw.bytes.chunks(WRITE_CHUNK) {
            let normal: Vec<u8> = piece.iter().map(|&b| (b != 0) as u8).collect();
            zeros += count_zeros(&normal, Kind::Bool);
            out.write_all(&normal).map_err(|e| io_error(path, e))?;
        }
        return Ok(zeros);
    }
    let mut zeros = 0;
    for piece in raw.bytes.chunks(WRITE_CHUNK * 4) {
        zeros += count_zeros(piece, raw.kind);
        out.write_all(piece).map_err(|e| io_error(path, e))?;
    }
    Ok(zeros)
}

/// An L1-pruned tensor: `value * mask` a chunk at a time, the bytes the in-memory path writes.
/// Finite entries are masked in Rust ([`Threshold::apply_finite`]: the decision, the product
/// and the zero count in one pass over the mapped data); a piece holding an infinity or a NaN
/// is multiplied by libtorch instead, over the same [`MASK_PIECE`] entries and with the same
/// call the in-memory path makes (the boolean mask cast to the dtype, then `mul_out`), so NaN
/// payloads and `inf * 0` come out the same.
fn write_masked(
    raw: &RawScores<'_>,
    threshold: &mut Threshold,
    scratch: &mut Scratch,
    out: &mut dyn Write,
    path: &Path,
) -> Result<i64> {
    let size = raw.kind.elt_size_in_bytes();
    let numel = raw.bytes.len() / size;
    let (buffer, keep) = scratch.buffers(size);
    let mut zeros = 0;
    for start in (0..numel).step_by(WRITE_CHUNK) {
        let n = WRITE_CHUNK.min(numel - start);
        let chunk = &mut buffer[..n * size];
        for (p, piece) in chunk.chunks_mut(MASK_PIECE * size).enumerate() {
            let first = start + p * MASK_PIECE;
            zeros += match threshold.apply_finite(raw, first, piece) {
                Some(z) => z as i64,
                None => {
                    let keep = &mut keep[..piece.len() / size];
                    threshold.keep(raw, first, keep);
                    multiply_by_libtorch(raw, first, keep, piece)?
                }
            };
        }
        out.write_all(chunk).map_err(|e| io_error(path, e))?;
    }
    Ok(zeros)
}

/// `value * keep` for the entries `first..first + keep.len()` of `raw`, into `out`, by
/// libtorch as the in-memory path computes it; returns the zeros written.
fn multiply_by_libtorch(
    raw: &RawScores<'_>,
    first: usize,
    keep: &[bool],
    out: &mut [u8],
) -> Result<i64> {
    let size = raw.kind.elt_size_in_bytes();
    let n = keep.len() as i64;
    // SAFETY: the three blobs outlive the tensors over them (dropped at the end of this call);
    // the mapped input is only read (the mapping is read-only: a write would fault, not
    // corrupt), `keep` holds valid bools, `out` is this call's to write, `n` elements long,
    // and the selection checked the input's alignment (`out` is aligned by `Scratch`).
    let (input, keep, product) = unsafe {
        (
            Tensor::f_from_blob(
                raw.bytes[first * size..].as_ptr(),
                &[n],
                &[1],
                raw.kind,
                Device::Cpu,
            )?,
            Tensor::f_from_blob(
                keep.as_ptr() as *const u8,
                &[n],
                &[1],
                Kind::Bool,
                Device::Cpu,
            )?,
            Tensor::f_from_blob(out.as_mut_ptr(), &[n], &[1], raw.kind, Device::Cpu)?,
        )
    };
    let _ = input.f_mul_out(&product, &keep.f_to_kind(raw.kind)?)?;
    Ok(count_zeros(out, raw.kind))
}

/// The buffers of the masked writes, allocated once per run: allocating them per chunk let
/// glibc keep tens of MB of freed memory (its mmap threshold adapts upward).
#[derive(Default)]
struct Scratch {
    /// One chunk of output, as u64 so that it is aligned for every dtype.
    output: Vec<u64>,
    /// One piece's decisions, for the pieces libtorch multiplies.
    keep: Vec<bool>,
}

impl Scratch {
    /// The output buffer ([`WRITE_CHUNK`] entries of `size` bytes) and the decisions' buffer.
    fn buffers(&mut self, size: usize) -> (&mut [u8], &mut [bool]) {
        let words = WRITE_CHUNK * size / 8;
        if self.output.len() < words {
            self.output = vec![0; words];
            self.keep = vec![true; MASK_PIECE];
        }
        // SAFETY: plain bytes of the vector's initialized u64s.
        let output = unsafe {
            std::slice::from_raw_parts_mut(self.output.as_mut_ptr() as *mut u8, words * 8)
        };
        (output, &mut self.keep)
    }
}

/// A tensor pruned by another method: read whole into memory (one tensor's working set) and
/// pruned by the in-memory path's own code, [`Pruner::prune_and_remove`] in a store of its own.
fn write_pruned_whole(
    t: &MappedTensor,
    raw: &RawScores<'_>,
    method: &dyn PruningMethod,
    out: &mut dyn Write,
    path: &Path,
) -> Result<i64> {
    let tensor = Tensor::f_empty(t.shape.as_slice(), (t.kind, Device::Cpu))?;
    // SAFETY: a fresh contiguous tensor of exactly the mapped tensor's byte size.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.bytes.as_ptr(),
            tensor.data_ptr() as *mut u8,
            raw.bytes.len(),
        );
    }
    let vs = VarStore::new(Device::Cpu);
    let _ = add_dotted(&vs, "t", tensor, true);
    let pruner = Pruner::with_bool_masks(&vs);
    pruner
        .prune_and_remove("t", method, None)
        .map_err(|e| e.in_tensor(&t.name))?;
    let pruned = vs
        .variables()
        .remove("t")
        .ok_or_else(|| PruneError::UnknownTensor(t.name.clone()))?
        .f_contiguous()?;
    // SAFETY: contiguous CPU tensor of the mapped tensor's shape and dtype.
    let bytes =
        unsafe { std::slice::from_raw_parts(pruned.data_ptr() as *const u8, raw.bytes.len()) };
    let zeros = count_zeros(bytes, t.kind);
    out.write_all(bytes).map_err(|e| io_error(path, e))?;
    Ok(zeros)
}
