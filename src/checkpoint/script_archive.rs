//! The state dict of a TorchScript archive (`torch.jit.save`), read without running its code.
//!
//! libtorch's C API (and so tch's `CModule`) lists a TorchScript module's parameters but not its
//! buffers. [`read_torchscript_state`] reads them all, as Python's
//! `torch.jit.load(path).state_dict()` returns them, from the archive itself:
//!
//! * `<prefix>/data.pkl` is the module object tree, pickled by TorchScript: every module is an
//!   instance of a class `__torch__.<qualified name>` (e.g.
//!   `__torch__.torch.nn.modules.linear.___torch_mangle_3.Linear`) given a dict of its attributes
//!   (in slot order) by BUILD, and tensors refer to storages `<prefix>/data/<key>` as in
//!   `torch.save` files. The virtual machine of [`unpickler`](super::unpickler) reads it in its
//!   TorchScript mode, in which such classes give inert objects that record their class name and
//!   attributes; nothing is ever called.
//! * Which attributes are parameters and which are buffers is not in the pickle but in the class
//!   definitions under `<prefix>/code/`: the file `code/a/b/c.py` defines the classes `a.b.c.*`,
//!   and a module class starts with `class Name(Module):` followed by the lines
//!   `__parameters__ = ["weight", "bias", ]` and `__buffers__ = [...]`. Only those lines (and
//!   the class headers) are read, by [`script_classes`](super::script_classes); the code
//!   itself is never interpreted.
//! * `<prefix>/constants.pkl` holds the constants the code uses, which are not part of the state
//!   dict. libtorch unpickles it as it loads the module (a packed quantized class among them
//!   would run its C++ `__setstate__` on the file's bytes), so it is held to the same globals as
//!   `data.pkl` by the same virtual machine; its tensors are looked at, never read. So are the
//!   `code/*.py.debug_pkl` source-range tables, which libtorch unpickles when it reports an error.

use super::archive::{Opened, StorageSource, TorchArchive, MAX_PICKLE_BYTES};
use super::error::{shown, CheckpointError};
use super::script_classes::ScriptClasses;
use super::sniff::Sniff;
use super::unpickler::{Mode, Obj, Unpickler, Value, VmResult};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use tch::Tensor;

/// A class definition file larger than this is refused (real ones take kilobytes).
const MAX_CODE_FILE_BYTES: u64 = 64 << 20;
/// And all of them together.
const MAX_CODE_BYTES: u64 = 256 << 20;

/// Reads every tensor of a TorchScript module's state (parameters *and* buffers) from a
/// `torch.jit.save` archive, as `torch.jit.load(path).state_dict()` returns it in Python: the
/// same dotted names in the same order, the same dtypes, the values bit for bit, as contiguous
/// CPU tensors with `requires_grad = false` that share no memory with each other.
///
/// The order: per module, depth first from the root, first its parameters, then its buffers
/// (each in attribute order), then its submodules, in attribute order; the eager module's
/// `state_dict()` follows the same rule. Parameters and buffers set to `None` (e.g. the `bias`
/// of `Linear(bias=False)`) are left out. Buffers registered with `persistent=False` are
/// included: TorchScript does not keep that flag, and `torch.jit.load(path).state_dict()`
/// returns them (the eager module's does not). Tensors held in other attributes (plain tensor
/// attributes, lists, dicts) and constants are not state and are left out.
///
/// No code from the file runs: the pickle is read by an allow-listing virtual machine and the
/// class definitions are only scanned for their parameter and buffer lists. Errors (one line,
/// naming the file): not a TorchScript archive (a `torch.save` state dict is read by
/// [`read_state_dict`](super::read_state_dict)), Python globals other than TorchScript classes,
/// tensors and their helpers, classes the archive does not define, modules saved through their
/// own `__getstate__`, unsupported dtypes (e.g. quantized), corrupt or truncated files.
pub fn read_torchscript_state(
    path: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    let file = super::input_file::open_input(path)?;
    read_torchscript_state_from(BufReader::new(file), path)
}

