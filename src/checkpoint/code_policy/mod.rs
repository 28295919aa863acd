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
//!   builtin property ([`BUILTIN_ATTRIBUTES`]), or a name the archive's code declares (its
//!   classes' methods and attributes); never a denied operator's name, declared or not;
//! * `getattr` and `hasattr` are only called directly, `print` not at all (stdout carries the
//!   CLI's report), and `__setstate__` appears nowhere (a definition is what libtorch runs while
//!   loading);
//! * custom classes (`__torch__.torch.classes.<namespace>`) are libtorch's native ones
//!   (`quantized`, `xnnpack`, `rnn`, whose `__setstate__` is libtorch's C++, not the file's);
//! * it can be tokenized (no string that never ends).
//!
//! Names inside string literals (but `getattr`'s) and comments are not code and are not looked
//! at. The allowed operators are those of the PyTorch the data file was generated from
//! (scripts/code_policy_ops.py); an operator a later libtorch adds is refused until the list
//! is regenerated, unless the archive declares a method of that name (then `x.name` on a tensor
//! would reach it: the residual risk of a libtorch newer than the list). What is not checked:
//! what libtorch's own allowed operators do with hostile tensors or sizes, how long the code
//! runs, and anything once the caller passes [`CodePolicy::Trusted`].

use super::error::{shown, CheckpointError};
use super::zip_entries::open_archive;
use std::collections::HashSet;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::sync::OnceLock;

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

/// Operators that act outside the process's tensors: files (`from_file` maps one shared, so it
/// creates or overwrites it; `save` writes one), stdout (which carries the CLI's report), other
/// processes, Python. Never allowed, called by name or as a method (`x.save(path)` is
/// `aten::save(x, path)`); [`ALLOWED_OPERATORS`] lists none of them.
pub const DENIED_OPERATORS: [&str; 9] = [
    "aten::from_file",
    "aten::save",
    "aten::_print",
    "prim::Print",
    "prim::rpc_async",
    "prim::rpc_sync",
    "prim::rpc_remote",
    "prim::PythonOp",
    "prim::IgnoredPythonOp",
];

/// The operators code may call (`namespace::name`, one a line, `#` comments): every operator of
/// the namespaces libtorch implements itself (aten, prim, quantized, _quantized, profiler) in
/// the schema registry of the PyTorch this crate is built against, but for
/// [`DENIED_OPERATORS`]. Generated by scripts/code_policy_ops.py.
pub const ALLOWED_OPERATORS: &str = include_str!("code_policy_ops.txt");

/// Operator namespaces libtorch implements itself (`ops.<namespace>.<name>` in archive code).
const OPERATOR_NAMESPACES: [&str; 5] = ["aten", "prim", "quantized", "_quantized", "profiler"];

/// Namespaces of custom classes libtorch implements natively (`torch.classes.<namespace>`).
const CLASS_NAMESPACES: [&str; 3] = ["quantized", "xnnpack", "rnn"];

/// Attribute names TorchScript resolves on values without an operator of the same name: the
/// tensor casts (`x.half()` is `aten::to`), an enum's `value`, `type` (`aten::to` too),
/// `tolist`, and `unpack`, the method of libtorch's native packed-parameter classes
/// (`torch.classes.quantized.*`) that quantized models call.
/// With them, the properties TorchScript resolves to operators that are not in the registry's
/// schemas (its `builtin_properties`: `x.shape`, `x.T`, `device.index`, ...).
const BUILTIN_ATTRIBUTES: [&str; 36] = [
    "byte",
    "char",
    "short",
    "int",
    "long",
    "half",
    "float",
    "double",
    "bfloat16",
    "bool",
    "cfloat",
    "cdouble",
    "value",
    "type",
    "tolist",
    "unpack",
    "dtype",
    "device",
    "grad",
    "data",
    "shape",
    "requires_grad",
    "layout",
    "T",
    "H",
    "mT",
    "mH",
    "ndim",
    "name",
    "real",
    "imag",
    "is_leaf",
    "retains_grad",
    "itemsize",
    "nbytes",
    "index",
];

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

/// Why a piece of code is refused, and where.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) line: usize,
    pub(crate) what: String,
}

/// A token of TorchScript source, as far as the policy needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Name(&'a str),
    Dot,
    /// A string literal's text between its quotes, escapes left as written.
    Str(&'a [u8]),
    Open(u8),
    Close(u8),
    Comma,
    Colon,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind<'a>,
    line: usize,
}

