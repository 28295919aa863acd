//! `torch.export` archives (`.pt2`, written by `torch.export.save(ep, "model.pt2")`): the
//! parameters and buffers read, and the archive written back with new values for them, every
//! other entry (the program, constants, sample inputs, extra files) carried over byte for byte.
//!
//! Layout, as PyTorch 2.13 writes it (`torch/export/pt2_archive/_package.py`): a zip written by
//! `torch.save`'s writer (entries stored, their data 64-byte aligned) whose entries sit under
//! one folder `<root>/`:
//!
//! | Entry | What |
//! |---|---|
//! | `archive_format` | `pt2` |
//! | `models/<model>.json` | the program: an ATen graph, its signature, every value's meta |
//! | `data/weights/<model>_weights_config.json` | per parameter and buffer: `path_name`, `is_param`, `use_pickle`, `tensor_meta` |
//! | `data/weights/weight_<n>` | a storage's raw little-endian bytes, all of it |
//! | `data/constants/...`, `data/sample_inputs/<model>.pt`, `extra/...` | carried over unchanged |
//! | `data/aotinductor/...` | an AOTInductor package: compiled code (refused, see below) |
//!
//! A tensor is `torch.as_strided(storage, sizes, strides, storage_offset)` of the storage its
//! `path_name` names, read as its dtype; names with the same `path_name` share the storage, and
//! those with the same view too are tied weights (GPT-2's `lm_head.weight`), one tensor here.
//! Weights the archive pickles (`use_pickle`: tensor subclasses, which `torch.export.load`
//! unpickles with `weights_only=False`, running whatever the pickle names) are refused, never
//! read. The zip goes through the same checks as every archive of the crate
//! ([`open_archive`](super::zip_entries::open_archive): the central directory as PyTorch's
//! miniz reads it), every entry is read with its size bounded, and tensors built over a storage
//! are checked against it.

mod config;
pub(super) mod mapped;
mod reshaped;
mod write;

use self::config::{PayloadConfig, View};
use super::archive::{EntryStamp, Opened, StorageSource, TorchArchive};
use super::dtype::DType;
use super::error::{first_line, shown, CheckpointError};
use super::input_file::open_input;
use super::sniff::Sniff;
use super::state_dict::{
    typed_storage, StridedView, COPY_BUDGET_FACTOR, COPY_BUDGET_FLOOR, TENSOR_COST,
};
use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The largest weights config read (about 300 bytes per tensor): a bound against a header
/// asking for an absurd allocation, not a limit any real model reaches.
const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// A `torch.export` archive as read: where each parameter and buffer lies, and what the file
/// held, so that [`Pt2Archive::write`] writes it back with only the storages of changed
/// tensors rewritten.
///
/// ```no_run
/// # fn main() -> Result<(), tch_prune::checkpoint::CheckpointError> {
/// use tch_prune::checkpoint::Pt2Archive;
/// let (archive, tensors) = Pt2Archive::read("resnet18.pt2")?;
/// for (name, tensor) in &tensors {
///     let kind = if archive.is_parameter(name) { "parameter" } else { "buffer" };
///     println!("{name}: {kind} {:?}", tensor.size());
/// }
/// // Every other entry of the input is carried over unchanged.
/// archive.write("copy.pt2", &tensors)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pt2Archive {
    path: PathBuf,
    /// The folder every entry sits under (`<root>/`).
    root: String,
    /// The program's name (`model` for `torch.export.save`).
    model: String,
    /// Every entry of the input, for the second reading [`Pt2Archive::write`] makes.
    stamps: Vec<EntryStamp>,
    weights: Vec<Weight>,
    storages: Vec<Storage>,
    /// The names `is_param` marks, for [`Pt2Archive::is_parameter`].
    parameters: HashSet<String>,
}

/// One name of the weights config.
#[derive(Debug)]
struct Weight {
    name: String,
    is_param: bool,
    /// Index into [`Pt2Archive::storages`].
    storage: usize,
    view: View,
}

/// One `data/weights/<path_name>` entry.
#[derive(Debug)]
struct Storage {
    /// The full entry name.
    entry: String,
    nbytes: u64,
    /// The dtype its tensors read it as (all of them alike).
    kind: Kind,
}