/// [`read_torchscript_state`] on any seekable reader (e.g. an in-memory `Cursor`); `name` is only
/// used in error messages.
pub fn read_torchscript_state_from<R: Read + Seek>(
    reader: R,
    name: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = name.as_ref();
    let mut archive = open_script_archive(reader, path)?;

    let code = format!("{}code/", archive.prefix());
    let sources: Vec<String> = archive
        .entry_names()
        .filter(|name| name.starts_with(&code) && name.ends_with(".py"))
        .map(str::to_string)
        .collect();
    let mut classes = ScriptClasses::default();
    let mut total = 0u64;
    for name in sources {
        let source = archive.read(&name, MAX_CODE_FILE_BYTES)?;
        total += source.len() as u64;
        if total > MAX_CODE_BYTES {
            return Err(CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!("its code/ holds more than {MAX_CODE_BYTES} bytes"),
            });
        }
        let qualifier = name[code.len()..name.len() - ".py".len()].replace('/', ".");
        classes.add_file(&qualifier, &String::from_utf8_lossy(&source));
    }

    check_constants(&mut archive, path)?;
    let pickle = archive.data_pkl()?;
    let mut storages = archive.into_storages();
    read_module_state(&pickle, path, &mut storages, &classes)
}

/// The TorchScript archive in `reader`, its prefix entered; an archive of another kind is
/// named as such.
fn open_script_archive<R: Read + Seek>(
    reader: R,
    path: &Path,
) -> Result<TorchArchive<'_, R>, CheckpointError> {
    const EXPECTED: &str = "a TorchScript archive written by torch.jit.save";
    let wrong = |found: &'static str| CheckpointError::WrongFormat {
        path: path.to_path_buf(),
        expected: EXPECTED,
        found,
    };
    let mut archive = match TorchArchive::open(reader, path)? {
        Opened::Archive(archive) => archive,
        Opened::NotZip(Sniff::Pickle) => return Err(wrong("a pickle, not a zip archive")),
        Opened::NotZip(Sniff::Safetensors) => return Err(wrong("a safetensors file")),
        Opened::NotZip(_) => return Err(wrong("not a zip archive")),
    };
    let prefix = match (archive.layout.torchscript, archive.layout.prefix.take()) {
        (true, Some(prefix)) => prefix,
        (false, Some(_)) => {
            return Err(wrong(
                "a torch.save checkpoint (read it with read_state_dict)",
            ))
        }
        (true, None) => {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: "a TorchScript archive without data.pkl (written by PyTorch before 1.4?): load it and save it again with a recent PyTorch".into(),
            })
        }
        (false, None) => {
            return Err(CheckpointError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "the zip archive has neither data.pkl nor code/, so torch.jit.save did not write it".into(),
            })
        }
    };
    archive.enter(prefix)?;
    Ok(archive)
}

/// Runs the pickles libtorch unpickles from the TorchScript archive at `path` (`constants.pkl`
/// and `data.pkl` while it loads it, the `.debug_pkl` tables later) through the crate's
/// unpickler, without reading a tensor: what [`read_torchscript_state`] refuses of them is
/// refused before libtorch sees the file. Quantized tensors and packed parameters are
/// unsupported; globals outside the reader's list, and objects of custom classes
/// (`__torch__.torch.classes.*`) other than libtorch's `xnnpack` and `rnn` ones, are forbidden:
/// libtorch would run their C++ `__setstate__` on the file's state even where no code of the
/// archive names the class.
pub fn check_torchscript_pickles(path: impl AsRef<Path>) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let file = super::input_file::open_input(path)?;
    let mut archive = open_script_archive(BufReader::new(file), path)?;
    check_constants(&mut archive, path)?;
    let pickle = archive.data_pkl()?;
    Unpickler::with_mode(&pickle, path, &mut Unread, Mode::TorchScript).run()?;
    check_debug_pickles(&mut archive, path)
}

/// Runs every `code/*.debug_pkl` (the source ranges libtorch unpickles lazily, when it reports
/// an error in the code) through the same virtual machine: they hold strings, ints and tuples,
/// so whatever else one names is refused before libtorch could come to read it.
fn check_debug_pickles<R: Read + Seek>(
    archive: &mut TorchArchive<'_, R>,
    path: &Path,
) -> Result<(), CheckpointError> {
    let debug: Vec<String> = archive
        .entry_names()
        .filter(|name| name.ends_with(".debug_pkl"))
        .map(str::to_owned)
        .collect();
    for name in debug {
        check_pickle(archive, &name, path)?;
    }
    Ok(())
}

