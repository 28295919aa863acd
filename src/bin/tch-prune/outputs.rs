//! What the CLI may write, checked before anything is read: a failing run writes nothing.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch_prune::checkpoint::{check_destination, write_safetensors_as};

/// Writes `--state-out`: the reparametrized state (`<name>_orig`, `<name>_mask`, the rest), each
/// entry in its dtype.
pub fn write_state(path: &Path, state: &[(String, tch::Tensor, Option<tch::Kind>)]) -> Result<()> {
    let entries: Vec<(&str, &tch::Tensor, Option<tch::Kind>)> = state
        .iter()
        .map(|(name, tensor, kind)| (name.as_str(), tensor, *kind))
        .collect();
    write_safetensors_as(path, &entries, &Default::default())?;
    Ok(())
}

/// Checks the input and every destination up front. Each destination must be a regular file or
/// nothing, in an existing folder (no link, device, pipe or folder is replaced); `-o` and
/// `--state-out` must differ, and `--state-out` must not be the input (it would be replaced by a
/// file of another kind). `-o` may be the input: the pruned model replaces it atomically, in its
/// own format.
pub fn check(input: &Path, output: Option<&Path>, state_out: Option<&Path>) -> Result<()> {
    let meta = std::fs::metadata(input)
        .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", input.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file (a folder, device, pipe or socket): name a model file",
            input.display()
        );
    }
    for path in output.into_iter().chain(state_out) {
        check_destination(path)?;
    }
    if let (Some(output), Some(state)) = (output, state_out) {
        if same_file(output, state) {
            bail!(
                "{}: -o and --state-out name the same file; the state would replace the pruned model: give them different names",
                state.display()
            );
        }
    }
    if let Some(state) = state_out {
        if same_file(input, state) {
            bail!(
                "{}: --state-out names the input file, which the reparametrized state would replace: name another file",
                state.display()
            );
        }
    }
    Ok(())
}

/// Checks a further destination (`flag` names it in messages): a regular file or a new name in
/// an existing folder, and not the input.
pub fn check_other(input: &Path, path: &Path, flag: &str) -> Result<()> {
    check_destination(path)?;
    if same_file(input, path) {
        bail!(
            "{}: {flag} names the input file, which it would replace: name another file",
            path.display()
        );
    }
    Ok(())
}

/// Refuses `path` (a destination, `flag` naming it) if it is one of the files the run reads
/// `read` (every shard, the index, every file of an input folder, a plan or calibration file):
/// writing it would replace an input, and a failure part way would lose it. A destination that
/// does not exist yet is none of them; one that exists is compared by inode, so a hard link to
/// an input is refused too.
pub fn check_not_read(read: &[PathBuf], path: &Path, flag: &str) -> Result<()> {
    if let Some(input) = read.iter().find(|input| same_file(input, path)) {
        bail!(
            "{}: {flag} names {}, a file this run reads, which it would replace: name another file",
            path.display(),
            input.display()
        );
    }
    Ok(())
}

/// Whether two paths name one file: the same inode if both exist, else the same name in the
/// same (canonical) folder.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The canonical folder of `path` joined with its file name.
fn resolved(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(name))
}
