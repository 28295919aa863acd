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
//!   `torch.save` files. The virtual machine of [`torch_zip`](super::torch_zip) reads it in its
//!   TorchScript mode, in which such classes give inert objects that record their class name and
//!   attributes; nothing is ever called.
//! * Which attributes are parameters and which are buffers is not in the pickle but in the class
//!   definitions under `<prefix>/code/`: the file `code/a/b/c.py` defines the classes `a.b.c.*`,
//!   and a module class starts with `class Name(Module):` followed by the lines
//!   `__parameters__ = ["weight", "bias", ]` and `__buffers__ = [...]`. Only those lines (and
//!   the class headers) are read; the code itself is never interpreted.
//! * `<prefix>/constants.pkl` holds the constants the code uses, which are not part of the state
//!   dict, and is not read.

use super::torch_zip::{
    check_byteorder, read_entry, read_module_state, sniff_reader, ZipLayout, ZipStorages,
    MAX_PICKLE_BYTES,
};
use super::{shown, CheckpointError, Sniff};
use std::collections::{HashMap, HashSet};
use std::fs::File;
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
    let file = File::open(path).map_err(|e| CheckpointError::io(path, "cannot open", e))?;
    read_torchscript_state_from(BufReader::new(file), path)
}

/// [`read_torchscript_state`] on any seekable reader (e.g. an in-memory `Cursor`); `name` is only
/// used in error messages.
pub fn read_torchscript_state_from<R: Read + Seek>(
    mut reader: R,
    name: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = name.as_ref();
    const EXPECTED: &str = "a TorchScript archive written by torch.jit.save";
    let wrong = |found: &'static str| CheckpointError::WrongFormat {
        path: path.to_path_buf(),
        expected: EXPECTED,
        found,
    };
    let file_len = match sniff_reader(&mut reader, path)? {
        (Sniff::Zip, len) => len,
        (Sniff::Pickle, _) => return Err(wrong("a pickle, not a zip archive")),
        (Sniff::Safetensors, _) => return Err(wrong("a safetensors file")),
        (Sniff::Unknown, _) => return Err(wrong("not a zip archive")),
    };
    let mut archive = super::zip_entries::open_archive(reader, path)?;
    let layout = ZipLayout::of(archive.file_names());
    let prefix = match (layout.torchscript, layout.prefix) {
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
    check_byteorder(&mut archive, path, &prefix, file_len)?;

    let code = format!("{prefix}code/");
    let sources: Vec<String> = archive
        .file_names()
        .filter(|name| name.starts_with(&code) && name.ends_with(".py"))
        .map(str::to_string)
        .collect();
    let mut classes = ScriptClasses::default();
    let mut total = 0u64;
    for name in sources {
        let source = read_entry(&mut archive, path, &name, MAX_CODE_FILE_BYTES, file_len)?;
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

    let pickle = read_entry(
        &mut archive,
        path,
        &format!("{prefix}data.pkl"),
        MAX_PICKLE_BYTES,
        file_len,
    )?;
    let mut storages = ZipStorages::new(archive, path, prefix, file_len);
    read_module_state(&pickle, path, &mut storages, &classes)
}

/// What the class definitions under `code/` say about each class, by qualified name.
#[derive(Debug, Default)]
pub(super) struct ScriptClasses {
    classes: HashMap<String, ClassDef>,
}

#[derive(Debug)]
enum ClassDef {
    /// `class Name(Module):`, with its parameter and buffer names, or why they cannot be read.
    Module(Result<ModuleDef, String>),
    /// Any other class (`class Name:`, `class Name(NamedTuple):`, ...): never a module.
    Other,
}

/// The attributes of a module class that are parameters and buffers.
#[derive(Debug, Default)]
pub(super) struct ModuleDef {
    pub(super) parameters: HashSet<String>,
    pub(super) buffers: HashSet<String>,
}

impl ScriptClasses {
    /// Reads the class definitions of one source file, whose classes are `<qualifier>.<Name>`.
    /// Only class headers and the `__parameters__` / `__buffers__` lines of module classes are
    /// looked at; a class whose lists cannot be read is an error only if the pickle uses it.
    pub(super) fn add_file(&mut self, qualifier: &str, source: &str) {
        let mut current: Option<ClassScan> = None;
        for line in source.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            if indent == 0 {
                if let Some(done) = current.take() {
                    self.finish(qualifier, done);
                }
                current = line.strip_prefix("class ").and_then(ClassScan::start);
                continue;
            }
            let Some(class) = current.as_mut() else {
                continue;
            };
            // The first line of the body sets its indentation; deeper lines are method bodies.
            let body = *class.body_indent.get_or_insert(indent);
            if indent != body || !class.is_module {
                continue;
            }
            let statement = line.trim();
            for (target, slot) in [
                ("__parameters__", &mut class.parameters),
                ("__buffers__", &mut class.buffers),
            ] {
                let Some(rest) = statement.strip_prefix(target) else {
                    continue;
                };
                let Some(list) = rest.trim_start().strip_prefix('=') else {
                    continue;
                };
                if slot.is_none() {
                    *slot = Some(parse_name_list(list).map_err(|e| format!("{target}: {e}")));
                }
            }
        }
        if let Some(done) = current.take() {
            self.finish(qualifier, done);
        }
    }

    fn finish(&mut self, qualifier: &str, class: ClassScan) {
        let def = if class.is_module {
            let parameters = class.parameters.unwrap_or(Ok(HashSet::new()));
            let buffers = class.buffers.unwrap_or(Ok(HashSet::new()));
            ClassDef::Module(parameters.and_then(|parameters| {
                Ok(ModuleDef {
                    parameters,
                    buffers: buffers?,
                })
            }))
        } else {
            ClassDef::Other
        };
        // The first definition wins, as a file defines each class once.
        self.classes
            .entry(format!("{qualifier}.{}", class.name))
            .or_insert(def);
    }

    /// The parameters and buffers of `class` if it is a module class, `None` if it is another
    /// class. A class the archive does not define is an error, except TorchScript's bindings of
    /// C++ classes (`__torch__.torch.classes.*`), which are never modules.
    pub(super) fn module(
        &self,
        path: &Path,
        class: &str,
    ) -> Result<Option<&ModuleDef>, CheckpointError> {
        match self.classes.get(class) {
            Some(ClassDef::Module(Ok(def))) => Ok(Some(def)),
            Some(ClassDef::Module(Err(reason))) => Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "cannot read the definition of the module class {}: {}",
                    shown(class),
                    shown(reason)
                ),
            }),
            Some(ClassDef::Other) => Ok(None),
            None if class.starts_with("__torch__.torch.classes.") => Ok(None),
            None => Err(CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!(
                    "data.pkl uses the class {} but the archive's code/ does not define it",
                    shown(class)
                ),
            }),
        }
    }
}