/// Runs the archive's entry `name` (a full name) through the crate's unpickler in
/// [`Mode::TorchScript`], its tensors checked but not read.
fn check_pickle<R: Read + Seek>(
    archive: &mut TorchArchive<'_, R>,
    name: &str,
    path: &Path,
) -> Result<(), CheckpointError> {
    let pickle = archive.read(name, MAX_PICKLE_BYTES)?;
    Unpickler::with_mode(&pickle, path, &mut Unread, Mode::TorchScript).run()?;
    Ok(())
}

/// Runs the archive's `constants.pkl`, if any, through the crate's unpickler, its tensors
/// checked but not read: libtorch unpickles it while it loads the module.
fn check_constants<R: Read + Seek>(
    archive: &mut TorchArchive<'_, R>,
    path: &Path,
) -> Result<(), CheckpointError> {
    let constants = format!("{}constants.pkl", archive.prefix());
    if archive.entry_names().any(|name| name == constants) {
        check_pickle(archive, &constants, path)?;
    }
    Ok(())
}

/// The storages of a pickle only checked: its tensors are checked as `data.pkl`'s are (their
/// globals, dtypes and sizes), never read.
struct Unread;

impl StorageSource for Unread {
    fn load(&mut self, _key: &str, _nbytes: u64) -> Result<Option<Tensor>, CheckpointError> {
        Ok(None)
    }
}

/// A TorchScript module tree is a tree in real files (thousands of modules of a few dozen
/// attributes); a hostile `data.pkl` can make it a DAG with exponentially many paths, so the walk
/// stops after looking at this many modules and attributes in all.
const MAX_WALK_STEPS: usize = 1 << 24;

/// Real state dict names take tens of bytes; a hostile pickle can repeat a long attribute name
/// through its memo at every level for two bytes each, so longer names are refused.
const MAX_NAME_BYTES: usize = 1 << 16;

/// A module reached under several names is walked, and its state named, under each (as
/// `Module.state_dict()` does), so a `data.pkl` that makes its tree a DAG multiplies names: one
/// module under a 60 KiB name holding 60 000 attributes that all name one leaf would queue
/// 60 000 copies of that name (3.6 GB from a 1 MB file). So every dotted name the walk builds
/// (a module's prefix, a state dict key) counts, with [`STEP_COST`] per module entered, against
/// this many times the size of `data.pkl`, or [`NAME_BUDGET_FLOOR`] if more: a real module tree
/// writes every name it has into `data.pkl`, and a dotted name is a few of them joined.
const NAME_BUDGET_FACTOR: usize = 16;
const NAME_BUDGET_FLOOR: usize = 64 << 20;
/// What one pending module costs the walk beside its name.
const STEP_COST: usize = 64;

/// Runs the `data.pkl` of a TorchScript archive in [`Mode::TorchScript`] and returns the state
/// dict of the module it holds (see [`Unpickler::into_module_state`]).
fn read_module_state(
    pickle: &[u8],
    path: &Path,
    storages: &mut dyn StorageSource,
    classes: &ScriptClasses,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let mut vm = Unpickler::with_mode(pickle, path, storages, Mode::TorchScript);
    let root = vm.run()?;
    let name_budget = pickle
        .len()
        .saturating_mul(NAME_BUDGET_FACTOR)
        .max(NAME_BUDGET_FLOOR);
    vm.into_module_state(root, classes, name_budget)
}