impl Pt2Archive {
    /// Reads the archive at `path`: its parameters and buffers by their dotted names, in the
    /// weights config's order (the state dict's), as CPU tensors. Tied weights (one storage, one
    /// view) are one tensor under each name (shallow clones); other views of a shared storage are
    /// copies, so that pruning one changes no other.
    ///
    /// Errors: anything but a `torch.export.save` archive, an AOTInductor package, more than one
    /// program, pickled weights, unsupported dtypes or layouts, views past their storage, and
    /// every kind of broken zip.
    pub fn read(
        path: impl AsRef<Path>,
    ) -> Result<(Pt2Archive, Vec<(String, Tensor)>), CheckpointError> {
        let path = path.as_ref();
        let file = open_input(path)?;
        let (described, archive) = Pt2Archive::describe(BufReader::new(file), path)?;
        let weights_dir = format!("{}data/weights/", archive.prefix());
        let mut source = archive.into_storages();
        let tensors = build_tensors(
            path,
            &described.weights,
            &described.storages,
            &weights_dir,
            &mut source,
        )?;
        Ok((described, tensors))
    }

    /// The archive read from `reader` (`path` names it) but for its storages: the layout, the
    /// program's name, the weights config checked (every view against its storage's size), and
    /// every entry but the storages read through against its CRC, so that a damaged archive is
    /// refused before any work rather than when it is written. The zip, entered at its root,
    /// for the storages.
    fn describe<'p, R: std::io::Read + std::io::Seek>(
        reader: R,
        path: &'p Path,
    ) -> Result<(Pt2Archive, TorchArchive<'p, R>), CheckpointError> {
        let mut archive = match TorchArchive::open(reader, path)? {
            Opened::Archive(archive) => archive,
            Opened::NotZip(kind) => {
                return Err(CheckpointError::WrongFormat {
                    path: path.to_path_buf(),
                    expected: "a torch.export archive (.pt2)",
                    found: match kind {
                        Sniff::Safetensors => "a safetensors file",
                        Sniff::Pickle => "a legacy torch.save pickle",
                        _ => "not a zip archive",
                    },
                })
            }
        };
        let root = match (&archive.layout.root, archive.layout.archive_format) {
            (Some(root), true) => root.clone(),
            _ => {
                return Err(not_pt2(
                    path,
                    "it has no archive_format entry, so torch.export.save did not write it",
                ))
            }
        };
        let format = archive.read(&format!("{root}archive_format"), 64)?;
        if format != b"pt2" {
            return Err(not_pt2(
                path,
                &format!(
                    "its archive_format is '{}', not 'pt2'",
                    shown(&String::from_utf8_lossy(&format))
                ),
            ));
        }
        let names: Vec<String> = archive.entry_names().map(str::to_string).collect();
        if names
            .iter()
            .any(|n| n.starts_with(&format!("{root}data/aotinductor/")))
        {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: "an AOTInductor package (compiled code under data/aotinductor/, its weights baked into it): prune the ExportedProgram before compiling it — tch-prune prune on the archive torch.export.save wrote, then torch._inductor.aoti_compile_and_package(torch.export.load(pruned))".to_string(),
            });
        }
        let model = program_name(path, &root, &names)?;
        archive.enter(root.clone())?;
        let weights_dir = format!("{root}data/weights/");
        if archive
            .entry_size(&format!("{weights_dir}{model}.pt"))
            .is_some()
        {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("its weights are in the legacy pickled form (data/weights/{}.pt): load it with torch.export.load and save it again with torch.export.save", shown(&model)),
            });
        }
        let config_name = format!("{weights_dir}{model}_weights_config.json");
        if archive.entry_size(&config_name).is_none() {
            return Err(not_pt2(path, &format!("it has no {}", shown(&config_name))));
        }
        let config = archive.read(&config_name, MAX_CONFIG_BYTES)?;
        let config: PayloadConfig =
            serde_json::from_slice(&config).map_err(|e| CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!(
                    "{} is not a weights config: {}",
                    shown(&config_name),
                    first_line(&e.to_string())
                ),
            })?;

        let invalid = |name: &str, reason: String| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: shown(name),
            reason,
        };
        let mut weights = Vec::with_capacity(config.config.0.len());
        let mut storages: Vec<Storage> = Vec::new();
        let mut storage_of: HashMap<String, usize> = HashMap::new();
        for (name, meta) in config.config.0 {
            if meta.use_pickle {
                return Err(CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("'{}' is pickled (a tensor subclass, which torch.export.load unpickles with weights_only=False); tch-prune reads only raw weights and never runs a pickle's code: export the model with plain tensors", shown(&name)),
                });
            }
            let Some(tensor_meta) = meta.tensor_meta else {
                return Err(invalid(
                    &name,
                    "the weights config gives it no tensor_meta".into(),
                ));
            };
            let dtype = DType::of_export(tensor_meta.dtype).ok_or_else(|| {
                CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    tensor: shown(&name),
                    dtype: format!("torch.export ScalarType {}", tensor_meta.dtype),
                }
            })?;
            let view = tensor_meta.view().map_err(|r| invalid(&name, r))?;
            let p = &meta.path_name;
            if p.is_empty() || p.contains(['/', '\\']) || p == "." || p == ".." {
                return Err(invalid(
                    &name,
                    format!("its path_name '{}' is not a file name", shown(p)),
                ));
            }
            let storage = match storage_of.get(p) {
                Some(&i) => i,
                None => {
                    let entry = format!("{weights_dir}{p}");
                    let nbytes = archive.entry_size(&entry).ok_or_else(|| {
                        invalid(&name, format!("the archive has no entry {}", shown(&entry)))
                    })?;
                    let size = dtype.kind.elt_size_in_bytes() as u64;
                    if nbytes % size != 0 {
                        return Err(invalid(&name, format!("its storage {} holds {nbytes} bytes, not a whole number of {} elements", shown(&entry), dtype.name)));
                    }
                    storages.push(Storage {
                        entry,
                        nbytes,
                        kind: dtype.kind,
                    });
                    storage_of.insert(p.clone(), storages.len() - 1);
                    storages.len() - 1
                }
            };
            let s = &storages[storage];
            if s.kind != dtype.kind {
                return Err(invalid(
                    &name,
                    format!(
                        "it reads storage {} as {}, another name reads it as {:?}",
                        shown(&s.entry),
                        dtype.name,
                        s.kind
                    ),
                ));
            }
            // An empty storage stands for zeros of the tensor's size (what torch.export.load
            // makes of it); any other view must lie inside its storage.
            if s.nbytes > 0 {
                let numel = (s.nbytes / dtype.kind.elt_size_in_bytes() as u64) as i64;
                StridedView::new(numel, view.offset, &view.size, &view.stride)
                    .map_err(|r| invalid(&name, r))?;
            }
            weights.push(Weight {
                name,
                is_param: meta.is_param,
                storage,
                view,
            });
        }
        let stamps = archive.stamps()?;
        let storage_entries: HashSet<&str> = storages.iter().map(|s| s.entry.as_str()).collect();
        for stamp in &stamps {
            if !storage_entries.contains(stamp.name.as_str()) {
                archive.copy_entry(&stamp.name, &mut std::io::sink())?;
            }
        }
        let parameters = weights
            .iter()
            .filter(|w| w.is_param)
            .map(|w| w.name.clone())
            .collect();
        let described = Pt2Archive {
            path: path.to_path_buf(),
            root,
            model,
            stamps,
            weights,
            storages,
            parameters,
        };
        Ok((described, archive))
    }

    /// Whether `name` is a parameter (`is_param` in the weights config); the other names are
    /// buffers, which pruning never selects.
    pub fn is_parameter(&self, name: &str) -> bool {
        self.parameters.contains(name)
    }

    /// The names of the parameters and buffers, in the archive's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.weights.iter().map(|w| w.name.as_str())
    }

    /// The name of the program (`models/<model>.json`).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The file the archive was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn not_pt2(path: &Path, reason: &str) -> CheckpointError {
    CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason: format!("not a torch.export archive: {reason}"),
    }
}

