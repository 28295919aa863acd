//! What TorchScript code libtorch may be given: the archive's code is read before libtorch sees
//! the file, and code that would run while loading, or that reaches outside the process, is
//! refused unless the caller trusts the file.
//!
//! Why: libtorch's loader (`torch::jit::load`, tch's `CModule::load`) compiles the archive's
//! `code/**.py` and runs the `__setstate__` method of every object whose class defines one, as
//! it unpickles it. TorchScript can call `torch.from_file(path, shared=True)` (which creates or
//! overwrites a file), `print`, and any operator registered in the process. So loading a
//! TorchScript file from a stranger runs the stranger's code, unless the code is checked first.
//!
//! The check ([`CodePolicy::Checked`], the default) reads every entry whose name ends in `.py`
//! (ignoring case, as PyTorch's zip reader finds names), and refuses the archive if its code:
//!
//! * names `__setstate__` anywhere (a definition is what libtorch runs while loading);
//! * names a builtin that reads or writes files or reaches other processes or machines
//!   ([`FORBIDDEN_NAMES`]: `from_file`, `save`, `load`, `open`, the RPC calls, ...), in any
//!   position (TorchScript resolves names statically: a name that is not in the text cannot be
//!   called);
//! * calls an operator outside the namespaces libtorch implements itself (`ops.aten`, `ops.prim`,
//!   `ops.quantized`, ...), or uses a custom class outside those libtorch implements natively
//!   (`torch.classes.quantized.*`, whose `__setstate__` is libtorch's own C++, not code from
//!   the file);
//! * cannot be tokenized (an unterminated string).
//!
//! Names inside string literals and comments are not code and are not looked at. What is not
//! checked: what libtorch's own operators do with hostile tensors, and anything once the caller
//! passes [`CodePolicy::Trusted`].

use super::error::{shown, CheckpointError};
use super::zip_entries::open_archive;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// Whether a TorchScript archive's code is checked before libtorch loads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CodePolicy {
    /// Refuse archives whose code would run while loading or touches files, processes or the
    /// network (see [the module docs](self)). The default.
    #[default]
    Checked,
    /// Hand the archive to libtorch as it is: its `__setstate__` methods run while it loads, and
    /// its code runs with the process's rights whenever the module is called. For files you
    /// trust as you would trust a program.
    Trusted,
}

/// Builtins and operators that reach files, other processes or other machines.
pub const FORBIDDEN_NAMES: [&str; 11] = [
    "from_file",
    "save",
    "load",
    "open",
    "_load_for_mobile",
    "_save_for_mobile",
    "_save_parameters",
    "_load_parameters",
    "rpc_sync",
    "rpc_async",
    "remote",
];

/// Operator namespaces libtorch implements itself (`ops.<namespace>.<name>` in archive code).
const OPERATOR_NAMESPACES: [&str; 5] = ["aten", "prim", "quantized", "_quantized", "profiler"];

/// Namespaces of custom classes libtorch implements natively (`torch.classes.<namespace>`).
const CLASS_NAMESPACES: [&str; 3] = ["quantized", "xnnpack", "rnn"];

/// All the code of one archive together may take this many bytes (real ones take kilobytes to
/// a few megabytes); more is refused rather than read.
const MAX_CODE_BYTES: u64 = 64 << 20;

/// Checks the TorchScript code of the archive at `path` under [`CodePolicy::Checked`]: `Ok` if
/// libtorch may load it without running code from it; otherwise an
/// [`UntrustedCode`](CheckpointError::UntrustedCode) error naming the entry, line and name.
pub fn check_torchscript_code(path: impl AsRef<Path>) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let file = super::input_file::open_input(path)?;
    check_torchscript_code_from(BufReader::new(file), path)
}

/// [`check_torchscript_code`] on any seekable reader; `name` is only used in error messages.
pub fn check_torchscript_code_from<R: Read + Seek>(
    reader: R,
    name: impl AsRef<Path>,
) -> Result<(), CheckpointError> {
    let path = name.as_ref();
    let mut archive = open_archive(reader, path)?;
    let sources: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".py"))
        })
        .collect();
    let mut budget = MAX_CODE_BYTES;
    for index in sources {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| super::archive::corrupt(path, e))?;
        let entry_name = shown(entry.name());
        let mut source = Vec::new();
        (&mut entry)
            .take(budget.saturating_add(1))
            .read_to_end(&mut source)
            .map_err(|e| CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!("cannot read entry {entry_name}: {e}"),
            })?;
        if source.len() as u64 > budget {
            return Err(CheckpointError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!("its code holds more than {MAX_CODE_BYTES} bytes"),
            });
        }
        budget -= source.len() as u64;
        if let Err(finding) = scan(&source) {
            return Err(CheckpointError::UntrustedCode {
                path: path.to_path_buf(),
                entry: entry_name,
                line: finding.line,
                what: finding.what,
            });
        }
    }
    Ok(())
}

/// Why a piece of code is refused, and where.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) line: usize,
    pub(crate) what: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Name(&'a str),
    Dot,
    Other,
}