impl Unpickler<'_> {
    /// The state dict of the TorchScript module `root`, as `torch.jit.load(path).state_dict()`
    /// gives it: per module (depth first, from the root), its parameters, then its buffers, each
    /// in slot order, then its submodules in slot order, under dotted names.
    ///
    /// A module's attributes are the dict its BUILD gave it, in slot order (TorchScript's pickler
    /// writes them so). Which of them are parameters and buffers is not in the pickle: `classes`
    /// reads it from the class definitions in the archive's `code/`. An attribute counts when it
    /// is listed there *and* holds a tensor (a `bias=False` Linear lists `bias`, holding None);
    /// submodules are the attributes holding objects of module classes. Other attributes, tensors
    /// included (plain tensor attributes are neither parameters nor buffers), are not state.
    ///
    /// A module reached under several names is walked under each; the bytes of the names built
    /// (plus [`STEP_COST`] per module) may come to at most `name_budget`.
    fn into_module_state(
        mut self,
        root: Value,
        classes: &ScriptClasses,
        name_budget: usize,
    ) -> VmResult<Vec<(String, Tensor)>> {
        let path = self.path;
        let not_a_module = |reason: String| CheckpointError::NotAStateDict {
            path: path.to_path_buf(),
            reason,
        };
        let root_index = match &root {
            Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Object { .. })) => *i,
            other => {
                return Err(not_a_module(format!(
                    "data.pkl holds {}, not a TorchScript module",
                    self.type_name(other)
                )))
            }
        };

        enum Step {
            Enter(usize, String),
            Leave(usize),
        }
        let mut steps = vec![Step::Enter(root_index, String::new())];
        // Modules being walked: a module inside itself would make Python recurse forever.
        let mut on_path = HashSet::new();
        let mut steps_taken = 0usize;
        // Checked before each name is built, so what the walk holds never exceeds the budget.
        let mut name_bytes = 0usize;
        let mut charge = |bytes: usize| {
            name_bytes = name_bytes.saturating_add(bytes);
            if name_bytes > name_budget {
                return Err(not_a_module(format!(
                    "its module tree's dotted names come to more than {name_budget} bytes, {NAME_BUDGET_FACTOR} times data.pkl's size (a module reached under very many names?)"
                )));
            }
            Ok(())
        };
        let mut keys: Vec<(String, usize)> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        while let Some(step) = steps.pop() {
            let (index, prefix) = match step {
                Step::Leave(index) => {
                    on_path.remove(&index);
                    continue;
                }
                Step::Enter(index, prefix) => (index, prefix),
            };
            let module = if prefix.is_empty() {
                "the root module".to_string()
            } else {
                format!("module '{}'", shown(prefix.trim_end_matches('.')))
            };
            steps_taken += 1;
            if !on_path.insert(index) {
                return Err(not_a_module(format!("{module} contains itself")));
            }
            steps.push(Step::Leave(index));
            let Some(Obj::Object { class, state }) = self.arena.get(index) else {
                return Err(not_a_module(format!("{module} is not an object")));
            };
            let Some(def) = classes.module(path, class)? else {
                return Err(not_a_module(format!(
                    "{module} is an object of class {}, which is not a module",
                    shown(class)
                )));
            };
            let Some(state) = state else {
                return Err(not_a_module(format!(
                    "{module} (class {}) is never given its attributes",
                    shown(class)
                )));
            };
            let attributes = match state {
                Value::Obj(d) => match self.arena.get(*d) {
                    Some(Obj::Dict(dict)) => Some(dict),
                    _ => None,
                },
                _ => None,
            };
            let Some(attributes) = attributes else {
                return Err(CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{module} (class {}) is saved as {} by its own __getstate__, which only its code can read",
                        shown(class),
                        self.type_name(state)
                    ),
                });
            };
            steps_taken = steps_taken.saturating_add(attributes.entries.len());
            if steps_taken > MAX_WALK_STEPS {
                return Err(not_a_module(format!(
                    "the module tree has more than {MAX_WALK_STEPS} modules and attributes"
                )));
            }
            let mut names = Vec::with_capacity(attributes.entries.len());
            for (key, _) in &attributes.entries {
                match key {
                    Value::Str(name) if prefix.len() + name.len() > MAX_NAME_BYTES => {
                        return Err(not_a_module(format!(
                            "{module} has an attribute whose dotted name is longer than {MAX_NAME_BYTES} bytes"
                        )))
                    }
                    Value::Str(name) => names.push(name.clone()),
                    other => {
                        return Err(not_a_module(format!(
                            "{module} has an attribute named by {}",
                            self.type_name(other)
                        )))
                    }
                }
            }
            let mut add = |name: String, tensor: usize| match positions.entry(name) {
                // Python's state dict is a dict: a name given twice keeps its first place.
                Entry::Occupied(at) => keys[*at.get()].1 = tensor,
                Entry::Vacant(slot) => {
                    keys.push((slot.key().clone(), tensor));
                    slot.insert(keys.len() - 1);
                }
            };
            for listed in [&def.parameters, &def.buffers] {
                for (name, (_, value)) in names.iter().zip(&attributes.entries) {
                    if let Value::Obj(tensor) = value {
                        if listed.contains(&**name) && self.is_tensor(value) {
                            charge(prefix.len() + name.len())?;
                            add(format!("{prefix}{name}"), *tensor);
                        }
                    }
                }
            }
            let mut children = Vec::new();
            for (name, (_, value)) in names.iter().zip(&attributes.entries) {
                if let Value::Obj(child) = value {
                    if let Some(Obj::Object { class, .. }) = self.arena.get(*child) {
                        if classes.module(path, class)?.is_some() {
                            charge(prefix.len() + name.len() + 1 + STEP_COST)?;
                            children.push(Step::Enter(*child, format!("{prefix}{name}.")));
                        }
                    }
                }
            }
            steps.extend(children.into_iter().rev());
        }
        self.hand_out(keys, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    use crate::checkpoint::script_classes::tests::small_classes;
    use crate::checkpoint::unpickler::tests::PatternStorages;

    /// `data.pkl` of `torch.jit.save(torch.jit.script(Outer()))`, where
    /// `Outer` has a submodule `inner` and then a parameter `p`; `Inner` has
    /// `layers = ModuleList([Linear(2, 2, bias=False), BatchNorm1d(2)])`, a buffer `scale`
    /// (0-d), a plain tensor attribute `plain`, `d: Dict[str, Tensor]`, `sizes = [1, 2]` and
    /// `c = 1 + 2j`.
    const SMALL: &[u8] = b"\
            \x80\x02c__torch__\x0aOuter\x0aq\x00)\x81}(X\x01\x00\x00\x00pq\x01ctorch._utils\x0a\
            _rebuild_tensor_v2\x0aq\x02((X\x07\x00\x00\x00storageq\x03ctorch\x0aFloatStorage\x0a\
            q\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x02tQq\x07K\x00(K\x02t(K\x01\
            t\x88ccollections\x0aOrderedDict\x0aq\x08)RtRq\x09X\x08\x00\x00\x00trainingq\x0a\x88\
            X\x16\x00\x00\x00_is_full_backward_hookq\x0bNX\x05\x00\x00\x00innerq\x0cc__torch_\
            _\x0aInner\x0aq\x0d)\x81}(X\x05\x00\x00\x00scaleq\x0eh\x02((h\x03h\x04X\x01\x00\x00\
            \x001q\x0fh\x06K\x01tQq\x10K\x00(t(t\x89h\x08)RtRq\x11h\x0a\x88h\x0bNX\x05\x00\x00\
            \x00plainq\x12h\x02((h\x03h\x04X\x01\x00\x00\x002q\x13h\x06K\x02tQq\x14K\x00(K\x02\
            t(K\x01t\x89h\x08)RtRq\x15X\x01\x00\x00\x00dq\x16ctorch.jit._pickle\x0arestore_ty\
            pe_tag\x0aq\x17}(X\x01\x00\x00\x00kq\x18h\x02((h\x03h\x04X\x01\x00\x00\x003q\x19h\
            \x06K\x01tQq\x1aK\x00(K\x01t(K\x01t\x89h\x08)RtRq\x1buX\x11\x00\x00\x00Dict[str,\x20\
            Tensor]q\x1c\x86RX\x05\x00\x00\x00sizesq\x1dctorch.jit._pickle\x0abuild_intlist\x0a\
            q\x1e(](K\x01K\x02etRX\x01\x00\x00\x00cq\x1fcbuiltins\x0acomplex\x0aq\x20G?\xf0\x00\
            \x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00\x86RX\x06\x00\x00\x00layersq!c\
            __torch__.torch.nn.modules.container\x0aModuleList\x0aq\x22)\x81}(h\x0a\x88h\x0bN\
            h\x05c__torch__.torch.nn.modules.linear\x0aLinear\x0aq#)\x81}(X\x06\x00\x00\x00we\
            ightq$h\x02((h\x03h\x04X\x01\x00\x00\x004q%h\x06K\x04tQq&K\x00(K\x02K\x02t(K\x02K\
            \x01t\x88h\x08)RtRq'X\x04\x00\x00\x00biasq(Nh\x0a\x88h\x0bNubq)h\x0fc__torch__.to\
            rch.nn.modules.batchnorm\x0aBatchNorm1d\x0aq*)\x81}(h$h\x02((h\x03h\x04X\x01\x00\x00\
            \x005q+h\x06K\x02tQq,K\x00(K\x02t(K\x01t\x88h\x08)RtRq-h(h\x02((h\x03h\x04X\x01\x00\
            \x00\x006q.h\x06K\x02tQq/K\x00(K\x02t(K\x01t\x88h\x08)RtRq0X\x0c\x00\x00\x00runni\
            ng_meanq1h\x02((h\x03h\x04X\x01\x00\x00\x007q2h\x06K\x02tQq3K\x00(K\x02t(K\x01t\x89\
            h\x08)RtRq4X\x0b\x00\x00\x00running_varq5h\x02((h\x03h\x04X\x01\x00\x00\x008q6h\x06\
            K\x02tQq7K\x00(K\x02t(K\x01t\x89h\x08)RtRq8X\x13\x00\x00\x00num_batches_trackedq9\
            h\x02((h\x03ctorch\x0aLongStorage\x0aq:X\x01\x00\x00\x009q;h\x06K\x01tQq<K\x00(t(\
            t\x89h\x08)RtRq=h\x0a\x88h\x0bNubq>ubq?ubq@ubqA.\
            ";

    const SMALL_KEYS: [&str; 8] = [
        "p",
        "inner.scale",
        "inner.layers.0.weight",
        "inner.layers.1.weight",
        "inner.layers.1.bias",
        "inner.layers.1.running_mean",
        "inner.layers.1.running_var",
        "inner.layers.1.num_batches_tracked",
    ];

    fn unpickle(
        data: &[u8],
        classes: &ScriptClasses,
    ) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        read_module_state(data, Path::new("data.pkl"), &mut PatternStorages, classes)
    }

    #[test]
    fn reads_a_real_module_tree_in_state_dict_order() {
        let sd = unpickle(SMALL, &small_classes()).expect("a valid module");
        let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, SMALL_KEYS);
        assert_eq!(sd[1].1.size(), Vec::<i64>::new());
        assert_eq!(sd[2].1.size(), [2, 2]);
        assert_eq!(sd[7].1.kind(), Kind::Int64);
        for (name, t) in &sd {
            assert!(t.is_contiguous() && !t.requires_grad(), "{name}");
        }
    }

    #[test]
    fn every_prefix_is_an_error_not_a_panic() {
        let classes = small_classes();
        for len in 0..SMALL.len() {
            let err = unpickle(&SMALL[..len], &classes).expect_err("a truncated pickle must fail");
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(message.starts_with("data.pkl: "), "{message}");
        }
    }

    #[test]
    fn byte_flips_never_panic() {
        let classes = small_classes();
        let mut ok = 0;
        for i in 0..SMALL.len() {
            for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                let mut mutated = SMALL.to_vec();
                mutated[i] ^= mask;
                match unpickle(&mutated, &classes) {
                    Ok(_) => ok += 1,
                    Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
                }
            }
        }
        assert!(ok > 0);
    }

    #[test]
    fn forbidden_globals_are_named_and_objects_need_script_mode() {
        let classes = small_classes();
        let err = unpickle(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", &classes)
            .expect_err("refused");
        assert!(
            matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system"),
            "{err}"
        );
        // A module needs a dict of attributes: one called with arguments (as enum values are
        // pickled) or built from another state can only be read by its code.
        let err = unpickle(b"\x80\x02c__torch__\nOuter\nK\x01R.", &classes).expect_err("args");
        assert!(
            err.to_string()
                .contains("saved as an int by its own __getstate__"),
            "{err}"
        );
        let err = unpickle(b"\x80\x02c__torch__\nOuter\n)\x81.", &classes).expect_err("no state");
        assert!(
            err.to_string().contains("never given its attributes"),
            "{err}"
        );
        let err = unpickle(b"\x80\x02c__torch__\nOuter\n)\x81)b.", &classes).expect_err("getstate");
        assert!(err.to_string().contains("__getstate__"), "{err}");
        let err = unpickle(b"\x80\x02}.", &classes).expect_err("a dict");
        assert!(
            err.to_string()
                .contains("data.pkl holds a dict, not a TorchScript module"),
            "{err}"
        );
        let err = unpickle(b"\x80\x02c__torch__\nNope\n)\x81}b.", &classes).expect_err("undefined");
        assert!(err.to_string().contains("__torch__.Nope"), "{err}");
        // An object of a custom class libtorch would give the file's state to (its C++
        // `__setstate__`), though no code names it; by GLOBAL or STACK_GLOBAL.
        for pickle in [
            &b"\x80\x02c__torch__.torch.classes.mkldnn\nConvOpContext\n)\x81}b."[..],
            &b"\x80\x04\x8c\x21__torch__.torch.classes.profiling\x8c\x0e_ScriptProfile\x93)\x81."[..],
        ] {
            let err = unpickle(pickle, &classes).expect_err("custom class");
            assert!(
                matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global.contains("torch.classes.")),
                "{err}"
            );
        }
    }

    #[test]
    fn cycles_and_long_names_are_refused() {
        let classes = small_classes();
        // A ModuleList holding itself as "0".
        let cyclic = b"\x80\x02c__torch__.torch.nn.modules.container\nModuleList\n)\x81q\x00}X\x01\x00\x00\x000h\x00sb.";
        let err = unpickle(cyclic, &classes).expect_err("cycle");
        assert!(
            err.to_string().contains("module '0' contains itself"),
            "{err}"
        );
        // A 40 kB attribute name given again through the memo at the next level.
        let list = b"c__torch__.torch.nn.modules.container\nModuleList\n)\x81}".to_vec();
        let mut long = b"\x80\x02".to_vec();
        long.extend_from_slice(&list);
        long.push(b'X');
        long.extend_from_slice(&40_000u32.to_le_bytes());
        long.extend(std::iter::repeat_n(b'a', 40_000));
        long.extend_from_slice(b"q\x01");
        long.extend_from_slice(&list);
        long.extend_from_slice(b"h\x01");
        long.extend_from_slice(&list);
        long.extend_from_slice(b"bsbsb.");
        let err = unpickle(&long, &classes).expect_err("name too long");
        assert!(err.to_string().contains("longer than 65536 bytes"), "{err}");
    }

    /// One module under a 60 000-byte name holding 1 200 attributes that all name one leaf: the
    /// walk would build 1 200 copies of the long name (72 MB from a pickle of 75 kB); it stops
    /// at the name budget instead.
    #[test]
    fn a_module_reached_under_many_long_names_is_refused_within_the_name_budget() {
        let classes = small_classes();
        let list = b"c__torch__.torch.nn.modules.container\nModuleList\n)\x81}";
        let mut dag = b"\x80\x02".to_vec();
        dag.extend_from_slice(list);
        dag.extend_from_slice(b"bq\x00"); // the leaf, memo 0
        dag.extend_from_slice(list);
        dag.push(b'(');
        for i in 0..1200 {
            let key = format!("k{i}");
            dag.push(b'X');
            dag.extend_from_slice(&(key.len() as u32).to_le_bytes());
            dag.extend_from_slice(key.as_bytes());
            dag.extend_from_slice(b"h\x00");
        }
        dag.extend_from_slice(b"ubq\x01"); // A, memo 1
        dag.extend_from_slice(list);
        dag.push(b'X');
        dag.extend_from_slice(&60_000u32.to_le_bytes());
        dag.extend(std::iter::repeat_n(b'L', 60_000));
        dag.extend_from_slice(b"h\x01sb.");
        let err = unpickle(&dag, &classes).expect_err("too many names");
        assert!(
            err.to_string()
                .contains("dotted names come to more than 67108864 bytes"),
            "{err}"
        );
    }

    #[test]
    fn shared_modules_are_walked_under_each_name() {
        let classes = small_classes();
        let mut shared =
            b"\x80\x02c__torch__.torch.nn.modules.container\nModuleList\n)\x81}(X\x01\x00\x00\x000\
            c__torch__.torch.nn.modules.linear\nLinear\n)\x81}X\x06\x00\x00\x00weight"
                .to_vec();
        shared.extend_from_slice(
            b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n\
              X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR",
        );
        shared.extend_from_slice(b"sbq\x01X\x01\x00\x00\x001h\x01ub.");
        let sd = unpickle(&shared, &classes).expect("shared module");
        let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["0.weight", "1.weight"]);
        assert!(sd[0].1.equal(&sd[1].1));
        assert_ne!(sd[0].1.data_ptr(), sd[1].1.data_ptr());
    }
}
