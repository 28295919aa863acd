//! What TorchScript code libtorch may be given: the archive's code is read before libtorch sees
//! the file, and it must consist of what a model's code is made of, named statically; anything
//! else is refused unless the caller trusts the file.
//!
//! Why: libtorch's loader (`torch::jit::load`, tch's `CModule::load`) compiles the archive's
//! `code/**.py` and runs the `__setstate__` method of every object whose class defines one, as
//! it unpickles it, and `tch-prune shrink` runs the module's `forward`. TorchScript can call
//! `torch.from_file(path, shared=True)` (which creates or overwrites a file), `torch.save`,
//! `print`, and any operator registered in the process. So loading a TorchScript file from a
//! stranger runs the stranger's code, unless the code is checked first.
//!
//! The check is an allow-list, not a list of bad names: a deny-list misses names written in a
//! string literal (`getattr(torch, "from_file")`) or behind parentheses (`(ops).x.y`). Serialized
//! TorchScript names everything it calls as a dotted path from a few roots (libtorch's importer
//! resolves only `torch`, `ops`, `__torch__`, `CONSTANTS`, a handful of builtins, and the
//! method's own variables), so each path can be resolved statically. The check
//! ([`CodePolicy::Checked`], the default) reads every entry whose name ends in `.py` (ignoring
//! case, as PyTorch's zip reader finds names) and accepts the archive only if, in all its code:
//!
//! * every path from `torch` is `torch.<op>` (or `torch.autograd.<op>`), and every path from
//!   `ops` is `ops.<namespace>.<op>`, with `<namespace>::<op>` in [`ALLOWED_OPERATORS`]: the
//!   operators of the namespaces libtorch implements itself (aten, prim, quantized, _quantized,
//!   profiler) in its schema registry, less [`DENIED_OPERATORS`] (files, stdout, other
//!   processes, Python). A namespace used any other way (`torch` alone, `ops.aten` as a value,
//!   in parentheses, as `getattr`'s object) is refused, as is an operator of another namespace
//!   (`c10d`, `_c10d_functional`, a custom library's);
//! * every attribute of a value (`x.name`, `f(x).name`, `(x).name`, and `getattr(x, "name")`,
//!   whose name must be one plain string literal) is an allowed aten or prim operator's name (a
//!   tensor's methods and properties resolve to `aten::name`, `prim::name`), a tensor cast or
//!   builtin property (`shape`, `dtype`, `T`, ...), or a name the archive's code declares (its
//!   classes' methods and attributes); never a denied operator's name, declared or not;
//! * `getattr` and `hasattr` are only called directly, `print` not at all (stdout carries the
//!   CLI's report), and `__setstate__` appears nowhere (a definition is what libtorch runs while
//!   loading);
//! * custom classes (`__torch__.torch.classes.<namespace>`) are libtorch's native ones
//!   (`quantized`, `xnnpack`, `rnn`, whose `__setstate__` is libtorch's C++, not the file's);
//! * it can be tokenized (no string that never ends), read as libtorch's lexer reads it: the
//!   text of a `# type:` comment is code, a backslash before a newline joins the lines.
//!
//! The objects the archive's pickles hold are checked apart, whatever the policy, by
//! [`check_torchscript_pickles`](super::check_torchscript_pickles).
//!
//! Names inside string literals (but `getattr`'s) and comments are not code and are not looked
//! at. The allowed operators are those of the PyTorch the data file was generated from
//! (scripts/code_policy_ops.py); an operator a later libtorch adds is refused until the list
//! is regenerated, unless the archive declares a method of that name (then `x.name` on a tensor
//! would reach it: the residual risk of a libtorch newer than the list). What is not checked:
//! what libtorch's own allowed operators do with hostile tensors or sizes, how long the code
//! runs, and anything once the caller passes [`CodePolicy::Trusted`].
//!
//! The check in parts: this file reads the archive's code (every `.py` entry, within a budget),
//! `tokens` cuts it into tokens, `rules` applies the rules above to them.

mod rules;
#[cfg(test)]
mod tests;
mod tokens;

use self::rules::{check, declared_names};
pub use self::rules::{is_allowed_operator, ALLOWED_OPERATORS, DENIED_OPERATORS};
use self::tokens::{tokenize, Finding};
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
    let entries: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".py"))
        })
        .collect();
    let mut budget = MAX_CODE_BYTES;
    // All the code is read first: a method or attribute declared in one file is used in others.
    let mut sources = Vec::with_capacity(entries.len());
    for index in entries {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| super::zip_entries::corrupt(path, e))?;
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
        sources.push((entry_name, source));
    }
    let refused = |entry: &str, finding: Finding| CheckpointError::UntrustedCode {
        path: path.to_path_buf(),
        entry: entry.to_string(),
        line: finding.line,
        what: finding.what,
    };
    let mut tokens = Vec::with_capacity(sources.len());
    for (entry, source) in &sources {
        tokens.push(tokenize(source).map_err(|f| refused(entry, f))?);
    }
    let declared = declared_names(tokens.iter().map(Vec::as_slice));
    for ((entry, _), tokens) in sources.iter().zip(&tokens) {
        check(tokens, &declared).map_err(|f| refused(entry, f))?;
    }
    Ok(())
}
