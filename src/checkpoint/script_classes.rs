//! The class definitions of a TorchScript archive (`code/**.py`), scanned (never run) for what
//! the state dict needs: which classes are modules, and which of their attributes are parameters
//! and buffers.

use super::error::{shown, CheckpointError};
use std::collections::{HashMap, HashSet};
use std::path::Path;

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
pub(super) mod tests {
    use super::*;

    /// The parts of the archive's class definitions that are read.
    pub(in crate::checkpoint) fn small_classes() -> ScriptClasses {
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
}