/// The one program `models/<model>.json` of the archive.
fn program_name(path: &Path, root: &str, names: &[String]) -> Result<String, CheckpointError> {
    let models_dir = format!("{root}models/");
    let models: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix(&models_dir)?.strip_suffix(".json"))
        .filter(|m| !m.contains('/'))
        .collect();
    match models.as_slice() {
        [model] if !model.is_empty() => Ok(model.to_string()),
        [] | [_] => Err(not_pt2(path, "it has no models/<name>.json program")),
        many => Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "it holds {} programs ({}); tch-prune reads archives of one, as torch.export.save writes them",
                many.len(),
                many.iter().take(4).map(|m| shown(m)).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// The tensors of `weights`, in order, over their storages read from `source`: the first
/// tensor over a whole storage takes its memory, a name with the view of an earlier one
/// (a tie) gets that tensor, any other is a copy, charged to a budget of
/// [`COPY_BUDGET_FACTOR`] times the storages' bytes so that a small file cannot ask for much
/// more memory than it holds.
fn build_tensors(
    path: &Path,
    weights: &[Weight],
    storages: &[Storage],
    weights_dir: &str,
    source: &mut impl StorageSource,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let invalid = |name: &str, reason: String| CheckpointError::InvalidTensor {
        path: path.to_path_buf(),
        tensor: shown(name),
        reason,
    };
    let storage_bytes: u64 = storages.iter().map(|s| s.nbytes).sum();
    let budget = storage_bytes
        .saturating_mul(COPY_BUDGET_FACTOR)
        .max(COPY_BUDGET_FLOOR);
    let mut copied = 0u64;
    let mut charge = |name: &str, bytes: u64| {
        copied = copied.saturating_add(bytes.max(TENSOR_COST));
        if copied > budget {
            return Err(invalid(name, format!("copies of views over shared storages (and zeros for empty ones) would take {copied} bytes, more than {COPY_BUDGET_FACTOR} times the {storage_bytes} bytes of the storages (or {COPY_BUDGET_FLOOR}); refused")));
        }
        Ok(())
    };
    let torch = |name: &str, e: tch::TchError| {
        invalid(name, format!("libtorch: {}", first_line(&e.to_string())))
    };
    let mut bases: HashMap<usize, Tensor> = HashMap::new();
    let mut taken = vec![false; storages.len()];
    let mut views: HashMap<(usize, &View), Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(weights.len());
    for w in weights {
        let s = &storages[w.storage];
        if let Some(t) = views.get(&(w.storage, &w.view)) {
            charge(&w.name, 0)?;
            out.push((w.name.clone(), t.shallow_clone()));
            continue;
        }
        let elt = s.kind.elt_size_in_bytes() as u64;
        let t = if s.nbytes == 0 {
            let numel = w
                .view
                .size
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?));
            let bytes = numel
                .and_then(|n| n.checked_mul(elt))
                .ok_or_else(|| invalid(&w.name, format!("size {:?} is not valid", w.view.size)))?;
            charge(&w.name, bytes)?;
            Tensor::f_zeros(w.view.size.as_slice(), (s.kind, tch::Device::Cpu))
                .map_err(|e| torch(&w.name, e))?
        } else {
            let key = s
                .entry
                .strip_prefix(weights_dir)
                .map(|k| format!("weights/{k}"))
                .unwrap_or_default();
            let base = match bases.entry(w.storage) {
                std::collections::hash_map::Entry::Occupied(b) => b.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let bytes = source
                        .load(&key, s.nbytes)?
                        .ok_or_else(|| invalid(&w.name, "its storage was not read".into()))?;
                    slot.insert(typed_storage(&bytes, s.kind).map_err(|e| torch(&w.name, e))?)
                }
            };
            let numel = (s.nbytes / elt) as i64;
            let view = StridedView::new(numel, w.view.offset, &w.view.size, &w.view.stride)
                .map_err(|r| invalid(&w.name, r))?;
            let whole = view.contiguous_range() == Some((0, numel as usize)) && numel > 0;
            if whole && !taken[w.storage] {
                taken[w.storage] = true;
                base.f_view(w.view.size.as_slice())
                    .map_err(|e| torch(&w.name, e))?
            } else {
                charge(&w.name, view.numel as u64 * elt)?;
                base.f_as_strided(
                    w.view.size.as_slice(),
                    w.view.stride.as_slice(),
                    w.view.offset,
                )
                .and_then(|v| v.f_contiguous())
                .and_then(|v| {
                    // `contiguous` of a view that already is one is the view itself: copy.
                    let mut copy = v.f_empty_like()?;
                    copy.f_copy_(&v)?;
                    Ok(copy)
                })
                .map_err(|e| torch(&w.name, e))?
            }
        };
        views.insert((w.storage, &w.view), t.shallow_clone());
        out.push((w.name.clone(), t));
    }
    Ok(out)
}