/// Tokenizes TorchScript source as libtorch's lexer does for what matters here (names, dots,
/// string literals with backslash escapes, single or triple quoted, and `#` comments), and
/// applies the rules of the module docs.
pub(crate) fn scan(source: &[u8]) -> Result<(), Finding> {
    let mut line = 1;
    let mut i = 0;
    // The last four tokens, for `ops . <namespace>` and `classes . <namespace>` at the start of
    // a path or after `torch .` (elsewhere, as in `__torch__.torchvision.ops.misc.Conv2dNormActivation`,
    // `ops` is a module of a class's qualified name, not the operator registry).
    let mut before: [Token; 4] = [Token::Other, Token::Other, Token::Other, Token::Other];
    while i < source.len() {
        let c = source[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'#' => {
                while i < source.len() && source[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                let start_line = line;
                let triple = source[i..].starts_with(&[c, c, c]);
                let quote_len = if triple { 3 } else { 1 };
                i += quote_len;
                loop {
                    let Some(&b) = source.get(i) else {
                        return Err(Finding {
                            line: start_line,
                            what: "a string that never ends".into(),
                        });
                    };
                    if b == b'\\' {
                        if source.get(i + 1) == Some(&b'\n') {
                            line += 1;
                        }
                        i += 2;
                        continue;
                    }
                    if b == b'\n' {
                        if !triple {
                            return Err(Finding {
                                line: start_line,
                                what: "a string that never ends".into(),
                            });
                        }
                        line += 1;
                    }
                    if b == c && (!triple || source[i..].starts_with(&[c, c, c])) {
                        i += quote_len;
                        break;
                    }
                    i += 1;
                }
                push(&mut before, Token::Other);
            }
            b'.' => {
                push(&mut before, Token::Dot);
                i += 1;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < source.len() && (source[i] == b'_' || source[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let name = std::str::from_utf8(&source[start..i]).expect("ASCII");
                check_name(name, &before, line)?;
                push(&mut before, Token::Name(name));
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                // Numbers continue as names would (`1e5`, `0x1f`): skip them whole so that
                // their letters are not taken for names.
                if c.is_ascii_digit() {
                    while i < source.len()
                        && (source[i] == b'_' || source[i].is_ascii_alphanumeric())
                    {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
                push(&mut before, Token::Other);
            }
        }
    }
    Ok(())
}

/// Appends a token to the history of the last four.
fn push<'a>(before: &mut [Token<'a>; 4], token: Token<'a>) {
    before.rotate_left(1);
    before[3] = token;
}

fn check_name(name: &str, before: &[Token; 4], line: usize) -> Result<(), Finding> {
    let refuse = |what: String| Err(Finding { line, what });
    if name == "__setstate__" {
        return refuse(
            "defines or calls __setstate__, which libtorch runs while loading the file".into(),
        );
    }
    if FORBIDDEN_NAMES.contains(&name) {
        return refuse(format!(
            "uses '{name}', which can read or write files or reach other processes"
        ));
    }
    // `ops` / `classes` heading a path, or right after `torch.`: the registries themselves.
    let registry = before[1] != Token::Dot || before[0] == Token::Name("torch");
    if before[3] == Token::Dot && registry {
        match before[2] {
            Token::Name("ops") if !OPERATOR_NAMESPACES.contains(&name) => {
                return refuse(format!(
                    "calls operators of the namespace '{name}', which libtorch does not implement itself"
                ));
            }
            Token::Name("classes") if !CLASS_NAMESPACES.contains(&name) => {
                return refuse(format!(
                    "uses custom classes of the namespace '{name}', which libtorch does not implement itself"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> Option<(usize, String)> {
        scan(source.as_bytes()).err().map(|f| (f.line, f.what))
    }

    #[test]
    fn plain_module_code_passes() {
        let code = "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  def forward(self: __torch__.Linear, input: Tensor) -> Tensor:\n    _0 = \"can't load # or save\"\n    x = ops.prim.NumToTensor(1e5)\n    return torch.linear(input, self.weight, self.bias)  # save\n";
        assert_eq!(refused(code), None);
        let quantized = "  _packed_params : __torch__.torch.classes.quantized.LinearPackedParamsBase\n    Y = ops.quantized.linear_dynamic(x, p, True)\n";
        assert_eq!(refused(quantized), None);
        // torchvision's module paths hold an `ops` package: a class name, not operators.
        let torchvision =
            "  __annotations__[\"0\"] = __torch__.torchvision.ops.misc.Conv2dNormActivation\n";
        assert_eq!(refused(torchvision), None);
    }

    #[test]
    fn code_that_runs_on_load_or_reaches_out_is_refused() {
        let cases = [
            (
                "class E(Module):\n  def __setstate__(self, s: int) -> None:\n    pass\n",
                2,
            ),
            ("x = 1\n  t = torch.from_file(\"/tmp/v\", True, 4)\n", 2),
            ("t = ops.aten.from_file(p)\n", 1),
            ("ops.aten.save(t, \"f\")\n", 1),
            ("y = ops.myext.run(x)\n", 1),
            ("y = torch.ops.myext.run(x)\n", 1),
            ("c : __torch__.torch.classes.myext.Thing\n", 1),
            ("s = \"\"\"a\nb\"\"\"\nfrom_file\n", 3),
            ("s = 'never ends\n", 1),
            ("s = \"escaped \\\" quote\" ; open(p)\n", 1),
        ];
        for (code, line) in cases {
            let found = refused(code).unwrap_or_else(|| panic!("not refused: {code:?}"));
            assert_eq!(found.0, line, "{code:?}: {}", found.1);
        }
    }

    #[test]
    fn names_in_strings_and_comments_are_not_code() {
        assert_eq!(
            refused("a = 'from_file' # __setstate__\nb = \"ops.evil.x\"\n"),
            None
        );
        assert_eq!(refused("a = '''open(\n)''' + r\"\\\\\"\n"), None);
    }
}