/// A class definition being scanned.
struct ClassScan {
    name: String,
    is_module: bool,
    body_indent: Option<usize>,
    parameters: Option<Result<HashSet<String>, String>>,
    buffers: Option<Result<HashSet<String>, String>>,
}

impl ClassScan {
    /// From the text after `class `: `Name(Module):`, `Name:`, `Name(NamedTuple):`, ...
    fn start(header: &str) -> Option<ClassScan> {
        let header = header.trim_end().strip_suffix(':')?;
        let (name, base) = match header.split_once('(') {
            Some((name, rest)) => (name.trim(), rest.strip_suffix(')')?.trim()),
            None => (header.trim(), ""),
        };
        let identifier = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        identifier.then(|| ClassScan {
            name: name.to_string(),
            is_module: base == "Module",
            body_indent: None,
            parameters: None,
            buffers: None,
        })
    }
}

/// `["weight", "bias", ]`, as TorchScript prints the lists: quoted names (printed as they are,
/// without escapes), each followed by a comma.
fn parse_name_list(text: &str) -> Result<HashSet<String>, String> {
    let text = text.trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list of names, found '{text}'"))?;
    let mut names = HashSet::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let quote = rest
            .chars()
            .next()
            .filter(|&c| c == '"' || c == '\'')
            .ok_or_else(|| format!("expected a quoted name at '{rest}'"))?;
        let body = &rest[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| format!("unterminated name at '{rest}'"))?;
        names.insert(body[..end].to_string());
        let after = body[end + 1..].trim_start();
        rest = match after.strip_prefix(',') {
            Some(next) => next.trim_start(),
            None if after.is_empty() => after,
            None => return Err(format!("expected a comma at '{after}'")),
        };
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    use super::super::torch_zip::tests::PatternStorages;

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

    /// The parts of the archive's class definitions that are read.
    fn small_classes() -> ScriptClasses {
        let mut classes = ScriptClasses::default();
        classes.add_file(
            "__torch__",
            "class Outer(Module):\n  __parameters__ = [\"p\", ]\n  __buffers__ = []\n  p : Tensor\n  \
             inner : __torch__.Inner\n  def forward(self: __torch__.Outer,\n    x: Tensor) -> Tensor:\n    \
             __parameters__ = [\"inner\", ]\n    return x\n\
             class Inner(Module):\n  __parameters__ = []\n  __buffers__ = [\"scale\", ]\n  scale : Tensor\n",
        );
        classes.add_file(
            "__torch__.torch.nn.modules.container",
            "class ModuleList(Module):\n  __parameters__ = []\n  __buffers__ = []\n  training : bool\n",
        );
        classes.add_file(
            "__torch__.torch.nn.modules.linear",
            "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  __buffers__ = []\n",
        );
        classes.add_file(
            "__torch__.torch.nn.modules.batchnorm",
            "class BatchNorm1d(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  \
             __buffers__ = [\"running_mean\", \"running_var\", \"num_batches_tracked\", ]\n",
        );
        classes
    }

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
    fn class_definitions_are_scanned_not_run() {
        let classes = small_classes();
        let path = Path::new("m.pt");
        let outer = classes
            .module(path, "__torch__.Outer")
            .expect("known")
            .expect("module");
        // Only the class body's own line counts, not the one inside `forward`.
        assert_eq!(outer.parameters, HashSet::from(["p".to_string()]));
        assert!(outer.buffers.is_empty());
        let bn = classes
            .module(path, "__torch__.torch.nn.modules.batchnorm.BatchNorm1d")
            .expect("known")
            .expect("module");
        assert_eq!(bn.buffers.len(), 3);

        let mut other = ScriptClasses::default();
        other.add_file(
            "__torch__.a.___torch_mangle_3",
            "class Holder:\n  x : Tensor\nclass Bad(Module):\n  __parameters__ = [weight]\n\
             class NoLists(Module):\n  training : bool\nclass T(NamedTuple):\n  a : int\n",
        );
        let q = "__torch__.a.___torch_mangle_3";
        assert!(other
            .module(path, &format!("{q}.Holder"))
            .expect("known")
            .is_none());
        assert!(other
            .module(path, &format!("{q}.T"))
            .expect("known")
            .is_none());
        let none = other
            .module(path, &format!("{q}.NoLists"))
            .expect("known")
            .expect("module");
        assert!(none.parameters.is_empty() && none.buffers.is_empty());
        let err = other
            .module(path, &format!("{q}.Bad"))
            .expect_err("unreadable list");
        assert!(err.to_string().contains("expected a quoted name"), "{err}");
        let err = other
            .module(path, "__torch__.Missing")
            .expect_err("undefined");
        assert!(err.to_string().contains("does not define it"), "{err}");
        assert!(other
            .module(
                path,
                "__torch__.torch.classes.quantized.LinearPackedParamsBase"
            )
            .expect("a C++ class")
            .is_none());

        let names = |s: &str| {
            let mut v: Vec<String> = parse_name_list(s).expect("parses").into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(names(" []"), Vec::<String>::new());
        assert_eq!(names(" [\"a, b\", \"0\", ]"), ["0", "a, b"]);
        assert_eq!(names("['x']"), ["x"]);
        assert!(parse_name_list("[\"a\" \"b\"]").is_err());
        assert!(parse_name_list("[\"a").is_err());
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