/// Tokenizes TorchScript source as libtorch's lexer does for what matters here: names, dots,
/// brackets, commas, colons, numbers (`1.`, `1e-5`, `0x1f`: a dot inside a number is not an
/// attribute access, a dot after one is), string literals with backslash escapes, single or
/// triple quoted, and `#` comments.
fn tokenize(source: &[u8]) -> Result<Vec<Token<'_>>, Finding> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < source.len() {
        let c = source[i];
        let start_line = line;
        let kind = match c {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            b'#' => {
                while i < source.len() && source[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'"' | b'\'' => {
                let triple = source[i..].starts_with(&[c, c, c]);
                let quote_len = if triple { 3 } else { 1 };
                i += quote_len;
                let text_start = i;
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
                        let text = &source[text_start..i];
                        i += quote_len;
                        break Kind::Str(text);
                    }
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && source.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i = number_end(source, i);
                Kind::Other
            }
            b'.' => {
                i += 1;
                Kind::Dot
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < source.len() && (source[i] == b'_' || source[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                Kind::Name(std::str::from_utf8(&source[start..i]).expect("ASCII"))
            }
            b'(' | b'[' | b'{' => {
                i += 1;
                Kind::Open(c)
            }
            b')' | b']' | b'}' => {
                i += 1;
                Kind::Close(c)
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b':' => {
                i += 1;
                Kind::Colon
            }
            _ => {
                i += 1;
                Kind::Other
            }
        };
        tokens.push(Token {
            kind,
            line: start_line,
        });
    }
    Ok(tokens)
}

/// Where the number starting at `i` ends, as libtorch's lexer reads one (`strtod` after a
/// digit or a dot): digits (hex, octal or binary ones after `0x`, `0o`, `0b`), one dot and more
/// digits, an exponent, a `j`. `0..save` is the number `0.` and then `.save`.
fn number_end(source: &[u8], mut i: usize) -> usize {
    let digits = |mut i: usize| {
        while i < source.len() && (source[i].is_ascii_digit() || source[i] == b'_') {
            i += 1;
        }
        i
    };
    if source[i] == b'0'
        && matches!(
            source.get(i + 1),
            Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        )
    {
        i += 2;
        while i < source.len() && (source[i].is_ascii_hexdigit() || source[i] == b'_') {
            i += 1;
        }
        return i;
    }
    i = digits(i);
    if source.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(source.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(source.get(i + 1), Some(b'+' | b'-')));
        if source.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    if matches!(source.get(i), Some(b'j' | b'J')) {
        i += 1;
    }
    i
}

/// The operators of [`ALLOWED_OPERATORS`], and the names of the aten and prim ones (what a
/// method call or property on a value may resolve to).
struct Operators {
    qualified: HashSet<&'static str>,
    value_names: HashSet<&'static str>,
}

fn operators() -> &'static Operators {
    static OPERATORS: OnceLock<Operators> = OnceLock::new();
    OPERATORS.get_or_init(|| {
        let qualified: HashSet<&str> = ALLOWED_OPERATORS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let value_names = qualified
            .iter()
            .filter_map(|q| {
                q.strip_prefix("aten::")
                    .or_else(|| q.strip_prefix("prim::"))
            })
            .collect();
        Operators {
            qualified,
            value_names,
        }
    })
}

/// The names the archive's code declares: methods (`def name`), attributes and fields
/// (`name : Type` in a class body, and anything else followed by a colon), attributes that are
/// not identifiers (`__annotations__["0"] = ...`). A value's attribute must be one of these or
/// an allowed operator's name.
fn declared_names<'a>(files: impl Iterator<Item = &'a [Token<'a>]>) -> HashSet<&'a [u8]> {
    let mut names = HashSet::new();
    for tokens in files {
        for (i, t) in tokens.iter().enumerate() {
            let next = tokens.get(i + 1).map(|t| t.kind);
            match (t.kind, next) {
                (Kind::Name(n), Some(Kind::Colon)) => {
                    names.insert(n.as_bytes());
                }
                (Kind::Name("def"), Some(Kind::Name(n))) => {
                    names.insert(n.as_bytes());
                }
                (Kind::Name("__annotations__"), Some(Kind::Open(b'['))) => {
                    if let Some(Token {
                        kind: Kind::Str(s), ..
                    }) = tokens.get(i + 2)
                    {
                        names.insert(s);
                    }
                }
                _ => {}
            }
        }
    }
    names
}

/// Applies the rules of the module docs to one file's tokens.
fn check(tokens: &[Token], declared: &HashSet<&[u8]>) -> Result<(), Finding> {
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].kind {
            Kind::Name(_) => {
                let (chain, next) = chain_at(tokens, i);
                check_path(&chain, tokens, next, declared)?;
                i = next;
            }
            Kind::Dot => {
                // An attribute of an expression: `(x).name`, `f(x).name`, `"s".name`, `1..name`.
                let (chain, next) = chain_at(tokens, i);
                for (name, line) in chain {
                    check_attribute(name.as_bytes(), line, declared)?;
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The dotted path at `i` (a name, or a dot after an expression) and the index after it.
fn chain_at<'a>(tokens: &[Token<'a>], mut i: usize) -> (Vec<(&'a str, usize)>, usize) {
    let mut chain = Vec::new();
    if let Kind::Name(n) = tokens[i].kind {
        chain.push((n, tokens[i].line));
        i += 1;
    }
    while let (
        Some(Kind::Dot),
        Some(Token {
            kind: Kind::Name(n),
            line,
        }),
    ) = (tokens.get(i).map(|t| t.kind), tokens.get(i + 1))
    {
        chain.push((*n, *line));
        i += 2;
    }
    if chain.is_empty() {
        // A dot followed by no name: not a path (libtorch refuses it).
        i += 1;
    }
    (chain, i)
}

/// A path that starts with a name: `torch.<op>`, `ops.<namespace>.<op>`, `__torch__.<class>`,
/// `CONSTANTS.c<n>`, `getattr(...)`, or a value (`self`, a local, a builtin) and its attributes.
fn check_path(
    chain: &[(&str, usize)],
    tokens: &[Token],
    next: usize,
    declared: &HashSet<&[u8]>,
) -> Result<(), Finding> {
    let (root, line) = chain[0];
    let refuse = |line: usize, what: String| Err(Finding { line, what });
    if let Some(&(_, line)) = chain.iter().find(|(n, _)| *n == "__setstate__") {
        return refuse(
            line,
            "defines or calls __setstate__, which libtorch runs while loading the file".into(),
        );
    }
    let whole = || chain.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(".");
    let namespace_itself = |shown: String| {
        refuse(
            line,
            format!(
                "uses the namespace '{shown}' itself (as a value, in parentheses or through getattr): only its operators, named in full, may be called"
            ),
        )
    };
    match root {
        "torch" => {
            // `torch.<op>` is `aten::<op>`; `torch.autograd` is `torch` again.
            let rest: Vec<_> = chain[1..]
                .iter()
                .skip_while(|(n, _)| *n == "autograd")
                .collect();
            let Some(&&(op, op_line)) = rest.first() else {
                return namespace_itself(whole());
            };
            check_operator("aten", op, &format!("torch.{op}"), op_line)?;
            if rest.len() > 1 {
                return refuse(
                    op_line,
                    format!("uses '{}', an attribute of an operator", whole()),
                );
            }
        }
        "ops" => {
            let Some(&(namespace, ns_line)) = chain.get(1) else {
                return namespace_itself("ops".into());
            };
            if !OPERATOR_NAMESPACES.contains(&namespace) {
                return refuse(
                    ns_line,
                    format!(
                        "calls operators of the namespace '{namespace}', which libtorch does not implement itself"
                    ),
                );
            }
            let Some(&(op, op_line)) = chain.get(2) else {
                return namespace_itself(format!("ops.{namespace}"));
            };
            check_operator(namespace, op, &format!("ops.{namespace}.{op}"), op_line)?;
            if chain.len() > 3 {
                return refuse(
                    op_line,
                    format!("uses '{}', an attribute of an operator", whole()),
                );
            }
        }
        "__torch__" => {
            // The archive's own classes and functions, and custom classes registered in the
            // process (`__torch__.torch.classes.<namespace>.<class>`): only libtorch's own.
            let names: Vec<&str> = chain.iter().map(|(n, _)| *n).collect();
            if names.get(1..3) == Some(&["torch", "classes"]) {
                match chain.get(3) {
                    Some((ns, _)) if CLASS_NAMESPACES.contains(ns) => {}
                    Some(&(ns, ns_line)) => {
                        return refuse(
                            ns_line,
                            format!(
                                "uses custom classes of the namespace '{ns}', which libtorch does not implement itself"
                            ),
                        )
                    }
                    None => return namespace_itself(whole()),
                }
            }
        }
        "getattr" | "hasattr" => {
            // `getattr(torch, "x")`, `getattr(ops.aten, "x")`: the namespace is the refusal.
            if let Some(Kind::Name("torch" | "ops")) = tokens.get(next + 1).map(|t| t.kind) {
                let (object, _) = chain_at(tokens, next + 1);
                let shown: Vec<&str> = object.iter().map(|(n, _)| *n).collect();
                return namespace_itself(shown.join("."));
            }
            let name = call_literal(tokens, next).ok_or_else(|| Finding {
                line,
                what: format!(
                    "uses {root} other than as {root}(object, \"name\") with the name one plain string literal"
                ),
            })?;
            if chain.len() > 1 {
                return refuse(line, format!("uses '{}'", whole()));
            }
            // `getattr(x, "name")` is `x.name`; `hasattr` only answers whether it exists.
            if root == "getattr" {
                check_attribute(name, line, declared)?;
            }
        }
        "print" => {
            return refuse(
                line,
                "calls print, which writes to stdout (where the CLI writes its report)".into(),
            )
        }
        _ => {
            // A value (`self`, an argument, a local, a builtin such as `len`) and its attributes;
            // `CONSTANTS.c0` names a constant tensor of the archive.
            let skip = if root == "CONSTANTS" { 2 } else { 1 };
            for &(name, line) in chain.iter().skip(skip) {
                check_attribute(name.as_bytes(), line, declared)?;
            }
        }
    }
    Ok(())
}

/// `namespace::op` must be an allowed operator.
fn check_operator(namespace: &str, op: &str, shown: &str, line: usize) -> Result<(), Finding> {
    let qualified = format!("{namespace}::{op}");
    if DENIED_OPERATORS.contains(&qualified.as_str()) {
        return Err(Finding {
            line,
            what: format!("calls '{shown}', which acts outside the process's tensors (files, stdout, other processes)"),
        });
    }
    if !operators().qualified.contains(qualified.as_str()) {
        return Err(Finding {
            line,
            what: format!("calls '{shown}', which is not an operator this check allows ({qualified} is not in libtorch's registry)"),
        });
    }
    Ok(())
}

/// An attribute of a value, `x.name` or `getattr(x, "name")`: a method or property of a tensor,
/// list, string, ... resolves to the operator `aten::name` (`prim::name` for properties), so
/// it must be an allowed operator's name, or a name the archive declares (its classes' methods
/// and attributes); never a denied operator's, even if declared.
fn check_attribute(name: &[u8], line: usize, declared: &HashSet<&[u8]>) -> Result<(), Finding> {
    let shown = String::from_utf8_lossy(name);
    let denied = DENIED_OPERATORS
        .iter()
        .find(|q| q.split("::").nth(1).map(str::as_bytes) == Some(name));
    if let Some(q) = denied {
        return Err(Finding {
            line,
            what: format!("uses the attribute '.{shown}', which calls the operator {q}: it acts outside the process's tensors (files, stdout, other processes)"),
        });
    }
    if name == b"classes" {
        // `(__torch__.torch).classes.<namespace>`: custom classes reached around the checked
        // `__torch__.torch.classes.<namespace>` path, whatever the archive declares.
        return Err(Finding {
            line,
            what: "uses the attribute '.classes', which reaches custom classes other than by their full __torch__.torch.classes path".into(),
        });
    }
    let known = std::str::from_utf8(name)
        .is_ok_and(|n| operators().value_names.contains(n) || BUILTIN_ATTRIBUTES.contains(&n));
    if known || declared.contains(name) {
        return Ok(());
    }
    Err(Finding {
        line,
        what: format!("uses the attribute '.{shown}', which is neither an operator this check allows nor declared by the archive's code"),
    })
}

/// For `getattr` or `hasattr` at `open`: the name if the call is `(<object>, "<name>")` with the
/// name one string literal without escapes (they could spell any name; module names such as
/// RegNet's "block1-0" are no identifiers, and no operator's).
fn call_literal<'a>(tokens: &[Token<'a>], open: usize) -> Option<&'a [u8]> {
    if tokens.get(open)?.kind != Kind::Open(b'(') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = open + 1;
    loop {
        match tokens.get(i)?.kind {
            Kind::Open(_) => depth += 1,
            Kind::Close(_) if depth == 0 => return None,
            Kind::Close(_) => depth -= 1,
            Kind::Comma if depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    match (tokens.get(i + 1)?.kind, tokens.get(i + 2)?.kind) {
        (Kind::Str(s), Kind::Close(b')')) if !s.contains(&b'\\') => Some(s),
        _ => None,
    }
}

/// [`check`] on one piece of source alone (its own declarations only).
#[cfg(test)]
pub(crate) fn scan(source: &[u8]) -> Result<(), Finding> {
    let tokens = tokenize(source)?;
    let declared = declared_names(std::iter::once(tokens.as_slice()));
    check(&tokens, &declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> Option<(usize, String)> {
        scan(source.as_bytes()).err().map(|f| (f.line, f.what))
    }

    #[test]
    fn plain_module_code_passes() {
        let code = "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  weight : Tensor\n  bias : Tensor\n  def forward(self: __torch__.Linear, input: Tensor) -> Tensor:\n    _0 = \"can't load # or save\"\n    x = ops.prim.NumToTensor(1e5)\n    return torch.linear(input, self.weight, self.bias)  # save\n";
        assert_eq!(refused(code), None);
        let quantized = "  _packed_params : __torch__.torch.classes.quantized.LinearPackedParamsBase\n    Y = ops.quantized.linear_dynamic(x, p, True)\n";
        assert_eq!(refused(quantized), None);
        // torchvision's module paths hold an `ops` package: a class name, not operators.
        let torchvision =
            "  __annotations__[\"0\"] = __torch__.torchvision.ops.misc.Conv2dNormActivation\n";
        assert_eq!(refused(torchvision), None);
    }

    /// What serialized real models hold (torchvision scripted and traced, Hugging Face traced):
    /// the allow-list takes all of it.
    #[test]
    fn the_constructs_of_real_models_pass() {
        let code = r#"class Block(Module):
  __parameters__ = []
  training : bool
  __annotations__["0"] = __torch__.torch.nn.modules.conv.Conv2d
  conv1 : __torch__.torch.nn.modules.conv.Conv2d
  def forward(self: __torch__.Block, x: Tensor, y: Optional[Tensor]=None) -> Tensor:
    conv1 = self.conv1
    out = (conv1).forward(x, )
    _0 = getattr(self, "0")
    _1 = (_0).forward(out, )
    if hasattr(self, "training"):
      pass
    _2 = torch.add_(out, x, alpha=1)
    _3 = ops.aten.size(_2, -1)
    _4 = torch.autograd.grad([_2], [x])
    n = annotate(List[int], [])
    _5 = unchecked_cast(Tensor, y)
    _6 = uninitialized(Tensor)
    b = isinstance(y, Tensor)
    for i in range(len(n)):
      _7 = n.append(int(i))
    d = {"a": 1}
    _8 = d.items()
    s = "{}x{}".format(1, 2)
    _9 = s.startswith("1")
    _10 = torch.warn("deprecated", 2)
    f = 1.0000000000000001e-05 + 1. + .5 + 0x1f + 2j
    _11 = _2.shape
    _12 = _2.dtype
    _13 = _2.device.type
    _14 = _2.half().float().to(torch.device("cpu"))
    _15 = torch.zeros_like(_2).contiguous().T
    _16 = CONSTANTS.c0
    _17 = __torch__.torch.nn.functional.relu(_2, True)
    _18 = ops.prim.dtype(_2)
    _19 = fork(self.conv1, x)
    _20 = torch.wait(_19)
    _21 = ops.profiler._record_function_enter_new("x", None)
    ops.prim.RaiseException("AssertionError: ", "builtins.AssertionError")
    return torch.relu(_1)
"#;
        assert_eq!(refused(code), None);
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
            ("c : __torch__.torch.classes.myext.Thing\n", 1),
            ("c : __torch__.torch.classes.dist_c10d.FileStore\n", 1),
            ("s = \"\"\"a\nb\"\"\"\nx = torch.from_file(p)\n", 3),
            ("s = 'never ends\n", 1),
            ("s = \"escaped \\\" quote\" ; x.save(p)\n", 1),
        ];
        for (code, line) in cases {
            let found = refused(code).unwrap_or_else(|| panic!("not refused: {code:?}"));
            assert_eq!(found.0, line, "{code:?}: {}", found.1);
        }
    }

    /// Issue 20's attacks: names in string literals, behind parentheses or aliases, as methods.
    #[test]
    fn names_hidden_from_a_deny_list_are_refused() {
        let cases = [
            // The four that passed the deny-list.
            (
                "x = 1\ny = getattr(torch, \"from_file\")(p, True, 4)\n",
                2,
                "namespace 'torch'",
            ),
            ("getattr(torch, \"save\")(x, p)\n", 1, "namespace 'torch'"),
            (
                "f = getattr(ops.aten, \"from_file\")\n",
                1,
                "namespace 'ops.aten'",
            ),
            (
                "y = (ops)._c10d_functional.wait_tensor(x)\n",
                1,
                "namespace 'ops'",
            ),
            // Their relatives.
            (
                "classes : int\ny = (__torch__.torch).classes.dist_c10d.FileStore(p, 1)\n",
                2,
                "'.classes'",
            ),
            (
                "classes : int\ny = getattr(__torch__.torch, \"classes\")\n",
                2,
                "'.classes'",
            ),
            ("y = (torch).from_file(p)\n", 1, "namespace 'torch'"),
            (
                "a = ops.aten\nb = a.from_file(p)\n",
                1,
                "namespace 'ops.aten'",
            ),
            ("t = torch\n", 1, "namespace 'torch'"),
            ("y = getattr(x, \"save\")(p)\n", 1, "aten::save"),
            ("y = getattr(x, \"sa\\x76e\")(p)\n", 1, "string literal"),
            ("y = getattr(x, \"sa\" \"ve\")(p)\n", 1, "string literal"),
            ("y = getattr(x, name)(p)\n", 1, "string literal"),
            ("g = getattr\ny = g(x, \"save\")(p)\n", 1, "getattr"),
            ("x.save(p)\n", 1, "aten::save"),
            ("torch.relu(x).save(p)\n", 1, "aten::save"),
            ("y = 0..save(p)\n", 1, "aten::save"),
            ("y = x\\\n.save(p)\n", 2, "aten::save"),
            ("y = ops.c10d.allreduce_(x)\n", 1, "'c10d'"),
            (
                "y = ops._c10d_functional.wait_tensor(x)\n",
                1,
                "'_c10d_functional'",
            ),
            ("y = torch.no_such_op(x)\n", 1, "not an operator"),
            ("y = x.no_such_method()\n", 1, "neither"),
            ("y = torch.relu.save\n", 1, "attribute of an operator"),
            ("print(\"PAYLOAD\")\n", 1, "stdout"),
            ("ops.prim.Print(\"PAYLOAD\")\n", 1, "outside"),
            ("torch._print(\"PAYLOAD\")\n", 1, "outside"),
            ("y = ops.prim.rpc_async(x)\n", 1, "outside"),
            ("y = x.__setstate__(s)\n", 1, "__setstate__"),
        ];
        for (code, line, words) in cases {
            let found = refused(code).unwrap_or_else(|| panic!("not refused: {code:?}"));
            assert_eq!(found.0, line, "{code:?}: {}", found.1);
            assert!(found.1.contains(words), "{code:?}: {}", found.1);
        }
    }

    /// A denied operator's name stays refused as an attribute even when the archive declares
    /// it (a method `save` of its own would not make `x.save(p)` safe on a tensor).
    #[test]
    fn declaring_a_denied_name_does_not_allow_it() {
        let code = "class M(Module):\n  save : Tensor\n  def from_file(self) -> None:\n    pass\n  def forward(self, x: Tensor) -> None:\n    x.save(\"p\")\n";
        let found = refused(code).expect("refused");
        assert_eq!(found.0, 6, "{}", found.1);
        // A declared name that is no operator is an attribute of the archive's own classes.
        let own = "class M(Module):\n  helper : __torch__.H\n  def forward(self) -> Tensor:\n    return (self.helper).run_me()\n  def run_me(self) -> Tensor:\n    pass\n";
        assert_eq!(refused(own), None);
    }

    #[test]
    fn names_in_strings_and_comments_are_not_code() {
        assert_eq!(
            refused("a = 'from_file' # __setstate__ torch.save\nb = \"ops.evil.x\"\n"),
            None
        );
        assert_eq!(refused("a = '''x.save(\n)''' + \"\\\\\"\n"), None);
    }

    /// The data file is what scripts/code_policy_ops.py writes: no denied operator in it, and
    /// the operators real models call are.
    #[test]
    fn the_allowed_operators_exclude_the_denied_ones() {
        let ops = &operators().qualified;
        for denied in DENIED_OPERATORS {
            assert!(!ops.contains(denied), "{denied} is allowed");
        }
        for needed in [
            "aten::conv2d",
            "aten::linear",
            "prim::NumToTensor",
            "aten::warn",
            "quantized::linear_dynamic",
        ] {
            assert!(ops.contains(needed), "{needed} is not allowed");
        }
        assert!(ops.len() > 1500, "{} operators", ops.len());
    }
}
